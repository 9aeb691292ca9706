"""JAX/optax adapter: the range test on a user's ``train_step(params, opt_state, batch, lr)`` (:func:`find_lr`,
:class:`JaxStepper`, and :class:`LRFinder` in your own loop), and helpers that let a plain optax optimiser take its lr
per step (``optax.inject_hyperparams``); schedules are :mod:`lrkit.integrations.optax_schedule`, the live doctor
:class:`lrkit.integrations.jax_monitor.LrMonitor`.

Pytrees are immutable, so the snapshot is the references to the user's ``params`` and ``opt_state`` (nothing is
copied but the first step's inputs, so a ``train_step`` that donates its buffers never deletes the user's arrays);
the numpy and python RNGs (which a batch iterator may use) are restored too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderOptions, FinderResult, FinderSession, SessionFront, range_test

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as e:
    raise missing_extra("jax", "jax") from e

TrainStep = Callable[[Any, Any, Any, Any], tuple[Any, Any, Any]]


def inject_lr(optimizer: Callable[..., optax.GradientTransformation], **kwargs: Any) -> optax.GradientTransformation:
    """``optax.inject_hyperparams(optimizer)(**kwargs)``: the optimiser factory (e.g. ``optax.adamw``) with its
    ``learning_rate`` kept in the state, so :func:`set_lr` can change it per step (inside ``jax.jit`` too)."""
    if not callable(optimizer) or isinstance(optimizer, optax.GradientTransformation):
        raise LrkitError("inject_lr needs the optimiser factory, not a built optimiser: inject_lr(optax.adamw, "
                         "learning_rate=1e-3), not inject_lr(optax.adamw(1e-3))")
    if "learning_rate" not in kwargs:
        raise LrkitError("inject_lr needs learning_rate=... (a float or an optax/lrkit schedule), e.g. "
                         "inject_lr(optax.adamw, learning_rate=1e-3, weight_decay=1e-4)")
    return optax.inject_hyperparams(optimizer)(**kwargs)


def set_lr(opt_state: Any, lr: Any) -> Any:
    """A copy of ``opt_state`` whose injected ``learning_rate`` is ``lr`` (jit-traceable)."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
    if not found:
        raise LrkitError("the optimiser state has no injected learning_rate; build the optimiser with "
                         "lrkit.jax.inject_lr(optax.adamw, learning_rate=...) (optax.inject_hyperparams)")
    if len(found) > 1:
        raise LrkitError("this optimiser's learning_rate is a schedule, which overrides any lr set per step; "
                         "build it with a float for the range test: inject_lr(optax.adamw, learning_rate=1e-3)")
    old = found[0][1]
    return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(lr, dtype=jnp.asarray(old).dtype))


def get_lr(opt_state: Any) -> float | None:
    """The injected ``learning_rate`` of ``opt_state`` as a float (None when there is not exactly one)."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
    return float(np.asarray(found[0][1])) if len(found) == 1 else None


def _base_lrs(opt_state: Any) -> list[float] | None:
    """The injected lr as the one "param group" of the range test (None without one)."""
    lr = get_lr(opt_state)
    return None if lr is None else [lr]


def make_train_step(loss_fn: Callable[[Any, Any], Any], optimizer: optax.GradientTransformation, *,
                    jit: bool = True) -> TrainStep:
    """``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)`` for ``loss_fn(params, batch)``
    and an optimiser built with :func:`inject_lr` (jitted unless ``jit=False``)."""

    def train_step(params: Any, opt_state: Any, batch: Any, lr: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, set_lr(opt_state, lr), params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step) if jit else train_step


def hyperparams(opt_state: Any) -> dict[str, Any] | None:
    """The hyperparameters :func:`inject_lr` keeps in an optax state (``{"learning_rate": ..., "b1": ...}``), or
    None when there is not exactly one such set; :func:`lrkit.finder.infer_family` reads the optimiser family from
    it."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "hyperparams")
    if len(found) != 1 or not isinstance(found[0][1], dict):
        return None
    return found[0][1]


