"""``lrkit.transformers``: lrkit for a Hugging Face ``Trainer`` — the range test (:func:`find_lr`, the
:class:`LRFinder` callback when ``train()`` begins, :class:`TransformersStepper`), lrkit schedules as its scheduler
(:func:`scheduler`, :func:`use_schedule`), and the live doctor (:class:`LrMonitor`).

Importing this module imports transformers (``pip install 'lrkit[transformers]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.torch_scheduler import scheduler
from lrkit.integrations.transformers import LRFinder, TransformersStepper, find_lr, use_schedule
from lrkit.integrations.transformers_monitor import LrMonitor

__all__ = ["LRFinder", "LrMonitor", "TransformersStepper", "find_lr", "scheduler", "use_schedule"]
