"""The labelled set of real curves: each run's label comes from where its lr sits relative to the grid's best lr
for the same task (best = lowest training loss over the last 10% of steps, averaged over the seeds; a run that
went NaN is worst). ``lr >= 4x best``: too high (the doctor should say lower); ``lr <= best/10``: too low (raise);
``best/2 <= lr <= 2x best``: good (keep); the runs in between are left out (ambiguous by construction)."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from make_curves import CACHE, HELD_OUT  # noqa: E402

from lrkit.curve import Curve  # noqa: E402

EXPECTED = {"too_high": "lower", "good": "keep", "too_low": "raise"}


def final_loss(loss: np.ndarray) -> float:
    if not np.isfinite(loss).all():
        return float("inf")
    return float(loss[-max(3, len(loss) // 10):].mean())


def label(lr: float, best: float) -> str | None:
    r = lr / best
    if r >= 4 * (1 - 1e-9):
        return "too_high"
    if r <= 0.1 * (1 + 1e-9):
        return "too_low"
    if 0.5 * (1 - 1e-9) <= r <= 2 * (1 + 1e-9):
        return "good"
    return None


def load() -> list[dict]:
    """Every labelled run: dict(curve, label, task, seed, lr, best_lr, held_out)."""
    if not os.path.exists(CACHE):
        raise SystemExit(f"no cached curves at {CACHE}: run python benchmarks/doctor/make_curves.py first")
    d = np.load(CACHE)
    task, lr, seed = d["task"], d["lr"], d["seed"]
    loss, gn = d["loss"].astype(np.float64), d["grad_norm"].astype(np.float64)
    out = []
    for name in sorted(set(task.tolist())):
        grid = sorted(set(lr[task == name].tolist()))
        score = [np.mean([final_loss(loss[i]) for i in np.where((task == name) & (lr == g))[0]]) for g in grid]
        best = float(grid[int(np.argmin(score))])
        for i in np.where(task == name)[0]:
            key = (name, int(seed[i]))
            lab = label(float(lr[i]), best)
            if lab is None:
                continue
            y = loss[i]
            n = int(np.argmax(~np.isfinite(y))) + 1 if not np.isfinite(y).all() else len(y)  # a log ends at NaN
            c = Curve(np.arange(n), y[:n], np.full(n, lr[i]), name="loss", extra={"grad_norm": gn[i][:n]},
                      meta={"source": f"{key[0]} seed={key[1]} lr={lr[i]:.3g}"})
            out.append({"curve": c, "label": lab, "task": key[0], "seed": key[1], "lr": float(lr[i]),
                        "best_lr": best, "held_out": key[0] in HELD_OUT})
    return out
