"""Fit the doctor's shape model (too high / good / too low from a curve's shape) on lrkit's labelled curves.

Run: ``python benchmarks/doctor/fit_direction.py --write`` rebuilds ``src/lrkit/doctor/direction_model.npz`` and its
manifest ``direction_model.json`` (the sets, seeds, lr grid, fitting settings, library versions and a hash of every
array); ``--check`` refits and compares every array with the shipped file (exit 1 when one differs). The curves of every
set in ``make_curves.FITTING`` are generated first where they are not cached (about 2 hours on one thread). Without
``--no-loto`` (and without ``--check``) it also reports leave-one-task-out accuracy of each classifier.

The model: a classifier per ``direction.VARIANTS`` (which of the gradient norm, the update-to-weight ratio and the
gradient alignment it reads besides the loss), gradient-boosted trees (scikit-learn's
``HistGradientBoostingClassifier``, exported to numpy by ``direction.export_forest``), and a sequence model per
``direction.SEQ_VARIANTS`` (a small 1-d convolutional net over the run's ``direction.profile``, fitted with torch, whose
vote is averaged with the classifier's). The held-out sets (``make_curves.HELD_OUT_SET`` and the earlier ones) are
never read here."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from labelled import load  # noqa: E402

from lrkit.doctor.direction import (  # noqa: E402
    CLASSES,
    SEQ_VARIANTS,
    VARIANTS,
    export_forest,
    forest_proba,
    profile,
    seq_channels,
    seq_proba,
    shape_features,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "src", "lrkit", "doctor", "direction_model.npz")
FOREST = {"n_estimators": 100, "max_depth": 8, "min_samples_leaf": 3, "random_state": 0}  # the ratio regressors
BOOST = {"max_iter": 150, "learning_rate": 0.05, "max_depth": 3, "min_samples_leaf": 20, "random_state": 0}
GOOD_WEIGHT = 5.0  # the good class's weight over the balanced one: it is the smallest class and the costliest to miss


def features(r: dict) -> dict[str, float] | None:
    """The run's :func:`shape_features`, computed once and kept in the run's dict."""
    if "shape" not in r:
        c = r["curve"]
        r["shape"] = shape_features(c.values, c.extra.get("grad_norm"), c.lrs, c.extra.get("update_ratio"),
                                    c.extra.get("grad_alignment"))
    return r["shape"]


def matrix(runs: list[dict], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Feature rows (``names``) of the runs that have them all, their tasks, and those runs."""
    kept = [r for r in runs if (f := features(r)) is not None and all(k in f for k in names)]
    return (np.array([[r["shape"][k] for k in names] for r in kept]), np.array([r["task"] for r in kept]), kept)


