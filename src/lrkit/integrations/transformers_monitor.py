"""transformers callback for the live doctor: :class:`LrMonitor` feeds each logged row (``loss``
is the mean over the logging window, ``learning_rate``, ``grad_norm``) to a :class:`~lrkit.doctor.Monitor`
created with ``window=args.logging_steps`` (a windowed mean needs no spike persistence). It warns by default and,
with ``act=...``, restores the last good state and lowers the lr, rolls back and skips batches, or lowers the lr
on a plateau. Snapshots (CPU memory) are taken at a logged row that looked healthy, at least ``snapshot_every``
optimiser steps apart. At each logged row the weights are checked: NaN weights are a NaN event whatever the log says
(the Trainer's ``logging_nan_inf_filter`` hides NaN losses), and a NaN row over finite weights is skipped (the
Trainer's running loss stays NaN once a NaN entered it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lrkit.doctor.monitor import Event, Monitor
from lrkit.errors import missing_extra

try:
    import torch
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise missing_extra("transformers", "transformers") from e

from lrkit.integrations.torch_monitor import Snapshots, UpdateRatio, handle, resolve_actions


class LrMonitor(TrainerCallback):
    """Watch a Hugging Face ``Trainer`` run with the lr doctor (see the module docstring). ``act``: False (warn),
    True (rollback, skip_batches, lower_lr) or a set of actions; ``stop_on_nan``: stop training on a NaN loss
    when not acting (default True); ``update_ratio``: also measure the update-to-weight ratio and the gradient alignment
    (cos(-gradient, previous update)) of each optimiser step (two copies of the weights) and pass their means over the
    logging window. Other keyword arguments go
    to :class:`~lrkit.doctor.Monitor`."""

    def __init__(self, monitor: Monitor | None = None, act: bool | str | Iterable[str] = False,
                 snapshot_every: int = 50, skip_batches: int | None = None, stop_on_nan: bool = True,
                 update_ratio: bool = False, **monitor_kwargs: Any) -> None:
        self.monitor = monitor
        self._monitor_kwargs = monitor_kwargs
        self.acts = resolve_actions(act)
        self.snapshot_every = int(snapshot_every)
        self.skip_batches = 2 * self.snapshot_every if skip_batches is None else int(skip_batches)
        self.stop_on_nan = stop_on_nan
        self.events: list[Event] = []
        self._snaps: Snapshots | None = None
        self._skip = 0
        self.track_update_ratio = update_ratio
        self._ratio: UpdateRatio | None = None
        self._ratios: list[float] = []  # the steps' ratios since the last logged row
        self._aligns: list[float] = []  # and their gradient alignments

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.monitor is None:  # one logged row = one mean over logging_steps steps; judge a crawl after 10 rows
            self.monitor = Monitor(**{"window": max(int(args.logging_steps), 1) if args.logging_steps > 1 else None,
                                      "check_after": 10, **self._monitor_kwargs})
        if self.acts and model is not None and optimizer is not None:
            self._snaps = Snapshots(model, optimizer, self.snapshot_every)
            self._snaps.take(state.global_step, self.monitor)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._skip > 0 and model is not None:  # skipping after a spike: no gradient, no update
            self._skip -= 1
            for p in model.parameters():
                p.grad = None
            return
        if self.track_update_ratio and model is not None:
            self._ratio = self._ratio or UpdateRatio(model.parameters(), alignment=True)
            self._ratio.before()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        r = self._ratio.after() if self._ratio is not None else None
        if r is not None:
            self._ratios.append(r)
        if self._ratio is not None and self._ratio.alignment is not None:
            self._aligns.append(self._ratio.alignment)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, model: Any = None,
               optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or self.monitor is None:
            return
        ratio = sum(self._ratios) / len(self._ratios) if self._ratios else None
        align = sum(self._aligns) / len(self._aligns) if self._aligns else None
        self._ratios, self._aligns = [], []
        loss = float(logs["loss"])
        if model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            loss = math.nan  # the weights went NaN, whatever the log says (logging_nan_inf_filter hides the NaN loss)
        elif not math.isfinite(loss):
            # finite weights under a NaN row: the Trainer's running loss stays NaN once a NaN entered it (it resets
            # it by subtracting it from itself); this row says nothing about the run now
            return
        events = self.monitor.update(state.global_step, loss, lr=logs.get("learning_rate"),
                                     grad_norm=logs.get("grad_norm"), update_ratio=ratio, grad_alignment=align)
        if not events:
            if self._snaps is not None:  # snapshots only after healthy logged windows (the Monitor vouches for them)
                self._snaps.keep(state.global_step, self.monitor)
            return
        self.events += events
        if self._snaps is None and model is not None and optimizer is not None:
            self._snaps = Snapshots(model, optimizer, self.snapshot_every)
        self._skip = max(self._skip, handle(events, self.acts, self._snaps, self.monitor, optimizer,
                                            state.global_step, lr_scheduler, self.skip_batches, self._ratio))
        if self.stop_on_nan and not self.acts and any(e.kind == "nan" for e in events):
            control.should_training_stop = True
