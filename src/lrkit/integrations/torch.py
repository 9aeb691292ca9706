"""PyTorch adapter: a :class:`~lrkit.finder.Trainer` for a model, an optimiser and a loader, and ``find_lr``.

Handles batches as tuples/lists ``(inputs..., target)``, dicts (Hugging Face style, ``labels`` inside, or a model
that returns ``.loss``), or anything through ``loss_fn(model, batch) -> loss``; AMP (``torch.autocast`` and a
``GradScaler``), gradient accumulation and clipping. The snapshot is kept in CPU memory (or on disk), never as a
second copy on the accelerator, and restores parameters, buffers, optimiser state, lrs, train/eval flags and
the RNG states bit for bit.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderResult, check_range

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch") from e

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def _to_cpu(obj: Any) -> Any:
    """A deep copy of a (nested) state with every tensor cloned to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj) if not hasattr(obj, "_fields") else type(obj)(
            *(_to_device(v, device) for v in obj))
    return obj


def _describe(batch: Any) -> str:
    """A short description of a batch's structure, for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"Tensor{tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "dict(" + ", ".join(f"{k}={_describe(v)}" for k, v in list(batch.items())[:6]) + ")"
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__}(" + ", ".join(_describe(v) for v in list(batch)[:6]) + ")"
    return type(batch).__name__


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch Generators a DataLoader draws shuffles from, so the test leaves them as it found them."""
    gens = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