def dataset(runs: list[dict], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(X, class index, task, run) for the direction classifier."""
    X, groups, kept = matrix(runs, names)
    return X, np.array([CLASSES.index(r["label"]) for r in kept]), groups, kept


def fit(X: np.ndarray, y: np.ndarray, **params):
    """The direction classifier: gradient-boosted trees, classes weighted to balance, the good class GOOD_WEIGHT x."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    count = np.bincount(y, minlength=len(CLASSES))
    weight = {i: len(y) / (len(CLASSES) * max(int(n), 1)) * (GOOD_WEIGHT if CLASSES[i] == "good" else 1.0)
              for i, n in enumerate(count)}
    return HistGradientBoostingClassifier(**{**BOOST, "class_weight": weight, **params}).fit(X, y)


def fit_forest(X: np.ndarray, y: np.ndarray):
    """The direction classifier of rounds 1-5 (a random forest, classes weighted to balance), for comparison."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**FOREST, class_weight="balanced").fit(X, y)


SEQ = {"width": (24, 32, 32), "strides": (2, 2, 2), "kernel": 5, "hidden": 64, "epochs": 20, "batch": 64,
       "lr": 3e-3, "weight_decay": 1e-3, "dropout": 0.2, "seed": 0}  # the sequence model and its training


def profiles(runs: list[dict]) -> np.ndarray:
    """:func:`direction.profile` of each run (every run has one where it has shape features: finite, positive loss)."""
    out = []
    for r in runs:
        if "profile" not in r:
            c = r["curve"]
            r["profile"] = profile(c.values, c.extra.get("grad_norm"), c.lrs, c.extra.get("update_ratio"),
                                   c.extra.get("grad_alignment"))
        out.append(r["profile"])
    return np.stack(out)


def fit_seq(P: np.ndarray, y: np.ndarray, variant: str, **params) -> dict[str, np.ndarray]:
    """The sequence model of ``variant`` (its :func:`direction.seq_channels`) fitted on profiles ``P`` (n, 5, points)
    with torch (one-cycle AdamW, classes weighted as :func:`fit`), exported for :func:`direction.seq_proba`."""
    import torch

    cfg = {**SEQ, **params}
    nn = torch.nn
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    chans = seq_channels(variant)
    layers, c_in = [], P.shape[1]
    for width, stride in zip(cfg["width"], cfg["strides"]):
        layers += [nn.Conv1d(c_in, width, cfg["kernel"], stride=stride, padding=cfg["kernel"] // 2),
                   nn.GELU(approximate="tanh")]
        c_in = width
    conv = nn.Sequential(*layers)
    head = nn.Sequential(nn.Linear(2 * c_in, cfg["hidden"]), nn.GELU(approximate="tanh"), nn.Dropout(cfg["dropout"]),
                         nn.Linear(cfg["hidden"], len(CLASSES)))

    def forward(x):
        z = conv(x)
        return head(torch.cat([z.mean(-1), z.amax(-1)], 1))

    count = np.bincount(y, minlength=len(CLASSES))
    w = len(y) / (len(CLASSES) * np.maximum(count, 1)) * np.array([GOOD_WEIGHT if c == "good" else 1.0 for c in CLASSES])
    lossf = nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))
    params_ = [*conv.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params_, cfg["lr"], weight_decay=cfg["weight_decay"])
    X = torch.tensor(P * chans[None, :, None], dtype=torch.float32)
    t = torch.tensor(y)
    per_epoch = max(len(t) // cfg["batch"], 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["epochs"] * per_epoch)
    conv.train()
    head.train()
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(len(t), generator=gen)
        for i in range(per_epoch):
            b = perm[i * cfg["batch"]:(i + 1) * cfg["batch"]]
            opt.zero_grad()
            lossf(forward(X[b]), t[b]).backward()
            opt.step()
            sched.step()
    out = {"channels": chans.astype(np.float64), "strides": np.array(cfg["strides"], dtype=np.int64),
           "classes": np.array(CLASSES)}
    convs = [m for m in conv if isinstance(m, nn.Conv1d)]
    for i, m in enumerate(convs):
        out[f"conv{i}_w"], out[f"conv{i}_b"] = (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
    for i, m in enumerate(m for m in head if isinstance(m, nn.Linear)):
        out[f"fc{i}_w"], out[f"fc{i}_b"] = m.weight.detach().double().numpy(), m.bias.detach().double().numpy()
    return out


def per_class(y: np.ndarray, pred: np.ndarray) -> list[float]:
    return [float((pred[y == i] == i).mean()) if (y == i).any() else float("nan") for i in range(len(CLASSES))]


def loto(X: np.ndarray, y: np.ndarray, groups: np.ndarray, **params) -> np.ndarray:
    """Leave-one-task-out predictions: each task scored by a forest fitted on the other tasks."""
    pred = np.empty_like(y)
    for g in np.unique(groups):
        te = groups == g
        pred[te] = fit(X[~te], y[~te], **params).predict(X[te])
    return pred


MANIFEST = OUT.replace(".npz", ".json")


def fit_models(runs: list[dict], report: bool = True) -> dict[str, np.ndarray]:
    """Every model of the shipped file, fitted on ``runs``: a classifier per ``direction.VARIANTS`` and a sequence model
    per ``direction.SEQ_VARIANTS``, as the arrays ``direction_model.npz`` holds (with ``report``: leave-one-task-out
    accuracy of each classifier, which takes most of the time)."""
    arrays = {}
    for name, feats in VARIANTS.items():
        X, y, groups, kept = dataset(runs, feats)
        print(f"{name}: {len(y)} finite curves from {len(np.unique(groups))} tasks, {len(feats)} features", end="")
        if report:
            acc = per_class(y, loto(X, y, groups))
            print(f"; leave-one-task-out accuracy: too_high {acc[0]:.1%}  good {acc[1]:.1%}  too_low {acc[2]:.1%}",
                  end="")
        print(flush=True)
        clf = fit(X, y)
        model = export_forest(clf, feats)
        # the numpy evaluator must agree with scikit-learn on the training rows
        assert np.allclose(forest_proba(model, X), clf.predict_proba(X), atol=1e-9)
        arrays.update({f"{name}/{k}": v for k, v in model.items()})
        if name in SEQ_VARIANTS:  # the sequence model (variants reading the update ratio), on the same runs
            P = profiles(kept)
            model = fit_seq(P, y, name)
            assert np.allclose([seq_proba(model, p).sum() for p in P[:5]], 1.0)
            arrays.update({f"seq_{name}/{k}": v for k, v in model.items()})
    return arrays


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def array_hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """A hash of each array's dtype, shape and bytes (the npz file's own bytes also hold zip timestamps)."""
    import hashlib

    return {k: hashlib.sha256(f"{v.dtype.str}{v.shape}".encode() + np.ascontiguousarray(v).tobytes()).hexdigest()
            for k, v in sorted(arrays.items())}


def manifest(arrays: dict[str, np.ndarray], runs: list[dict]) -> dict:
    """What the shipped model was fitted on and with: the data sets, seeds, lr grid, fitting settings, library
    versions, and a hash of every array (so ``--check`` can tell a rebuild from the shipped file)."""
    import platform

    import make_curves
    import sklearn
    import torch

    return {"file": os.path.basename(OUT), "rebuild": "python benchmarks/doctor/fit_direction.py --write",
            "check": "python benchmarks/doctor/fit_direction.py --check",
            "sets": list(make_curves.FITTING), "tasks": len({r["task"] for r in runs}), "curves": len(runs),
            "seeds": list(make_curves.SEEDS), "steps": make_curves.STEPS,
            "lr_grid": [float(make_curves.GRID[0]), float(make_curves.GRID[-1]), "x2"],
            "boost": BOOST, "good_weight": GOOD_WEIGHT, "seq": {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in SEQ.items()},
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__, "torch": torch.__version__.split("+")[0]},
            "arrays": array_hashes(arrays)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write src/lrkit/doctor/direction_model.npz and its manifest")
    ap.add_argument("--check", action="store_true", help="refit and compare every array with the shipped file "
                                                         "(exit 1 when one differs)")
    ap.add_argument("--no-loto", action="store_true", help="skip the leave-one-task-out report (fit and write only)")
    args = ap.parse_args()
    import make_curves

    for name in make_curves.FITTING:  # generates the curves a fresh clone lacks (about 2 hours on one thread)
        make_curves.ensure(name)
    runs = load(fresh=True)
    arrays = fit_models(runs, report=not (args.no_loto or args.check))
    if args.check:
        with np.load(OUT) as d:
            shipped = {k: d[k] for k in d.files}
        with open(MANIFEST) as f:
            want = json.load(f)["arrays"]
        got, have = array_hashes(arrays), array_hashes(shipped)
        differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        if have != want:
            print(f"the shipped {os.path.basename(OUT)} does not match its manifest")
            sys.exit(1)
        if differ:
            print(f"{len(differ)} of {len(want)} arrays differ from the shipped model: {', '.join(differ[:8])}")
            sys.exit(1)
        print(f"rebuilt: all {len(want)} arrays identical to the shipped {os.path.basename(OUT)}")
    if args.write:
        tmp = OUT + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, OUT)
        with open(MANIFEST, "w") as f:
            json.dump(manifest(arrays, runs), f, indent=1)
            f.write("\n")
        print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT) / 1024:.0f} KiB) and its manifest")


if __name__ == "__main__":
    main()
