"""The labelled set of real curves: each run's label comes from where its lr sits relative to the grid's best lr
for the same task (best = lowest training loss over the last 10% of steps, averaged over the four seeds; a run that
went NaN is worst; with two seeds, as up to round 7, the two seeds alone put the best lr a grid step or more apart in
43% of the tasks). ``lr >= 4x best``: too high (the doctor should say lower); ``lr <= best/10``: too low (raise);
``best/2 <= lr <= 2x best``: good (keep); the runs in between are left out (ambiguous by construction). A run whose
own loss went NaN or inf is labelled too high wherever its lr sits (from round 9; before, a seed that blew up at 2x
the best lr was "good"): the only advice for that run is to lower its lr. ``lr_label`` keeps the label by lr alone.

A task where no lr of the grid learned (the best lr's final loss is less than MIN_LEARNED = 20% below the untrained
loss, the first 10 losses at the grid's smallest lr) has no meaningful best lr: its runs are left out (``UNLEARNED``
lists them). On the sets so far the best lrs learned either 2-13% or 26% and more: any cut in between gives the
same tasks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from make_curves import FITTING, HELD_OUT, flag, set_paths  # noqa: E402

from lrkit.curve import Curve  # noqa: E402

MATERIAL = 0.05  # a too-high/too-low lr "costs" when it loses more than this share of the achievable descent
MIN_LEARNED = 0.2  # a task counts when its best lr ends at least this share below the untrained loss
UNLEARNED: dict[str, float] = {}  # the tasks left out (no lr learned), with the share their best lr learned
SCORES: dict[str, tuple[list[float], np.ndarray]] = {}  # each labelled task's lr grid and final losses (seeds, grid)
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


def load(fresh: bool = False, unlabelled: bool = False) -> list[dict]:
    """Every labelled run: dict(curve, label, lr_label, task, seed, lr, best_lr, held_out, group, excess, material);
    ``excess`` is the share of the achievable descent the run's lr lost against the best lr (mean over seeds) and
    ``unlabelled=True`` also returns the runs between the classes (label None; e.g. 3x the best lr).
    ``material`` says whether a too-high / too-low label costs something (excess > MATERIAL); ``fresh=True`` loads
    every set the shape model fits (``make_curves.FITTING``: group = the set's name; the earlier held-out sets each
    joined it once it had been scored), else only the first tasks (groups "tuning" and "held_out"). FINAL9, EXTRA4,
    FINAL10 and the round's held-out FINAL11 tasks are not among them."""
    out = load_set("curves", unlabelled)
    if fresh:
        for name in FITTING[1:]:
            out += [{**r, "group": name} for r in load_set(name, unlabelled)]
    return out


def load_set(name: str, unlabelled: bool = False) -> list[dict]:
    """The labelled runs of one set of ``make_curves.SETS`` (all its cache files: parts and added seeds, read as one,
    so a task's best lr is judged over every seed)."""
    return _load(set_paths(name), flag(name), unlabelled)


def _read(paths: list[str], flag: str) -> dict[str, np.ndarray]:
    """The cached arrays of one set, its files concatenated (the same steps in each)."""
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"no cached curves at {path}: run python benchmarks/doctor/make_curves.py {flag} first")
    files = [np.load(p) for p in paths]
    keys = [k for k in files[0].files if k != "steps" and all(k in f.files for f in files)]
    return {k: np.concatenate([f[k] for f in files]) for k in keys}


def _scores(task: np.ndarray, lr: np.ndarray, seed: np.ndarray, loss: np.ndarray,
            name: str) -> tuple[list[float], np.ndarray]:
    """The task's lr grid and the final loss (inf after a NaN) of each (seed, lr): an array (seeds, grid)."""
    grid = sorted(set(lr[task == name].tolist()))
    seeds = sorted(set(seed[task == name].tolist()))
    return grid, np.array([[final_loss(loss[(task == name) & (lr == g) & (seed == s)][0]) for g in grid]
                           for s in seeds])


