"""``lrkit.keras``: lrkit for Keras 3 — the range test (:func:`find_lr` with ``train_on_batch``, the
:class:`LRFinder` callback inside ``model.fit``, :class:`KerasStepper`), lrkit schedules as a
``LearningRateSchedule`` (:func:`scheduler`), and the live doctor (:class:`LrMonitor`).

Importing this module imports keras (``pip install 'lrkit[keras]'``; choose the backend with ``KERAS_BACKEND``
before importing it); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.keras import KerasStepper, LRFinder, find_lr, restore_model, snapshot_model
from lrkit.integrations.keras_monitor import LrMonitor
from lrkit.integrations.keras_schedule import KerasSchedule, scheduler

__all__ = ["KerasSchedule", "KerasStepper", "LRFinder", "LrMonitor", "find_lr", "restore_model", "scheduler",
           "snapshot_model"]
