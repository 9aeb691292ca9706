"""Quality of the doctor's direction (raise / lower / keep) on real curves over lr grids.

Run: ``python benchmarks/doctor/bench_quality.py`` (generates the curves first if they are not cached).
Reports per-class accuracy and the confusion matrix on the tuning tasks and, separately, on the held-out tasks
(never used to set thresholds). Targets: >= 90% on too-high and good, >= 80% on too-low.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import make_curves  # noqa: E402
from labelled import EXPECTED, load  # noqa: E402

from lrkit.doctor import diagnose  # noqa: E402

CLASSES = ("too_high", "good", "too_low")
ACTIONS = ("lower", "keep", "raise")


def report(runs: list[dict], title: str, verbose: bool = False) -> dict[str, float]:
    conf = {c: dict.fromkeys(ACTIONS, 0) for c in CLASSES}
    for r in runs:
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
    report([r for r in runs if not r["held_out"]], "tuning tasks", verbose)
    report([r for r in runs if r["held_out"]], "HELD-OUT tasks", verbose)
    print(f"\n{len(runs)} labelled curves diagnosed in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