def label_agreement(tasks: Iterable[str]) -> dict[str, float]:
    """How reproducible the labels are: per class, the share of (task, lr) labels given by the best lr of two seeds
    that the other two seeds' best lr gives too (the three ways to halve four seeds), over the ``tasks`` loaded so far
    that learned and have four seeds. The labels use four seeds, so they are more stable than this, but it bounds what
    any reader of one curve can score against two-seed labels."""
    same: dict[str, int] = dict.fromkeys(EXPECTED, 0)
    total: dict[str, int] = dict.fromkeys(EXPECTED, 0)
    for t in tasks:
        grid, score = SCORES.get(t, ([], np.empty((0, 0))))
        if len(score) != 4:
            continue
        for a in ((0, 1), (0, 2), (0, 3)):
            b = tuple(i for i in range(4) if i not in a)
            best_a, best_b = (grid[int(np.argmin(score[list(h)].mean(axis=0)))] for h in (a, b))
            for g in grid:
                lab = label(g, best_a)
                if lab is not None:
                    total[lab] += 1
                    same[lab] += lab == label(g, best_b)
    return {c: same[c] / total[c] for c in total if total[c]}


def _start(runs: np.ndarray) -> float:
    """The loss over the first 10 steps (median), averaged over ``runs`` (the seeds of one lr)."""
    return float(np.mean([np.median(y[:10]) for y in runs]))


def _load(paths: list[str], flag: str, unlabelled: bool = False) -> list[dict]:
    d = _read(paths, flag)
    task, lr, seed = d["task"], d["lr"], d["seed"]
    loss, gn = d["loss"].astype(np.float64), d["grad_norm"].astype(np.float64)
    sched = d["lrs"].astype(np.float64) if "lrs" in d else None  # the lr at every step, where logged
    # where logged: ||dw|| / ||w|| and cos(-g_t, dw_t-1)
    side = {k: d[k].astype(np.float64) for k in ("update_ratio", "grad_alignment") if k in d}
    out = []
    for name in sorted(set(task.tolist())):
        grid, per_seed = _scores(task, lr, seed, loss, name)
        score = per_seed.mean(axis=0)
        ib = int(np.argmin(score))
        best = float(grid[ib])
        untrained = _start(loss[(task == name) & (lr == grid[0])])
        learned = (untrained - score[ib]) / max(abs(untrained), 1e-12)
        if not learned >= MIN_LEARNED:
            UNLEARNED[name] = float(learned)
            continue
        SCORES[name] = (grid, per_seed)
        top = _start(loss[(task == name) & (lr == best)])
        # the share of the achievable descent (start -> best final) this lr lost, averaged over the seeds
        excess = {g: (s - score[ib]) / max(top - score[ib], 1e-12) for g, s in zip(grid, score)}
        for i in np.where(task == name)[0]:
            key = (name, int(seed[i]))
            y = loss[i]
            finite = np.isfinite(y)
            by_lr = label(float(lr[i]), best)
            lab = by_lr if finite.all() else "too_high"
            if lab is None and not unlabelled:
                continue
            n = len(y) if finite.all() else int(np.argmax(~finite)) + 1  # a log ends at its first NaN
            lrs = sched[i][:n] if sched is not None else np.full(n, lr[i])
            extra = {"grad_norm": gn[i][:n], **{k: v[i][:n] for k, v in side.items()}}
            c = Curve(np.arange(n), y[:n], lrs, name="loss", extra=extra,
                      meta={"source": f"{key[0]} seed={key[1]} lr={lr[i]:.3g}"})
            out.append({"curve": c, "label": lab, "lr_label": by_lr, "task": key[0], "seed": key[1], "lr": float(lr[i]),
                        "best_lr": best, "held_out": key[0] in HELD_OUT, "excess": float(excess[float(lr[i])]),
                        "material": lab == "good" or excess[float(lr[i])] > MATERIAL,
                        "group": "held_out" if key[0] in HELD_OUT else "tuning"})
    return out
