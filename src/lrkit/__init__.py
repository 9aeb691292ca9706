"""lrkit: the learning-rate toolkit — range test, schedules, a doctor for training logs, and sweeps.

Importing lrkit imports numpy only; framework adapters load their framework when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from lrkit import schedules
from lrkit.curve import Curve
from lrkit.errors import LrkitError
from lrkit.finder import FinderResult, Trainer, range_test
from lrkit.suggest import Suggestion, suggest

__version__ = "0.1.0"

# public names that live behind an optional framework or a heavier module, loaded on first use
_LAZY = {
    "find_lr": "lrkit.integrations.torch",
    "TorchTrainer": "lrkit.integrations.torch",
}

__all__ = [
    "Curve", "FinderResult", "LrkitError", "Suggestion", "Trainer", "range_test", "schedules", "suggest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
