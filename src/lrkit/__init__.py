"""lrkit: the learning-rate toolkit — range test, schedules, a doctor for training logs, and sweeps.

Importing lrkit imports numpy only; framework adapters load their framework when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from lrkit import schedules
from lrkit.curve import Curve
from lrkit.doctor import Diagnosis, Monitor, diagnose, read_log
from lrkit.errors import LrkitError
from lrkit.finder import FinderResult, Trainer, range_test
from lrkit.search import StepwiseResult, SweepResult, stepwise, stepwise_search, sweep
from lrkit.suggest import Suggestion, suggest

__version__ = "0.1.0"

# public names that live behind an optional framework, loaded on first use
_LAZY = {
    "find_lr": "lrkit.integrations.torch",
    "TorchTrainer": "lrkit.integrations.torch",
    "torch_scheduler": "lrkit.integrations.torch_scheduler",
}

__all__ = [
    "Curve", "Diagnosis", "FinderResult", "LrkitError", "Monitor", "StepwiseResult", "Suggestion", "SweepResult",
    "Trainer", "diagnose", "range_test", "read_log", "schedules", "stepwise", "stepwise_search", "suggest", "sweep",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
