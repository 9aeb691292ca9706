"""``lrkit.lightning``: the range test, an LR-finder callback and schedule/monitor callbacks for Lightning.

Importing this module imports Lightning (``pip install 'lrkit[lightning]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.lightning import LightningTrainer, LRFinder, ScheduleCallback, find_lr
from lrkit.integrations.lightning_monitor import LrMonitorCallback
from lrkit.integrations.torch_scheduler import lightning_scheduler

__all__ = ["LrMonitorCallback", "LightningTrainer", "LRFinder", "ScheduleCallback", "find_lr", "lightning_scheduler"]
