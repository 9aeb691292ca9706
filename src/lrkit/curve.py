"""A loss trace (steps, values, lrs) and the math on it shared by the finder, the doctor and the monitor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lrkit.errors import LrkitError


def ema(values: Sequence[float] | np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Exponential moving average with bias correction (Adam-style): ``avg_t / (1 - beta**(t+1))``.

    Non-finite values propagate from where they occur (the average becomes NaN/inf there, as the raw loss did).
    """
    if not 0.0 <= beta < 1.0:
        raise LrkitError(f"smoothing beta must be in [0, 1), got {beta!r}")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    avg = 0.0
    for i, v in enumerate(x):  # a recurrence; n is small (hundreds) wherever this is used on a full array
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


class EMA:
    """Online bias-corrected exponential moving average: O(1) per update, the same numbers as :func:`ema`."""

    __slots__ = ("beta", "_avg", "_n")

    def __init__(self, beta: float = 0.98) -> None:
        if not 0.0 <= beta < 1.0:
            raise LrkitError(f"smoothing beta must be in [0, 1), got {beta!r}")
        self.beta, self._avg, self._n = float(beta), 0.0, 0

    def update(self, value: float) -> float:
        """Add one value; return the bias-corrected average so far."""
        self._n += 1
        self._avg = self.beta * self._avg + (1.0 - self.beta) * float(value)
        return self._avg / (1.0 - self.beta**self._n)

    @property
    def value(self) -> float:
        """The current bias-corrected average (NaN before the first update)."""
        return self._avg / (1.0 - self.beta**self._n) if self._n else float("nan")


@dataclass
class Curve:
    """A loss trace: ``steps`` (optimiser steps), ``values`` (loss), and ``lrs`` (the lr at each step, or None)."""

    steps: np.ndarray
    values: np.ndarray
    lrs: np.ndarray | None = None
    name: str = "loss"
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.steps.shape != self.values.shape or self.values.ndim != 1:
            raise LrkitError(f"a Curve needs 1-d steps and values of the same length, got {self.steps.shape} "
                             f"and {self.values.shape}")
        if self.lrs is not None:
            self.lrs = np.asarray(self.lrs, dtype=np.float64)
            if self.lrs.shape != self.values.shape:
                raise LrkitError(f"lrs must have one value per step: {self.lrs.shape} vs {self.values.shape}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def smoothed(self, beta: float = 0.98) -> np.ndarray:
        """The bias-corrected EMA of ``values``."""
        return ema(self.values, beta)
