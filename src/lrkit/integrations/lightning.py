"""Lightning adapter: the range test on a LightningModule's own ``training_step`` and optimiser (:func:`find_lr`,
:class:`LightningStepper`), a callback that runs it at fit start (:class:`LRFinder`), lrkit schedules as
Lightning schedulers (:func:`scheduler`, :class:`ScheduleCallback`); the live doctor is
:class:`lrkit.integrations.lightning_monitor.LrMonitor`.

The test does not run Lightning's fit loop: it calls ``configure_optimizers`` and ``training_step`` through
:class:`~lrkit.integrations.torch.TorchStepper` (Lightning is built on torch; accumulation, clipping and mixed precision taken from the
``Trainer``), so the trainer's loop state (global step, epoch, callbacks, loggers) is never touched and a
``trainer.fit`` right after starts from step 0. ``self.log`` calls inside ``training_step`` are ignored during
the test, and a batch whose ``training_step`` returns None is skipped (no step), as Lightning skips it. The data
hooks (``prepare_data``, ``setup``, ``train_dataloader``) and ``configure_model`` run inside the test's snapshot:
the RNGs are put back afterwards, so a ``random_split`` in ``setup`` splits the same way again in the ``fit`` that
follows. Afterwards the module stays attached to the trainer, as after Lightning's own tuner. Manual optimisation
(``automatic_optimization = False``) is not supported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderOptions, FinderResult, range_test

try:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
    from lightning.pytorch.utilities.model_helpers import is_overridden
    from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
except ImportError as e:
    raise missing_extra("lightning", "lightning") from e

from lrkit.integrations.torch import TorchStepper, _rng_state, _set_rng_state
from lrkit.integrations.torch_scheduler import ScheduleLR
from lrkit.integrations.torch_scheduler import scheduler as torch_scheduler
from lrkit.schedules import as_schedule


def _ignore_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log``/``log_dict`` during the range test."""


class LightningStepper(TorchStepper):
    """A :class:`~lrkit.integrations.torch.TorchStepper` whose loss is the module's own
    ``training_step(batch, batch_idx)`` output (a tensor, or a dict with ``"loss"``; None skips the batch), also on
    ``val_loader`` batches (in eval mode, without gradients); other options as in ``TorchStepper``."""

    def __init__(self, module: pl.LightningModule, optimizer: torch.optim.Optimizer, train_loader: Iterable[Any],
                 **kwargs: Any) -> None:
        if not isinstance(module, pl.LightningModule):
            raise LrkitError(f"module must be a lightning.pytorch.LightningModule, got {type(module).__name__}")
        if not module.automatic_optimization:
            raise LrkitError("the range test drives the optimiser itself, so it needs automatic optimisation; this "
                             "module sets automatic_optimization = False. Use lrkit.integrations.torch.find_lr "
                             "with loss_fn=lambda model, batch: ... instead")
        self.module = module
        self._batch_idx = 0
        self._with_idx = is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)
        super().__init__(module, optimizer, None, train_loader, loss_fn=self._training_step_loss, **kwargs)

    def _training_step_loss(self, module: Any, batch: Any) -> torch.Tensor | None:
        idx = self._batch_idx
        self._batch_idx += 1
        batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
        out = module.training_step(batch, idx) if self._with_idx else module.training_step(batch)
        if out is None:  # Lightning skips such a batch (no backward, no optimiser step): so does the test
            return None
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            raise LrkitError(f"training_step returned {type(out).__name__} for batch {idx}, not a loss tensor, a "
                             "dict with 'loss', or None (skip the batch)")
        return loss

    def restore(self, snap: Any) -> None:
        """Put everything back (see :meth:`TorchStepper.restore`) and restart the batch index."""
        super().restore(snap)
        self._batch_idx = 0

    def _evaluate(self) -> float:
        idx = self._batch_idx  # validation batches do not count as training batches
        try:
            return super()._evaluate()
        finally:
            self._batch_idx = idx


