"""The Schedule type: a pure function ``step -> lr`` evaluated on ints or numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from lrkit.errors import LrkitError


class Schedule:
    """A learning rate as a pure function of the optimiser step (0-based; steps count optimiser updates).

    Subclasses implement ``_eval(xp, t)`` with array operations of the namespace ``xp`` (numpy here), so
    the same code is vectorised over steps. ``s(1234) -> float``; ``s(np.arange(n)) -> ndarray``.
    """

    def _eval(self, xp: Any, t: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: Any) -> Any:
        t = np.asarray(step, dtype=np.float64)
        out = np.asarray(self._eval(np, t), dtype=np.float64)
        if out.shape != t.shape:
            out = np.broadcast_to(out, t.shape).copy()
        return float(out) if out.ndim == 0 else out


class _Ramp(Schedule):
    def __init__(self, start_lr: float, end_lr: float, steps: int, mode: str) -> None:
        self.start_lr, self.end_lr, self.steps, self.mode = float(start_lr), float(end_lr), int(steps), mode

    def _eval(self, xp: Any, t: Any) -> Any:
        frac = xp.clip(t / max(self.steps - 1, 1), 0.0, 1.0)
        if self.mode == "exponential":
            return self.start_lr * (self.end_lr / self.start_lr) ** frac
        return self.start_lr + (self.end_lr - self.start_lr) * frac

    def __repr__(self) -> str:
        return f"ramp({self.start_lr:g}, {self.end_lr:g}, {self.steps}, mode={self.mode!r})"


def ramp(start_lr: float, end_lr: float, steps: int, mode: str = "exponential") -> Schedule:
    """The range test's ramp: ``start_lr`` at step 0 to ``end_lr`` at step ``steps - 1``, then held.

    ``mode="exponential"``: lr = start * (end/start) ** (t / (steps-1)); ``"linear"``: straight line.
    """
    if mode not in ("exponential", "linear"):
        raise LrkitError(f"ramp mode must be 'exponential' or 'linear', got {mode!r}")
    if not (np.isfinite(start_lr) and start_lr > 0):
        raise LrkitError(f"start_lr must be a positive finite number, got {start_lr!r}")
    if not (np.isfinite(end_lr) and end_lr > start_lr):
        raise LrkitError(f"end_lr must be larger than start_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}; "
                         "swap them or raise end_lr")
    if int(steps) < 2:
        raise LrkitError(f"a ramp needs at least 2 steps, got steps={steps!r}")
    return _Ramp(start_lr, end_lr, steps, mode)
