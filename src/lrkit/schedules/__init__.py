"""Learning-rate schedules: pure functions of the optimiser step, composable and serialisable."""

from lrkit.schedules._base import Schedule, ramp

__all__ = ["Schedule", "ramp"]
