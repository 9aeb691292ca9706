"""``lrkit.keras``: the range test for Keras 3 (``find_lr``, the ``LRFinder`` callback), lrkit schedules as
``LearningRateSchedule``, and the live doctor as a callback (``LrMonitorKerasCallback``).

Importing this module imports keras (``pip install 'lrkit[keras]'``; choose the backend with ``KERAS_BACKEND``
before importing it); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.keras import KerasTrainer, LRFinder, find_lr, restore_model, snapshot_model
from lrkit.integrations.keras_monitor import LrMonitorKerasCallback
from lrkit.integrations.keras_schedule import KerasSchedule, keras_schedule

__all__ = ["KerasSchedule", "KerasTrainer", "LRFinder", "LrMonitorKerasCallback", "find_lr", "keras_schedule",
           "restore_model", "snapshot_model"]
