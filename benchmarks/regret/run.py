"""Regret of lr picks against a grid search: lrkit's default, the classic rules, the peers' finders, fixed defaults
and the lr-free optimisers, in one run; fitting and held-out tasks reported apart.

    python benchmarks/regret/run.py                 # 27 tasks x 6 seeds; builds what is missing in .cache/
    python benchmarks/regret/run.py --quick         # 9 tasks (one per family) x 3 seeds
    python benchmarks/regret/run.py --held-out      # only the held-out families (--fitting: only the others)
    python benchmarks/regret/run.py --jobs 2 --per-task --json results/regret.json

Regret of a pick on a task and seed = the score of a training run at the pick (the task's optimiser, schedule and
budget; score = final validation loss) / the best median-over-seeds score of the grid search (see
``engine.grid``). A task's regret is the median over its seeds (each seed's own finder picks that seed's lr, and
that seed trains it); the table gives, per method, the median and the max of the task regrets, the share of tasks
within 1.10, the share of seeds with a pick (a method without a trustworthy pick falls back to the fixed default,
as a user would) and the optimiser steps it spent finding the lr (mean).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engine  # noqa: E402

DEFAULT = "lrkit default: find_lr (robust+confirm)"
LR_FREE = {"schedule-free AdamW (lr 2.5e-3)": ("schedulefree", 2.5e-3), "Prodigy (lr 1.0)": ("prodigy", 1.0)}
FIXED = {"adam": 1e-3, "sgd": 0.1}


def fixed_default(task) -> float:
    return FIXED[task.opt_family]


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def picks(task, seed: int, mod) -> dict[str, tuple[float | None, int]]:
    """Every finder-based method's lr for this task and seed, with the optimiser steps it spent finding it."""
    import lrkit
    f = engine.lrkit_find(task, seed, mod)
    ramp = len(f["lrs"])
    out = {DEFAULT: (f["lr"], f["steps_used"]),
           "lrkit robust rule, no confirmation": (f["rules"]["robust"], ramp),
           "lrkit curve, steepest": (f["rules"]["steepest"], ramp),
           "lrkit curve, minimum/10": (f["rules"]["minimum"], ramp),
           "lrkit curve, valley": (f["rules"]["valley"], ramp)}
    t = engine.torch_lr_finder(task, seed, mod)
    out["torch-lr-finder, steepest (its pick)"] = (t["lr"], t["steps_used"])
    lrs, losses = np.asarray(t["lrs"])[10:-5], _nan(t["losses"])[10:-5]  # the part its plot shows
    for rule, label in (("minimum", "minimum/10"), ("valley", "valley")):
        out[f"torch-lr-finder curve, {label}"] = (lrkit.finder.suggest(lrs, losses, rule).lr, t["steps_used"])
    lt = engine.lightning_tuner(task, seed, mod)
    out["Lightning Tuner.lr_find suggestion()"] = (lt["lr"], lt["steps_used"])
    out["fixed default (1e-3 Adam-like, 0.1 SGD)"] = (fixed_default(task), 0)
    return out


def usable(lr) -> bool:
    return isinstance(lr, float) and math.isfinite(lr) and lr > 0


def evaluate_task(task, seeds, mod) -> dict:
    """Grid, every method's pick and score on every seed, for one task (everything cached)."""
    t0 = time.time()
    g = engine.grid(task, seeds, mod)
    methods: dict[str, dict[str, list]] = {}
    for seed in seeds:
        chosen = {name: (lr, used, None) for name, (lr, used) in picks(task, seed, mod).items()}
        chosen.update({name: (lr, 0, kind) for name, (kind, lr) in LR_FREE.items()})
        for name, (lr, used, kind) in chosen.items():
            ok = usable(lr)
            run = engine.train(task, lr if ok else fixed_default(task), seed, kind=kind, mod=mod)
            m = methods.setdefault(name, {"lr": [], "picked": [], "score": [], "regret": [], "steps": []})
            m["lr"].append(lr if ok else None)
            m["picked"].append(ok)
            m["score"].append(run["score"])
            m["regret"].append(run["score"] / g["best"])
            m["steps"].append(used)
    return {"name": task.name, "family": task.family, "held_out": task.held_out, "optimizer": task.optimizer,
            "schedule": task.schedule, "batch_size": task.batch_size, "steps": task.steps, "notes": task.notes,
            "grid": g, "seeds": list(seeds), "methods": methods, "seconds": time.time() - t0}


