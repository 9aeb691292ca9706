"""Keras 3 adapter: the range test through ``train_on_batch`` (:func:`find_lr`, :class:`KerasStepper`), or inside
``model.fit`` (:class:`LRFinder`); schedules are :mod:`lrkit.integrations.keras_schedule`, the live doctor
:class:`lrkit.integrations.keras_monitor.LrMonitor`.

Both run the same test (:class:`lrkit.FinderOptions`: by default the adaptive one) and set ``model.optimizer.learning_rate`` per batch, so the optimiser must have been built with a float lr (one
built with a ``LearningRateSchedule`` cannot take a new lr: a clear error says so). The loss recorded is the
batch's own loss: ``train_on_batch`` resets the metrics before each batch, and ``LRFinder`` resets them at each
batch start, so ``logs["loss"]`` (otherwise a running mean since the epoch start) is that batch's mean loss. Inside
``fit`` the batches are fit's own, and the state is restored between the test's phases as fit goes on.
Every model, optimiser and metric variable (BatchNorm statistics, seed-generator states, optimiser moments and
iteration count) and the numpy/python/torch RNGs are restored exactly afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderOptions, FinderResult, FinderSession, range_test

try:
    import keras
except ImportError as e:
    raise missing_extra("keras", "keras") from e


def _lr_of(optimizer: Any) -> float:
    """The optimiser's current lr as a float (a TypeError for a LearningRateSchedule's)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


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
        opt.learning_rate = _lr_of(opt)  # same value: a no-op for a float lr
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


def _check_batch(batch: Any) -> Any:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise LrkitError(f"each batch must be (x, y) or (x, y, sample_weight), got {type(batch).__name__}")
    return batch


class KerasStepper:
    """The range test's view of a compiled Keras model (a :class:`lrkit.Stepper`): one ``train_on_batch`` per
    step. Data: arrays ``x``, ``y`` cut in batches of ``batch_size`` (reshuffled each pass with a private generator
    seeded by ``seed`` when ``shuffle``), or with ``y=None`` any iterable of ``(x, y)`` / ``(x, y, sample_weight)``
    batches (cycled). ``val_loader``: an iterable of such batches; with it the stepper has ``evaluate()``, the
    mean ``test_on_batch`` loss over them (None without them)."""

    def __init__(self, model: keras.Model, x: Any, y: Any = None, batch_size: int = 32, *, shuffle: bool = True,
                 seed: int = 0, val_loader: Iterable[Any] | None = None) -> None:
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
        self.val_loader = val_loader
        self.evaluate = self._evaluate if val_loader is not None else None

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
        """The model's optimiser (read by :func:`lrkit.finder.infer_family`: the rule knows Adam from SGD)."""
        return self.model.optimizer

    @property
    def base_lrs(self) -> list[float]:
        """The optimiser's lr (one group): where ``start_lr=None`` starts."""
        return [_lr_of(self.model.optimizer)]

    @property
    def steps_per_epoch(self) -> int | None:
        """Batches in one pass over the data (``num_iter=None``): ``ceil(samples / batch_size)`` for arrays, the
        ``len()`` of an iterable of batches (None without one)."""
        if self._arrays:
            return -(-self._n // self.batch_size)
        try:
            return len(self.x)
        except TypeError:
            return None

    # -- the Stepper protocol -------------------------------------------------------------------------------
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
        logs = self.model.train_on_batch(*_check_batch(self._next()), return_dict=True)
        return float(logs["loss"])

    def _evaluate(self) -> float:
        """The mean ``test_on_batch`` loss over ``val_loader`` (metric variables are restored with the rest); a
        one-shot iterator is read once and its batches kept for the next evaluations."""
        if isinstance(self.val_loader, Iterator):
            self.val_loader = list(self.val_loader)
        losses = [float(self.model.test_on_batch(*_check_batch(b), return_dict=True)["loss"]) for b in self.val_loader]
        if not losses:
            raise LrkitError("val_loader yielded no batches; pass a non-empty list of (x, y) batches")
        return float(np.mean(losses))


def find_lr(
    model: keras.Model,
    x: Any,
    y: Any = None,
    batch_size: int = 32,
    *,
    val_loader: Iterable[Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    apply: bool = False,
    options: FinderOptions | None = None,
    **overrides: Any,
) -> FinderResult:
    """Run lrkit's range test on a compiled Keras model (float lr) with ``train_on_batch`` and restore every
    variable exactly. ``options`` (an :class:`lrkit.FinderOptions`) with ``overrides`` by field name, as in
    :func:`lrkit.torch.find_lr` (default: the adaptive test within 200 optimiser steps); ``val_loader``: batches
    whose loss is judged every ``val_every`` steps on one ramp. ``apply=True`` sets the optimiser's lr to the pick
    (unchanged when there is none). Data as in :class:`KerasStepper`."""
    o = FinderOptions.build(options, **overrides)
    result = range_test(KerasStepper(model, x, y, batch_size, shuffle=shuffle, seed=seed, val_loader=val_loader), o)
    if apply and result.suggestion.lr is not None:
        model.optimizer.learning_rate = float(result.suggestion.lr)
    return result


class LRFinder(keras.callbacks.Callback):
    """Run the range test inside ``model.fit``, on fit's own batches: the same test as :func:`find_lr` (by default
    the adaptive one: ramp, extension, confirmation runs), each phase starting from the restored state. The lr is set
    per batch; fit stops when the test is over, every variable is restored, and (``apply``, default True) the
    optimiser's lr becomes the pick. The result is ``self.result``. Give fit enough batches (e.g. ``epochs=100``;
    it stops itself) and use it in its own fit call, without checkpoint callbacks (they would see the test's
    weights). ``options``/``overrides`` as in :func:`find_lr`; no validation mode."""

    def __init__(self, *, apply: bool = True, options: FinderOptions | None = None, **overrides: Any) -> None:
        super().__init__()
        self.apply = apply
        self.options = FinderOptions.build(options, **overrides)
        self.result: FinderResult | None = None
        self._session: FinderSession | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        _check_model(self.model)
        self.result = None
        model = self.model
        self._session = FinderSession(self.options, snapshot=lambda: snapshot_model(model),
                                      restore=lambda snap: restore_model(model, snap), optimizer=model.optimizer,
                                      base_lrs=[_lr_of(model.optimizer)],
                                      steps_per_epoch=self.params.get("steps") if self.params else None)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._session is not None and not self._session.done:
            self.model.optimizer.learning_rate = float(self._session.lr)
            self.model.reset_metrics()  # so logs["loss"] at batch end is this batch's loss, not a running mean

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        session = self._session
        if session is None or session.done:
            return
        if session.record(float((logs or {})["loss"])):
            self.model.stop_training = True
            self.result = session.result
            if self.apply and self.result.suggestion.lr is not None:
                self.model.optimizer.learning_rate = float(self.result.suggestion.lr)

    def on_train_end(self, logs: dict | None = None) -> None:
        session, self._session = self._session, None
        if session is not None and not session.done:
            session.close()  # restores the model
            raise LrkitError(f"model.fit ended after {session.steps} batches, before the range test was over (the "
                             "model was restored); pass more epochs, e.g. epochs=100 (the callback stops fit when "
                             "done), or lower max_steps / num_iter")


__all__ = ["KerasStepper", "LRFinder", "find_lr", "restore_model", "snapshot_model"]
