"""Hugging Face transformers adapter: the range test for a ``Trainer`` (:func:`find_lr`, :class:`LRFinder` at the
start of ``train()``, :class:`TransformersStepper`) and lrkit schedules as its scheduler (:func:`use_schedule`, or
``lrkit.transformers.scheduler``, the torch one); the live doctor is :class:`lrkit.integrations.transformers_monitor.LrMonitor`.

``find_lr(trainer)`` uses the Trainer's own model, training dataloader (``get_train_dataloader()``: dataset,
collator, batch size, sampler), optimiser (``create_optimizer()``: optimiser type, weight decay, param groups),
``compute_loss``, gradient accumulation, ``max_grad_norm`` and fp16/bf16, through
:class:`~lrkit.integrations.torch.TorchStepper` (transformers trains torch models). The Trainer's training loop,
callbacks and state are not run or touched; model, optimiser and RNGs are restored bit for bit, and an optimiser
the test created is dropped again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderOptions, FinderResult, range_test

try:
    import torch
    import transformers
except ImportError as e:
    raise missing_extra("transformers", "transformers") from e

from lrkit.integrations.torch import TorchStepper, apply_lr
from lrkit.integrations.torch_scheduler import ScheduleLR, scheduler


class TransformersStepper(TorchStepper):
    """A :class:`~lrkit.integrations.torch.TorchStepper` for a transformers model: the loss is
    ``hf_trainer.compute_loss(model, batch)`` when a ``Trainer`` is given (label smoothing and ``compute_loss``
    overrides included), else the model's own ``.loss`` on each dict batch. After restore a partly read accelerate
    dataloader is released from accelerate's state. Other options as in ``TorchStepper``."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable[Any], *,
                 hf_trainer: transformers.Trainer | None = None, **kwargs: Any) -> None:
        self.hf_trainer = hf_trainer
        super().__init__(model, optimizer, None, train_loader,
                         loss_fn=self._compute_loss if hf_trainer is not None else None, **kwargs)

    def _compute_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return self.hf_trainer.compute_loss(model, batch)

    def restore(self, snap: Any) -> None:
        """Put everything back (see :meth:`TorchStepper.restore`); a partly read accelerate dataloader is ended."""
        super().restore(snap)
        end = getattr(self.train_loader, "end", None)  # accelerate's DataLoaderShard registers itself while read
        if callable(end):
            end()


def _check_trainer(trainer: Any) -> None:
    if not isinstance(trainer, transformers.Trainer):
        raise LrkitError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}; for a bare model "
                         "use lrkit.torch.find_lr")


def _stepper_options(args: transformers.TrainingArguments) -> dict[str, Any]:
    """Accumulation, clipping and mixed precision as the Trainer's arguments ask."""
    options: dict[str, Any] = {"accumulation_steps": max(1, int(args.gradient_accumulation_steps))}
    if args.max_grad_norm is not None and args.max_grad_norm > 0:
        options["max_grad_norm"] = float(args.max_grad_norm)
    if args.bf16:
        options["amp"] = torch.bfloat16
    elif args.fp16:
        options["amp"] = torch.float16
        options["scaler"] = torch.amp.GradScaler(args.device.type)
    return options


def find_lr(
    trainer: transformers.Trainer,
    *,
    val_loader: Iterable[Any] | None = None,
    apply: bool = False,
    options: FinderOptions | None = None,
    **overrides: Any,
) -> FinderResult:
    """Run lrkit's range test with a transformers ``Trainer``'s model, data, optimiser settings and loss.

    Restores the model, optimiser and RNGs exactly and leaves ``trainer.optimizer`` as it was (None stays None,
    so ``train()`` builds a fresh one). ``apply=True`` sets ``trainer.args.learning_rate`` to the pick (the lr
    ``create_optimizer`` uses); it needs a Trainer without a user-given optimiser. ``options`` (an
    :class:`lrkit.FinderOptions`) with ``overrides`` by field name, as in :func:`lrkit.torch.find_lr` (default: the
    adaptive test within 200 optimiser steps, not ``args.max_steps``); ``val_loader`` (e.g.
    ``trainer.get_eval_dataloader()``): its ``compute_loss`` is judged every ``val_every`` steps on one ramp.
    """
    o = FinderOptions.build(options, **overrides)
    _check_trainer(trainer)
    given = trainer.optimizer
    if apply and given is not None:
        raise LrkitError("apply=True sets args.learning_rate, but this Trainer was given its own optimizer "
                         "(optimizers=...), which ignores it; set that optimiser's lr to result.suggestion.lr")
    args = trainer.args
    optimizer = trainer.create_optimizer()
    try:
        loader = trainer.get_train_dataloader()
        stepper = TransformersStepper(trainer.model, optimizer, loader, hf_trainer=trainer, val_loader=val_loader,
                                      **_stepper_options(args))
        result = range_test(stepper, o)
    finally:
        trainer.optimizer = given
    if apply and result.suggestion.lr is not None:
        args.learning_rate = float(result.suggestion.lr)
    return result


class LRFinder(transformers.TrainerCallback):
    """Run lrkit's range test when ``trainer.train()`` begins, on the optimiser and the training dataloader it has
    just built (each batch's loss: the model's ``.loss``), restore everything, and (``apply``, default True) make
    the pick the optimiser's lr, the scheduler's base lr with it (ratios between param groups kept). The result is
    ``self.result``. ``options``/``overrides`` as in :func:`find_lr` (default: the adaptive test within 200 steps)."""

    def __init__(self, *, apply: bool = True, options: FinderOptions | None = None, **overrides: Any) -> None:
        self.apply = apply
        self.options = FinderOptions.build(options, **overrides)
        self.result: FinderResult | None = None

    def on_train_begin(self, args: transformers.TrainingArguments, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, lr_scheduler: Any = None, train_dataloader: Any = None,
                       **kwargs: Any) -> None:
        if model is None or optimizer is None or train_dataloader is None:
            raise LrkitError("LRFinder needs the model, optimizer and train_dataloader that Trainer.train() hands its "
                             "callbacks; use it as Trainer(..., callbacks=[lrkit.transformers.LRFinder()])")
        raw = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper steps only inside its own loop
        stepper = TransformersStepper(model, raw, train_dataloader, **_stepper_options(args))
        self.result = range_test(stepper, self.options)
        if self.apply and self.result.suggestion.lr is not None:
            apply_lr(raw, self.result.suggestion.lr, lr_scheduler)


def use_schedule(trainer: transformers.Trainer, schedule: Any) -> ScheduleLR:
    """Make ``schedule`` the Trainer's lr scheduler, on the optimiser the Trainer builds from its args
    (``create_optimizer()``: its optimiser type, weight decay groups and lr ratios). Call before ``train()``. Or give
    the Trainer one yourself: ``Trainer(..., optimizers=(opt, lrkit.transformers.scheduler(opt, spec)))`` (the
    Trainer steps it once per optimiser update, so update ``k`` uses ``schedule(k)``)."""
    _check_trainer(trainer)
    sched = scheduler(trainer.create_optimizer(), schedule)
    trainer.lr_scheduler = sched
    return sched


__all__ = ["LRFinder", "TransformersStepper", "find_lr", "use_schedule"]
