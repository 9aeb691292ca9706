"""``lrkit.transformers``: the range test for a Hugging Face ``Trainer`` and lrkit schedules as its scheduler.

Importing this module imports transformers (``pip install 'lrkit[transformers]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.transformers import HFTrainer, find_lr, scheduler, use_schedule
from lrkit.integrations.transformers_monitor import LrMonitorTrainerCallback

__all__ = ["LrMonitorTrainerCallback", "HFTrainer", "find_lr", "scheduler", "use_schedule"]
