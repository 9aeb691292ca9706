"""From a suggestion to a training recipe: a peak lr, warmup and decay as a schedule spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lrkit.errors import LrkitError
from lrkit.finder._rules import Suggestion

SCHEDULES = ("onecycle", "cosine", "wsd")


@dataclass(frozen=True)
class Recipe:
    """A peak lr, warmup and decay for a schedule family, as a spec that :func:`lrkit.schedules.parse` accepts."""

    schedule: str
    peak_lr: float
    warmup_steps: int
    total_steps: int
    spec: str
    reason: str


def recipe(result, schedule: str = "onecycle", total_steps: int = 1000, peak_scale: float = 1.0) -> Recipe:
    """A training recipe from a suggestion (a :class:`Suggestion` or anything with ``.suggestion``).

    The peak is the suggested lr times ``peak_scale`` (default 1: the benchmark measures the suggestion as a
    constant lr). Warmup: one-cycle's own 30% ramp; for ``cosine`` and ``wsd`` 5% of ``total_steps`` (10% when
    the suggestion's confidence is below 0.5). Decay: cosine to peak/100; wsd cools down over the last 20%.
    """
    sug = result if isinstance(result, Suggestion) else getattr(result, "suggestion", None)
    if not isinstance(sug, Suggestion):
        raise LrkitError(f"recipe needs a Suggestion or a result with .suggestion, got {type(result).__name__}")
    if schedule not in SCHEDULES:
        raise LrkitError(f"unknown schedule {schedule!r} for a recipe; choose one of: {', '.join(SCHEDULES)}")
    if not isinstance(total_steps, (int, np.integer)) or total_steps < 10:
        raise LrkitError(f"total_steps must be an integer >= 10 (optimiser steps of the whole run), got "
                         f"{total_steps!r}")
    if not peak_scale > 0:
        raise LrkitError(f"peak_scale must be positive, got {peak_scale!r}")
    if sug.lr is None:
        raise LrkitError(f"no recipe without a trustworthy suggestion: {sug.reason}")
    peak = float(f"{sug.lr * peak_scale:.3g}")
    total = int(total_steps)
    frac = 0.05 if sug.confidence >= 0.5 else 0.10
    if schedule == "onecycle":
        warm = int(round(0.3 * total))
        spec = f"onecycle({peak:g}, {total})"
        how = "one-cycle: 30% warmup from peak/25, then cosine down to peak/2.5e5 (torch's convention)"
    elif schedule == "cosine":
        warm = max(1, int(round(frac * total)))
        spec = f"warmup({warm}) >> cosine({peak:g}, {total - warm}, final={peak / 100:.3g})"
        how = f"{warm} linear warmup steps, then cosine decay to peak/100 over the remaining {total - warm}"
    else:
        warm = max(1, int(round(frac * total)))
        spec = f"wsd({peak:g}, {total}, warmup={warm})"
        how = f"{warm} warmup steps, hold at the peak, linear cooldown to 0 over the last 20%"
    reason = f"peak {peak:g} = the suggested lr" + (f" x {peak_scale:g}" if peak_scale != 1 else "") + f"; {how}"
    return Recipe(schedule, peak, warm, total, spec, reason)
