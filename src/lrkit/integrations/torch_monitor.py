"""PyTorch helper for the live doctor: :class:`LrMonitor` watches a training loop with a
:class:`~lrkit.doctor.Monitor`, warns by default, and on request acts.

Acting (``act=True`` or a set of actions): on a NaN/divergence restore the last good snapshot (kept in CPU memory
every ``snapshot_every`` healthy steps) and lower the lr; on a spike roll back and skip the next batches (as
large-model runs recover from loss spikes); on a plateau lower the lr. Raising the lr of a crawling run is only
done when ``"raise_lr"`` is asked for explicitly.

Example::

    guard = LrMonitor(model, optimizer, act=True)
    for step, (x, y) in enumerate(loader):
        if guard.should_skip():
            continue
        loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        guard.update(step, loss.item(), grad_norm=float(gn))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from lrkit.doctor.monitor import Event, Monitor, SnapshotKeeper, report, resolve_actions
from lrkit.errors import LrkitError, missing_extra

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch") from e

from lrkit.integrations.torch import _to_cpu, scale_lr


def total_norm(tensors: Iterable[torch.Tensor]) -> float:
    """The 2-norm of tensors taken together, in float32 at least (a bf16 step's tiny change would round away): a stack
    of per-tensor norms, cheaper on CPU than ``torch.nn.utils.get_total_norm`` (``bench_monitor_overhead.py``)."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])))


class UpdateRatio:
    """The update-to-weight ratio of one optimiser step, ||w_after - w_before|| / ||w_before|| over all trainable
    parameters: call :meth:`before` before ``optimizer.step()`` and :meth:`after` after it. Costs one copy of the
    weights (on their device) while a step is measured.

    ``alignment=True`` also measures the step's gradient alignment (:attr:`alignment`, set by :meth:`after`): the
    cosine between the gradient the step used and the previous step's update, cos(-g_t, w_t - w_t-1). Positive: the
    previous step's direction still descends (the lr could be higher); negative: it overshot (the sign of the
    hypergradient of Baydin et al., 2018). It keeps the update between steps (one more copy of the weights), needs
    the gradients still in ``.grad`` when :meth:`after` runs, and is unaffected by gradient scaling or clipping."""

    def __init__(self, params: Iterable[torch.Tensor], alignment: bool = False) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.track_alignment = bool(alignment)
        self.alignment: float | None = None  # of the last step measured (None: no previous update or no gradient)
        self._before: list[torch.Tensor] | None = None
        self._update: list[torch.Tensor] | None = None  # the previous step's w_t - w_t-1, kept for the alignment

    def before(self) -> None:
        """Copy the weights as they are now."""
        with torch.no_grad():
            self._before = [p.detach().clone() for p in self.params]

    def after(self) -> float | None:
        """The ratio since :meth:`before` (None without one, or when the weights were all zero); drops the copy."""
        if self._before is None:
            return None
        with torch.no_grad():
            den = total_norm(self._before)
            for b, p in zip(self._before, self.params):  # the copy becomes w_before - w_after (minus the update)
                b.sub_(p.detach())
            if self.track_alignment:
                self.alignment = self._align()
            num = total_norm(self._before)
        self._update = (self._before, num) if self.track_alignment else None
        self._before = None
        return num / den if den > 0 else None

    def _align(self) -> float | None:
        """cos(-g, previous update) over the parameters that have a gradient now (None where it is undefined)."""
        if self._update is None:
            return None
        neg_update, un = self._update
        pairs = [(p.grad, u) for p, u in zip(self.params, neg_update) if p.grad is not None]
        if not pairs:
            return None
        if len(pairs) < len(self.params):  # the previous update's norm over these parameters only
            un = total_norm(u for _, u in pairs)
        dot = float(torch.stack([torch.dot(g.float().reshape(-1), u.float().reshape(-1)) for g, u in pairs]).sum())
        gn = total_norm(g for g, _ in pairs)
        if not (gn > 0 and un > 0) or not math.isfinite(dot):
            return None
        return dot / (gn * un)  # g . (w_t-1 - w_t) = -g . update

    def forget(self) -> None:
        """Drop the previous update (after a rollback it no longer led to the current weights)."""
        self._update = None


def _copy_into(dst: Any, src: Any) -> bool:
    """Copy the tensors of the (nested) state ``src`` into the same-shaped ones of ``dst`` in place; False (``dst``
    then half written) when their keys, shapes or dtypes differ."""
    if isinstance(src, torch.Tensor):
        if not (isinstance(dst, torch.Tensor) and dst.shape == src.shape and dst.dtype == src.dtype):
            return False
        dst.copy_(src)
        return True
    if isinstance(src, dict):
        if not isinstance(dst, dict) or dst.keys() != src.keys():
            return False
        for k, v in src.items():
            if isinstance(v, (dict, torch.Tensor)):
                if not _copy_into(dst[k], v):
                    return False
            else:
                dst[k] = copy.deepcopy(v)
        return True
    return False


class Snapshots(SnapshotKeeper):
    """The last good state of a model and its optimiser, in CPU memory (when to take, confirm and restore one:
    :class:`~lrkit.doctor.monitor.SnapshotKeeper`). A restore keeps the optimiser's current lrs."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, every: int = 50) -> None:
        super().__init__(every)
        self.model, self.optimizer = model, optimizer

    def copy(self) -> tuple[dict, dict]:
        """Copies of the model's and the optimiser's state, written into the spare one when it has the same tensors
        (a NaN weight needs no check here: the NaN loss it gives next drops the snapshot before it counts)."""
        with torch.no_grad():
            spare, self.spare = self.spare, None
            model, opt = self.model.state_dict(), self.optimizer.state_dict()
            if spare is not None and _copy_into(spare[0], model) and _copy_into(spare[1]["state"], opt["state"]):
                spare[1]["param_groups"] = copy.deepcopy(opt["param_groups"])
                return spare
            return _to_cpu(model), _to_cpu(opt)

    def put_back(self, state: tuple[dict, dict]) -> None:
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.model.load_state_dict(state[0])
        self.optimizer.load_state_dict(state[1])
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr


def restored_words(step: int | None) -> str:
    """How a helper names the snapshot it restored (-1: the one taken before the first update)."""
    return "restored the state from before the first update" if step == -1 else f"restored the snapshot of step {step}"


def handle(events: list[Event], acts: frozenset[str], snaps: Snapshots | None, monitor: Monitor, optimizer: Any,
           step: int, scheduler: Any = None, skip_batches: int = 0, ratio: UpdateRatio | None = None) -> int:
    """Carry out the allowed actions of each event, tell the Monitor what was done (:meth:`Monitor.acted`) and say
    it in one line per event; returns how many batches to skip from now. A restore makes ``ratio`` forget the
    previous update (it no longer led to the weights)."""
    skip = 0
    for ev in events:
        acted = ""
        if ev.action in acts:
            restored = None
            if ev.action in ("rollback", "skip_batches"):
                restored = snaps.restore() if snaps is not None else None
                if restored is not None:
                    acted = restored_words(restored)
                    if ratio is not None:
                        ratio.forget()
                else:
                    acted = "no snapshot yet to restore"
                if ev.action == "skip_batches":
                    skip = max(skip, skip_batches)
                    acted += f", skipping the next {skip_batches} batches"
            lr = None
            if ev.factor is not None and optimizer is not None and ev.action in ("rollback", "lower_lr", "raise_lr"):
                scale_lr(optimizer, ev.factor, scheduler)
                lr = optimizer.param_groups[0]["lr"]
                acted += f"{', ' if acted else ''}lr x{ev.factor:.2g} -> {lr:.3g}"
            monitor.acted(step, restored=restored, lr=lr)
        report(ev, acted)
    return skip


class LrMonitor:
    """Watch a PyTorch loop: ``update(step, loss, grad_norm=None)`` after each optimiser step.

    ``act``: False (default: warn only), True (rollback, skip_batches, lower_lr) or a set of actions;
    ``snapshot_every``: steps between last-good snapshots (default 50, CPU memory); ``skip_batches``: batches
    to skip after a spike (default 2 x snapshot_every); ``scheduler``: an lr scheduler whose base lrs follow
    the lr changes; ``update_ratio``: also measure each step's update-to-weight ratio (the weights' change since
    the previous ``update`` call) and gradient alignment (cos(-gradient, previous update); the gradients must still be
    in ``.grad`` at ``update``), which sharpen the doctor's verdict; two copies of the weights on their device.
    Other keyword arguments go to :class:`~lrkit.doctor.Monitor`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, monitor: Monitor | None = None,
                 act: bool | str | Iterable[str] = False, snapshot_every: int = 50, skip_batches: int | None = None,
                 scheduler: Any = None, update_ratio: bool = False, **monitor_kwargs: Any) -> None:
        if snapshot_every < 1:
            raise LrkitError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.monitor = monitor if monitor is not None else Monitor(**monitor_kwargs)
        self.acts = resolve_actions(act)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.snapshots = Snapshots(model, optimizer, snapshot_every)
        self.snapshot_every = int(snapshot_every)
        self.skip_batches = 2 * self.snapshot_every if skip_batches is None else int(skip_batches)
        self._skip = 0
        self.events: list[Event] = []
        self._ratio = UpdateRatio(model.parameters(), alignment=True) if update_ratio else None
        if self.acts:  # the state before the first update: a run that blows up at once has somewhere to go back to
            self.snapshots.take(-1, self.monitor)
        if self._ratio is not None:
            self._ratio.before()

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> list[Event]:
        """Record one optimiser step (the lr is read from the optimiser); warn, and act if asked."""
        lr = self.optimizer.param_groups[0]["lr"]
        ratio = self._ratio.after() if self._ratio is not None else None
        align = self._ratio.alignment if self._ratio is not None else None
        events = self.monitor.update(step, float(loss), lr=lr, grad_norm=grad_norm, update_ratio=ratio,
                                     grad_alignment=align)
        if events:
            self.events += events
            self._skip = max(self._skip, handle(events, self.acts, self.snapshots, self.monitor, self.optimizer,
                                                step, self.scheduler, self.skip_batches, self._ratio))
        elif self.acts:
            self.snapshots.keep(step, self.monitor)
        if self._ratio is not None:
            self._ratio.before()  # after any rollback: the next step is measured from the weights it starts from
        return events

    def should_skip(self) -> bool:
        """True while batches are being skipped after a spike (each call consumes one)."""
        if self._skip > 0:
            self._skip -= 1
            return True
        return False


__all__ = ["LrMonitor", "Snapshots", "UpdateRatio", "handle", "resolve_actions", "scale_lr", "total_norm"]
