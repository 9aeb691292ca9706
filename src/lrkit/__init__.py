"""lrkit: the learning-rate toolkit — range test, schedules, a doctor for training logs, and sweeps.

The parts: :mod:`lrkit.finder` (the range test: :func:`range_test`, :class:`FinderOptions`, the rules),
:mod:`lrkit.schedules`, :mod:`lrkit.doctor` (:func:`diagnose`, :func:`diagnose_runs`, :class:`Monitor`), the sweeps (:func:`sweep`,
:func:`stepwise_search`), and one module per framework: ``lrkit.torch``, ``lrkit.lightning``,
``lrkit.transformers``, ``lrkit.keras``, ``lrkit.jax`` (each: a stepper, ``find_lr``, ``LRFinder``, ``scheduler``,
``LrMonitor``). Importing lrkit imports numpy only; a framework module loads its framework when imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from lrkit import finder, schedules
from lrkit.curve import Curve
from lrkit.doctor import Diagnosis, Monitor, SweepDiagnosis, diagnose, diagnose_runs, read_log, read_runs
from lrkit.errors import LrkitError
from lrkit.finder import FinderOptions, FinderResult, Stepper, Stop, Suggestion, range_test
from lrkit.search import StepwiseResult, SweepResult, stepwise, stepwise_search, sweep

__version__ = "0.1.0"

# lrkit.find_lr is lrkit.torch.find_lr, the most common entry; torch is loaded on first use
_LAZY = {"find_lr": "lrkit.integrations.torch"}

__all__ = [
    "Curve", "Diagnosis", "FinderOptions", "FinderResult", "LrkitError", "Monitor", "Stepper", "StepwiseResult",
    "Stop", "Suggestion", "SweepDiagnosis", "SweepResult", "diagnose", "diagnose_runs", "finder", "range_test",
    "read_log", "read_runs", "schedules", "stepwise", "stepwise_search", "sweep", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
