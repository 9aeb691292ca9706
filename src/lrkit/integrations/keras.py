"""Keras 3 adapter: the range test through ``train_on_batch`` (``find_lr``), or inside ``model.fit`` (``LRFinder``).

Both set ``model.optimizer.learning_rate`` per batch, so the optimiser must have been built with a float lr (one
built with a ``LearningRateSchedule`` cannot take a new lr: a clear error says so). The loss recorded is the
batch's own loss: ``train_on_batch`` resets the metrics before each batch, and ``LRFinder`` resets them at each
batch start, so ``logs["loss"]`` (otherwise a running mean since the epoch start) is that batch's mean loss.
Every model, optimiser and metric variable (BatchNorm statistics, seed-generator states, optimiser moments and
iteration count) and the numpy/python/torch RNGs are restored exactly afterwards.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import numpy as np

from lrkit.adaptive import run_finder
from lrkit.curve import EMA
from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderResult, Replay, check_range, range_test
from lrkit.schedules import ramp
from lrkit.suggest import infer_family

try:
    import keras
except ImportError as e:
    raise missing_extra("keras", "keras") from e


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise LrkitError(f"model must be a keras.Model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise LrkitError("the model is not compiled; call model.compile(optimizer=..., loss=...) first")
    if not model.built:
        raise LrkitError("the model is not built, so its weights do not exist yet; start it with keras.Input(shape) "
                         "or call model.build(input_shape) before the range test")
    opt = model.optimizer
    try:
        opt.learning_rate = float(keras.ops.convert_to_numpy(opt.learning_rate))  # same value: a no-op for a float lr
    except TypeError as e:
        raise LrkitError(f"the range test sets the lr per batch, but this {type(opt).__name__} was built with a "
                         "LearningRateSchedule, whose lr cannot be set; compile the model for the test with a float "
                         "lr (e.g. keras.optimizers.Adam(learning_rate=1e-3)) and use the schedule afterwards") from e
    if not opt.built:  # what fit would do first; the fresh moments are zeros, restored as such
        opt.build(model.trainable_variables)


def _variables(model: keras.Model) -> list[Any]:
    seen: set[int] = set()
    out = []
    for v in [*model.variables, *model.optimizer.variables, *model.metrics_variables]:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"numpy": np.random.get_state(), "python": random.getstate()}
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = torch.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])


def snapshot_model(model: keras.Model) -> dict[str, Any]:
    """Copies (host memory) of every model, optimiser and metric variable, and the global RNG states."""
    return {"variables": [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in _variables(model)],
            "rng": _rng_state()}


def restore_model(model: keras.Model, snap: dict[str, Any]) -> None:
    """Assign back what :func:`snapshot_model` copied, bit for bit."""
    variables = _variables(model)
    if len(variables) != len(snap["variables"]):
        raise LrkitError("the model gained or lost variables since the snapshot; do not rebuild it during the test")
    for v, value in zip(variables, snap["variables"]):
        v.assign(value)
    _set_rng_state(snap["rng"])


class KerasTrainer:
    """The range test's view of a compiled Keras model (the :class:`~lrkit.Trainer` protocol): one
    ``train_on_batch`` per step. Data: arrays ``x``, ``y`` cut in batches of ``batch_size`` (reshuffled each pass
    with a private generator seeded by ``seed`` when ``shuffle``), or with ``y=None`` any iterable of
    ``(x, y)`` / ``(x, y, sample_weight)`` batches (cycled)."""

    def __init__(self, model: keras.Model, x: Any, y: Any = None, batch_size: int = 32, *, shuffle: bool = True,
                 seed: int = 0) -> None:
        _check_model(model)
        if int(batch_size) < 1:
            raise LrkitError(f"batch_size must be >= 1, got {batch_size!r}")
        self.model, self.x, self.y, self.batch_size = model, x, y, int(batch_size)
        self.shuffle, self.seed = shuffle, seed
        self._arrays = y is not None
        if self._arrays:
            n = len(x) if not isinstance(x, dict) else len(next(iter(x.values())))
            if n == 0 or len(y) != n:
                raise LrkitError(f"x and y must hold the same positive number of samples, got {n} and {len(y)}")
            self._n = n
        elif not isinstance(x, Iterable):
            raise LrkitError("pass arrays x and y, or y=None and an iterable of (x, y) batches as x")
        self._batches: Any = None

    def _reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._batches = None

    def _epoch(self) -> Any:
        if not self._arrays:
            return iter(self.x)
        order = self._rng.permutation(self._n) if self.shuffle else np.arange(self._n)

        def take(a: Any, idx: np.ndarray) -> Any:
            return {k: np.asarray(v)[idx] for k, v in a.items()} if isinstance(a, dict) else np.asarray(a)[idx]

        return ((take(self.x, idx), take(self.y, idx))
                for idx in (order[i:i + self.batch_size] for i in range(0, self._n, self.batch_size)))

    def _next(self) -> Any:
        if self._batches is None:
            self._batches = self._epoch()
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = self._epoch()
            try:
                return next(self._batches)
            except StopIteration:
                raise LrkitError("the data yielded no batches; pass at least one batch") from None

    @property
    def optimizer(self) -> Any:
        """The model's optimiser (read by :func:`lrkit.suggest.infer_family`: the rule knows Adam from SGD)."""
        return self.model.optimizer

    # -- the Trainer protocol -------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        """Host copies of all variables and the RNG states (see :func:`snapshot_model`)."""
        self._reset()
        return snapshot_model(self.model)

    def restore(self, snap: Any) -> None:
        """Put every variable and RNG state back bit for bit."""
        restore_model(self.model, snap)
        self._reset()

    def step(self, lr: float) -> float:
        """Set the optimiser's lr and run one ``train_on_batch``; the batch's loss."""
        self.model.optimizer.learning_rate = lr
        batch = self._next()
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise LrkitError(f"each batch must be (x, y) or (x, y, sample_weight), got {type(batch).__name__}")
        logs = self.model.train_on_batch(*batch, return_dict=True)
        return float(logs["loss"])


