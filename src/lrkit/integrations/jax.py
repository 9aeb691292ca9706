"""JAX/optax adapter: the range test on a user's ``train_step(params, opt_state, batch, lr)``, and helpers that let a
plain optax optimiser take its lr per step (``optax.inject_hyperparams``).

Pytrees are immutable, so the snapshot is the references to the user's ``params`` and ``opt_state`` (nothing is
copied but the first step's inputs, so a ``train_step`` that donates its buffers never deletes the user's arrays);
the numpy and python RNGs (which a batch iterator may use) are restored too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from lrkit.adaptive import run_finder
from lrkit.errors import LrkitError, missing_extra
from lrkit.finder import FinderResult, check_range

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


def make_train_step(loss_fn: Callable[[Any, Any], Any], optimizer: optax.GradientTransformation, *,
                    jit: bool = True) -> TrainStep:
    """``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)`` for ``loss_fn(params, batch)``
    and an optimiser built with :func:`inject_lr` (jitted unless ``jit=False``)."""

    def train_step(params: Any, opt_state: Any, batch: Any, lr: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, set_lr(opt_state, lr), params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step) if jit else train_step


def infer_family(opt_state: Any) -> tuple[str | None, float | None]:
    """("adam"|"sgd"|None, momentum) from the hyperparameters :func:`inject_lr` keeps in an optax state: a second-
    moment decay (``b2``, ``decay``) means Adam-like; only ``learning_rate``/``momentum``/``nesterov`` means SGD."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "hyperparams")
    if len(found) != 1 or not isinstance(found[0][1], dict):
        return None, None
    names = set(found[0][1])
    if names & {"b2", "decay"}:
        return "adam", None
    if "learning_rate" in names and names <= {"learning_rate", "momentum", "nesterov"}:
        m = found[0][1].get("momentum")
        return "sgd", 0.0 if m is None else round(float(np.asarray(m)), 6)
    return None, None


def _fresh(tree: Any) -> Any:
    """Device copies of the arrays of a pytree (so a donating train_step cannot delete the originals)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)


class JaxTrainer:
    """The range test's view of ``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)`` (the
    :class:`~lrkit.Trainer` protocol); ``batches`` is any re-iterable of batches (cycled), ``evaluate`` an
    optional ``evaluate(params) -> loss`` for the validation-loss mode. ``params``/``opt_state`` hold the
    current state; the user's own arrays are never modified."""

    def __init__(self, train_step: TrainStep, params: Any, opt_state: Any, batches: Iterable[Any], *,
                 evaluate: Callable[[Any], Any] | None = None) -> None:
        if not callable(train_step):
            raise LrkitError("train_step must be a function train_step(params, opt_state, batch, lr) -> "
                             "(params, opt_state, loss)")
        if batches is None or not isinstance(batches, Iterable):
            raise LrkitError("batches must be an iterable of batches (a list, or an object whose iter() restarts)")
        self.train_step, self.params, self.opt_state, self.batches = train_step, params, opt_state, batches
        self._evaluate = evaluate
        self._iter: Any = None
        self._seen = 0
        self._own = False  # whether params/opt_state are outputs of train_step (safe to donate)

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
        loss = np.asarray(loss)
        if loss.size != 1:
            raise LrkitError(f"train_step's loss must be a scalar, got shape {loss.shape}; reduce it (e.g. mean)")
        return float(loss)

    def evaluate(self) -> float:
        """``evaluate(params)`` on the current params (the validation-loss mode)."""
        if self._evaluate is None:
            raise LrkitError("evaluate() needs evaluate=lambda params: val_loss")
        return float(self._evaluate(self.params))


def find_lr(
    train_step: TrainStep,
    params: Any,
    opt_state: Any,
    batches: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    evaluate: Callable[[Any], Any] | None = None,
    val_every: int = 5,
    rule: str | None = None,
    family: str | None = None,
    momentum: float | None = None,
    confirm: bool = True,
    max_steps: int = 200,
    max_seconds: float | None = None,
    progress: bool = True,
) -> FinderResult:
    """Run lrkit's range test on ``train_step(params, opt_state, batch, lr) -> (params, opt_state, loss)``
    (e.g. from :func:`make_train_step`); ``params`` and ``opt_state`` are left untouched. With ``confirm``
    (default) the ramp is extended when nothing diverged and short runs at the pick, /3 and /9 may move it down,
    within ``max_steps`` optimiser steps (default 200) and ``max_seconds`` (default: none), as in
    :func:`lrkit.integrations.torch.find_lr`; ``confirm=False``: one ramp. With ``evaluate``
    (``evaluate(params) -> loss``) the validation loss every ``val_every`` steps is judged (one ramp).
    ``family``/``momentum`` ("adam" | "sgd"): default read from ``opt_state`` (see :func:`infer_family`). Range
    options as in :func:`lrkit.range_test`."""
    check_range(start_lr, end_lr, num_iter)
    trainer = JaxTrainer(train_step, params, opt_state, batches, evaluate=evaluate)
    if family is None and momentum is None:
        family, momentum = infer_family(opt_state)
    return run_finder(trainer, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, smooth=smooth,
                      diverge_factor=diverge_factor, val_every=val_every if evaluate is not None else None,
                      rule=rule, family=family, momentum=momentum, progress=progress, confirm=confirm,
                      max_steps=max_steps, max_seconds=max_seconds)


__all__ = ["JaxTrainer", "find_lr", "infer_family", "inject_lr", "make_train_step", "set_lr"]
