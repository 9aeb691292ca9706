"""Lightning callback for the live doctor: :class:`LrMonitor` feeds every optimiser step's loss, lr and
gradient norm to a :class:`~lrkit.doctor.Monitor`; it warns by default and, with ``act=...``, restores the last
good state and lowers the lr (divergence, NaN), rolls back and skips batches (spike), or lowers the lr (plateau).

Lightning divides ``outputs["loss"]`` by the accumulation count; the callback sums the micro-batches of one
optimiser step, so the Monitor sees the step's mean loss at ``trainer.global_step``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lrkit.doctor.monitor import Event, Monitor
from lrkit.errors import missing_extra

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without lightning
    raise missing_extra(e.name or "lightning", "lightning") from e

from lrkit.integrations.torch_monitor import Snapshots, UpdateRatio, handle, resolve_actions, total_norm


class LrMonitor(pl.Callback):
    """Watch a Lightning run with the lr doctor. ``act``: False (warn), True (rollback, skip_batches, lower_lr)
    or a set of actions; ``snapshot_every``: optimiser steps between last-good snapshots (CPU memory);
    ``skip_batches``: batches skipped after a spike; ``grad_norm``: also track the total gradient norm;
    ``update_ratio``: also measure each step's update-to-weight ratio and gradient alignment (cos(-gradient, previous
    update); two copies of the weights).
    Other keyword arguments go to :class:`~lrkit.doctor.Monitor`. ``.monitor`` and ``.events`` stay readable."""

    def __init__(self, monitor: Monitor | None = None, act: bool | str | Iterable[str] = False,
                 snapshot_every: int = 50, skip_batches: int | None = None, grad_norm: bool = True,
                 update_ratio: bool = False, **monitor_kwargs: Any) -> None:
        super().__init__()
        self.monitor = monitor if monitor is not None else Monitor(**monitor_kwargs)
        self.acts = resolve_actions(act)
        self.snapshot_every = int(snapshot_every)
        self.skip_batches = 2 * self.snapshot_every if skip_batches is None else int(skip_batches)
        self.track_grad_norm, self.track_update_ratio = grad_norm, update_ratio
        self._ratio: UpdateRatio | None = None
        self.events: list[Event] = []
        self._acc_loss, self._last_step, self._gn = 0.0, None, None
        self._skip, self._skipped = 0, False
        self._snaps: Snapshots | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if self.acts:  # the state before the next update (-1 at a fresh start: before the first one)
            self._snaps = Snapshots(pl_module, trainer.optimizers[0], self.snapshot_every)
            self._snaps.take(trainer.global_step - 1, self.monitor)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._skipped = self._skip > 0
        if self._skipped:  # skipping after a spike: no gradient, so the optimiser leaves every weight alone
            self._skip -= 1
            for p in pl_module.parameters():
                p.grad = None
            return
        if self.track_update_ratio:
            self._ratio = self._ratio or UpdateRatio(pl_module.parameters(), alignment=True)
            self._ratio.before()
        if self.track_grad_norm:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self._gn = total_norm(grads) if grads else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self._acc_loss += float(loss)
        if trainer.global_step == self._last_step:
            return  # still accumulating micro-batches
        step, total = trainer.global_step - 1, self._acc_loss
        self._acc_loss, self._last_step = 0.0, trainer.global_step
        if self._skipped:
            self._skipped = False
            return
        opt = trainer.optimizers[0]
        ratio = self._ratio.after() if self._ratio is not None else None
        events = self.monitor.update(step, total, lr=opt.param_groups[0]["lr"], grad_norm=self._gn,
                                     update_ratio=ratio, grad_alignment=self._ratio.alignment if self._ratio else None)
        self._gn = None
        if events:
            self.events += events
            sched = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
            if self._snaps is None:
                self._snaps = Snapshots(pl_module, opt, self.snapshot_every)
            self._skip = max(self._skip, handle(events, self.acts, self._snaps, self.monitor, opt, step, sched,
                                                self.skip_batches, self._ratio))
        elif self.acts and self._snaps is not None:
            self._snaps.keep(step, self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "skip": self._skip}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict["monitor"])
        self._skip = int(state_dict.get("skip", 0))
