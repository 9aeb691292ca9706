"""PyTorch adapter: :class:`TorchStepper` (the range test's view of a model, an optimiser and a loader),
:func:`find_lr`, :class:`LRFinder` (the same test inside your own training loop) and :func:`apply_lr`.

Handles batches as tuples/lists ``(input, target, extra...)`` (the model gets the first item, the criterion the
second, as torch-lr-finder and Lightning read them), dicts (Hugging Face style, ``labels`` inside, or a model that
returns ``.loss``), or anything through ``loss_fn(model, batch) -> loss``; AMP (``torch.autocast`` and a
``GradScaler``), gradient accumulation and clipping. The snapshot is kept in CPU memory (or on disk), never as a
second copy on the accelerator, and restores parameters, buffers, optimiser state, lrs, train/eval flags and
the RNG states bit for bit.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderOptions, FinderResult, FinderSession, SessionFront, group_lrs, range_test

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


def _groups_at(lr: float, base_lrs: Sequence[float], ranges: Sequence[Sequence[float]] | None,
               mode: str) -> list[float]:
    """Every param group's lr when group 0's is ``lr``: each on its own ramp (``ranges``, see
    :func:`lrkit.finder.group_lrs`), else the groups' ratios in ``base_lrs`` kept."""
    if ranges is not None:
        return group_lrs(lr, ranges, mode)
    return [base * (lr / base_lrs[0]) for base in base_lrs]


def _one_shot(data: Any) -> bool:
    """Whether ``data`` is an iterator (a generator, ``iter(loader)``...), which cannot start again."""
    return isinstance(data, Iterator)


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


def _group_lr(group: Mapping[str, Any]) -> Any:
    """A param group's lr before any scheduler scaled it (``initial_lr``, which torch schedulers record), else its
    lr: the ratios between groups, and the lr a pick replaces."""
    lr = group.get("initial_lr", group.get("lr"))
    return float(lr) if isinstance(lr, torch.Tensor) else lr


def _scale_groups(optimizer: Any, factors: Sequence[float], scheduler: Any = None) -> None:
    """Multiply each param group's lr by its factor (and a scheduler's base lr for it, so it keeps the change)."""
    for g, factor in zip(optimizer.param_groups, factors):
        g["lr"] = g["lr"] * factor
        if "initial_lr" in g:
            g["initial_lr"] = g["initial_lr"] * factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [b * factor for b, factor in zip(scheduler.base_lrs, factors)]


def scale_lr(optimizer: Any, factor: float, scheduler: Any = None) -> None:
    """Multiply every param group's lr by ``factor`` (and a scheduler's base lrs, so it keeps the change)."""
    _scale_groups(optimizer, [factor] * len(optimizer.param_groups), scheduler)


def apply_lr(optimizer: Any, lr: float | Sequence[float], scheduler: Any = None) -> None:
    """Make ``lr`` the first param group's lr, keeping the ratios between groups, and a scheduler's base lrs
    with them (see :func:`scale_lr`): how every adapter applies a range test's pick to a torch optimiser. A list
    (one lr per group, e.g. ``result.group_suggestions``) sets each group's own."""
    groups = optimizer.param_groups
    if isinstance(lr, Sequence):
        if len(lr) != len(groups):
            raise LrkitError(f"{len(lr)} lrs for {len(groups)} param groups; give one per group")
        _scale_groups(optimizer, [float(v) / float(_group_lr(g)) for g, v in zip(groups, lr)], scheduler)
        return
    scale_lr(optimizer, float(lr) / float(_group_lr(groups[0])), scheduler)


def snapshot_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any = None,
                   scaler: Any = None) -> dict[str, Any]:
    """Copies, in CPU memory, of the parameters and buffers, the optimiser state, the train/eval flags, the RNG
    states (torch, CUDA, numpy, python), the generators ``loader`` shuffles with and a GradScaler's state."""
    return {
        "model": _to_cpu(model.state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "training": [m.training for m in model.modules()],
        "rng": _rng_state(),
        "generators": [g.get_state() for g in _loader_generators(loader)],
        "scaler": scaler.state_dict() if scaler is not None else None,
    }


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, snap: dict[str, Any],
                  loader: Any = None, scaler: Any = None) -> None:
    """Put back, bit for bit, what :func:`snapshot_state` copied."""
    with torch.no_grad():
        model.load_state_dict(snap["model"])
    optimizer.load_state_dict(snap["optimizer"])
    for m, flag in zip(model.modules(), snap["training"]):
        m.training = flag
    _set_rng_state(snap["rng"])
    for g, state in zip(_loader_generators(loader), snap["generators"]):
        g.set_state(state)
    if scaler is not None and snap["scaler"] is not None:
        scaler.load_state_dict(snap["scaler"])
    optimizer.zero_grad(set_to_none=True)


