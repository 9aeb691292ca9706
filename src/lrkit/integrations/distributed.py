"""The range test under ``torch.distributed`` (DDP): every rank records the same curve and takes the same decisions.

:func:`lrkit.torch.find_lr` uses it by itself when a process group is initialised; for any other stepper,
``lrkit.range_test(maybe_distributed(stepper))`` on every rank. Each rank trains on its own shard;
:class:`DistributedStepper` shares the per-rank losses (one all-reduce of a
vector with one slot per rank) and gives every rank their mean, computed in rank order in float64, so the curve,
the stop decision and the suggestion are bit-for-bit the same on all ranks. Each rank restores its own model, optimiser and RNGs (the engine's ``finally``). A failure on
one rank is announced to the others through the same collective, so every rank raises instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import Stepper

try:
    import torch
    import torch.distributed as dist
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch") from e

_OK, _SKIPPED, _ERROR = 0.0, 1.0, 2.0


def is_distributed(group: Any = None) -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def is_main_process(group: Any = None) -> bool:
    """True on rank 0, or when not distributed (where progress bars and files are written)."""
    return not is_distributed(group) or dist.get_rank(group) == 0


class DistributedStepper:
    """A :class:`lrkit.Stepper` whose ``step(lr)`` returns the mean loss over all ranks of ``group``.

    Wraps any stepper (e.g. :class:`lrkit.torch.TorchStepper` on a DDP model); ``evaluate()`` is
    averaged the same way. A step skipped on any rank (GradScaler overflow) counts as skipped on every rank.
    ``reduce_s`` / ``reduce_calls`` count the time spent in the collective.
    """

    def __init__(self, stepper: Stepper, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise LrkitError("DistributedStepper needs an initialised process group; call "
                             "torch.distributed.init_process_group(...) on every rank first")
        self.stepper, self.group = stepper, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        backend = dist.get_backend(group)
        self._device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                        else torch.device("cpu"))
        self.reduce_s, self.reduce_calls = 0.0, 0
        # the engine checks callable(stepper.evaluate) for the validation-loss mode
        self.evaluate: Callable[[], float] | None = (
            self._evaluate if callable(getattr(stepper, "evaluate", None)) else None)
        # the wrapped stepper's optimiser, so the rule knows its family as on one process, and what start_lr=None,
        # num_iter=None and per-group ramps read from it
        self.optimizer = getattr(stepper, "optimizer", None)
        self.base_lrs = getattr(stepper, "base_lrs", None)
        self.steps_per_epoch = getattr(stepper, "steps_per_epoch", None)
        use = getattr(stepper, "use_group_ramps", None)
        if callable(use):
            self.use_group_ramps = use

    def _mean(self, compute: Callable[[], float | None], what: str) -> float | None:
        """Run ``compute`` on this rank and return the rank-order mean of every rank's value (None if skipped)."""
        error: BaseException | None = None
        try:
            value = compute()
        except BaseException as e:  # tell the other ranks before raising, so none waits forever
            error, value = e, None
        status = _ERROR if error is not None else (_SKIPPED if value is None else _OK)
        # each rank fills its own slot of a zero vector; a sum all-reduce then gives every rank every value
        # exactly (x + 0 == x), so each rank can average them in the same order
        slots = torch.zeros(self.world_size, 2, dtype=torch.float64)
        slots[self.rank, 0] = 0.0 if value is None else float(value)
        slots[self.rank, 1] = status
        slots = slots.to(self._device)
        t0 = time.perf_counter()
        dist.all_reduce(slots, group=self.group)
        rows = slots.cpu().tolist()
        self.reduce_s += time.perf_counter() - t0
        self.reduce_calls += 1
        if error is not None:
            raise error
        failed = [r for r, (_, s) in enumerate(rows) if s == _ERROR]
        if failed:
            raise LrkitError(f"rank(s) {failed} raised an error during {what} (see their output); every rank stops "
                             "and restores its model")
        if any(s == _SKIPPED for _, s in rows):
            return None
        total = 0.0
        for v, _ in rows:  # a fixed order, in float64: the same bits on every rank
            total += v
        return total / self.world_size

    def step(self, lr: float) -> float | None:
        """One step on this rank's shard at ``lr``; the mean loss over ranks (None if any rank skipped)."""
        return self._mean(lambda: self.stepper.step(lr), f"step(lr={lr:.3g})")

    def _evaluate(self) -> float:
        value = self._mean(lambda: float(self.stepper.evaluate()), "evaluate()")
        return float("nan") if value is None else value

    def snapshot(self) -> object:
        """This rank's snapshot (each rank keeps its own copy)."""
        return self.stepper.snapshot()

    def restore(self, snap: object) -> None:
        """Restore this rank, then wait for every rank, so none runs ahead with a half-restored peer."""
        self.stepper.restore(snap)
        dist.barrier(group=self.group)


def maybe_distributed(stepper: Stepper, group: Any = None) -> Stepper:
    """``stepper`` wrapped in :class:`DistributedStepper` when a multi-rank process group is initialised;
    otherwise ``stepper`` itself."""
    if isinstance(stepper, DistributedStepper) or not is_distributed(group):
        return stepper
    return DistributedStepper(stepper, group)


__all__ = ["DistributedStepper", "is_distributed", "is_main_process", "maybe_distributed"]
