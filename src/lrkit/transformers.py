"""``lrkit.transformers``: the range test for a Hugging Face ``Trainer`` and lrkit schedules as its scheduler.

Importing this module imports transformers (``pip install 'lrkit[transformers]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from importlib.util import find_spec

from lrkit.integrations.transformers import HFTrainer, find_lr, scheduler, use_schedule

__all__ = ["HFTrainer", "find_lr", "scheduler", "use_schedule"]

if find_spec("lrkit.integrations.transformers_monitor") is not None:  # the doctor's live monitor, once it exists
    from lrkit.integrations import transformers_monitor as _monitor

    for _name in getattr(_monitor, "__all__", ()):
        globals()[_name] = getattr(_monitor, _name)
        __all__.append(_name)
