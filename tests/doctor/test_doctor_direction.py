"""The doctor's fitted shape model: the numpy forest evaluator against scikit-learn, scale-free features, and its
calls on real training curves (a numpy softmax regression trained by SGD over an lr grid)."""

import numpy as np
import pytest

from lrkit.curve import Curve
from lrkit.doctor import diagnose, direction

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


def test_numpy_forest_matches_sklearn_predict_proba():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(int) + (X[:, 2] > 1).astype(int)
    forest = sklearn_ensemble.RandomForestClassifier(25, max_depth=5, random_state=0).fit(X, y)
    model = direction.export_forest(forest, [f"f{i}" for i in range(6)])
    Xt = rng.standard_normal((50, 6))
    np.testing.assert_allclose(direction.forest_proba(model, Xt), forest.predict_proba(Xt), atol=1e-12)


def test_numpy_forest_matches_sklearn_regressor():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 4))
    t = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    forest = sklearn_ensemble.RandomForestRegressor(20, max_depth=6, random_state=0).fit(X, t)
    model = direction.export_forest(forest, ["a", "b", "c", "d"])
    Xt = rng.standard_normal((40, 4))
    np.testing.assert_allclose(direction.forest_proba(model, Xt)[:, 0], forest.predict(Xt), atol=1e-12)


