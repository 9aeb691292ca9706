"""``lrkit.jax``: lrkit for JAX/optax — the range test on your ``train_step`` (:func:`find_lr`, :class:`LRFinder`
inside your own loop, :class:`JaxStepper`), lrkit schedules as optax schedules (:func:`scheduler`, jit-compatible),
the live doctor (:class:`LrMonitor`), and lr injection (:func:`inject_lr`, :func:`set_lr`, :func:`get_lr`).

Importing this module imports jax and optax (``pip install 'lrkit[jax]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.jax import (
    JaxStepper,
    LRFinder,
    find_lr,
    get_lr,
    hyperparams,
    inject_lr,
    make_train_step,
    set_lr,
)
from lrkit.integrations.jax_monitor import LrMonitor
from lrkit.integrations.optax_schedule import OptaxSchedule, scheduler

__all__ = ["JaxStepper", "LRFinder", "LrMonitor", "OptaxSchedule", "find_lr", "get_lr", "hyperparams", "inject_lr",
           "make_train_step", "scheduler", "set_lr"]