class TorchTrainer:
    """The range test's view of a PyTorch model, optimiser, loss and loader (the :class:`~lrkit.Trainer` protocol).

    Args:
        model, optimizer: what to test; every param group is driven, keeping the ratios between their lrs.
        criterion: ``criterion(output, target) -> loss``; optional for dict batches whose model returns ``.loss``.
        train_loader: any iterable of batches (cycled when shorter than the test).
        loss_fn: ``loss_fn(model, batch) -> loss`` for any other batch shape (replaces ``criterion``).
        accumulation_steps: micro-batches per optimiser step (one point per optimiser step; mean loss).
        max_grad_norm: clip the gradient norm to this value before each step (default: no clipping).
        amp: autocast dtype (``torch.bfloat16``/``torch.float16``) or None (default, no autocast).
        scaler: a ``torch.amp.GradScaler``; a step it skips (inf gradients) is not recorded.
        val_loader: batches for the validation-loss mode (``evaluate()``).
        snapshot: "memory" (CPU memory, default) or "disk" (a temporary file, deleted after restore).
        device: where batches go (default: the device of the model's first parameter).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[..., torch.Tensor] | None,
        train_loader: Iterable[Any],
        *,
        loss_fn: LossFn | None = None,
        accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        amp: torch.dtype | None = None,
        scaler: Any = None,
        val_loader: Iterable[Any] | None = None,
        snapshot: str = "memory",
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise LrkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise LrkitError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        for k, group in enumerate(optimizer.param_groups):
            lr = group.get("lr")
            if isinstance(lr, torch.Tensor):
                lr = float(lr)
            if not isinstance(lr, (int, float)) or not lr > 0:
                raise LrkitError(f"param group {k} of {type(optimizer).__name__} has no positive 'lr' "
                                 f"(got {group.get('lr')!r}); the range test sets the lr of every group, so build "
                                 "the optimizer with lr=<any positive value> (e.g. lr=1e-3) in each group")
        if train_loader is None:
            raise LrkitError("train_loader is missing; pass an iterable of batches (e.g. a DataLoader)")
        if int(accumulation_steps) < 1:
            raise LrkitError(f"accumulation_steps must be >= 1, got {accumulation_steps!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise LrkitError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
        if snapshot not in ("memory", "disk"):
            raise LrkitError(f"snapshot must be 'memory' or 'disk', got {snapshot!r}")
        if amp is not None and amp not in (torch.bfloat16, torch.float16):
            raise LrkitError(f"amp must be torch.bfloat16, torch.float16 or None, got {amp!r}")
        if criterion is None and loss_fn is None:
            pass  # allowed for dict batches whose model returns .loss; checked at the first batch
        self.model, self.optimizer, self.criterion, self.loss_fn = model, optimizer, criterion, loss_fn
        self.train_loader, self.val_loader = train_loader, val_loader
        self.accumulation_steps, self.max_grad_norm = int(accumulation_steps), max_grad_norm
        self.amp, self.scaler, self.snapshot_mode = amp, scaler, snapshot
        if device is None:
            p = next(itertools.chain(model.parameters(), model.buffers()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self._base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._iter: Any = None
        self._batches_seen = 0
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    # -- the Trainer protocol -------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        """Copy parameters, buffers, optimiser state, lrs, train flags and RNG states to CPU memory (or disk)."""
        snap = {
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "training": [m.training for m in self.model.modules()],
            "rng": _rng_state(),
            "generators": [g.get_state() for g in _loader_generators(self.train_loader)],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        if self.snapshot_mode == "disk":
            fd, path = tempfile.mkstemp(prefix="lrkit-snapshot-", suffix=".pt")
            os.close(fd)
            torch.save(snap, path)
            return path
        return snap

    def restore(self, snap: Any) -> None:
        """Put back everything :meth:`snapshot` captured, bit for bit; a disk snapshot's file is deleted."""
        if isinstance(snap, str):
            try:
                data = torch.load(snap, map_location="cpu", weights_only=False)
            finally:
                os.unlink(snap)
            snap = data
        with torch.no_grad():
            self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        for m, flag in zip(self.model.modules(), snap["training"]):
            m.training = flag
        _set_rng_state(snap["rng"])
        for g, state in zip(_loader_generators(self.train_loader), snap["generators"]):
            g.set_state(state)
        if self.scaler is not None and snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])
        self.optimizer.zero_grad(set_to_none=True)
        self._iter = None

    def step(self, lr: float) -> float | None:
        """One optimiser step at ``lr`` (ratios between param groups kept); the mean loss of its micro-batches,
        or None when the GradScaler skipped the step."""
        scale = lr / self._base_lrs[0]
        for g, base in zip(self.optimizer.param_groups, self._base_lrs):
            g["lr"] = base * scale
        if not self.model.training:  # a model left in eval mode trains; submodules the user froze stay frozen
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = self.accumulation_steps
        for _ in range(n):
            loss = self._loss(self._next_batch())
            total += float(loss.detach())
            scaled = loss / n if n > 1 else loss
            (self.scaler.scale(scaled) if self._scaling else scaled).backward()
        if self._scaling:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
        if self._scaling:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < before:  # inf/NaN gradients: the scaler skipped optimizer.step()
                return None
        else:
            self.optimizer.step()
        return total / self.accumulation_steps

    def evaluate(self) -> float:
        """Mean loss over ``val_loader`` in eval mode without gradients (the validation-loss mode)."""
        if self.val_loader is None:
            raise LrkitError("evaluate() needs a val_loader")
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for batch in self.val_loader:
                    total += float(self._loss(batch))
                    count += 1
        finally:
            self.model.train(was_training)
        if count == 0:
            raise LrkitError("val_loader yielded no batches; pass a non-empty validation loader")
        return total / count

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def _next_batch(self) -> Any:
        if self._iter is None:
            self._iter = iter(self.train_loader)
        try:
            batch = next(self._iter)
        except StopIteration:
            if self._batches_seen == 0:
                raise LrkitError("train_loader yielded no batches; pass a loader with at least one batch "
                                 "(check the dataset size, batch_size and drop_last)") from None
            self._iter = iter(self.train_loader)  # cycle a loader shorter than the test
            batch = next(self._iter)
        self._batches_seen += 1
        return _to_device(batch, self.device)

    def _forward_loss(self, batch: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch)
        if isinstance(batch, Mapping):
            if self.criterion is None:
                out = self.model(**batch)
                loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
                if loss is None:
                    raise LrkitError("the model returned no .loss for this dict batch and no criterion was given; "
                                     "include 'labels' in the batch, pass criterion=, or pass loss_fn=")
                return loss
            if "labels" not in batch:
                raise LrkitError(f"dict batch has no 'labels' key for the criterion (keys: {sorted(batch)}); "
                                 "pass loss_fn=lambda model, batch: ... to say how to compute the loss")
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            out = self.model(**inputs)
            logits = out["logits"] if isinstance(out, Mapping) else getattr(out, "logits", out)
            return self.criterion(logits, batch["labels"])
        if isinstance(batch, (list, tuple)) and len(batch) >= 2:
            if self.criterion is None:
                raise LrkitError("criterion is missing for (inputs, target) batches; pass criterion= "
                                 "(e.g. torch.nn.CrossEntropyLoss()) or loss_fn=")
            *inputs, target = batch
            return self.criterion(self.model(*inputs), target)
        raise LrkitError(f"cannot compute a loss from a batch of {_describe(batch)}; the range test understands "
                         "(inputs, target) tuples and dicts with 'labels'; pass loss_fn=lambda model, batch: ...")

    def _loss(self, batch: Any) -> torch.Tensor:
        first = self._batches_seen <= self.accumulation_steps
        try:
            if self.amp is not None:
                with torch.autocast(device_type=self.device.type, dtype=self.amp):
                    loss = self._forward_loss(batch)
            else:
                loss = self._forward_loss(batch)
        except LrkitError:
            raise
        except Exception as e:
            if not first:
                raise
            raise LrkitError(f"the first batch ({_describe(batch)}) could not produce a loss: "
                             f"{type(e).__name__}: {e}. Check that the loader yields what the model and criterion "
                             "expect, or pass loss_fn=lambda model, batch: ...") from e
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise LrkitError(f"the loss must be a scalar tensor, got {_describe(loss)}; reduce it "
                             "(e.g. criterion with reduction='mean')")
        return loss.reshape(())


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., torch.Tensor] | None = None,
    train_loader: Iterable[Any] | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    val_loader: Iterable[Any] | None = None,
    val_every: int = 5,
    loss_fn: LossFn | None = None,
    accumulation_steps: int = 1,
    max_grad_norm: float | None = None,
    amp: torch.dtype | None = None,
    scaler: Any = None,
    snapshot: str = "memory",
    rule: str | None = None,
    confirm: bool = True,
    max_steps: int = 200,
    max_seconds: float | None = None,
    progress: bool = True,
) -> FinderResult:
    """Run the LR range test on a PyTorch model and restore model, optimiser and RNGs exactly afterwards.

    Ramps the lr from ``start_lr`` (default 1e-7) to ``end_lr`` (default 10) over ``num_iter`` optimiser steps
    (default 100), stops when the smoothed loss exceeds ``diverge_factor`` (4) x its best, and suggests an lr
    (the rule knows the optimiser family). With ``confirm`` (default) the ramp is extended when nothing diverged
    and short constant-lr runs at the pick, /3 and /9 may move it down, all within ``max_steps`` optimiser steps
    (default 200; see :func:`lrkit.adaptive.find`); ``max_seconds`` (default: none) is a time budget for all of
    it (the ramp stops when it is spent; the confirmation runs share what is left or are skipped). With ``val_loader`` the validation loss, evaluated every
    ``val_every`` steps, is judged instead (no confirmation runs). See :class:`TorchTrainer` for the batch, AMP,
    accumulation and snapshot options.
    """
    from lrkit.adaptive import infer_family, run_finder

    check_range(start_lr, end_lr, num_iter)
    trainer = TorchTrainer(model, optimizer, criterion, train_loader, loss_fn=loss_fn,
                           accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm, amp=amp,
                           scaler=scaler, val_loader=val_loader, snapshot=snapshot)
    family, momentum = infer_family(optimizer)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # under torch.distributed every rank runs the test on its shard with the loss averaged over ranks, so all
        # ranks record the same curve, stop together and pick the same lr; the progress bar shows on rank 0
        from lrkit.integrations.distributed import is_main_process, maybe_distributed

        trainer = maybe_distributed(trainer)
        progress = progress and is_main_process()
    return run_finder(trainer, confirm=confirm, max_steps=max_steps, max_seconds=max_seconds,
                      val_every=val_every if val_loader is not None else None, rule=rule, family=family,
                      momentum=momentum, progress=progress, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter,
                      mode=mode, smooth=smooth, diverge_factor=diverge_factor)

__all__ = ["TorchTrainer", "find_lr"]