class _Attached:
    """Attach the module to ``trainer`` and silence ``self.log`` for the duration; on exit ``self.log`` works again
    and the module stays attached."""

    def __init__(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.trainer, self.module = trainer, module

    def __enter__(self) -> _Attached:
        m = self.module
        self._had = {name: name in m.__dict__ for name in ("log", "log_dict")}
        m.trainer = self.trainer
        m.log = _ignore_log
        m.log_dict = _ignore_log
        return self

    def __exit__(self, *exc: Any) -> None:
        m = self.module
        for name, had in self._had.items():
            if not had:
                m.__dict__.pop(name, None)
        # the module stays attached to the trainer (as after Lightning's tuner): fit and the user expect it there


def _precision_options(trainer: pl.Trainer, device: torch.device) -> dict[str, Any]:
    precision = str(trainer.precision)
    if precision == "16-mixed":
        return {"amp": torch.float16, "scaler": torch.amp.GradScaler(device.type)}
    if precision == "bf16-mixed":
        return {"amp": torch.bfloat16}
    return {}


def _clip_options(trainer: pl.Trainer) -> dict[str, Any]:
    val = trainer.gradient_clip_val
    if not val:
        return {}
    if str(trainer.gradient_clip_algorithm) not in ("norm", "GradClipAlgorithmType.NORM"):
        warnings.warn("the range test clips gradients by norm only; Trainer(gradient_clip_algorithm='value') is "
                      "not applied during the test", stacklevel=3)
        return {}
    return {"max_grad_norm": float(val)}


def _lr_attr_name(module: pl.LightningModule, apply: bool | str) -> str | None:
    if apply is False or apply is None:
        return None
    if isinstance(apply, str):
        if not lightning_hasattr(module, apply):
            raise LrkitError(f"apply={apply!r}: the module has no attribute or hparam of that name; "
                             "pass the name configure_optimizers reads the lr from")
        return apply
    for name in ("lr", "learning_rate"):
        if lightning_hasattr(module, name):
            return name
    raise LrkitError("apply=True but the module has neither 'lr' nor 'learning_rate' (attribute or hparam); "
                     "pass apply='<name>' or set self.lr in __init__")


def _configure_model(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """Build the layers a module creates in ``configure_model`` (as ``fit`` does first; Lightning asks the hook to
    be idempotent, so fit's own call is a no-op), in the strategy's tensor-init context."""
    if is_overridden("configure_model", module):
        with trainer.strategy.tensor_init_context():
            module.configure_model()


def _single_optimizer(trainer: pl.Trainer, module: pl.LightningModule) -> torch.optim.Optimizer:
    optimizers, _ = _init_optimizers_and_lr_schedulers(module)
    if len(optimizers) != 1:
        raise LrkitError(f"configure_optimizers returned {len(optimizers)} optimizers; the range test drives "
                         "exactly one. Run it with lrkit.integrations.torch.find_lr on the optimiser to tune")
    return optimizers[0]


def _train_loader(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
                  train_dataloaders: Any) -> Iterable[Any]:
    if isinstance(train_dataloaders, pl.LightningDataModule):
        datamodule, train_dataloaders = train_dataloaders, None
    if train_dataloaders is not None:
        return train_dataloaders
    if datamodule is not None:
        datamodule.trainer = trainer
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule.train_dataloader()
    if is_overridden("train_dataloader", module):
        module.prepare_data()
        module.setup("fit")
        return module.train_dataloader()
    raise LrkitError("no training data: pass datamodule=, train_dataloaders=, or define train_dataloader() "
                     "on the module")


def _run(trainer: pl.Trainer, module: pl.LightningModule, optimizer: torch.optim.Optimizer | None,
         loader: Iterable[Any], val_loader: Iterable[Any] | None, options: FinderOptions,
         device: torch.device) -> FinderResult:
    with _Attached(trainer, module):
        if optimizer is None:
            optimizer = _single_optimizer(trainer, module)
        accumulation = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        stepper = LightningStepper(module, optimizer, loader, accumulation_steps=accumulation, device=device,
                                   val_loader=val_loader, **_clip_options(trainer),
                                   **_precision_options(trainer, device))
        return range_test(stepper, options)


def find_lr(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    train_dataloaders: Iterable[Any] | None = None,
    *,
    val_loader: Iterable[Any] | None = None,
    apply: bool | str = False,
    options: FinderOptions | None = None,
    **overrides: Any,
) -> FinderResult:
    """Run lrkit's range test on a LightningModule's ``training_step`` and ``configure_optimizers`` optimiser.

    Data come from ``train_dataloaders``, ``datamodule`` or the module's ``train_dataloader()`` (``setup`` and
    ``train_dataloader`` run inside the snapshot: the RNGs are put back, so the data split and order of a later
    ``fit`` or a second call are the same); a module that builds its layers in ``configure_model`` has them built
    first. Accumulation, gradient clipping (by norm) and mixed precision come from ``trainer``. Weights, buffers,
    RNGs and the trainer's loop state are left exactly as they were; the module is attached to ``trainer``.
    ``apply`` (True: the module's ``lr`` or ``learning_rate`` attribute/hparam; or its name) sets it to the pick
    (unchanged when there is none), which ``configure_optimizers`` then reads.
    ``options`` (an :class:`lrkit.FinderOptions`) with ``overrides`` by field name, as in
    :func:`lrkit.torch.find_lr` (default: the adaptive test within 200 steps); ``val_loader``: batches whose
    ``training_step`` loss is judged every ``val_every`` steps on one ramp.
    """
    o = FinderOptions.build(options, **overrides)
    if not isinstance(trainer, pl.Trainer):
        raise LrkitError(f"trainer must be a lightning.pytorch.Trainer, got {type(trainer).__name__}")
    attr = _lr_attr_name(module, apply)
    rng = _rng_state()  # the data hooks and configure_model draw from the RNGs: put them back afterwards
    try:
        loader = _train_loader(trainer, module, datamodule, train_dataloaders)
        _configure_model(trainer, module)
        device = trainer.strategy.root_device
        original = next(module.parameters()).device if any(True for _ in module.parameters()) else device
        try:
            module.to(device)
            result = _run(trainer, module, None, loader, val_loader, o, device)
        finally:
            module.to(original)
    finally:
        _set_rng_state(rng)
    if attr is not None and result.suggestion.lr is not None:
        lightning_setattr(module, attr, result.suggestion.lr)
    return result


class LRFinder(pl.Callback):
    """Run lrkit's range test at the start of ``trainer.fit`` on the optimiser fit has just built and fit's own
    training data, restore everything, and (``apply``, default True) set the module's lr attribute to the pick and
    rebuild the optimisers and schedulers from ``configure_optimizers``. The result is kept in ``self.result``.
    ``options``/``overrides`` as in :func:`find_lr` (default: the adaptive test within 200 steps)."""

    def __init__(self, *, apply: bool | str = True, options: FinderOptions | None = None,
                 **overrides: Any) -> None:
        self.apply = apply
        self.options = FinderOptions.build(options, **overrides)
        self.result: FinderResult | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        attr = _lr_attr_name(pl_module, self.apply)
        if len(trainer.optimizers) != 1:
            raise LrkitError(f"LRFinder drives exactly one optimiser; fit built {len(trainer.optimizers)}")
        loader = trainer.fit_loop._data_source.dataloader()
        self.result = _run(trainer, pl_module, trainer.optimizers[0], loader, None, self.options,
                           trainer.strategy.root_device)
        if attr is not None and self.result.suggestion.lr is not None:
            lightning_setattr(pl_module, attr, self.result.suggestion.lr)
            trainer.strategy.setup_optimizers(trainer)


def scheduler(optimizer: torch.optim.Optimizer, schedule: Any, momentum: Any = None,
              ratios: Sequence[float] | None = None, name: str | None = None) -> dict[str, Any]:
    """An lrkit schedule (Schedule or spec) as the ``lr_scheduler`` dict Lightning's ``configure_optimizers``
    expects, stepping every optimiser update:
    ``return {"optimizer": opt, "lr_scheduler": lrkit.lightning.scheduler(opt, "onecycle(1e-2, 10000)")}``.
    A plateau piece needs ``scheduler.observe(val_loss)`` (e.g. in ``on_validation_epoch_end``). See
    :class:`~lrkit.integrations.torch_scheduler.ScheduleLR` for ``momentum`` and ``ratios``."""
    out: dict[str, Any] = {"scheduler": torch_scheduler(optimizer, schedule, momentum, ratios),
                           "interval": "step", "frequency": 1}
    if name is not None:
        out["name"] = name
    return out


class ScheduleCallback(pl.Callback):
    """Drive any lrkit schedule (a Schedule or spec) per optimiser step through
    :class:`~lrkit.integrations.torch_scheduler.ScheduleLR`: before each training batch the lrs become
    ``schedule(trainer.global_step) * ratio`` (ratios: the groups' lrs at fit start relative to group 0;
    ``global_step`` counts optimiser updates, so gradient accumulation is handled). ``monitor`` names a logged
    metric fed to plateau pieces after each validation. Use it instead of a scheduler from
    ``configure_optimizers`` (or return :func:`scheduler` from there instead of using this)."""

    def __init__(self, schedule: Any, optimizer_index: int | None = None, momentum: Any = None,
                 monitor: str | None = None) -> None:
        self.schedule, self.momentum, self.monitor = schedule, momentum, monitor
        self.optimizer_index = optimizer_index
        self.schedulers: list[Any] = []
        self.schedule = as_schedule(schedule)  # a bad spec fails here, not at fit start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opts = list(trainer.optimizers)
        if self.optimizer_index is not None:
            if not 0 <= self.optimizer_index < len(opts):
                raise LrkitError(f"optimizer_index={self.optimizer_index} but fit has {len(opts)} optimiser(s)")
            opts = [opts[self.optimizer_index]]
        self.schedulers = [ScheduleLR(opt, self.schedule, momentum=self.momentum) for opt in opts]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        for s in self.schedulers:
            s.step(int(trainer.global_step))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise LrkitError(f"ScheduleCallback(monitor={self.monitor!r}) but no such metric was logged; "
                             f"logged: {sorted(trainer.callback_metrics)}")
        for s in self.schedulers:
            s.observe(float(value))


__all__ = ["LRFinder", "LightningStepper", "ScheduleCallback", "find_lr", "scheduler"]
