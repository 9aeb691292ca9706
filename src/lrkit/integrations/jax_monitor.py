"""JAX/optax helper for the live doctor: :class:`LrMonitor` watches a training loop with a
:class:`~lrkit.doctor.Monitor`, warns by default and, with ``act=...``, restores the last good state and lowers the
lr.

JAX state is immutable, so :meth:`LrMonitor.update` takes the step's ``params`` and ``opt_state`` and returns the
ones to continue from: the same, or the last good snapshot (device copies, taken after healthy steps at least
``snapshot_every`` steps apart) with the lr changed through the injected ``learning_rate``
(:func:`lrkit.jax.inject_lr`). The lr the Monitor sees is read from there too. Example::

    monitor = lrkit.jax.LrMonitor(act=True)
    for step, batch in enumerate(batches):
        params, opt_state, loss = train_step(params, opt_state, batch, lr)
        params, opt_state = monitor.update(step, loss, params, opt_state)
        lr = lrkit.jax.get_lr(opt_state)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lrkit.doctor.monitor import Event, Monitor, report, resolve_actions
from lrkit.errors import LrkitError
from lrkit.integrations.jax import _fresh, get_lr, set_lr

JAX_ACTIONS = frozenset({"rollback", "lower_lr", "raise_lr"})


class LrMonitor:
    """Watch a JAX loop with the lr doctor. ``act``: False (warn), True (rollback on a NaN, divergence or spike,
    and lower_lr on a plateau) or a set of those actions and "raise_lr"; ``snapshot_every``: steps between
    last-good snapshots (default 50). Skipping batches is the loop's own business: a spike rolls back instead.
    Other keyword arguments go to :class:`~lrkit.doctor.Monitor`; ``.monitor`` and ``.events`` stay readable."""

    def __init__(self, monitor: Monitor | None = None, act: bool | str | Iterable[str] = False,
                 snapshot_every: int = 50, **monitor_kwargs: Any) -> None:
        if int(snapshot_every) < 1:
            raise LrkitError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.acts = resolve_actions(act, default=frozenset({"rollback", "lower_lr"}), allowed=JAX_ACTIONS,
                                    why="; skip the batches in your loop if you need to")
        self.monitor = monitor if monitor is not None else Monitor(**monitor_kwargs)
        self.snapshot_every = int(snapshot_every)
        self.events: list[Event] = []
        self._snap: tuple[Any, Any] | None = None
        self._snap_step = -1

    def update(self, step: int, loss: Any, params: Any, opt_state: Any,
               grad_norm: float | None = None) -> tuple[Any, Any]:
        """Record one optimiser step (its loss and the state after it); warn, act if asked, and return the
        ``(params, opt_state)`` to continue from."""
        lr = get_lr(opt_state)
        events = self.monitor.update(int(step), float(np.asarray(loss)), lr=lr, grad_norm=grad_norm)
        if not events:
            if self.acts and self.monitor.healthy and step - self._snap_step >= self.snapshot_every:
                self._snap, self._snap_step = (_fresh(params), _fresh(opt_state)), int(step)
            return params, opt_state
        self.events += events
        for ev in events:
            acted = ""
            action = "rollback" if ev.action == "skip_batches" else ev.action
            if action in self.acts:
                if action == "rollback":
                    if self._snap is not None:  # the weights and optimiser state of then, the lr of now
                        params, opt_state = _fresh(self._snap[0]), _fresh(self._snap[1])
                        if lr is not None:
                            opt_state = set_lr(opt_state, lr)
                        self.monitor.reset_after_rollback(int(step))
                        acted = f"restored the snapshot of step {self._snap_step}"
                    else:
                        acted = "no snapshot yet to restore"
                if ev.factor is not None and lr is not None and action in ("rollback", "lower_lr", "raise_lr"):
                    opt_state = set_lr(opt_state, lr * ev.factor)
                    acted += (", " if acted else "") + f"lr x{ev.factor:g} -> {lr * ev.factor:.3g}"
            report(ev, acted)
        return params, opt_state


__all__ = ["LrMonitor"]
