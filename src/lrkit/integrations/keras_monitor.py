"""Keras 3 callback for the live doctor: :class:`LrMonitor` feeds each batch's own loss to a
:class:`~lrkit.doctor.Monitor` inside ``model.fit``, warns by default and, with ``act=...``, restores the last good
state and lowers the lr.

Keras batch logs hold the running mean of the loss since the epoch began, not the batch's loss; the callback reads
the batch's own mean loss from the loss tracker's sum and count (exact, a last partial batch included) and leaves the
logs and the progress bar as they are (a model without Keras' loss tracker, e.g. with its own ``train_step``: the
logged loss is taken as the batch's). Snapshots (host memory, every model, optimiser and metric variable) are taken
after healthy batches, at least ``snapshot_every`` batches apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from lrkit.doctor.monitor import Event, Monitor, SnapshotKeeper, report, resolve_actions
from lrkit.errors import LrkitError, missing_extra

try:
    import keras
except ImportError as e:  # pragma: no cover - exercised only without keras
    raise missing_extra("keras", "keras") from e

from lrkit.integrations.keras import restore_model, snapshot_model

KERAS_ACTIONS = frozenset({"rollback", "lower_lr", "raise_lr"})


def _value(v: Any) -> float:
    """A scalar variable or tensor as a float (a backend scalar's own float(): ~10x cheaper than convert_to_numpy)."""
    v = getattr(v, "value", v)
    try:
        return float(v)
    except TypeError:
        return float(keras.ops.convert_to_numpy(v))


class _OpsUpdateRatio:
    """:class:`~lrkit.integrations.torch_monitor.UpdateRatio` in ``keras.ops``, for backends other than torch. It asks
    ``variables()`` afresh at each call: under JAX, fit frees the arrays it updates, and a callback's ``self.model``
    syncs the variables' values first. No gradient alignment: these backends do not hand callbacks the gradients."""

    alignment: float | None = None

    def __init__(self, variables: Callable[[], list[Any]]) -> None:
        self.variables = variables
        self._before: list[Any] | None = None

    def forget(self) -> None:
        """Nothing to drop: no previous update is kept."""

    def before(self) -> None:
        ops = keras.ops  # detached copies: no autograd graph on backends that record one
        self._before = [ops.copy(ops.stop_gradient(v.value)) for v in self.variables()]

    def after(self) -> float | None:
        before, self._before = self._before, None
        if before is None:
            return None
        ops = keras.ops
        # two scalars on the device, read once (one host sync per batch, not one per variable)
        moved = _value(ops.sum(ops.stack([ops.sum(ops.square(ops.subtract(ops.stop_gradient(a), b)))
                                          for a, b in zip((v.value for v in self.variables()), before)])))
        size = _value(ops.sum(ops.stack([ops.sum(ops.square(b)) for b in before])))
        return math.sqrt(moved / size) if size > 0 else None


class _Snapshots(SnapshotKeeper):
    """Host copies of every model, optimiser and metric variable (:func:`lrkit.integrations.keras.snapshot_model`),
    kept by the guard's rules (:class:`~lrkit.doctor.monitor.SnapshotKeeper`); a copy with a NaN weight is not kept."""

    def __init__(self, model: keras.Model, every: int) -> None:
        super().__init__(every)
        self.model = model

    def copy(self) -> dict[str, Any] | None:
        snap = snapshot_model(self.model)
        ok = all(np.isfinite(v).all() for v in snap["variables"] if np.issubdtype(v.dtype, np.floating))
        return snap if ok else None

    def put_back(self, state: dict[str, Any]) -> None:
        restore_model(self.model, state)


class LrMonitor(keras.callbacks.Callback):
    """Watch ``model.fit`` with the lr doctor (see the module docstring). ``act``: False (warn), True (rollback on a
    NaN, divergence or spike, and lower_lr on a plateau) or a set of those actions and "raise_lr"; ``stop_on_nan``:
    stop fit on a NaN loss when not acting (default True); ``snapshot_every``: batches between last-good snapshots
    (default 50); ``update_ratio``: also measure each batch's update-to-weight ratio ||w_new - w_old|| / ||w_old||
    over the trainable variables (one copy of them per batch, on their device), which sharpens the doctor's verdict
    (on the torch backend also the gradient alignment cos(-gradient, previous update), as the PyTorch helpers; other
    backends do not hand callbacks the gradients).
    Skipping batches after a spike cannot be done inside ``fit``: a spike rolls back instead. Other keyword arguments
    go to :class:`~lrkit.doctor.Monitor`."""

    def __init__(self, monitor: Monitor | None = None, act: bool | str | Iterable[str] = False,
                 snapshot_every: int = 50, stop_on_nan: bool = True, update_ratio: bool = False,
                 **monitor_kwargs: Any) -> None:
        super().__init__()
        if int(snapshot_every) < 1:
            raise LrkitError(f"snapshot_every must be >= 1, got {snapshot_every}")
        acts = resolve_actions(act, default=frozenset({"rollback", "lower_lr"}), allowed=KERAS_ACTIONS,
                               why="; skipping batches is not possible inside model.fit")
        self.monitor = monitor if monitor is not None else Monitor(**monitor_kwargs)
        self.acts, self.snapshot_every, self.stop_on_nan = acts, int(snapshot_every), bool(stop_on_nan)
        self.events: list[Event] = []
        self.losses: list[float] = []  # each batch's own loss, as the Monitor saw it
        self._step = 0
        self._prev = (0.0, 0.0)  # the loss tracker's (sum, count) after the previous batch
        self._snaps: _Snapshots | None = None
        self._loss_metric: Any = None
        self.track_update_ratio = bool(update_ratio)
        self._probe: Any = None  # the update ratio's measure, made at a fit's first batch and kept across its batches
        self.ratios: list[float] = []  # each batch's update-to-weight ratio, when measured

    def _tracker(self) -> tuple[float, float] | None:
        """The loss tracker's (sum, count) since the epoch began, or None when the model has none."""
        m = self._loss_metric
        if m is None:
            m = next((m for m in getattr(self.model, "metrics", []) if m.name == "loss" and hasattr(m, "total")
                      and hasattr(m, "count")), None)
            if m is None:
                return None
            self._loss_metric = m
        return _value(m.total), _value(m.count)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._loss_metric = None  # found again on the first batch (compile may have rebuilt the metrics)
        self._probe = None  # and the variables the update ratio reads
        if self.acts:  # the state before the next batch's update (-1 at the first fit: before any)
            self._snaps = _Snapshots(self.model, self.snapshot_every)
            self._snaps.take(self._step - 1, self.monitor)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self.track_update_ratio:
            return
        if self._probe is None:
            if keras.backend.backend() == "torch":  # the PyTorch helper's measure (keras.ops dispatch costs ~5x more)
                from lrkit.integrations.torch_monitor import UpdateRatio

                # torch updates these tensors in place (a restore too), and leaves the batch's gradients in .grad
                self._probe = UpdateRatio([v.value for v in self.model.trainable_variables], alignment=True)
            else:
                self._probe = _OpsUpdateRatio(lambda: self.model.trainable_variables)
        self._probe.before()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._prev = (0.0, 0.0)  # fit resets the metrics at each epoch's start

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        probe = self._probe
        ratio = probe.after() if probe is not None else None
        align = probe.alignment if probe is not None else None
        sums = self._tracker()
        if sums is not None and sums[1] > self._prev[1]:
            loss = (sums[0] - self._prev[0]) / (sums[1] - self._prev[1])
            self._prev = sums
        elif sums is None and "loss" in logs:  # no loss tracker (a custom train_step): its logged loss as it is
            loss = float(logs["loss"])
        else:
            return
        step = self._step
        self._step += 1
        self.losses.append(loss)
        if ratio is not None:
            self.ratios.append(ratio)
        events = self.monitor.update(step, loss, lr=self._lr(), update_ratio=ratio, grad_alignment=align)
        if not events:
            if self._snaps is not None:
                self._snaps.keep(step, self.monitor)
            return
        self.events += events
        self._handle(events, step)

    def _lr(self) -> float | None:
        opt = self.model.optimizer
        try:  # a plain lr is a variable (read it directly); a schedule is evaluated by the property
            current = getattr(opt, "_learning_rate", None)
            return _value(current if hasattr(current, "value") else opt.learning_rate)
        except Exception:  # noqa: BLE001 - an optimiser without a readable lr: the Monitor goes without it
            return None

    def _handle(self, events: list[Event], step: int) -> None:
        """Carry out the allowed actions, tell the Monitor what was done and say it in one line per event."""
        for ev in events:
            acted = ""
            action = "rollback" if ev.action == "skip_batches" else ev.action
            if action in self.acts:
                restored = None
                if action == "rollback":
                    restored = self._snaps.restore() if self._snaps is not None else None
                    if restored is not None:
                        if self._probe is not None:  # the previous update no longer led to the weights
                            self._probe.forget()
                        self._prev = self._tracker() or (0.0, 0.0)  # the tracker came back with the snapshot
                        acted = ("restored the state from before the first batch" if restored < 0 else
                                 f"restored the snapshot of batch {restored}")
                    else:
                        acted = "no snapshot yet to restore"
                lr = None
                if ev.factor is not None and action in ("rollback", "lower_lr", "raise_lr"):
                    acted += (", " if acted else "") + self._scale_lr(ev.factor)
                    lr = self._lr()
                self.monitor.acted(step, restored=restored, lr=lr)
            elif ev.kind == "nan" and self.stop_on_nan and not self.acts:
                self.model.stop_training = True
                acted = "stopped training"
            report(ev, acted)

    def _scale_lr(self, factor: float) -> str:
        opt = self.model.optimizer
        current = getattr(opt, "_learning_rate", None)
        if isinstance(current, keras.optimizers.schedules.LearningRateSchedule) or callable(current):
            return "the lr is a schedule: not changed (scale the schedule and restart)"
        lr = _value(opt.learning_rate) * factor
        if not math.isfinite(lr) or lr <= 0:
            return "lr not changed"
        opt.learning_rate = lr
        return f"lr x{factor:.2g} -> {lr:.3g}"