def _fresh(tree: Any) -> Any:
    """Device copies of the arrays of a pytree (so a donating train_step cannot delete the originals)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)


class JaxStepper:
    """The range test's view of ``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)`` (a
    :class:`lrkit.Stepper`); ``batches`` is any re-iterable of batches (cycled). ``val_loader`` and ``loss_fn``
    (``loss_fn(params, batch) -> loss``): with both the stepper has ``evaluate()``, the mean loss over those batches
    (None without them). ``params``/``opt_state`` hold the current state; the user's own arrays are never
    modified."""

    def __init__(self, train_step: TrainStep, params: Any, opt_state: Any, batches: Iterable[Any], *,
                 val_loader: Iterable[Any] | None = None, loss_fn: Callable[[Any, Any], Any] | None = None) -> None:
        if not callable(train_step):
            raise LrkitError("train_step must be a function train_step(params, opt_state, batch, lr) -> "
                             "(params, opt_state, loss)")
        if batches is None or not isinstance(batches, Iterable):
            raise LrkitError("batches must be an iterable of batches (a list, or an object whose iter() restarts)")
        if val_loader is not None and not callable(loss_fn):
            raise LrkitError("val_loader needs loss_fn=lambda params, batch: loss (e.g. the loss_fn given to "
                             "make_train_step) to compute the validation loss")
        self.train_step, self.params, self.opt_state, self.batches = train_step, params, opt_state, batches
        self.val_loader, self.loss_fn = val_loader, loss_fn
        self.evaluate = self._evaluate if val_loader is not None else None
        self._iter: Any = None
        self._seen = 0
        self._own = False  # whether params/opt_state are outputs of train_step (safe to donate)

    @property
    def optimizer(self) -> dict[str, Any] | None:
        """The optimiser's injected hyperparameters (see :func:`hyperparams`): the rule reads its family there."""
        return hyperparams(self.opt_state)

    @property
    def base_lrs(self) -> list[float] | None:
        """The injected lr of ``opt_state`` (see :func:`get_lr`): where ``start_lr=None`` starts."""
        return _base_lrs(self.opt_state)

    @property
    def steps_per_epoch(self) -> int | None:
        """The ``len()`` of ``batches`` (``num_iter=None``), None without one."""
        try:
            return len(self.batches)  # type: ignore[arg-type]
        except TypeError:
            return None

    def snapshot(self) -> Any:
        """The current ``(params, opt_state)`` references and the numpy/python RNG states."""
        return (self.params, self.opt_state, np.random.get_state(), random.getstate())

    def restore(self, snap: Any) -> None:
        """Point back at the snapshot's pytrees and RNG states; restart the batches."""
        self.params, self.opt_state, np_state, py_state = snap
        np.random.set_state(np_state)
        random.setstate(py_state)
        self._iter, self._own = None, False

    def _next(self) -> Any:
        if self._iter is None:
            self._iter = iter(self.batches)
        try:
            batch = next(self._iter)
        except StopIteration:
            if isinstance(self.batches, Iterator):
                raise LrkitError(f"batches ran out after {self._seen} batches and cannot start again (a one-shot "
                                 "iterator or generator); pass a list or a re-iterable loader, which is cycled, or "
                                 "an iterator with enough batches for max_steps steps") from None
            self._iter = iter(self.batches)
            try:
                batch = next(self._iter)
            except StopIteration:
                raise LrkitError("batches yielded nothing (again); pass a list or a re-iterable loader with at "
                                 "least one batch, not a one-shot generator") from None
        self._seen += 1
        return batch

    def step(self, lr: float) -> float:
        """One ``train_step`` at ``lr``; the loss it returned."""
        params, opt_state = (self.params, self.opt_state) if self._own else (_fresh(self.params),
                                                                                _fresh(self.opt_state))
        out = self.train_step(params, opt_state, self._next(), lr)
        if not isinstance(out, tuple) or len(out) != 3:
            raise LrkitError("train_step must return (params, opt_state, loss), got "
                             f"{type(out).__name__} of length {len(out) if isinstance(out, tuple) else '?'}")
        self.params, self.opt_state, loss = out
        self._own = True
        return _scalar(loss, "train_step's loss")

    def _evaluate(self) -> float:
        """The mean of ``loss_fn(params, batch)`` over ``val_loader`` on the current params; a one-shot iterator is
        read once and its batches kept for the next evaluations."""
        if isinstance(self.val_loader, Iterator):
            self.val_loader = list(self.val_loader)
        losses = [_scalar(self.loss_fn(self.params, b), "loss_fn's value") for b in self.val_loader]
        if not losses:
            raise LrkitError("val_loader yielded no batches; pass a non-empty list of batches")
        return float(np.mean(losses))