def _worker(args):
    name, tasks_path, seeds = args
    import torch
    torch.set_num_threads(1)
    tasks, mod = engine.load_tasks(tasks_path)
    task = next(t for t in tasks if t.name == name)
    return evaluate_task(task, seeds, mod)


def run_all(tasks, tasks_path, seeds, jobs: int, log=print) -> list[dict]:
    """Evaluate every task, ``jobs`` tasks at a time (separate processes), in the order of ``tasks``."""
    args = [(t.name, tasks_path, tuple(seeds)) for t in tasks]
    t0 = time.time()
    done: dict[str, dict] = {}
    if jobs <= 1:
        results = map(_worker, args)
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        results = pool.imap_unordered(_worker, args)
    for r in results:
        done[r["name"]] = r
        log(f"  {r['name']:36s} {r['seconds']:6.0f}s   (elapsed {time.time() - t0:6.0f}s, "
            f"{len(done)}/{len(args)})")
    if jobs > 1:
        pool.close()
        pool.join()
    return [done[t.name] for t in tasks]


# ---- report --------------------------------------------------------------------------------------------------
def summarize(results: list[dict], name: str) -> dict:
    regrets = [float(np.median(r["methods"][name]["regret"])) for r in results]
    picked = [p for r in results for p in r["methods"][name]["picked"]]
    steps = [s for r in results for s in r["methods"][name]["steps"]]
    seed_regrets = [x for r in results for x in r["methods"][name]["regret"]]
    return {"median": float(np.median(regrets)), "max": float(np.max(regrets)),
            "within_1_10": int(sum(x <= 1.10 for x in regrets)), "tasks": len(regrets),
            "seeds_within_1_10": int(sum(x <= 1.10 for x in seed_regrets)), "seed_runs": len(seed_regrets),
            "picked": int(sum(picked)), "mean_steps": float(np.mean(steps))}


def table(results: list[dict], title: str) -> str:
    if not results:
        return ""
    names = list(results[0]["methods"])
    head = (f"{'method':44s} {'median':>7s} {'max':>7s} {'tasks<=1.10':>11s} {'seeds<=1.10':>11s} "
            f"{'seeds w/ pick':>13s} {'steps':>5s}")
    lines = [f"{title}: {len(results)} tasks x {len(results[0]['seeds'])} seeds", head, "-" * len(head)]
    for n in names:
        s = summarize(results, n)
        lines.append(f"{n:44s} {s['median']:7.3f} {s['max']:7.2f} {s['within_1_10']:>5d}/{s['tasks']:<5d} "
                     f"{s['seeds_within_1_10']:>5d}/{s['seed_runs']:<5d} {s['picked']:>6d}/{s['seed_runs']:<6d} "
                     f"{s['mean_steps']:5.0f}")
    return "\n".join(lines)


def per_task_table(results: list[dict]) -> str:
    names = list(results[0]["methods"])
    lines = [f"{'task':38s} {'fam':>11s} {'best lr':>8s} {'best':>7s} {'untr.':>6s} "
             + " ".join(f"{i:>5d}" for i in range(len(names)))]
    for r in results:
        g = r["grid"]
        lines.append(f"{r['name'] + (' (H)' if r['held_out'] else ''):38s} {r['family']:>11s} {g['best_lr']:8.2g} "
                     f"{g['best']:7.4f} {g['untrained']:6.3f} "
                     + " ".join(f"{np.median(r['methods'][n]['regret']):5.2f}" for n in names))
    lines.append("columns (median regret over seeds): " + "; ".join(f"{i}={n}" for i, n in enumerate(names)))
    lines.append("default's picks / grid best (median over seeds): " + ", ".join(
        f"{r['name']} {np.median([x / r['grid']['best_lr'] for x in r['methods'][DEFAULT]['lr'] if x]):.2g}"
        if any(r["methods"][DEFAULT]["lr"]) else f"{r['name']} none" for r in results))
    return "\n".join(lines)


