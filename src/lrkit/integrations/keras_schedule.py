"""Keras 3 adapter: an lrkit schedule as a ``keras.optimizers.schedules.LearningRateSchedule``.

    opt = keras.optimizers.AdamW(learning_rate=lrkit.keras.scheduler("warmup(500) >> cosine(3e-4, 10000)"))

It serialises with the model (``get_config`` holds the spec; registered as ``lrkit>KerasSchedule``) and is
computed with ``keras.ops``, so it works on every backend, inside compiled train steps too.
"""

from __future__ import annotations

from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.schedules._base import Schedule
from lrkit.schedules.spec import as_schedule

try:
    import keras
except ImportError as e:  # pragma: no cover - exercised only without keras
    raise missing_extra("keras", "keras") from e


def _parse(schedule: Schedule | str) -> Schedule:
    schedule = as_schedule(schedule)
    if schedule._stateful():
        raise LrkitError(f"{schedule} has a plateau piece, whose state would be frozen in a compiled Keras step; "
                         "use keras.callbacks.ReduceLROnPlateau with a float learning rate instead")
    return schedule


@keras.saving.register_keras_serializable(package="lrkit")
class KerasSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``step -> lr`` with ``keras.ops`` (dtype ``keras.config.floatx()``); ``get_config() == {"spec": ...}``."""

    def __init__(self, spec: Schedule | str) -> None:
        super().__init__()
        self.schedule = _parse(spec)

    def __call__(self, step: Any) -> Any:
        t = keras.ops.cast(step, keras.config.floatx())
        return self.schedule._eval(keras.ops, t)

    def get_config(self) -> dict[str, Any]:
        return {"spec": str(self.schedule)}


def scheduler(schedule: Schedule | str) -> KerasSchedule:
    """A Keras 3 ``LearningRateSchedule`` from a Schedule or spec (plateau pieces refused)."""
    return KerasSchedule(schedule)


__all__ = ["KerasSchedule", "scheduler"]