def _scalar(loss: Any, what: str) -> float:
    loss = np.asarray(loss)
    if loss.size != 1:
        raise LrkitError(f"{what} must be a scalar, got shape {loss.shape}; reduce it (e.g. mean)")
    return float(loss)


def find_lr(
    train_step: TrainStep,
    params: Any,
    opt_state: Any,
    batches: Iterable[Any],
    *,
    val_loader: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    options: FinderOptions | None = None,
    **overrides: Any,
) -> FinderResult:
    """Run lrkit's range test on ``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)``
    (e.g. from :func:`make_train_step`); ``params`` and ``opt_state`` are left untouched (immutable pytrees: apply
    the pick with ``opt_state = set_lr(opt_state, result.suggestion.lr)``). ``options`` (an
    :class:`lrkit.FinderOptions`) with ``overrides`` by field name, as in :func:`lrkit.torch.find_lr` (default: the
    adaptive test within 200 optimiser steps); the optimiser family is read from ``opt_state`` (see
    :func:`hyperparams`). With ``val_loader`` and ``loss_fn(params, batch)`` the validation loss is judged every
    ``val_every`` steps on one ramp."""
    o = FinderOptions.build(options, **overrides)
    return range_test(JaxStepper(train_step, params, opt_state, batches, val_loader=val_loader, loss_fn=loss_fn), o)


class LRFinder(SessionFront):
    """The range test inside your own JAX loop: the same test as :func:`find_lr`, on the batches your loop draws.
    Run each step at :attr:`lr` and hand the step's loss and new state to :meth:`record`, which returns the state
    to continue from (the snapshot, when the test restores between its phases):

        finder = lrkit.jax.LRFinder(params, opt_state)
        while not finder.done:
            params, opt_state, loss = train_step(params, opt_state, next(batches), finder.lr)
            params, opt_state = finder.record(loss, params, opt_state)

    When it is over, the state returned is the one it started from (copied on the device, so a ``train_step`` that
    donates its inputs is fine), with the pick as the injected lr (``apply``, default True, as every in-fit
    finder); ``result`` holds the :class:`~lrkit.FinderResult`. ``options``/``overrides`` as in :func:`find_lr`;
    no validation mode."""

    def __init__(self, params: Any, opt_state: Any, *, apply: bool = True, options: FinderOptions | None = None,
                 **overrides: Any) -> None:
        self.params, self.opt_state, self.apply = params, opt_state, apply
        self.session = FinderSession(FinderOptions.build(options, **overrides), snapshot=self._snapshot,
                                     restore=self._restore, optimizer=hyperparams(opt_state),
                                     base_lrs=_base_lrs(opt_state))

    def record(self, loss: Any, params: Any, opt_state: Any) -> tuple[Any, Any]:
        """The loss of the step just run at :attr:`lr` and the state it produced; returns the state to continue
        from."""
        self.params, self.opt_state = params, opt_state
        if self.session.record(_scalar(loss, "the loss")):
            lr = self.result.suggestion.lr if self.result is not None else None
            if self.apply and lr is not None:
                self.opt_state = set_lr(self.opt_state, lr)
        return self.params, self.opt_state

    def close(self) -> tuple[Any, Any]:
        """Stop before the end; returns the state the test started from."""
        self.session.close()
        return self.params, self.opt_state

    def _snapshot(self) -> Any:
        return (_fresh(self.params), _fresh(self.opt_state), np.random.get_state(), random.getstate())

    def _restore(self, snap: Any) -> None:
        params, opt_state, np_state, py_state = snap
        self.params, self.opt_state = _fresh(params), _fresh(opt_state)  # the snapshot stays intact for later
        np.random.set_state(np_state)
        random.setstate(py_state)


__all__ = ["JaxStepper", "LRFinder", "find_lr", "get_lr", "hyperparams", "inject_lr", "make_train_step", "set_lr"]
