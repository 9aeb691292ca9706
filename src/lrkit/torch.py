"""``lrkit.torch``: lrkit for a plain PyTorch loop — the range test (:func:`find_lr`, :class:`LRFinder` inside your own
loop, :class:`TorchStepper`), lrkit schedules as a torch scheduler (:func:`scheduler`), and the live doctor
(:class:`LrMonitor`). Under ``torch.distributed`` :func:`find_lr` shares the loss across ranks
(:class:`DistributedStepper`).

Importing this module imports torch (``pip install 'lrkit[torch]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.distributed import DistributedStepper, maybe_distributed
from lrkit.integrations.torch import LRFinder, TorchStepper, apply_lr, find_lr
from lrkit.integrations.torch_monitor import LrMonitor
from lrkit.integrations.torch_scheduler import ScheduleLR, scheduler

__all__ = ["DistributedStepper", "LRFinder", "LrMonitor", "ScheduleLR", "TorchStepper", "apply_lr", "find_lr",
           "maybe_distributed", "scheduler"]
