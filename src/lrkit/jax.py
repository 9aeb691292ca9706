"""``lrkit.jax``: the range test for a JAX ``train_step``, optax lr injection, and lrkit schedules as optax
schedules (jit-compatible).

Importing this module imports jax and optax (``pip install 'lrkit[jax]'``); ``import lrkit`` does not.
"""

from __future__ import annotations

from lrkit.integrations.jax import JaxTrainer, find_lr, inject_lr, make_train_step, set_lr
from lrkit.integrations.optax_schedule import OptaxSchedule, optax_schedule

__all__ = ["JaxTrainer", "OptaxSchedule", "find_lr", "inject_lr", "make_train_step", "optax_schedule", "set_lr"]
