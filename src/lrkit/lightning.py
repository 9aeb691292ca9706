"""``lrkit.lightning``: the range test, an LR-finder callback and schedule/monitor callbacks for Lightning.

Importing this module imports Lightning (``pip install 'lrkit[lightning]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from importlib.util import find_spec

from lrkit.integrations.lightning import LightningTrainer, LRFinder, ScheduleCallback, find_lr
from lrkit.integrations.torch_scheduler import lightning_scheduler

__all__ = ["LightningTrainer", "LRFinder", "ScheduleCallback", "find_lr", "lightning_scheduler"]

if find_spec("lrkit.integrations.lightning_monitor") is not None:  # the doctor's live monitor, once it exists
    from lrkit.integrations import lightning_monitor as _monitor

    for _name in getattr(_monitor, "__all__", ()):
        globals()[_name] = getattr(_monitor, _name)
        __all__.append(_name)
