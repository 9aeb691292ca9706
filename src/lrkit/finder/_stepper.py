"""The one thing a framework must provide for the range test: a :class:`Stepper`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Stepper(Protocol):
    """What the range test drives: one optimiser step at a given lr, and a way to undo everything.

    ``step(lr)`` runs one optimiser step at this lr and returns the training loss, or None when the step was
    skipped (e.g. a GradScaler found inf gradients) and must not be recorded. ``snapshot()`` captures everything
    the test changes (weights, buffers, optimiser state, RNGs, the data's position); ``restore(snap)`` puts it back
    bit for bit. Optional: ``evaluate() -> float``, the validation loss (a stepper without validation data has no
    ``evaluate`` or sets it to None); ``optimizer``, read by :func:`lrkit.finder.infer_family` so the rule knows
    Adam from SGD; ``base_lrs``, the optimiser's lr per param group (group 0 first; for ``start_lr=None``);
    ``steps_per_epoch``, optimiser steps in one pass over the training data (for ``num_iter=None``);
    ``use_group_ramps(ranges, mode)``, to ramp each param group over its own ``(start, end)`` (per-group lists):
    ``step(lr)`` then gets group 0's lr and sets each group's with :func:`group_lrs`. Each framework's adapter has
    one (``lrkit.torch.TorchStepper``, ``lrkit.keras.KerasStepper``...).
    """

    def step(self, lr: float) -> float | None: ...

    def snapshot(self) -> object: ...

    def restore(self, snap: object) -> None: ...


class Replay:
    """A :class:`Stepper` that plays recorded losses back, one per step, ignoring the lr: the engine's verdict on a
    recorded curve. Restoring rewinds it."""

    def __init__(self, losses: Sequence[float]) -> None:
        self.losses, self.i = list(losses), 0

    def step(self, lr: float) -> float:
        self.i += 1
        return self.losses[self.i - 1]

    def snapshot(self) -> None:
        return None

    def restore(self, snap: object) -> None:
        self.i = 0


def group_lrs(lr: float, ranges: Sequence[Sequence[float]], mode: str = "exponential") -> list[float]:
    """Every param group's lr when group 0's is ``lr``, each group ramping over its own ``(start, end)`` in
    ``ranges`` along the same schedule (``mode`` "exponential" or "linear"): group 0's position on its ramp, mapped
    onto each group's."""
    s0, e0 = ranges[0]
    if mode == "linear":
        t = (lr - s0) / (e0 - s0)
        lrs = [float(s + t * (e - s)) for s, e in ranges]
    else:
        t = math.log(lr / s0) / math.log(e0 / s0)
        lrs = [float(s * (e / s) ** t) for s, e in ranges]
    return [float(lr)] + lrs[1:]  # group 0's exactly


def can_evaluate(stepper: object) -> bool:
    """Whether ``stepper`` has validation data: a callable ``evaluate``."""
    return callable(getattr(stepper, "evaluate", None))
