"""PyTorch adapter: drive any lrkit schedule as a real ``torch.optim.lr_scheduler.LRScheduler``.

    sched = scheduler(optimizer, "warmup(500) >> cosine(3e-4, 10000)")    # lrkit.torch.scheduler
    for batch in loader: loss.backward(); optimizer.step(); sched.step()   # one step per optimiser update
    sched.observe(val_loss)                                               # only for plateau pieces

Every param group gets ``schedule(step) * ratio`` (ratios = the groups' lrs at construction relative to the first
group's, or given); the optimiser's current lr is never read again, so resuming needs only ``state_dict()``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.schedules._base import Schedule
from lrkit.schedules.spec import as_schedule

try:
    import torch
    from torch.optim.lr_scheduler import LRScheduler
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch") from e


def _own(s: Schedule) -> Schedule:
    """A private copy where the schedule has plateau state, so two schedulers never share it."""
    return copy.deepcopy(s) if s._stateful() else s


class ScheduleLR(LRScheduler):
    """An ``LRScheduler`` that sets every param group to ``schedule(step) * ratio`` each ``step()``.

    Args:
        optimizer: the torch optimiser.
        schedule: a Schedule or spec, or one per param group (then ratios default to 1).
        momentum: optional Schedule/spec for momentum (SGD ``momentum``) or beta1 (Adam ``betas[0]``),
            e.g. ``onecycle(...).momentum()``.
        ratios: per-group multipliers; default: each group's lr at construction / the first group's lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Any, momentum: Any = None,
                 ratios: Sequence[float] | None = None, last_epoch: int = -1) -> None:
        groups = optimizer.param_groups
        if isinstance(schedule, (list, tuple)):
            if len(schedule) != len(groups):
                raise LrkitError(f"got {len(schedule)} schedules for {len(groups)} param groups; "
                                 "pass one schedule, or one per group")
            self.schedules = [_own(as_schedule(s, f"schedule[{i}]")) for i, s in enumerate(schedule)]
            default_ratios = [1.0] * len(groups)
        else:
            self.schedules = [_own(as_schedule(schedule, "schedule"))] * len(groups)
            first = float(groups[0]["lr"])
            default_ratios = [float(g["lr"]) / first if first > 0 else 1.0 for g in groups]
        if ratios is not None and len(ratios) != len(groups):
            raise LrkitError(f"got {len(ratios)} ratios for {len(groups)} param groups; give one per group")
        self.ratios = [float(r) for r in (default_ratios if ratios is None else ratios)]
        self._shared = all(s is self.schedules[0] for s in self.schedules)
        self.momentum = None if momentum is None else as_schedule(momentum, "momentum")
        if self.momentum is not None and not all("momentum" in g or "betas" in g for g in groups):
            raise LrkitError(f"momentum cycling needs an optimiser with 'momentum' or 'betas', "
                             f"{type(optimizer).__name__} has neither; drop momentum=")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lrs for the current step (``last_epoch``), one per param group."""
        t = self.last_epoch if self.last_epoch > 0 else 0
        if self._shared:  # one schedule for all groups: evaluate it once
            v = self.schedules[0](t)
            return [v * r for r in self.ratios]
        return [s(t) * r for s, r in zip(self.schedules, self.ratios)]

    def _apply(self) -> None:
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if type(group["lr"]) is float:
                group["lr"] = lr
            elif isinstance(group["lr"], torch.Tensor):  # a tensor lr (capturable optimisers) is filled in place
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        if self.momentum is not None:
            m = self.momentum(max(self.last_epoch, 0))
            for group in self.optimizer.param_groups:
                if "betas" in group:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m
        self._last_lr = lrs

    def step(self, epoch: int | None = None) -> None:
        """Advance one optimiser step (or jump to step ``epoch``) and set the lrs. No order warnings: a step
        skipped by a ``GradScaler`` is still a step of the schedule."""
        self._step_count = getattr(self, "_step_count", 0) + 1
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self._apply()

    def observe(self, metric: float) -> None:
        """Report a metric (e.g. validation loss) to plateau pieces; the lr changes at once if they cut it."""
        seen = set()
        for s in self.schedules:
            if id(s) not in seen:
                seen.add(id(s))
                s.observe(float(metric), max(self.last_epoch, 0))
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Step, ratios, the specs (checked on load) and the plateau state: all that resuming needs."""
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count, "ratios": list(self.ratios),
                "schedules": [str(s) for s in self.schedules],
                "momentum": None if self.momentum is None else str(self.momentum),
                "schedule_state": [s.state_dict() for s in self.schedules]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: same specs required; sets the optimiser's lrs for the saved step at once."""
        mine = [str(s) for s in self.schedules]
        if state_dict.get("schedules") != mine:
            raise LrkitError(f"this checkpoint was saved with schedule(s) {state_dict.get('schedules')} but the "
                             f"scheduler was built with {mine}; build it from the same spec")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.ratios = [float(r) for r in state_dict["ratios"]]
        seen = set()
        for s, st in zip(self.schedules, state_dict["schedule_state"]):
            if id(s) not in seen:
                seen.add(id(s))
                s.load_state_dict(st)
        self._apply()


def scheduler(optimizer: torch.optim.Optimizer, schedule: Any, momentum: Any = None,
              ratios: Sequence[float] | None = None) -> ScheduleLR:
    """A torch ``LRScheduler`` driving ``schedule`` (Schedule or spec); call ``.step()`` after each
    ``optimizer.step()``. See :class:`ScheduleLR`."""
    return ScheduleLR(optimizer, schedule, momentum=momentum, ratios=ratios)


__all__ = ["ScheduleLR", "scheduler"]
