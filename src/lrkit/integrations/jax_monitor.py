"""JAX/optax helper for the live doctor: :class:`LrMonitor` watches a training loop with a
:class:`~lrkit.doctor.Monitor`, warns by default and, with ``act=...``, restores the last good state and lowers the
lr.

JAX state is immutable, so :meth:`LrMonitor.update` takes the step's ``params`` and ``opt_state`` and returns the
ones to continue from: the same, or the last good snapshot (device copies, taken after healthy steps at least
``snapshot_every`` steps apart) with the lr changed through the injected ``learning_rate``
(:func:`lrkit.jax.inject_lr`). The lr the Monitor sees is read from there too. Example::

    monitor = lrkit.jax.LrMonitor(act=True)
    monitor.start(params, opt_state)  # the state before the first update: where a run that blows up at once goes
    for step, batch in enumerate(batches):
        params, opt_state, loss = train_step(params, opt_state, batch, lr)
        params, opt_state = monitor.update(step, loss, params, opt_state)
        lr = lrkit.jax.get_lr(opt_state)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from lrkit.doctor.monitor import Event, Monitor, SnapshotKeeper, report, resolve_actions
from lrkit.errors import LrkitError
from lrkit.integrations.jax import _fresh, get_lr, set_lr

JAX_ACTIONS = frozenset({"rollback", "lower_lr", "raise_lr"})


class _Snapshots(SnapshotKeeper):
    """Device copies of ``(params, opt_state)`` kept by the guard's rules (:class:`~lrkit.doctor.monitor.SnapshotKeeper`):
    :attr:`current` is the state the loop handed over, :attr:`restored` the one a restore put back."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.current: tuple[Any, Any] | None = None
        self.restored: tuple[Any, Any] | None = None

    def copy(self) -> tuple[Any, Any] | None:
        leaves = jax.tree_util.tree_leaves(self.current[0])
        if not all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves):
            return None
        return _fresh(self.current[0]), _fresh(self.current[1])

    def put_back(self, state: tuple[Any, Any]) -> None:
        self.restored = (_fresh(state[0]), _fresh(state[1]))


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
        self._snaps = _Snapshots(self.snapshot_every)

    def start(self, params: Any, opt_state: Any) -> None:
        """Keep the state before the first update as the first good snapshot (step -1): with ``act``, a run that blows
        up in its first steps has somewhere to go back to."""
        if self.acts:
            self._snaps.current = (params, opt_state)
            self._snaps.take(-1, self.monitor)

    def update(self, step: int, loss: Any, params: Any, opt_state: Any,
               grad_norm: float | None = None) -> tuple[Any, Any]:
        """Record one optimiser step (its loss and the state after it); warn, act if asked, and return the
        ``(params, opt_state)`` to continue from."""
        lr = get_lr(opt_state)
        events = self.monitor.update(int(step), float(np.asarray(loss)), lr=lr, grad_norm=grad_norm)
        self._snaps.current = (params, opt_state)
        if not events:
            if self.acts:
                self._snaps.keep(int(step), self.monitor)
            return params, opt_state
        self.events += events
        for ev in events:
            acted = ""
            action = "rollback" if ev.action == "skip_batches" else ev.action
            if action in self.acts:
                restored, new_lr = None, None
                if action == "rollback":
                    restored = self._snaps.restore()
                    if restored is not None:  # the weights and optimiser state of then, the lr of now
                        params, opt_state = self._snaps.restored
                        if lr is not None:
                            opt_state = set_lr(opt_state, lr)
                        acted = ("restored the state from before the first update" if restored < 0 else
                                 f"restored the snapshot of step {restored}")
                    else:
                        acted = "no snapshot yet to restore"
                if ev.factor is not None and lr is not None and action in ("rollback", "lower_lr", "raise_lr"):
                    lr = new_lr = lr * ev.factor
                    opt_state = set_lr(opt_state, new_lr)
                    acted += (", " if acted else "") + f"lr x{ev.factor:.2g} -> {new_lr:.3g}"
                self.monitor.acted(int(step), restored=restored, lr=new_lr)
            report(ev, acted)
        return params, opt_state


__all__ = ["LrMonitor"]
