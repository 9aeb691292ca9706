"""The one thing a framework must provide for the range test: a :class:`Stepper`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Stepper(Protocol):
    """What the range test drives: one optimiser step at a given lr, and a way to undo everything.

    ``step(lr)`` runs one optimiser step at this lr and returns the training loss, or None when the step was
    skipped (e.g. a GradScaler found inf gradients) and must not be recorded. ``snapshot()`` captures everything
    the test changes (weights, buffers, optimiser state, RNGs, the data's position); ``restore(snap)`` puts it back
    bit for bit. Optional: ``evaluate() -> float``, the validation loss (a stepper without validation data has no
    ``evaluate`` or sets it to None), and ``optimizer``, read by :func:`lrkit.finder.infer_family` so the rule knows
    Adam from SGD. Each framework's adapter has one (``lrkit.torch.TorchStepper``, ``lrkit.keras.KerasStepper``...).
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


def can_evaluate(stepper: object) -> bool:
    """Whether ``stepper`` has validation data: a callable ``evaluate``."""
    return callable(getattr(stepper, "evaluate", None))
