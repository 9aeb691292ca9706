"""Build the cache: the grid (every lr x seed), the lr-free peers, fixed defaults and every range-test curve.

Run in the background (``nohup python benchmarks/regret/grid.py &``); ``run.py`` then only reads the cache
(and trains the few off-grid lrs the methods suggest).
"""

from __future__ import annotations

import argparse
import time

import engine

SEEDS = (0, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=None, help="a Python file defining TASKS (default: tasks.py)")
    ap.add_argument("--only", default=None, help="comma-separated task names")
    args = ap.parse_args()
    tasks, mod = engine.load_tasks(args.tasks)
    if args.only:
        tasks = [t for t in tasks if t.name in args.only.split(",")]
    t0 = time.time()
    for task in tasks:
        t1 = time.time()
        for seed in SEEDS:
            engine.lrkit_curve(task, seed, mod=mod)
            engine.lrkit_curve(task, seed, start_lr=1e-8, end_lr=1.0, mod=mod)  # Lightning's defaults
            engine.torch_lr_finder(task, seed, mod=mod)
        for lr in engine.grid_lrs(task):
            for seed in SEEDS:
                engine.train(task, lr, seed, mod=mod)
        for seed in SEEDS:
            engine.train(task, 2.5e-3, seed, kind="schedulefree", mod=mod)
            engine.train(task, 1.0, seed, kind="prodigy", mod=mod)
            engine.train(task, 1e-2 if task.family == "sgd" else 1e-3, seed, mod=mod)
        print(f"{task.name}: {time.time() - t1:.1f}s (total {time.time() - t0:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
