"""Hugging Face transformers adapter: the range test for a ``Trainer`` and lrkit schedules as its scheduler.

``find_lr(trainer)`` uses the Trainer's own model, training dataloader (``get_train_dataloader()``: dataset,
collator, batch size, sampler), optimiser (``create_optimizer()``: optimiser type, weight decay, param groups),
``compute_loss``, gradient accumulation, ``max_grad_norm`` and fp16/bf16, through
:class:`~lrkit.integrations.torch.TorchTrainer`. The Trainer's training loop, callbacks and state are not run or
touched; model, optimiser and RNGs are restored bit for bit, and an optimiser the test created is dropped again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lrkit.adaptive import run_finder
from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderResult, check_range

try:
    import torch
    import transformers
except ImportError as e:
    raise missing_extra("transformers", "transformers") from e

from lrkit.integrations.torch import TorchTrainer
from lrkit.integrations.torch_scheduler import ScheduleLR, torch_scheduler


class HFTrainer(TorchTrainer):
    """A :class:`TorchTrainer` whose loss is ``hf_trainer.compute_loss(model, batch)`` (label smoothing and
    ``compute_loss`` overrides included). After restore the dataloader is released from accelerate's state."""

    def __init__(self, hf_trainer: transformers.Trainer, optimizer: torch.optim.Optimizer,
                 train_loader: Iterable[Any], **kwargs: Any) -> None:
        self.hf_trainer = hf_trainer
        super().__init__(hf_trainer.model, optimizer, None, train_loader, loss_fn=self._compute_loss, **kwargs)

    def _compute_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return self.hf_trainer.compute_loss(model, batch)

    def restore(self, snap: Any) -> None:
        """Put everything back (see :meth:`TorchTrainer.restore`); a partly read accelerate dataloader is ended."""
        super().restore(snap)
        end = getattr(self.train_loader, "end", None)  # accelerate's DataLoaderShard registers itself while read
        if callable(end):
            end()


def _check_trainer(trainer: Any) -> None:
    if not isinstance(trainer, transformers.Trainer):
        raise LrkitError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}; for a bare model "
                         "use lrkit.integrations.torch.find_lr")


def find_lr(
    trainer: transformers.Trainer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    rule: str | None = None,
    update_args: bool = False,
    confirm: bool = True,
    max_steps: int = 200,
    max_seconds: float | None = None,
    progress: bool = True,
) -> FinderResult:
    """Run lrkit's range test with a transformers ``Trainer``'s model, data, optimiser settings and loss.

    Restores the model, optimiser and RNGs exactly and leaves ``trainer.optimizer`` as it was (None stays None,
    so ``train()`` builds a fresh one). ``update_args=True`` sets ``trainer.args.learning_rate`` to the
    suggestion (the lr ``create_optimizer`` uses); it needs a Trainer without a user-given optimiser. With
    ``confirm`` (default) the ramp is extended when nothing diverged and short runs at the pick, /3 and /9 may move
    it down, within ``max_steps`` optimiser steps (default 200; not ``args.max_steps``) and ``max_seconds``
    (default: none), as in :func:`lrkit.integrations.torch.find_lr`; ``confirm=False``: one ramp. Range options as
    in :func:`lrkit.range_test`.
    """
    check_range(start_lr, end_lr, num_iter)
    _check_trainer(trainer)
    given = trainer.optimizer
    if update_args and given is not None:
        raise LrkitError("update_args=True sets args.learning_rate, but this Trainer was given its own optimizer "
                         "(optimizers=...), which ignores it; set that optimiser's lr to result.suggestion.lr")
    args = trainer.args
    optimizer = trainer.create_optimizer()
    options: dict[str, Any] = {"accumulation_steps": max(1, int(args.gradient_accumulation_steps))}
    if args.max_grad_norm is not None and args.max_grad_norm > 0:
        options["max_grad_norm"] = float(args.max_grad_norm)
    if args.bf16:
        options["amp"] = torch.bfloat16
    elif args.fp16:
        options["amp"] = torch.float16
        options["scaler"] = torch.amp.GradScaler(args.device.type)
    try:
        loader = trainer.get_train_dataloader()
        hf = HFTrainer(trainer, optimizer, loader, **options)
        result = run_finder(hf, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
                            diverge_factor=diverge_factor, rule=rule, progress=progress, confirm=confirm,
                            max_steps=max_steps, max_seconds=max_seconds)
    finally:
        trainer.optimizer = given
    if update_args and result.suggestion.lr is not None:
        args.learning_rate = float(result.suggestion.lr)
    return result


def scheduler(optimizer: torch.optim.Optimizer, schedule: Any) -> ScheduleLR:
    """An lrkit schedule (Schedule or spec) as the Trainer's scheduler:
    ``Trainer(..., optimizers=(opt, lrkit.transformers.scheduler(opt, "warmup(100) >> cosine(3e-4, 1000)")))``.
    The Trainer steps it once per optimiser update, so update ``k`` uses ``schedule(k)``."""
    return torch_scheduler(optimizer, schedule)


def use_schedule(trainer: transformers.Trainer, schedule: Any) -> ScheduleLR:
    """Make ``schedule`` the Trainer's lr scheduler, on the optimiser the Trainer builds from its args
    (``create_optimizer()``: its optimiser type, weight decay groups and lr ratios). Call before ``train()``."""
    _check_trainer(trainer)
    sched = torch_scheduler(trainer.create_optimizer(), schedule)
    trainer.lr_scheduler = sched
    return sched


__all__ = ["HFTrainer", "find_lr", "scheduler", "use_schedule"]
