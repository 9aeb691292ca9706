"""The doctor's direction on lrkit's labelled runs of one or more cached sets, per class, with its harmful calls.

Run: ``python benchmarks/doctor/score_sets.py final9,final10`` (the sets of ``make_curves.SETS``, cached under
``benchmarks/doctor/.cache``; ``make_curves.py`` builds them). Each run is diagnosed twice: with every signal it
logged (loss, lr, grad norm, update ratio, alignment) and with the loss and the lr only. A call agrees when it is
``lower`` on a too-high run (lr >= 4x the best), ``keep`` on a good one, ``raise`` on a too-low one (<= 1/10); it is
harmful when it is ``raise`` on a too-high run, ``lower`` on a too-low one, or a raise beyond 3x on a good one.
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))
from labelled import EXPECTED, load_set  # noqa: E402

from lrkit.curve import Curve  # noqa: E402
from lrkit.doctor import diagnose  # noqa: E402


def harmful(label: str, action: str | None, factor: float) -> bool:
    return ((label == "too_high" and action == "raise") or (label == "too_low" and action == "lower")
            or (label == "good" and action == "raise" and factor > 3))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: score_sets.py SET[,SET...]   e.g. final9,final10")
    warnings.simplefilter("ignore")
    runs = [r for name in args[0].split(",") for r in load_set(name)]
    for mode in ("every logged signal", "the loss and the lr only"):
        agree = dict.fromkeys(EXPECTED, 0)
        harm = dict.fromkeys(EXPECTED, 0)
        total = dict.fromkeys(EXPECTED, 0)
        for r in runs:
            c = r["curve"]
            if mode != "every logged signal":
                c = Curve(c.steps, c.values, c.lrs, name=c.name, meta=dict(c.meta))
            rec = diagnose(c).recommendation
            lab = r["label"]
            total[lab] += 1
            agree[lab] += rec.action == EXPECTED[lab]
            harm[lab] += harmful(lab, rec.action, rec.factor)
        print(f"{args[0]}, {mode}: " + "  ".join(
            f"{k} {agree[k] / max(total[k], 1):.1%} (harmful {harm[k]}, n={total[k]})" for k in EXPECTED))


if __name__ == "__main__":
    main()