def suite_table(tasks) -> str:
    """The suite as a markdown table."""
    lines = ["| task | family | optimiser | weight decay | batch | steps | schedule | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        lines.append(f"| {t.name} | {t.family}{' (held out)' if t.held_out else ''} | {t.optimizer} | "
                     f"{t.weight_decay:g} | {t.batch_size} | {t.steps} | {t.schedule} | {t.notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=None, help="a Python file defining TASKS (default: tasks.py)")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--held-out", action="store_true", help="only the held-out families (tasks.HELD_OUT)")
    part.add_argument("--fitting", action="store_true", help="only the fitting families (all but tasks.HELD_OUT)")
    ap.add_argument("--quick", action="store_true", help="one task per family (tasks.QUICK) and 3 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="the first N seeds (default 6; 3 with --quick)")
    ap.add_argument("--only", default=None, help="comma-separated task names")
    ap.add_argument("--jobs", type=int, default=2, help="tasks evaluated in parallel (default 2)")
    ap.add_argument("--per-task", action="store_true", help="also print every task's regret per method")
    ap.add_argument("--json", default=None, help="write every number here (default results/regret[-quick].json)")
    ap.add_argument("--list", action="store_true", help="print the suite (task, family, optimiser, ...) and exit")
    args = ap.parse_args()
    tasks, mod = engine.load_tasks(args.tasks)
    if args.list:
        print(suite_table(tasks))
        return
    if args.quick:
        tasks = [t for t in tasks if t.name in getattr(mod, "QUICK", ())]
    if args.only:
        tasks = [t for t in tasks if t.name in args.only.split(",")]
    if args.held_out:
        tasks = [t for t in tasks if t.held_out]
    if args.fitting:
        tasks = [t for t in tasks if not t.held_out]
    seeds = engine.SEEDS[: args.seeds or (3 if args.quick else len(engine.SEEDS))]
    t0 = time.time()
    print(f"{len(tasks)} tasks x {len(seeds)} seeds, {args.jobs} jobs", flush=True)
    results = run_all(tasks, args.tasks, seeds, args.jobs)
    wall = time.time() - t0
    fit = [r for r in results if not r["held_out"]]
    held = [r for r in results if r["held_out"]]
    print()
    for rs, title in ((fit, "FITTING"), (held, "HELD OUT (families " + ", ".join(sorted(mod.HELD_OUT)) + ")")):
        if rs:
            print(table(rs, title) + "\n")
    if args.per_task and results:
        print(per_task_table(results) + "\n")
    for r in results:
        g = r["grid"]
        if g["best"] > 0.9 * g["untrained"]:
            print(f"warning: {r['name']}: the grid's best ({g['best']:.4g}) is within 10% of the untrained loss "
                  f"({g['untrained']:.4g}); the task may not be learnable in its budget")
    path = args.json or os.path.join(HERE, "results", "regret-quick.json" if args.quick else "regret.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {"command": " ".join(sys.argv), "seeds": list(seeds), "wall_s": wall, "version": engine.VERSION,
            "held_out_families": sorted(mod.HELD_OUT)}
    summary = {part: {n: summarize(rs, n) for n in rs[0]["methods"]} for part, rs in (("fitting", fit),
                                                                                       ("held_out", held)) if rs}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "summary": summary, "tasks": results}, f, indent=1)
    os.replace(tmp, path)
    print(f"wall time {wall:.0f}s; every number in {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
