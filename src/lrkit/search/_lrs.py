"""Candidate learning rates: parsing ``lo:hi:n`` / lists, and a span around a range test's pick."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrkit.errors import LrkitError


def clean_lr(x: float) -> float:
    """Round to 12 significant digits, so an lr is the same key in every run and every storage."""
    return float(f"{float(x):.12g}")


def parse_lrs(spec: str | Sequence[float]) -> list[float]:
    """Candidate lrs, increasing and distinct, from ``"lo:hi:n"`` (n log-spaced values, ends included),
    ``"a,b,c"``, or a sequence of numbers."""
    if isinstance(spec, str):
        text = spec.strip()
        unreadable = LrkitError(f"cannot read lrs {spec!r}; write lo:hi:n (e.g. 1e-4:1e-1:7 for 7 log-spaced "
                                "lrs) or a comma-separated list (e.g. 1e-3,3e-3,1e-2)")
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise unreadable
            try:
                lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise unreadable from None
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi and n >= 2):
                raise LrkitError(f"bad lr range {spec!r}: need 0 < lo < hi and n >= 2, e.g. 1e-4:1e-1:7 "
                                 "(7 log-spaced lrs from 1e-4 to 1e-1)")
            return [clean_lr(v) for v in np.geomspace(lo, hi, n)]
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise unreadable from None
    else:
        try:
            values = [float(v) for v in np.asarray(spec, dtype=np.float64).ravel()]
        except (TypeError, ValueError):
            raise LrkitError(f"lrs must be numbers, got {spec!r}") from None
    if not values:
        raise LrkitError("no lrs given; pass e.g. lrs='1e-4:1e-1:7'")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise LrkitError(f"every lr must be a positive finite number, got {bad[0]!r}")
    return sorted({clean_lr(v) for v in values})


def lrs_around(pick: Any, decades: float = 1.0, num: int = 7) -> list[float]:
    """``num`` log-spaced lrs spanning ``decades`` decades centred on ``pick`` (an lr, a Suggestion or a
    FinderResult; default one decade: pick/3.16 .. pick*3.16)."""
    lr = getattr(getattr(pick, "suggestion", pick), "lr", pick)
    if lr is None:
        reason = getattr(getattr(pick, "suggestion", pick), "reason", "")
        raise LrkitError(f"the range test has no suggestion to sweep around ({reason}); give --lrs instead")
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0) or not decades > 0 or int(num) < 2:
        raise LrkitError(f"cannot sweep around lr={lr!r} over {decades!r} decades with {num!r} points; need a "
                         "positive lr, decades > 0 and num >= 2")
    half = 10.0 ** (decades / 2)
    return [clean_lr(v) for v in np.geomspace(lr / half, lr * half, int(num))]