def find_lr(
    model: keras.Model,
    x: Any,
    y: Any = None,
    batch_size: int = 32,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    rule: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    confirm: bool = True,
    max_steps: int = 200,
    max_seconds: float | None = None,
    progress: bool = True,
) -> FinderResult:
    """Run lrkit's range test on a compiled Keras model (float lr) with ``train_on_batch`` and restore every
    variable exactly. With ``confirm`` (default) the ramp is extended when nothing diverged and short runs at the
    pick, /3 and /9 may move it down, within ``max_steps`` optimiser steps (default 200) and ``max_seconds``
    (default: none), as in :func:`lrkit.integrations.torch.find_lr`; ``confirm=False``: one ramp. Data as in
    :class:`KerasTrainer`; range options as in :func:`lrkit.range_test`."""
    check_range(start_lr, end_lr, num_iter)
    trainer = KerasTrainer(model, x, y, batch_size, shuffle=shuffle, seed=seed)
    return run_finder(trainer, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
                      diverge_factor=diverge_factor, rule=rule, progress=progress, confirm=confirm,
                      max_steps=max_steps, max_seconds=max_seconds)


class LRFinder(keras.callbacks.Callback):
    """Run the range test inside ``model.fit``: the lr ramps per batch, fit stops after ``num_iter`` batches or
    when the smoothed loss diverges, and at the end every variable is restored; the result is ``self.result``.
    Give fit enough batches (e.g. ``epochs=100``; it stops itself) and use it in its own fit call, without
    checkpoint callbacks (they would see the test's weights). Range options as in :func:`lrkit.range_test`.
    This is one ramp (fit drives the batches): no extension and no confirmation runs; for the default adaptive
    test use :func:`find_lr`."""

    def __init__(self, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_iter: int = 100,
                 mode: str = "exponential", smooth: float = 0.98, diverge_factor: float = 4.0,
                 rule: str | None = None) -> None:
        super().__init__()
        check_range(start_lr, end_lr, num_iter)
        if diverge_factor <= 1:
            raise LrkitError(f"diverge_factor must be > 1, got {diverge_factor!r}; the usual value is 4")
        self.kwargs = dict(start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
                           diverge_factor=diverge_factor, rule=rule)
        self._lrs = ramp(start_lr, end_lr, num_iter, mode)(np.arange(num_iter))
        self.result: FinderResult | None = None
        self._snap: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        _check_model(self.model)
        self._snap = snapshot_model(self.model)
        self._losses: list[float] = []
        self._avg, self._best, self._done = EMA(self.kwargs["smooth"]), math.inf, False

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self._done:
            self.model.optimizer.learning_rate = float(self._lrs[len(self._losses)])
            self.model.reset_metrics()  # so logs["loss"] at batch end is this batch's loss, not a running mean

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._done:
            return
        loss = float((logs or {})["loss"])
        i = len(self._losses)
        self._losses.append(loss)
        s = self._avg.update(loss)  # the engine's stop rule, online; the result is recomputed by the engine
        diverged = not math.isfinite(loss) or (i > 0 and s > self.kwargs["diverge_factor"] * self._best)
        self._best = min(self._best, s)
        if diverged or len(self._losses) == self.kwargs["num_iter"]:
            self._done = True
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        restore_model(self.model, self._snap)
        self._snap = None
        if not self._done:
            raise LrkitError(f"model.fit ended after {len(self._losses)} of the {self.kwargs['num_iter']} batches "
                             "the range test needs (the model was restored); pass more epochs, e.g. epochs=100 "
                             "(the callback stops fit when done), or a smaller num_iter")
        family, momentum = infer_family(self.model.optimizer)
        self.result = range_test(Replay(self._losses), progress=False, family=family, momentum=momentum,
                                 **self.kwargs)


__all__ = ["KerasTrainer", "LRFinder", "find_lr", "restore_model", "snapshot_model"]
