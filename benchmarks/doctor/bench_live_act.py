"""What acting on the live doctor's alarms does to a training run: real runs trained at multiples of their grid's best
lr with no guard, with a guard that acts on a NaN loss only, and with lrkit's ``LrMonitor(act=True)``.

Run: ``python benchmarks/doctor/bench_live_act.py [SET ...]`` (sets of ``make_curves.SETS``; default ``final11``, the
round's held-out tasks; their cached curves give each task's best lr, ``make_curves.py`` makes them). About 1 minute
per six tasks on 2 cores (30 tasks: 4 minutes). ``--seeds 0,1`` (default) picks the seeds, ``--tasks N`` the first N
tasks of each set, ``--threshold KEY=VALUE`` a Monitor threshold of the lrkit guard.

Every run trains 300 steps at ``m x`` the task's best lr (m = 1/2, 1, 2: good; 4 ... 32: too high) from the same
initial weights and batches under each guard, and is scored by its final training loss on the whole data set (eval
mode, so a lucky last batch does not count): ``excess`` is the share of the achievable descent it lost, (final - ref)
/ (initial - ref), where ref is the lowest final loss of the unguarded good runs of the same task and seed; a run
whose weights went NaN scores 1 (all lost). The guards:

- no guard: a plain loop (what Keras' TerminateOnNaN saves is only the time after the NaN);
- NaN rollback: the same snapshots and actions as lrkit, but it acts on a NaN loss only (restore the last snapshot,
  halve the lr), the loop a careful user writes by hand;
- lrkit: ``LrMonitor(model, optimizer, act=True, update_ratio=True)``, the defaults (divergence: restore and lower
  the lr; spikes: restore and skip batches).

On good runs a guard should cost nothing (an alarm there rolls back a run that was fine); on too-high runs it
should save what it can. No peer library offers a live lr guard to compare with beyond the NaN checks.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import make_curves  # noqa: E402
from labelled import load_set  # noqa: E402

MULTIPLES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
GUARDS = ("none", "nan_rollback", "lrkit")
NAN_ONLY = {"early_blowup": float("inf"), "rise": float("inf"), "spike_z": float("inf")}  # every check off but NaN


def train(task: tuple, lr: float, seed: int, guard: str, overrides: dict[str, float] | None = None
          ) -> tuple[float, float, int]:
    """Train one run of ``task`` at peak lr ``lr`` under ``guard`` (``overrides``: Monitor thresholds of the lrkit
    guard): (initial, final) full-data loss and the number of alarms the guard raised."""
    import torch

    from lrkit.integrations.torch_monitor import LrMonitor, total_norm

    data, arch, opt, *rest = task
    batch, steps, kind = (list(rest) + [make_curves.BATCH, make_curves.STEPS, None][len(rest):])[:3]
    x, y, model, optim, loss_of = make_curves.setup(data, arch, opt, lr, seed)
    shape = make_curves.schedule(1.0, steps, kind)  # the schedule's multiplier at each step, as a scheduler
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda t: float(shape[min(t, steps - 1)]))

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss_of(model(x), y))
        model.train()
        return value if np.isfinite(value) else float("inf")

    first = full_loss()
    g = None
    if guard != "none":
        g = LrMonitor(model, optim, act=True, scheduler=sched, update_ratio=guard == "lrkit",
                         **(NAN_ONLY if guard == "nan_rollback" else overrides or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guard warns on every alarm: counted below instead
        for t, idx in zip(range(steps), make_curves.batches(len(x), batch, seed)):
            if g is not None and g.should_skip():
                sched.step()
                continue
            loss = loss_of(model(x[idx]), y[idx])
            optim.zero_grad()
            loss.backward()
            if g is None and not torch.isfinite(loss):
                break  # a plain loop that went NaN stays NaN: stop (TerminateOnNaN)
            optim.step()
            if g is not None:  # the gradients are still those of this step: their norm (read only, no clipping)
                g.update(t, loss.item(), grad_norm=total_norm(p.grad for p in model.parameters() if p.grad is not None))
            sched.step()
    if g is None and not np.isfinite(loss.item()):
        return first, float("inf"), 0
    alarms = sum(e.kind in ("nan", "divergence", "spike") for e in g.events) if g is not None else 0
    return first, full_loss(), alarms


def _override(text: str) -> tuple[str, float]:
    """``--threshold`` "early_blowup=3" -> ("early_blowup", 3.0); argparse makes anything else a usage error."""
    from lrkit.doctor.checks import Thresholds

    key, _, value = text.partition("=")
    if key not in Thresholds.__dataclass_fields__:
        raise ValueError(text)
    return key, float(value)


def _job(args: tuple) -> tuple:
    task, best, m, seed, overrides = args
    return args, {gd: train(task, best * m, seed, gd, overrides) for gd in GUARDS}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``sets`` defaults to the round's held-out set, ``make_curves.HELD_OUT_SET``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="*", metavar="SET", help=f"default {make_curves.HELD_OUT_SET}; one of {', '.join(make_curves.SETS)}")
    ap.add_argument("--seeds", type=make_curves._seed_list, default=(0, 1))
    ap.add_argument("--tasks", type=int, default=None, help="only the first N tasks of each set")
    ap.add_argument("--threshold", type=_override, action="append", default=[], metavar="KEY=VALUE",
                    help="a Monitor threshold for the lrkit guard, e.g. early_blowup=3 (repeatable)")
    args = ap.parse_args(argv)
    bad = [name for name in args.sets if name not in make_curves.SETS]  # (argparse rejects "*" with choices)
    if bad:
        ap.error(f"unknown set(s) {bad}: choose from {', '.join(make_curves.SETS)}")
    args.sets = args.sets or [make_curves.HELD_OUT_SET]
    return args


def main() -> None:
    args = parse()
    overrides = dict(args.threshold)
    logging.getLogger("lrkit.monitor").setLevel(logging.ERROR)  # every alarm is counted below instead
    t0 = time.time()
    jobs = []
    for name in args.sets:
        make_curves.ensure(name)
        best = {r["task"]: r["best_lr"] for r in load_set(name)}  # tasks where no lr learned have none: left out
        tasks = [t for t in make_curves.SETS[name][0] if "|".join(map(str, t)) in best][: args.tasks]
        jobs += [(t, best["|".join(map(str, t))], m, s, overrides) for t in tasks for s in args.seeds for m in MULTIPLES]
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    ref = {}  # (task, seed) -> the lowest final loss of the unguarded good runs
    for (task, _, m, seed, _), res in results:
        if m <= 2:
            ref[(task, seed)] = min(ref.get((task, seed), np.inf), res["none"][1])
    rows = []
    for (task, _, m, seed, _), res in results:
        lo = ref[(task, seed)]
        for gd, (first, final, alarms) in res.items():
            ex = min((final - lo) / max(first - lo, 1e-12), 1.0) if np.isfinite(final) else 1.0
            rows.append((m, gd, ex, alarms, np.isfinite(final)))
    n_tasks = len({j[0] for j in jobs})
    print(f"{len(jobs)} runs x {len(GUARDS)} guards, {n_tasks} tasks of {', '.join(args.sets)}, seeds "
          f"{','.join(map(str, args.seeds))}; excess = share of the achievable descent lost (0: as good as the best "
          "unguarded good run; 1: nothing learned or NaN)")
    print(f"{'lr / best':>10s}  " + "  ".join(f"{gd:>26s}" for gd in GUARDS))
    for m in MULTIPLES:
        cells = []
        for gd in GUARDS:
            sub = [r for r in rows if r[0] == m and r[1] == gd]
            cells.append(f"{np.mean([r[2] for r in sub]):5.3f} NaN {1 - np.mean([r[4] for r in sub]):4.0%} "
                         f"alarmed {np.mean([r[3] > 0 for r in sub]):4.0%}")
        print(f"{m:10.3g}  " + "  ".join(f"{c:>26s}" for c in cells))
    for what, sel in (("good (1/2-2x)", lambda m: m <= 2), ("too high (4-32x)", lambda m: m >= 4)):
        ex = {gd: np.array([r[2] for r in rows if sel(r[0]) and r[1] == gd]) for gd in GUARDS}
        vs = {other: ex["lrkit"] - ex[other] for other in ("none", "nan_rollback")}
        print(f"{what}: mean excess " + ", ".join(f"{gd} {v.mean():.3f}" for gd, v in ex.items()) + "; lrkit "
              + "; ".join(f"against {o}: better by > 0.05 in {np.mean(d < -0.05):.0%} of the runs, worse by > 0.05 "
                          f"in {np.mean(d > 0.05):.0%}" for o, d in vs.items()))
    print(f"\ntrained in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
