"""Argument checks shared by the factories: each raises LrkitError naming the argument, the value and the fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lrkit.errors import LrkitError


def number(where: str, name: str, v: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, fix: str = "") -> float:
    """``v`` as a finite float within [low, high] (open ends where asked)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        rng = []
        if low is not None:
            rng.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            rng.append(f"{'<' if high_open else '<='} {high:g}")
        need = "a finite number" + (" " + " and ".join(rng) if rng else "")
        raise LrkitError(f"{where}: {name} must be {need}, got {v!r}" + (f"; {fix}" if fix else ""))
    return float(v)


def lr(where: str, name: str, v: Any) -> float:
    """A learning rate: finite and >= 0."""
    return number(where, name, v, low=0.0, fix="learning rates are absolute values such as 3e-4")


def final(where: str, v: Any, peak: float) -> float:
    """A decay's end value: an absolute lr in [0, peak]."""
    return number(where, "final", v, low=0.0, high=peak,
                  fix=f"final is the absolute lr the decay ends at, at most peak ({peak:g}); for a rising lr use "
                      "linear(start, end, steps) or warmup")


def count(where: str, name: str, v: Any, *, low: int = 1, fix: str = "") -> int:
    """``v`` as an int >= low (a float with an integral value is accepted)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
        raise LrkitError(f"{where}: {name} must be an int >= {low}, got {v!r}"
                         + (f"; {fix}" if fix else "; steps count optimiser updates"))
    return v


def choice(where: str, name: str, v: Any, options: Sequence[str]) -> str:
    if v not in options:
        raise LrkitError(f"{where}: {name} must be one of {', '.join(map(repr, options))}, got {v!r}")
    return v


def schedule(where: str, name: str, v: Any) -> Any:
    from lrkit.schedules._base import Schedule

    if isinstance(v, (int, float)) and not isinstance(v, bool):
        from lrkit.schedules.families import constant

        return constant(v)
    if not isinstance(v, Schedule):
        raise LrkitError(f"{where}: {name} must be a schedule (or a number for a constant lr), got {v!r}")
    return v