def _check(model: Any, optimizer: Any) -> None:
    """LrkitError for what the range test cannot drive."""
    if not isinstance(model, torch.nn.Module):
        raise LrkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise LrkitError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for k, group in enumerate(optimizer.param_groups):
        lr = _group_lr(group)
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise LrkitError(f"param group {k} of {type(optimizer).__name__} has no positive 'lr' "
                             f"(got {group.get('lr')!r}); the range test sets the lr of every group, so build "
                             "the optimizer with lr=<any positive value> (e.g. lr=1e-3) in each group")


class TorchStepper:
    """The range test's view of a PyTorch model, optimiser, loss and loader (a :class:`lrkit.Stepper`).

    Args:
        model, optimizer: what to test; every param group is driven, keeping the ratios between their lrs.
        criterion: ``criterion(output, target) -> loss``; optional for dict batches whose model returns ``.loss``.
            A tuple/list batch is read as ``(input, target, extra...)``: the model gets ``input`` only, the
            criterion ``target``; for several inputs, sample weights or any other use of the extra items, pass
            ``loss_fn``.
        train_loader: any iterable of batches, cycled when shorter than the test. A one-shot iterator (a
            generator) cannot start again: the test draws new batches from it in every phase, and a clear error
            says so if it runs out.
        loss_fn: ``loss_fn(model, batch) -> loss`` for any other batch shape (replaces ``criterion``), e.g.
            ``lambda model, b: criterion(model(b[0], b[1]), b[2])``; a None loss skips the batch (no step).
        accumulation_steps: micro-batches per optimiser step (one point per optimiser step; mean loss).
        max_grad_norm: clip the gradient norm to this value before each step (default: no clipping).
        amp: autocast dtype (``torch.bfloat16``/``torch.float16``) or None (default, no autocast).
        scaler: a ``torch.amp.GradScaler``; a step it skips (inf gradients) is not recorded.
        val_loader: validation batches; with them the stepper has ``evaluate()``, the mean loss over them in eval
            mode (None without them). A one-shot iterator is read once and its batches kept for later evaluations.
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
        _check(model, optimizer)
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
        self._base_lrs = [float(_group_lr(g)) for g in optimizer.param_groups]
        # the validation loss, only where there are validation batches (the engine checks callable(evaluate))
        self.evaluate: Callable[[], float] | None = self._evaluate if val_loader is not None else None
        self._iter: Any = None
        self._batches_seen = 0
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._one_shot = _one_shot(train_loader)
        self._val_batches: list[Any] | None = None  # a one-shot val_loader's batches, once read
        self._ranges: list[tuple[float, float]] | None = None  # each group's own ramp (use_group_ramps)
        self._mode = "exponential"

    # -- what the engine reads before it runs ---------------------------------------------------------------
    @property
    def base_lrs(self) -> list[float]:
        """The optimiser's lr per param group (before any scheduler scaled it): where ``start_lr=None`` starts."""
        return list(self._base_lrs)

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimiser steps in one pass over ``train_loader`` (its ``len()`` over ``accumulation_steps``; None when
        it has no length): ``num_iter=None`` runs that many."""
        try:
            n = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        return n // self.accumulation_steps

    def use_group_ramps(self, ranges: Sequence[Sequence[float]], mode: str) -> None:
        """Ramp each param group over its own ``(start_lr, end_lr)`` (``step(lr)`` gets group 0's lr; see
        :func:`lrkit.finder.group_lrs`) instead of keeping the groups' ratios."""
        if len(ranges) != len(self.optimizer.param_groups):
            raise LrkitError(f"{len(ranges)} (start_lr, end_lr) pairs for {len(self.optimizer.param_groups)} param "
                             "groups; give one per group")
        self._ranges, self._mode = [(float(a), float(b)) for a, b in ranges], mode

    # -- the Stepper protocol -------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        """Copy parameters, buffers, optimiser state, lrs, train flags and RNG states to CPU memory (or disk)."""
        snap = snapshot_state(self.model, self.optimizer, self.train_loader, self.scaler)
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
        restore_state(self.model, self.optimizer, snap, self.train_loader, self.scaler)
        self._iter = None

    def step(self, lr: float) -> float | None:
        """One optimiser step at ``lr`` (ratios between param groups kept, or each group on its own ramp); the
        mean loss of its micro-batches, or None when the step was skipped (the GradScaler found inf gradients, or
        ``loss_fn`` returned None for a batch, as Lightning skips a ``training_step`` that returns None)."""
        for g, value in zip(self.optimizer.param_groups, _groups_at(lr, self._base_lrs, self._ranges, self._mode)):
            g["lr"] = value
        if not self.model.training:  # a model left in eval mode trains; submodules the user froze stay frozen
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = self.accumulation_steps
        for _ in range(n):
            loss = self._loss(self._next_batch())
            if loss is None:  # a batch the loss skips: no step at all (its gradients so far are dropped)
                self.optimizer.zero_grad(set_to_none=True)
                return None
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

    def _evaluate(self) -> float:
        """Mean loss over ``val_loader`` in eval mode without gradients."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        batches: Iterable[Any] = self.val_loader if self._val_batches is None else self._val_batches
        if self._val_batches is None and _one_shot(self.val_loader):  # read once: keep its batches for next time
            batches = self._val_batches = list(self.val_loader)  # type: ignore[arg-type]
        try:
            with torch.no_grad():
                for batch in batches:
                    loss = self._loss(_to_device(batch, self.device))
                    if loss is not None:
                        total += float(loss)
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
            if self._one_shot:
                raise LrkitError(f"train_loader ran out after {self._batches_seen} batches and cannot start again "
                                 "(it is a one-shot iterator or generator); pass a re-iterable loader (a "
                                 "DataLoader or a list of batches), which is cycled, or an iterator with enough "
                                 "batches for max_steps optimiser steps") from None
            self._iter = iter(self.train_loader)  # cycle a loader shorter than the test
            try:
                batch = next(self._iter)
            except StopIteration:
                raise LrkitError(f"train_loader yielded nothing when iterated again, after {self._batches_seen} "
                                 "batches; pass a re-iterable loader (a DataLoader or a list of batches)") from None
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
                raise LrkitError("criterion is missing for (input, target) batches; pass criterion= "
                                 "(e.g. torch.nn.CrossEntropyLoss()) or loss_fn=")
            return self.criterion(self.model(batch[0]), batch[1])  # extra items (weights, ids...): see loss_fn
        raise LrkitError(f"cannot compute a loss from a batch of {_describe(batch)}; the range test understands "
                         "(inputs, target) tuples and dicts with 'labels'; pass loss_fn=lambda model, batch: ...")

    def _loss(self, batch: Any) -> torch.Tensor | None:
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
            if first:  # the user's error keeps its type (a script may catch an OOM and retry); a hint rides along
                e.add_note(f"lrkit: the first batch of the range test ({_describe(batch)}) could not produce a loss; "
                           "check that the loader yields what the model and criterion expect, or pass "
                           "loss_fn=lambda model, batch: ... (the model and optimiser are restored)")
            raise
        if loss is None:
            return None
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
    val_loader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    accumulation_steps: int = 1,
    max_grad_norm: float | None = None,
    amp: torch.dtype | None = None,
    scaler: Any = None,
    snapshot: str = "memory",
    apply: bool = False,
    options: FinderOptions | None = None,
    **overrides: Any,
) -> FinderResult:
    """Run the LR range test on a PyTorch model and restore model, optimiser and RNGs exactly afterwards.

    ``options`` (a :class:`lrkit.FinderOptions`) with ``overrides`` by field name (``start_lr``, ``end_lr``,
    ``num_iter``, ``confirm``, ``max_steps``, ``max_seconds``, ``val_every``, ``rule``, ``progress``...): by default
    the adaptive test within 200 optimiser steps (the ramp from 1e-7 to 10, short runs at the pick, /3 and /9 that
    may move it down). ``start_lr=None`` starts at the optimiser's lr, ``num_iter=None`` ramps over one epoch of
    ``train_loader``, and lists of ``start_lr``/``end_lr`` (one per param group) ramp each group over its own range.
    With ``val_loader`` the validation loss is judged every ``val_every`` (5) steps on one ramp. Under
    ``torch.distributed`` every rank runs the test on its shard with the loss averaged over ranks
    (:class:`~lrkit.integrations.distributed.DistributedStepper`), so all pick the same lr. ``apply=True`` makes the
    pick the optimiser's lr afterwards (ratios between groups kept, or every group's own pick,
    ``result.group_suggestions``, after per-group ramps; unchanged when there is no pick). See :class:`TorchStepper`
    for the batch, AMP, accumulation and snapshot options. An error in the user's code (an out-of-memory error
    included) keeps its type, the model and optimiser restored.
    """
    o = FinderOptions.build(options, **overrides)
    stepper: Any = TorchStepper(model, optimizer, criterion, train_loader, loss_fn=loss_fn,
                                accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm, amp=amp,
                                scaler=scaler, val_loader=val_loader, snapshot=snapshot)
    world_size = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from lrkit.integrations.distributed import is_main_process, maybe_distributed

        stepper = maybe_distributed(stepper)
        o = FinderOptions.build(o, progress=o.progress and is_main_process())
        world_size = torch.distributed.get_world_size()
    result = range_test(stepper, o)
    if world_size is not None:
        result.config["world_size"] = world_size
    if apply and result.suggestion.lr is not None:
        apply_lr(optimizer, result.group_suggestions or result.suggestion.lr)
    return result


class LRFinder(SessionFront):
    """The range test inside your own training loop: the same test as :func:`find_lr`, on the batches your loop
    draws. After each optimiser step pass its loss to :meth:`record`; the finder sets the lr of the next step,
    snapshots and restores the model, optimiser and RNGs between its phases, and returns True when it is over:
    the state is then exactly as before and ``result`` holds the :class:`~lrkit.FinderResult`.

        finder = lrkit.torch.LRFinder(model, optimizer)
        while not finder.done:
            for x, y in loader:
                optimizer.zero_grad(); loss = criterion(model(x), y); loss.backward(); optimizer.step()
                if finder.record(loss.item()):
                    break

    ``apply`` (default True, as every in-fit finder) makes the pick the optimiser's lr at the end (ratios between
    groups kept, or every group's own pick after per-group ramps; unchanged when there is no pick).
    ``options``/``overrides`` as in :func:`find_lr` (``num_iter=None`` with ``steps_per_epoch``, the optimiser
    steps of one epoch of your loop); no validation mode. :meth:`close` stops early and restores.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, apply: bool = True,
                 steps_per_epoch: int | None = None, options: FinderOptions | None = None,
                 **overrides: Any) -> None:
        _check(model, optimizer)
        self.model, self.optimizer, self.apply = model, optimizer, apply
        self._base_lrs = [float(_group_lr(g)) for g in optimizer.param_groups]
        self.session = FinderSession(
            FinderOptions.build(options, **overrides),
            snapshot=lambda: snapshot_state(model, optimizer), restore=lambda s: restore_state(model, optimizer, s),
            optimizer=optimizer, base_lrs=self._base_lrs, steps_per_epoch=steps_per_epoch)
        self._set_lr()

    def record(self, loss: float | torch.Tensor | None) -> bool:
        """The loss of the optimiser step just taken (None: it was skipped); True when the test is over."""
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        done = self.session.record(loss)
        if done:
            result = self.result
            if self.apply and result is not None and result.suggestion.lr is not None:
                apply_lr(self.optimizer, result.group_suggestions or result.suggestion.lr)
        else:
            self._set_lr()
        return done

    def close(self) -> None:
        """Stop before the end: restore the state (the optimiser's lrs included)."""
        self.session.close()

    def _set_lr(self) -> None:
        lrs = _groups_at(self.session.lr, self._base_lrs, self.session.group_ranges, self.session.options.mode)
        for g, value in zip(self.optimizer.param_groups, lrs):
            g["lr"] = value


__all__ = ["LRFinder", "TorchStepper", "apply_lr", "find_lr", "restore_state", "scale_lr", "snapshot_state"]
