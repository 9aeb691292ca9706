"""Regret of lr suggestions against a grid search: lrkit's rules, the peers and the lr-free optimisers, one table.

    python benchmarks/regret/run.py            # builds what is missing in the cache (.cache/), prints the table
    python benchmarks/regret/run.py --tasks other_suite.py

Regret on a task = best validation loss reached training at the method's lr (mean over seeds; each seed's own
range test picks that seed's lr) / the same at the grid's best lr. A method with no trustworthy suggestion falls
back to the fixed default (counted in "no pick"). "steps" = optimiser steps the method spent before training
(mean over tasks and seeds). Lightning's rule is ``_LRFinder.suggestion()`` itself, applied to a curve recorded
with Lightning's tuner defaults (1e-8 .. 1, 100 steps, EMA 0.98, early stop at 4x) by lrkit's range test.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engine  # noqa: E402
from grid import SEEDS  # noqa: E402

MOMENTUM = {"sgdm": 0.9, "sgd": 0.0}


def _arr(v):
    return np.array([np.nan if a is None else a for a in v], dtype=np.float64)


def fixed_default(task) -> float:
    return 1e-2 if task.family == "sgd" else 1e-3


def adaptive_pick(task, seed: int, mod, **options) -> dict:
    """lrkit's default adaptive test on a fresh model: the ramp judged on the training loss, the confirmation runs
    scored on the validation loss (``val_every=None`` with a stepper that has validation batches); cached."""

    def run():
        from lrkit.finder import range_test
        from lrkit.integrations.torch import TorchStepper
        model, (xtr, ytr), (xva, yva), crit = task.build(seed)
        opt = mod.make_optimizer(task, model.parameters(), 1e-3)
        stepper = TorchStepper(model, opt, crit, engine.Batches(xtr, ytr, task.batch_size, seed),
                               val_loader=[(xva, yva)])
        res = range_test(stepper, **{"val_every": None, "progress": False, **options})
        return {"lr": res.suggestion.lr, "steps": res.total_steps, "by_phase": res.config["steps"],
                "candidates": res.confirmations, "reason": res.suggestion.reason}

    version = "find-v6" + "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    return engine.cached("adaptive", (task.name, engine.VERSION, version, seed), run)


def method_picks(task, seed: int, mod) -> dict[str, tuple[float | None, int]]:
    """Every method's lr for this task and seed, with the optimiser steps it spent finding it."""
    from lrkit.finder import suggest
    c = engine.lrkit_curve(task, seed, mod=mod)
    lrs, raw, sm = _arr(c["lrs"]), _arr(c["losses"]), _arr(c["smoothed"])
    n = c["steps"]
    fam, mom = task.family, MOMENTUM.get(task.optimizer)
    out: dict[str, tuple[float | None, int]] = {}
    a = adaptive_pick(task, seed, mod)
    out["lrkit default: adaptive (robust+confirm)"] = (a["lr"], a["steps"])
    out["lrkit robust, raw loss, family known"] = (suggest(lrs, raw, "robust", family=fam, momentum=mom).lr, n)
    out["lrkit robust, raw loss, family unknown"] = (suggest(lrs, raw, "robust").lr, n)
    out["lrkit robust, smoothed, family unknown"] = (suggest(lrs, sm, "robust").lr, n)
    for rule in ("steepest", "minimum", "valley"):
        out[f"lrkit {rule} (smoothed curve)"] = (suggest(lrs, sm, rule).lr, n)
    out["minimum/10 on raw loss"] = (suggest(lrs, raw, "minimum").lr, n)
    t = engine.torch_lr_finder(task, seed, mod=mod)
    out["torch-lr-finder default (steepest)"] = (t["suggestion"], t["steps"])
    lc = engine.lrkit_curve(task, seed, start_lr=1e-8, end_lr=1.0, mod=mod)
    out["Lightning default (suggestion())"] = (engine.lightning_suggestion(lc), lc["steps"])
    out["fixed default (1e-3 Adam-like, 1e-2 SGD)"] = (fixed_default(task), 0)
    return out


