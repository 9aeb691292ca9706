"""Which way the lr is off, from the shape of one training curve: a small fitted model over robust curve statistics.

A run whose loss neither blew up nor spiked can still have its lr 4x too high (it drops fast, then sits on a noise
floor) or 10x too low (it is still crawling down at the end). :func:`shape_features` measures the shape with
dimensionless, scale-free statistics (time as a fraction of the run, loss relative to its own descent and noise;
where logged, the gradient norm's trend, the lr schedule's shape, the update-to-weight ratio's level and the gradient
alignment's sign and trend);
:func:`predict` turns them into probabilities of (too high, good, too low) with small gradient-boosted trees fitted on the
labelled real curves of ``benchmarks/doctor`` (``fit_direction.py --write`` writes ``direction_model.npz``) and
evaluated here in numpy: no scikit-learn at run time.
"""

from __future__ import annotations

import math
import os

import numpy as np

from lrkit.curve import ema, robust_std
from lrkit.errors import LrkitError

CLASSES = ("too_high", "good", "too_low")
LOSS_FEATURES = ("drop", "log_t50", "log_t90", "t_fast", "late3", "late_z", "late_z_sq", "log_noise_span",
                 "log_noise_level", "decel", "rise", "acf1", "tail_slope_z", "level_z", "early_peak", "half2_z", "wander",
                 "noise_change", "first_share", "first_drop", "lr_end", "lr_warm")
GN_FEATURES = ("gn_change", "gn_tail_trend", "gn_tail_cv", "gn_early_peak")
# the update-to-weight ratio ||w_t+1 - w_t|| / ||w_t||: dimensionless, so its level (log10) is comparable across runs
UR_FEATURES = ("ur_level", "ur_peak", "ur_early", "ur_late", "ur_change", "ur_cv")
# the gradient alignment cos(-g_t, w_t - w_t-1) (the sign of the hypergradient: > 0 the last step still descends,
# < 0 it overshot): a cosine, so its mean and the share of positive steps mean the same in any run
AL_FEATURES = ("al_early", "al_mean", "al_late", "al_change", "al_late_pos", "al_late_z", "al_cross", "al_second")
# the model variants, most signals first: the doctor uses the first whose features a run has
VARIANTS = {"with_al": LOSS_FEATURES + GN_FEATURES + UR_FEATURES + AL_FEATURES,
            "loss_ur_al": LOSS_FEATURES + UR_FEATURES + AL_FEATURES,
            "with_ur": LOSS_FEATURES + GN_FEATURES + UR_FEATURES, "loss_ur": LOSS_FEATURES + UR_FEATURES,
            "with_gn": LOSS_FEATURES + GN_FEATURES, "loss_only": LOSS_FEATURES}
SIGNALS = {"with_al": "loss, gradient norm, update/weight ratio and gradient alignment",
           "loss_ur_al": "loss, update/weight ratio and gradient alignment",
           "with_ur": "loss, gradient norm and update/weight ratio", "loss_ur": "loss and update/weight ratio",
           "with_gn": "loss and gradient norm", "loss_only": "loss"}


def sample_index(n: int, points: int) -> np.ndarray:
    """The indices at which the shape model reads a curve of ``n`` points: ``points`` evenly spaced ones when the curve
    is longer than twice that (the model was fitted on runs of 300 steps; single values keep their batch noise, where
    bin means would hide it), else every point (also for ``points`` 0)."""
    if points and n > 2 * points:
        return np.unique(np.linspace(0, n - 1, int(points)).round().astype(np.int64))
    return np.arange(n)


def _level(y: np.ndarray, i0: int, i1: int) -> float:
    return float(np.median(y[max(i0, 0): max(i1, i0 + 1)]))


