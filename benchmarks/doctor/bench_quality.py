"""Quality of the doctor's direction (raise / lower / keep) on real curves over lr grids.

Run: ``python benchmarks/doctor/bench_quality.py`` (generates the curves first if they are not cached).
Reports per-class accuracy and the confusion matrix on the tuning tasks and, separately, on the held-out tasks
(never used to set thresholds). Targets: >= 90% on too-high and good, >= 80% on too-low. Side by side: the
eyeballing rule users apply by hand (NaN or ended above the start: lower; fell < 30%: raise; else keep), since
no library offers an lr doctor to compare with.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import make_curves  # noqa: E402
from labelled import EXPECTED, load  # noqa: E402

from lrkit.doctor import diagnose  # noqa: E402

CLASSES = ("too_high", "good", "too_low")
ACTIONS = ("lower", "keep", "raise")


def eyeball(curve) -> str:
    """The by-hand rule: NaN or ended above where it started -> lower; fell less than 30% -> raise; else keep."""
    y = curve.values
    if not np.isfinite(y).all():
        return "lower"
    first, last = np.median(y[:10]), np.median(y[-max(3, len(y) // 10):])
    if last > first:
        return "lower"
    return "raise" if (first - last) / abs(first) < 0.3 else "keep"


def report(runs: list[dict], title: str, verbose: bool = False, rule=None) -> dict[str, float]:
    conf = {c: dict.fromkeys(ACTIONS, 0) for c in CLASSES}
    for r in runs:
        if rule is not None:
            conf[r["label"]][rule(r["curve"])] += 1
            continue
        d = diagnose(r["curve"])
        conf[r["label"]][d.recommendation.action] += 1
        if verbose and d.recommendation.action != EXPECTED[r["label"]]:
            print(f"   miss {r['label']:8s} -> {d.recommendation.action:5s} {r['task']:24s} seed={r['seed']} "
                  f"lr={r['lr']:.3g} ({r['lr'] / r['best_lr']:.3g}x best) {d.verdict}")
    print(f"\n{title} ({len(runs)} curves)")
    print(f"{'label':10s} {'n':>4s}   " + "  ".join(f"{a:>6s}" for a in ACTIONS) + "   accuracy (target)")
    acc = {}
    for c in CLASSES:
        n = sum(conf[c].values())
        acc[c] = conf[c][EXPECTED[c]] / n if n else float("nan")
        target = 0.8 if c == "too_low" else 0.9
        print(f"{c:10s} {n:4d}   " + "  ".join(f"{conf[c][a]:6d}" for a in ACTIONS)
              + f"   {acc[c]:6.1%} ({target:.0%})")
    return acc


def main() -> None:
    if not os.path.exists(make_curves.CACHE):
        make_curves.main()
    t0 = time.time()
    runs = load()
    verbose = "-v" in sys.argv
    tasks = sorted({r["task"] for r in runs})
    print(f"{len(runs)} labelled curves from {len(tasks)} tasks (data|architecture|optimiser), 300 steps each; "
          f"held out: {sorted({r['task'] for r in runs if r['held_out']})}")
    report([r for r in runs if not r["held_out"]], "lrkit doctor, tuning tasks", verbose)
    report([r for r in runs if r["held_out"]], "lrkit doctor, HELD-OUT tasks", verbose)
    report([r for r in runs if r["held_out"]], "eyeballing rule, HELD-OUT tasks", rule=eyeball)
    report(runs, "lrkit doctor, all tasks")
    report(runs, "eyeballing rule, all tasks", rule=eyeball)
    print(f"\n{len(runs)} labelled curves diagnosed in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