LR_FREE = {"schedule-free AdamW (lr 2.5e-3)": ("schedulefree", 2.5e-3), "Prodigy (lr 1.0)": ("prodigy", 1.0)}


def evaluate(tasks, mod):
    rows: dict[str, dict[str, float]] = {}
    steps: dict[str, list[int]] = {}
    nopick: dict[str, int] = {}
    best_lr = {}
    for task in tasks:
        grid = engine.grid_lrs(task)
        grid_scores = np.array([np.mean([engine.train(task, lr, s, mod=mod)["best_val"] for s in SEEDS])
                                for lr in grid])
        best = float(grid_scores.min())
        best_lr[task.name] = grid[int(grid_scores.argmin())]
        per_method: dict[str, list[float]] = {}
        for seed in SEEDS:
            for name, (lr, used) in method_picks(task, seed, mod).items():
                if lr is None or not (isinstance(lr, float) and math.isfinite(lr) and lr > 0):
                    nopick[name] = nopick.get(name, 0) + 1
                    lr = fixed_default(task)
                per_method.setdefault(name, []).append(engine.train(task, lr, seed, mod=mod)["best_val"])
                steps.setdefault(name, []).append(used)
            for name, (kind, lr) in LR_FREE.items():
                per_method.setdefault(name, []).append(engine.train(task, lr, seed, kind=kind, mod=mod)["best_val"])
                steps.setdefault(name, []).append(0)
        for name, vals in per_method.items():
            rows.setdefault(name, {})[task.name] = float(np.mean(vals)) / best
    return rows, steps, nopick, best_lr


def _summary(regrets: list[float]) -> str:
    r = np.array(regrets)
    return f"{np.median(r):7.3f} {r.max():8.2f} {int((r <= 1.10).sum()):>3d}/{len(r):<3d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=None, help="a Python file defining TASKS (default: tasks.py)")
    ap.add_argument("--per-task", action="store_true", help="also print every task's regret per method")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks, mod = engine.load_tasks(args.tasks)
    rows, steps, nopick, best_lr = evaluate(tasks, mod)
    tune = [t.name for t in tasks if not t.holdout]
    hold = [t.name for t in tasks if t.holdout]
    print(f"regret vs a grid of {sum(len(engine.grid_lrs(t)) for t in tasks) // len(tasks)} lrs/task "
          f"(3 per decade) x {len(SEEDS)} seeds; {len(tasks)} tasks ({len(tune)} tuning, {len(hold)} held out)\n")
    head = f"{'method':44s} | {'ALL: median':>11s} {'max':>8s} {'<=1.10':>7s} | {'TUNING: med':>11s} {'max':>8s} " \
           f"{'<=1.10':>7s} | {'HELD OUT: med':>13s} {'max':>8s} {'<=1.10':>7s} | {'steps':>5s} {'no pick':>7s}"
    print(head)
    print("-" * len(head))
    for name, reg in rows.items():
        a = _summary(list(reg.values()))
        tu = _summary([reg[t] for t in tune])
        ho = _summary([reg[t] for t in hold]) if hold else ""
        print(f"{name:44s} | {a:>27s} | {tu:>27s} | {ho:>29s} | {np.mean(steps[name]):5.0f} {nopick.get(name, 0):>7d}")
    if args.per_task:
        print()
        names = list(rows)
        print(f"{'task':30s} {'grid best lr':>12s} " + " ".join(f"{i:>6d}" for i in range(len(names))))
        for t in tasks:
            print(f"{t.name + (' (H)' if t.holdout else ''):30s} {best_lr[t.name]:12.3g} "
                  + " ".join(f"{rows[n][t.name]:6.2f}" for n in names))
        print("columns: " + "; ".join(f"{i}={n}" for i, n in enumerate(names)))


if __name__ == "__main__":
    main()
