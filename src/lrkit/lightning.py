"""``lrkit.lightning``: lrkit for Lightning — the range test (:func:`find_lr`, the :class:`LRFinder` callback at fit
start, :class:`LightningStepper`), lrkit schedules as a Lightning scheduler (:func:`scheduler` for
``configure_optimizers``, or the :class:`ScheduleCallback`), and the live doctor (:class:`LrMonitor`).

Importing this module imports Lightning (``pip install 'lrkit[lightning]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.lightning import LightningStepper, LRFinder, ScheduleCallback, find_lr, scheduler
from lrkit.integrations.lightning_monitor import LrMonitor

__all__ = ["LRFinder", "LightningStepper", "LrMonitor", "ScheduleCallback", "find_lr", "scheduler"]