def _valid(a: np.ndarray | None, shape: tuple[int, ...],
           positive: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """A side signal as floats and where it is usable (finite, and > 0 for a ``positive`` one); None when it is
    missing, not aligned with the loss, or has fewer than 24 usable values."""
    if a is None or np.shape(a) != shape:
        return None
    v = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
    return (v, ok) if ok.sum() >= 24 else None


def _log_series(a: np.ndarray | None, shape: tuple[int, ...], log) -> tuple[np.ndarray, np.ndarray] | None:
    """``log`` of a side signal's finite positive values, and where they are (None as :func:`_valid`)."""
    if (valid := _valid(a, shape)) is None:
        return None
    v, ok = valid
    return log(v[ok]), ok


def shape_features(loss: np.ndarray, grad_norm: np.ndarray | None = None, lrs: np.ndarray | None = None,
                   update_ratio: np.ndarray | None = None,
                   grad_alignment: np.ndarray | None = None) -> dict[str, float] | None:
    """Dimensionless statistics of a finite loss curve (and its gradient norm, lr, update-to-weight ratio and gradient
    alignment, if given); None below 24 points. Time is measured as a fraction of the run; loss changes relative to the run's own
    descent or batch noise; the lr only by its shape (the end against the peak, where the peak is), never by its
    value; the update-to-weight ratio by its level (log10), which means the same in any run."""
    y = np.asarray(loss, dtype=np.float64)
    m = len(y)
    if m < 24 or not np.isfinite(y).all():
        return None
    k = max(3, m // 50)
    init = _level(y, 0, k)
    tail_n = max(3, m // 10)
    final = _level(y, m - tail_n, m)
    total = init - final
    sm = ema(y, 1.0 - 1.0 / max(5.0, m / 30))
    # batch noise from first differences (robust to the trend), its standard error over a median of n points
    step_noise = max(robust_std(np.diff(y)) / math.sqrt(2.0), 1e-12 * max(abs(final), 1.0))

    def se(n: int) -> float:
        return 1.2533 * step_noise / math.sqrt(max(n, 1))

    f: dict[str, float] = {}
    f["drop"] = float(np.clip(total / abs(init), -1.0, 1.0)) if init else 0.0
    pos = max(total, 1e-12 * max(abs(init), 1.0))
    # time to 50% / 90% of the total descent (smoothed), and the share of it made within the first 5% of the run
    below50 = np.nonzero(sm <= init - 0.5 * pos)[0]
    below90 = np.nonzero(sm <= init - 0.9 * pos)[0]
    t50 = (float(below50[0]) + 1) / m if below50.size and total > 0 else 1.0
    t90 = (float(below90[0]) + 1) / m if below90.size and total > 0 else 1.0
    f["log_t50"], f["log_t90"] = math.log(t50), math.log(t90)
    f["t_fast"] = float(np.clip((init - _level(y, m // 20, m // 20 + k)) / pos, -1.0, 2.0)) if total > 0 else 0.0
    # descent in the last third (median levels of the middle and the last third)
    third = max(3, m // 3)
    late = _level(y, m - 2 * third, m - third) - _level(y, m - third, m)
    f["late3"] = float(np.clip(late / pos, -1.0, 1.0)) if total > 0 else 0.0
    lz = late / (se(third) * math.sqrt(2.0))
    f["late_z"] = float(np.sign(lz) * math.log1p(abs(lz)))
    f["late_z_sq"] = f["late_z"] ** 2
    # noise around the smoothed trend over the second half, relative to the descent and to the level
    resid = y[m // 2:] - sm[m // 2:]
    noise = max(robust_std(resid), 1e-12 * max(abs(final), 1.0))
    f["log_noise_span"] = math.log(noise / pos)
    f["log_noise_level"] = math.log(noise / max(abs(final), 1e-12))
    # end slope relative to the start slope (robust: slopes of median levels)
    s0 = (init - _level(y, third - k, third)) / third
    s1 = late / third
    f["decel"] = float(np.clip(s1 / s0, -1.0, 1.0)) if s0 > 0 else 0.0
    best = float(np.min(sm[m // 10:]))
    f["rise"] = float(np.clip((final - best) / pos, 0.0, 2.0))
    # lag-1 autocorrelation of the de-trended tail (oscillation across steps is negative, slow wander positive)
    d = resid - np.median(resid)
    den = float(np.dot(d, d))
    f["acf1"] = float(np.dot(d[1:], d[:-1]) / den) if den > 0 else 0.0
    # slope over the last 20% in standard errors (still falling at the very end?)
    w = max(6, m // 5)
    x = np.arange(w, dtype=np.float64)
    tail = y[-w:]
    slope = float(np.polyfit(x, tail, 1)[0]) if w >= 3 else 0.0
    slope_se = step_noise / math.sqrt(float(np.sum((x - x.mean()) ** 2)))
    z = -slope / slope_se
    f["tail_slope_z"] = float(np.sign(z) * math.log1p(abs(z)))
    # the final level against the initial one in standard errors (a crawl goes down significantly, churn goes up)
    lz = (init - final) / math.sqrt(se(k) ** 2 + se(tail_n) ** 2)
    f["level_z"] = float(np.sign(lz) * math.log1p(abs(lz)))
    # early rise: the highest 5-point running median of the first 30% over the initial level (log)
    early = y[: max(5, int(0.3 * m))]
    med5 = np.median(np.lib.stride_tricks.sliding_window_view(early, 5), axis=1)
    f["early_peak"] = float(np.clip((np.max(med5) - init) / max(abs(init), 1e-12), 0.0, 10.0))
    # descent over the second half in standard errors (first vs last quarter of the second half)
    q = max(3, m // 8)
    hz = (_level(y, m // 2, m // 2 + q) - final) / math.sqrt(se(q) ** 2 + se(tail_n) ** 2)
    f["half2_z"] = float(np.sign(hz) * math.log1p(abs(hz)))
    # wander: variance of 10-step block means of the linearly de-trended second half against what independent
    # batch noise would give (log; ~0 for batch noise, > 0 when the weights random-walk at a too-high lr)
    h = y[m // 2:]
    xh = np.arange(len(h), dtype=np.float64)
    r = h - np.polyval(np.polyfit(xh, h, 1), xh)
    b = 10 if len(r) >= 40 else max(2, len(r) // 4)
    blocks = r[: len(r) // b * b].reshape(-1, b).mean(axis=1)
    v1 = float(np.var(np.diff(r))) / 2.0
    f["wander"] = math.log(max(float(np.var(blocks)) * b, 1e-300) / max(v1, 1e-300)) if v1 > 0 else 0.0
    # batch noise at the end against the start (log): it shrinks with the loss at a good lr
    n0 = robust_std(np.diff(y[: max(8, m // 5)])) / math.sqrt(2.0)
    n1 = robust_std(np.diff(y[-max(8, m // 5):])) / math.sqrt(2.0)
    f["noise_change"] = math.log(max(n1, 1e-300) / max(n0, 1e-300)) if n0 > 0 and n1 > 0 else 0.0
    # the very first logged loss (before or right after the first updates): a too-high lr can make the whole descent
    # within the first few points and then bounce on a high floor, which a median over the first points hides
    top = float(y[0])
    total0 = top - final
    f["first_share"] = float(np.clip((top - init) / total0, -1.0, 2.0)) if total0 > 0 else 0.0
    f["first_drop"] = float(np.clip(total0 / abs(top), -1.0, 1.0)) if top else 0.0
    # the schedule's shape: log of the final lr over the peak (0: constant) and where the peak is (0: no warmup)
    f["lr_end"], f["lr_warm"] = 0.0, 0.0
    if lrs is not None:
        lr = np.asarray(lrs, dtype=np.float64)
        if lr.shape == y.shape and np.isfinite(lr).all() and lr.max() > 0:
            f["lr_end"] = math.log(max(float(np.median(lr[-tail_n:])), 1e-300) / float(lr.max()))
            f["lr_warm"] = float(np.argmax(lr >= 0.999 * lr.max())) / m
    side = _log_series(grad_norm, y.shape, np.log)
    if side is not None:
        lg = side[0]
        n = len(lg)
        kk = max(3, n // 10)
        f["gn_change"] = float(np.median(lg[-kk:]) - np.median(lg[:kk]))
        half = lg[n // 2:]
        f["gn_tail_trend"] = float(np.polyfit(np.linspace(0.0, 1.0, len(half)), half, 1)[0])
        f["gn_tail_cv"] = robust_std(np.diff(half)) / math.sqrt(2.0)
        f["gn_early_peak"] = float(np.max(lg[: max(kk, n // 5)]) - np.median(lg[:kk]))
    side = _log_series(update_ratio, y.shape, np.log10)
    if side is not None:
        lu, ok = side
        n = len(lu)
        kk = max(3, n // 10)
        f["ur_level"] = float(np.median(lu))
        peak = np.ones(n, dtype=bool)  # the steps at (near) the peak lr, where a schedule is logged
        if lrs is not None and np.shape(lrs) == y.shape and np.isfinite(lrs).all() and np.max(lrs) > 0:
            near = (np.asarray(lrs) >= 0.9 * np.max(lrs))[ok]
            peak = near if near.sum() >= 3 else peak
        f["ur_peak"] = float(np.median(lu[peak]))
        f["ur_early"] = float(np.median(lu[:kk]))
        f["ur_late"] = float(np.median(lu[-max(kk, n // 5):]))
        f["ur_change"] = f["ur_late"] - f["ur_early"]
        f["ur_cv"] = robust_std(np.diff(lu[n // 2:])) / math.sqrt(2.0)
    if grad_alignment is not None:
        al = np.asarray(grad_alignment, dtype=np.float64)
        a = al[np.isfinite(al)] if al.shape == y.shape else al[:0]
        if len(a) >= 24:
            n = len(a)
            late = a[-max(8, n // 3):]
            f["al_early"] = float(np.mean(a[: max(3, n // 10)]))
            f["al_mean"] = float(np.mean(a))
            f["al_late"] = float(np.mean(late))
            f["al_change"] = f["al_late"] - f["al_early"]
            f["al_late_pos"] = float(np.mean(late > 0))
            z = f["al_late"] / (max(float(np.std(late)), 1e-6) / math.sqrt(len(late)))  # its mean in standard errors
            f["al_late_z"] = float(np.sign(z) * math.log1p(abs(z)))
            # when the smoothed alignment first turned negative (steps overshooting on average), as a share of the run
            sm_a = ema(a, 1.0 - 1.0 / max(5.0, n / 30))
            neg = np.nonzero(sm_a[3:] < 0)[0]
            f["al_cross"] = (float(neg[0]) + 3) / n if neg.size else 1.0
            f["al_second"] = float(np.mean(a[max(3, n // 10): max(6, n // 3)]))
    return f


SEQ_POINTS = 300  # the sequence model reads a run at this many evenly spaced points
SEQ_CHANNELS = ("loss", "grad_norm", "update_ratio", "grad_alignment", "lr")
SEQ_WEIGHT = 0.5  # the sequence model's share of the direction vote; the boosted trees have the rest
# the variants with a sequence model: those reading the update ratio (task-grouped cross-validation on the labelled
# runs: it helped there, and cost too-low accuracy on the loss alone and on the loss and gradient norm)
SEQ_VARIANTS = ("with_al", "with_ur")


def seq_channels(variant: str) -> np.ndarray:
    """Which :data:`SEQ_CHANNELS` the sequence model of ``variant`` reads (the others are zero): the loss and the lr
    always, the side signals its feature set reads."""
    feats = VARIANTS[variant]
    return np.array([True, GN_FEATURES[0] in feats, UR_FEATURES[0] in feats, AL_FEATURES[0] in feats, True])


def profile(loss: np.ndarray, grad_norm: np.ndarray | None = None, lrs: np.ndarray | None = None,
            update_ratio: np.ndarray | None = None, grad_alignment: np.ndarray | None = None) -> np.ndarray | None:
    """A run as the sequence model reads it: (5 channels, SEQ_POINTS) at evenly spaced points of a finite loss curve
    of 24 points or more, none negative (else None). Channels: log of the loss over its start (the median of the
    first 6, or their mean if that is 0), log of the gradient norm over its start, (log10 of the update-to-weight
    ratio + 3) / 2, the gradient alignment, the lr over its peak; each clipped, a missing or unusable side signal all
    zeros (a missing lr: constant, ones)."""
    y = np.asarray(loss, dtype=np.float64)
    n = len(y)
    if n < 24 or not np.isfinite(y).all() or y.min() < 0 or not y[:6].max() > 0:
        return None
    idx = np.linspace(0, n - 1, SEQ_POINTS).round().astype(np.int64)
    out = np.zeros((len(SEQ_CHANNELS), SEQ_POINTS))
    start = float(np.median(y[:6])) or float(np.mean(y[:6]))
    out[0] = np.clip(np.log(np.maximum(y[idx], start * math.exp(-8.0)) / start), -8.0, 3.0)  # a loss of 0: -8
    out[4] = 1.0
    if (gn := _sampled(grad_norm, y.shape, idx)) is not None:
        out[1] = np.clip(np.log(gn[0] / np.median(gn[1][:6])), -8.0, 8.0)
    if (ur := _sampled(update_ratio, y.shape, idx)) is not None:
        out[2] = np.clip((np.log10(ur[0]) + 3.0) / 2.0, -3.0, 3.0)
    if (al := _sampled(grad_alignment, y.shape, idx, positive=False)) is not None:
        out[3] = np.clip(al[0], -1.0, 1.0)
    if (lr := _sampled(lrs, y.shape, idx)) is not None:
        out[4] = lr[0] / lr[0].max()
    return out


def _sampled(a: np.ndarray | None, shape: tuple[int, ...], idx: np.ndarray,
             positive: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """A side signal at ``idx``, its gaps (not usable as :func:`_valid` says, such as the first step's) filled by the
    median of its usable values (0 for a signed one), and those usable values; None as :func:`_valid`."""
    if (valid := _valid(a, shape, positive)) is None:
        return None
    v, ok = valid
    return np.where(ok, v, np.median(v[ok]) if positive else 0.0)[idx], v[ok]


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """A 1-d convolution as torch computes it (cross-correlation; kernel k, padding k // 2): (C, L) -> (O, L')."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (k // 2, k // 2)))
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=1)[:, ::stride]  # (C, L', k)
    return np.einsum("clk,ock->ol", win, w) + b[:, None]


def seq_proba(model: dict[str, np.ndarray], prof: np.ndarray) -> np.ndarray:
    """Class probabilities (too_high, good, too_low) of the sequence model (three 1-d convolutions with GELU, the
    mean and max over time, two dense layers; fitted by ``fit_direction.py``) for one :func:`profile`."""
    z = prof * model["channels"][:, None]
    for i, stride in enumerate(model["strides"]):
        z = _gelu(_conv1d(z, model[f"conv{i}_w"], model[f"conv{i}_b"], int(stride)))
    h = _gelu(model["fc0_w"] @ np.concatenate([z.mean(axis=1), z.max(axis=1)]) + model["fc0_b"])
    raw = model["fc1_w"] @ h + model["fc1_b"]
    e = np.exp(raw - raw.max())
    return e / e.sum()


def export_forest(model, features: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """The arrays of a fitted scikit-learn tree ensemble, for :func:`forest_proba` (no sklearn needed to predict):
    every tree's nodes stacked, children as global indices (-1 at leaves). A random forest (classifier or regressor)
    keeps its leaves' class shares or mean target; gradient-boosted trees (``HistGradientBoostingClassifier``) keep
    each leaf's score in its class's column, the starting scores (``baseline``) and where a missing value goes."""
    if hasattr(model, "_predictors"):
        return _export_boosting(model, features)
    regressor = not hasattr(model, "classes_")
    feat, thr, left, right, value, roots = [], [], [], [], [], []
    off = 0
    for est in model.estimators_:
        t = est.tree_
        n = t.node_count
        leaf = t.children_left < 0
        roots.append(off)
        feat.append(np.where(leaf, -1, t.feature))
        thr.append(t.threshold)
        left.append(np.where(leaf, -1, t.children_left + off))
        right.append(np.where(leaf, -1, t.children_right + off))
        v = t.value[:, 0, :].astype(np.float64)
        value.append(v if regressor else v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300))
        off += n
    classes = ["value"] if regressor else [CLASSES[int(c)] for c in model.classes_]
    return {"features": np.array(list(features)), "classes": np.array(classes),
            "feature": np.concatenate(feat).astype(np.int16), "threshold": np.concatenate(thr),
            "left": np.concatenate(left).astype(np.int32), "right": np.concatenate(right).astype(np.int32),
            "value": np.concatenate(value), "roots": np.array(roots, dtype=np.int32)}


def _export_boosting(model, features: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """:func:`export_forest` for a fitted ``HistGradientBoostingClassifier`` (numeric features only)."""
    per_iter = model.n_trees_per_iteration_  # one tree per class and round (one in all with two classes)
    feat, thr, left, right, miss, value, roots = [], [], [], [], [], [], []
    off = 0
    for trees in model._predictors:
        for j, tree in enumerate(trees):
            nd = tree.nodes
            if nd["is_categorical"].any():
                raise ValueError("categorical splits are not supported")
            leaf = nd["is_leaf"].astype(bool)
            roots.append(off)
            feat.append(np.where(leaf, -1, nd["feature_idx"]))
            thr.append(nd["num_threshold"].astype(np.float64))
            left.append(np.where(leaf, -1, nd["left"].astype(np.int64) + off))
            right.append(np.where(leaf, -1, nd["right"].astype(np.int64) + off))
            miss.append(nd["missing_go_to_left"].astype(bool))
            v = np.zeros((len(nd), per_iter))
            v[:, j] = np.where(leaf, nd["value"], 0.0)
            value.append(v)
            off += len(nd)
    return {"features": np.array(list(features)), "classes": np.array([CLASSES[int(c)] for c in model.classes_]),
            "feature": np.concatenate(feat).astype(np.int16), "threshold": np.concatenate(thr),
            "left": np.concatenate(left).astype(np.int32), "right": np.concatenate(right).astype(np.int32),
            "missing_left": np.concatenate(miss), "value": np.concatenate(value),
            "roots": np.array(roots, dtype=np.int32),
            "baseline": np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)}


def forest_proba(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities for feature rows ``x`` (n, features) -> (n, classes): the mean of a forest's leaf shares,
    or the softmax (two classes: the logistic) of boosted trees' summed scores; for a regressor, the prediction (mean
    of the trees' leaf values) as (n, 1)."""
    boosted = "baseline" in model
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if not boosted:  # scikit-learn's forests compare float32 features with their thresholds: take the same branch
        x = x.astype(np.float32).astype(np.float64)
    feat, thr, left, right = model["feature"], model["threshold"], model["left"], model["right"]
    miss = model["missing_left"] if boosted else None
    out = np.empty((len(x), model["value"].shape[1]))
    for r, row in enumerate(x):
        node = model["roots"].astype(np.int64)
        while True:
            f = feat[node]
            inner = f >= 0
            if not inner.any():
                break
            v = row[np.where(inner, f, 0)]
            go_left = v <= thr[node]
            if miss is not None:
                go_left = np.where(np.isnan(v), miss[node], go_left)
            node = np.where(inner, np.where(go_left, left[node], right[node]), node)
        out[r] = model["value"][node].sum(axis=0) if boosted else model["value"][node].mean(axis=0)
    if not boosted:
        return out
    raw = out + model["baseline"]
    if raw.shape[1] == 1:  # two classes: the score is the log-odds of the second
        p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.c_[1.0 - p1, p1]
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


MODEL_PATH = os.path.join(os.path.dirname(__file__), "direction_model.npz")  # written by fit_direction.py
_MODELS: dict[str, dict[str, np.ndarray]] = {}


def load_models() -> dict[str, dict[str, np.ndarray]]:
    """The shipped models (``direction_model.npz``; what they were fitted on, and how to rebuild them, is in
    ``direction_model.json``): a direction classifier per :data:`VARIANTS` name (``with_al``, ``loss_ur_al``,
    ``with_ur``, ``loss_ur``, ``with_gn``, ``loss_only``: which signals it reads) and a sequence model per
    :data:`SEQ_VARIANTS` name (``seq_`` + name)."""
    if not _MODELS:
        if not os.path.exists(MODEL_PATH):
            raise LrkitError(f"the doctor's shape model {MODEL_PATH} is missing from this install: reinstall lrkit "
                             "(pip install --force-reinstall lrkit), or pass use_shape=False to use the rules alone")
        with np.load(MODEL_PATH) as d:
            for name in [*VARIANTS, *("seq_" + v for v in SEQ_VARIANTS)]:
                _MODELS[name] = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith(name + "/")}
    return _MODELS


def set_models(models: dict[str, dict[str, np.ndarray]] | None) -> None:
    """Use ``models`` (the names of :func:`load_models`, each from :func:`export_forest`) instead of the
    shipped ones, e.g. models fitted without the task being scored; ``None`` goes back to the shipped models."""
    _MODELS.clear()
    if models is not None:
        _MODELS.update(models)


def _evaluate(f: dict[str, float]) -> tuple[np.ndarray, str]:
    """The output of the first classifier (in :data:`VARIANTS` order) whose features ``f`` has, and its name."""
    models = load_models()
    for variant in VARIANTS:
        model = models.get(variant)
        if model and all(str(k) in f for k in model["features"]):
            return forest_proba(model, np.array([[f[str(k)] for k in model["features"]]]))[0], variant
    raise LrkitError("no shape model fits these features: reinstall lrkit, or pass use_shape=False")


def predict(f: dict[str, float], prof: np.ndarray | None = None) -> tuple[dict[str, float], str]:
    """Probabilities of (too_high, good, too_low) for :func:`shape_features` ``f``, and which variant gave them (the
    one that reads the most of the logged signals: see :data:`VARIANTS`); with the run's :func:`profile` ``prof``,
    the boosted trees' vote is averaged with the sequence model's (``SEQ_WEIGHT`` of it)."""
    p, name = _evaluate(f)
    models = load_models()
    classes = [str(c) for c in models[name]["classes"]]
    seq = models.get("seq_" + name)
    if prof is not None and seq:
        q = dict(zip((str(c) for c in seq["classes"]), seq_proba(seq, prof)))
        p = (1.0 - SEQ_WEIGHT) * p + SEQ_WEIGHT * np.array([q[c] for c in classes])
    return {c: float(pi) for c, pi in zip(classes, p)}, name
