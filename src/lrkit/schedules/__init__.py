"""Learning-rate schedules: pure functions of the optimiser step, composable, serialisable and resumable.

``s = cosine(peak=3e-4, steps=10_000, final=3e-5)``; ``s(1234) -> float``; ``s(np.arange(n)) -> ndarray``;
``parse("warmup(500) >> cosine(3e-4, 10000, final=3e-5)")``; ``str(s)`` is a spec again. Conventions (lengths,
floors, boundaries, step 0) are pinned in :mod:`lrkit.schedules.conventions`. Framework adapters
(``torch_scheduler``, ``keras_schedule``, ``optax_schedule``, ``lightning_scheduler``) load their framework lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from lrkit.schedules import presets
from lrkit.schedules._base import Schedule, ramp
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
from lrkit.schedules.spec import SpecError, parse

from_dict = Schedule.from_dict

_LAZY = {
    "torch_scheduler": "lrkit.integrations.torch_scheduler",
    "ScheduleLR": "lrkit.integrations.torch_scheduler",
    "lightning_scheduler": "lrkit.integrations.torch_scheduler",
    "keras_schedule": "lrkit.integrations.keras_schedule",
    "optax_schedule": "lrkit.integrations.optax_schedule",
}

__all__ = [
    "Schedule", "SpecError", "clamp", "constant", "cosine", "cosine_restarts", "cycle", "cyclical", "exponential",
    "from_dict", "inverse_sqrt", "inverse_time", "join", "linear", "mul", "multistep", "onecycle",
    "onecycle_fastai", "onecycle_momentum", "parse", "plateau", "polynomial", "presets", "ramp", "scale", "sequence",
    "shift", "step",
    "training_steps", "warmup", "wsd", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrkit.schedules' has no attribute {name!r}")