@pytest.mark.parametrize("classes", [3, 2])
def test_numpy_boosted_trees_match_sklearn_predict_proba(classes):
    """Gradient-boosted trees (the shipped direction classifiers): the numpy softmax / logistic of the summed leaf
    scores equals scikit-learn's predict_proba, missing values included (they follow each split's learnt side)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(int) + (X[:, 2] > 0.8).astype(int) * (classes - 2)
    X[rng.random(X.shape) < 0.05] = np.nan
    hgb = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0).fit(X, y)
    model = direction.export_forest(hgb, [f"f{i}" for i in range(5)])
    Xt = rng.standard_normal((60, 5))
    Xt[rng.random(Xt.shape) < 0.1] = np.nan
    assert len(model["classes"]) == classes
    np.testing.assert_allclose(direction.forest_proba(model, Xt), hgb.predict_proba(Xt), atol=1e-10)


def test_shipped_models_load_and_give_probabilities():
    models = direction.load_models()
    for name, feats in direction.VARIANTS.items():
        assert list(models[name]["features"]) == list(feats)
    assert not [k for k in models if k.startswith("ratio_")]  # the lr-ratio forests are no longer shipped
    y = 0.5 + 2.0 * np.exp(-np.arange(300) / 40) + 0.02 * np.random.default_rng(1).standard_normal(300)
    g, u = np.exp(-np.arange(300) / 100), np.full(300, 1e-3)
    al = 0.05 + 0.3 * np.random.default_rng(2).standard_normal(300)
    for args, want in (((y,), "loss_only"), ((y, g), "with_gn"), ((y, None, None, u), "loss_ur"),
                       ((y, g, None, u), "with_ur"), ((y, None, None, u, al), "loss_ur_al"),
                       ((y, g, None, u, al), "with_al")):
        p, name = direction.predict(direction.shape_features(*args))
        assert name == want and set(p) == set(direction.CLASSES) and sum(p.values()) == pytest.approx(1.0)


def test_shipped_model_matches_its_manifest():
    """The manifest names what the model was fitted on and holds a hash of every array: the shipped file is that one
    (``fit_direction.py --check`` refits and compares the same hashes)."""
    import hashlib
    import json
    import os

    with open(direction.MODEL_PATH.replace(".npz", ".json")) as f:
        manifest = json.load(f)
    assert manifest["check"] == "python benchmarks/doctor/fit_direction.py --check" and manifest["seeds"] == [0, 1, 2, 3]
    with np.load(direction.MODEL_PATH) as d:
        got = {k: hashlib.sha256(f"{d[k].dtype.str}{d[k].shape}".encode() + np.ascontiguousarray(d[k]).tobytes())
               .hexdigest() for k in d.files}
    assert got == manifest["arrays"] and os.path.basename(direction.MODEL_PATH) == manifest["file"]


def test_shape_features_are_scale_free():
    rng = np.random.default_rng(2)
    y = 0.4 + 2.0 * np.exp(-np.arange(500) / 80) + 0.05 * rng.standard_normal(500)
    g = np.exp(0.1 * rng.standard_normal(500)) * (1 + np.arange(500) / 300)
    u = 1e-3 * np.exp(0.2 * rng.standard_normal(500))
    a = direction.shape_features(y, g, None, u)
    b = direction.shape_features(37.0 * y, 0.01 * g, None, u)
    assert a.keys() == b.keys() and len(a) == len(direction.VARIANTS["with_ur"])
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-9), k
    # the update ratio is dimensionless: its level is a feature (10x larger updates: +1 in log10), its shape not
    c = direction.shape_features(y, g, None, 10 * u)
    assert c["ur_level"] == pytest.approx(a["ur_level"] + 1) and c["ur_late"] == pytest.approx(a["ur_late"] + 1)
    assert c["ur_change"] == pytest.approx(a["ur_change"]) and c["ur_cv"] == pytest.approx(a["ur_cv"])
    assert "ur_level" not in direction.shape_features(y, g, None, u[:100])  # a misaligned column is not read
    assert direction.shape_features(y[:20]) is None
    assert direction.shape_features(np.r_[y[:100], np.nan]) is None


def test_gradient_alignment_features_in_closed_form():
    y = 0.4 + 2.0 * np.exp(-np.arange(300) / 80)
    # aligned (0.3) for the first 100 steps, then overshooting (-0.1): means, shares and the crossing are exact
    al = np.where(np.arange(300) < 100, 0.3, -0.1)
    f = direction.shape_features(y, grad_alignment=al)
    assert set(direction.AL_FEATURES) <= f.keys()
    assert f["al_early"] == pytest.approx(0.3) and f["al_late"] == pytest.approx(-0.1)
    assert f["al_mean"] == pytest.approx((100 * 0.3 - 200 * 0.1) / 300)
    assert f["al_change"] == pytest.approx(-0.4) and f["al_late_pos"] == 0.0
    assert f["al_second"] == pytest.approx(0.3)  # steps 30..99
    # the smoothed alignment (EMA with beta 0.9 from 0.3) turns negative once 0.4 * 0.9^k < 0.1: k = 14 steps later
    k = int(np.ceil(np.log(0.25) / np.log(0.9)))
    assert f["al_cross"] == pytest.approx((99 + k) / 300)
    assert f["al_late_z"] == pytest.approx(-np.log1p(0.1 / (1e-6 / 10)))  # no spread: floored at 1e-6
    assert direction.shape_features(y, grad_alignment=np.full(300, 0.2))["al_cross"] == 1.0  # never overshot
    # NaNs (the first step has no previous update) are skipped; a column of another length is not read
    g = direction.shape_features(y, grad_alignment=np.r_[np.nan, al[1:]])
    assert g["al_mean"] == pytest.approx(np.mean(al[1:]))
    assert "al_mean" not in direction.shape_features(y, grad_alignment=al[:100])


def _softmax_sgd_curves(lrs, steps=300, batch=32, seed=0):
    """Real training curves: softmax regression on 4 noisy Gaussian classes in 20-d, plain SGD, one per lr."""
    rng = np.random.default_rng(seed)
    n, d, k = 3000, 20, 4
    centers = rng.standard_normal((k, d)) * 0.6
    labels = rng.integers(0, k, n)
    x = centers[labels] + rng.standard_normal((n, d))
    flip = rng.random(n) < 0.15
    labels[flip] = rng.integers(0, k, flip.sum())
    x = (x - x.mean(0)) / x.std(0) * 3.0  # badly scaled inputs: a wide range of lrs is meaningful
    out = {}
    for lr in lrs:
        w, b = np.zeros((d, k)), np.zeros(k)
        shuffle = np.random.default_rng(seed + 1)
        order, pos = shuffle.permutation(n), 0
        losses = np.empty(steps)
        for t in range(steps):
            if pos + batch > n:  # a new epoch: reshuffle
                order, pos = shuffle.permutation(n), 0
            idx = order[pos:pos + batch]
            pos += batch
            z = x[idx] @ w + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            losses[t] = -np.log(p[np.arange(batch), labels[idx]] + 1e-300).mean()
            p[np.arange(batch), labels[idx]] -= 1.0
            w -= lr * x[idx].T @ p / batch
            b -= lr * p.mean(0)
        out[lr] = losses
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_real_sgd_curves_far_from_the_best_lr_never_get_the_wrong_direction(seed):
    # an independent family of runs (not in the fitting set): the grid's best lr by final loss is the reference
    grid = 2.0 ** np.arange(-14, 3)
    curves = _softmax_sgd_curves(grid, seed=seed)
    finals = {lr: c[-30:].mean() if np.isfinite(c).all() else np.inf for lr, c in curves.items()}
    best = min(finals, key=finals.get)
    low, high = [lr for lr in grid if lr <= best / 16], [lr for lr in grid if lr >= 128 * best]
    assert low and high, "the grid must reach well below and well above the best lr"

    def action(lr):
        return diagnose(Curve(np.arange(300), curves[lr], np.full(300, lr))).recommendation.action

    low_calls, high_calls = [action(lr) for lr in low], [action(lr) for lr in high]
    assert "lower" not in low_calls and "raise" not in high_calls, (best, low_calls, high_calls)  # no harm
    assert low_calls.count("raise") >= len(low) - 1 and high_calls.count("lower") >= len(high) - 1
    assert action(best) != "raise"


def test_a_logged_schedule_enters_by_its_shape_and_use_shape_false_is_the_rules():
    t = np.arange(400)
    y = 0.5 + 2.0 * np.exp(-t / 50) + 0.03 * np.random.default_rng(3).standard_normal(400)
    warm = 20
    lr = np.where(t < warm, 1e-3 * (0.1 + 0.9 * t / warm),
                  1e-3 * (0.1 + 0.45 * (1 + np.cos(np.pi * (t - warm) / (400 - warm)))))
    f = direction.shape_features(y, lrs=lr)
    assert f["lr_warm"] == pytest.approx(warm / 400) and f["lr_end"] == pytest.approx(np.log(np.median(lr[-40:]) / 1e-3))
    const = direction.shape_features(y, lrs=np.full(400, 1e-3))
    assert const["lr_end"] == 0.0 and const["lr_warm"] == 0.0
    assert direction.shape_features(y, lrs=37 * lr) == f  # the lr's value never enters, only its shape
    d = diagnose(Curve(t, y, lr))
    assert "p_good" in d.stats
    assert "p_good" not in diagnose(Curve(t, y, lr), use_shape=False).stats


def test_long_runs_are_read_at_evenly_spaced_points():
    n = 3000
    t = np.arange(n)
    rng = np.random.default_rng(4)
    y = 0.5 + 1.5 * np.exp(-t / 900) + 0.05 * rng.standard_normal(n)
    d = diagnose(Curve(t, y, np.full(n, 1e-3)))
    idx = np.unique(np.linspace(0, n - 1, 300).round().astype(np.int64))
    p, _ = direction.predict(direction.shape_features(y[idx]))
    assert {k: d.stats[f"p_{k}"] for k in p} == pytest.approx(p)
    every, _ = direction.predict(direction.shape_features(y))
    d_all = diagnose(Curve(t, y, np.full(n, 1e-3)), shape_points=0)
    assert {k: d_all.stats[f"p_{k}"] for k in every} == pytest.approx(every)


def test_bad_shape_settings_and_a_missing_model_file_are_clear_errors(monkeypatch, tmp_path):
    from lrkit.errors import LrkitError

    t = np.arange(100)
    c = Curve(t, 1.0 + np.exp(-t / 20))
    with pytest.raises(LrkitError, match="shape_points must be a whole number >= 0"):
        diagnose(c, shape_points=-3)
    with pytest.raises(LrkitError, match=r"shape_confidence is a share .* \[0, 1\]"):
        diagnose(c, shape_confidence=1.5)
    with pytest.raises(LrkitError, match=r"diverged is a share .* \[0, 1\]"):
        diagnose(c, diverged=-0.1)
    from lrkit.doctor import Monitor

    with pytest.raises(LrkitError, match="shape_points must be a whole number >= 0"):
        Monitor(shape_points=-3)  # the live doctor checks the same settings
    monkeypatch.setattr(direction, "MODEL_PATH", str(tmp_path / "gone.npz"))
    direction.set_models(None)
    try:
        with pytest.raises(LrkitError, match="missing from this install: reinstall lrkit"):
            diagnose(c)
        assert diagnose(c, use_shape=False).verdict  # the rules alone still work
    finally:
        monkeypatch.undo()
        direction.set_models(None)


def _constant_models(p_too_high, p_good, p_too_low):
    """Forests of one leaf (the export format of :func:`direction.export_forest`): always the same vote."""
    def leaf(features, value, classes):
        return {"features": np.array(list(features)), "classes": np.array(classes), "feature": np.array([-1], np.int16),
                "threshold": np.zeros(1), "left": np.array([-1], np.int32), "right": np.array([-1], np.int32),
                "value": np.array([value], dtype=np.float64), "roots": np.array([0], np.int32)}
    return {name: leaf(feats, [p_too_high, p_good, p_too_low], direction.CLASSES)
            for name, feats in direction.VARIANTS.items()}


@pytest.mark.parametrize("vote, action", [((0.05, 0.9, 0.05), "keep"), ((0.05, 0.05, 0.9), "raise"),
                                          ((0.9, 0.05, 0.05), "lower"), ((0.3, 0.6, 0.1), "keep"),
                                          ((0.5, 0.1, 0.4), "keep")])
def test_the_shape_model_advises_at_most_3x_and_only_where_the_rules_see_no_evidence(vote, action):
    t = np.arange(300)
    y = 0.5 + 2.0 * np.exp(-t / 40) + 0.02 * np.random.default_rng(4).standard_normal(300)
    direction.set_models(_constant_models(*vote))
    try:
        d = diagnose(Curve(t, y))
        assert d.recommendation.action == action  # a vote under shape_confidence (0.65) advises nothing
        if action != "keep":
            assert d.recommendation.certainty == "likely" and 1 / 3 <= d.recommendation.factor <= 3
            assert "lrkit search" in d.recommendation.check
        z = y.copy()
        z[150:] = np.nan  # direct evidence (a divergence) is never overruled by the shape model
        assert diagnose(Curve(t, z)).recommendation.factor == pytest.approx(0.1)
        # a run unlike those the model was fitted on (20,000 steps logged every 100) is not put to it
        long = diagnose(Curve(np.arange(300) * 100, y))
        assert long.recommendation.action == "keep" and not long.shape
        assert any("shape model was not asked" in n for n in long.notes)
    finally:
        direction.set_models(None)


def test_profile_channels_in_closed_form():
    n = 301
    t = np.arange(n, dtype=np.float64)
    y = 2.0 * np.exp(-t / 100)
    g, u = np.full(n, 3.0), np.full(n, 1e-2)
    al = np.where(t < 150, 0.5, -0.25)
    lrs = np.minimum(1.0, (t + 1) / 30) * 0.1
    p = direction.profile(y, g, lrs, u, al)
    idx = np.linspace(0, n - 1, direction.SEQ_POINTS).round().astype(int)
    assert p.shape == (len(direction.SEQ_CHANNELS), direction.SEQ_POINTS)
    start = np.median(y[:6])
    np.testing.assert_allclose(p[0], np.log(y[idx] / start))  # the loss over its start, log
    np.testing.assert_allclose(p[1], 0.0)  # a constant gradient norm: its start
    np.testing.assert_allclose(p[2], (np.log10(1e-2) + 3) / 2)  # 10x the usual 1e-3 update ratio: 0.5
    np.testing.assert_allclose(p[3], al[idx])
    np.testing.assert_allclose(p[4], lrs[idx] / 0.1)
    # scale-free in the loss and the gradient norm; missing side signals are zeros, a missing lr constant
    np.testing.assert_allclose(direction.profile(7.0 * y, 0.1 * g, lrs, u, al), p, atol=1e-12)
    bare = direction.profile(y)
    np.testing.assert_allclose(bare[0], p[0])
    assert (bare[1:4] == 0).all() and (bare[4] == 1).all()
    # a loss of 0 (saturated float32 cross-entropy) is floored at e^-8 of the start; NaN, negative or short: none
    z = y.copy()
    z[200:] = 0.0
    assert direction.profile(z)[0].min() == -8.0
    for bad in (np.r_[y[:100], np.nan, y[:100]], y - 1.0, y[:20]):
        assert direction.profile(bad) is None


def _seq_reference(model, prof):
    """The sequence model's forward pass written with torch's own conv1d, GELU (tanh) and linear layers."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z = torch.tensor(prof * model["channels"][:, None])[None]
    for i, stride in enumerate(model["strides"]):
        w = torch.tensor(model[f"conv{i}_w"])
        z = F.gelu(F.conv1d(z, w, torch.tensor(model[f"conv{i}_b"]), stride=int(stride), padding=w.shape[2] // 2),
                   approximate="tanh")
    h = torch.cat([z.mean(-1), z.amax(-1)], 1)
    h = F.gelu(F.linear(h, torch.tensor(model["fc0_w"]), torch.tensor(model["fc0_b"])), approximate="tanh")
    return torch.softmax(F.linear(h, torch.tensor(model["fc1_w"]), torch.tensor(model["fc1_b"])), 1)[0].numpy()


def test_numpy_sequence_model_matches_torch():
    rng = np.random.default_rng(7)
    widths, model = (5, 6, 8, 8), {"channels": np.array([1.0, 1.0, 0.0, 1.0, 1.0])}
    for i in range(3):
        model[f"conv{i}_w"] = rng.standard_normal((widths[i + 1], widths[i], 5)) * 0.5
        model[f"conv{i}_b"] = rng.standard_normal(widths[i + 1]) * 0.1
    model.update(fc0_w=rng.standard_normal((10, 16)), fc0_b=rng.standard_normal(10), fc1_w=rng.standard_normal((3, 10)),
                 fc1_b=rng.standard_normal(3))
    for strides in ((1, 2, 2), (2, 2, 2)):
        model["strides"] = np.array(strides)
        for n in (300, 299, 100, 99):  # even and odd lengths: the strided windows line up with torch's
            prof = rng.standard_normal((5, n))
            np.testing.assert_allclose(direction.seq_proba(model, prof), _seq_reference(model, prof), atol=1e-12)


def test_shipped_sequence_models_read_their_channels_and_share_the_vote():
    models = direction.load_models()
    for name in direction.SEQ_VARIANTS:
        np.testing.assert_array_equal(models["seq_" + name]["channels"], direction.seq_channels(name))
    assert direction.seq_channels("with_ur").tolist() == [True, True, True, False, True]
    rng = np.random.default_rng(3)
    y = 0.5 + 2.0 * np.exp(-np.arange(300) / 40) + 0.02 * rng.standard_normal(300)
    g, u, al = np.exp(-np.arange(300) / 100), np.full(300, 1e-3), 0.05 + 0.3 * rng.standard_normal(300)
    f, prof = direction.shape_features(y, g, None, u, al), direction.profile(y, g, None, u, al)
    trees, name = direction.predict(f)
    both, _ = direction.predict(f, prof)
    seq = direction.seq_proba(models["seq_" + name], prof)
    w = direction.SEQ_WEIGHT
    assert name == "with_al" and both == pytest.approx({c: (1 - w) * trees[c] + w * s for c, s in zip(direction.CLASSES, seq)})
    # the loss alone has no sequence model: the trees decide
    assert direction.predict(direction.shape_features(y), direction.profile(y)) == direction.predict(
        direction.shape_features(y))
