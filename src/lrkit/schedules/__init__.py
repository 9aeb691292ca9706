"""Learning-rate schedules: pure functions of the optimiser step, composable, serialisable and resumable.

``s = cosine(peak=3e-4, steps=10_000, final=3e-5)``; ``s(1234) -> float``; ``s(np.arange(n)) -> ndarray``;
``parse("warmup(500) >> cosine(3e-4, 10000, final=3e-5)")``; ``str(s)`` is a spec again. Conventions (lengths,
floors, boundaries, step 0) are pinned in :mod:`lrkit.schedules.conventions`. Imports numpy only: each framework's
adapter turns a schedule into its own scheduler (``lrkit.torch.scheduler``, ``lrkit.lightning.scheduler``,
``lrkit.transformers.scheduler``, ``lrkit.keras.scheduler``, ``lrkit.jax.scheduler``).
"""

from __future__ import annotations

from lrkit.schedules import presets
from lrkit.schedules._base import MAX_KEY_STEPS, Schedule, ramp, sample_steps
from lrkit.schedules.combinators import clamp, cycle, join, mul, scale, sequence, shift, warmup
from lrkit.schedules.conventions import training_steps
from lrkit.schedules.families import (
    constant,
    cosine,
    cosine_restarts,
    cyclical,
    exponential,
    inverse_sqrt,
    inverse_time,
    linear,
    multistep,
    onecycle,
    onecycle_fastai,
    onecycle_momentum,
    polynomial,
    step,
    wsd,
)
from lrkit.schedules.plateau import plateau
from lrkit.schedules.spec import SpecError, as_schedule, parse

from_dict = Schedule.from_dict

__all__ = [
    "MAX_KEY_STEPS", "Schedule", "SpecError", "as_schedule", "clamp", "constant", "cosine", "cosine_restarts", "cycle", "cyclical", "exponential",
    "from_dict", "inverse_sqrt", "inverse_time", "join", "linear", "mul", "multistep", "onecycle",
    "onecycle_fastai", "onecycle_momentum", "parse", "plateau", "polynomial", "presets", "ramp", "scale", "sequence",
    "shift", "step",
    "sample_steps", "training_steps", "warmup", "wsd",
]

