"""Presets: the peers' schedules, spelled with the peers' arguments, as lrkit schedules with the same values.

Each converts the peer's convention (relative floors, warmup counted inside the total, ...) into lrkit's pinned
ones (:mod:`lrkit.schedules.conventions`); the parity tests run each against the peer itself.
"""

from __future__ import annotations

from typing import Any

from lrkit.errors import LrkitError
from lrkit.schedules import _check as ck
from lrkit.schedules._base import Schedule
from lrkit.schedules.combinators import join, shift, warmup
from lrkit.schedules.families import constant, cosine, cosine_restarts, inverse_sqrt, linear, polynomial, wsd

TRANSFORMERS_NAMES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")


def transformers(name: str, peak: float, warmup_steps: int = 0, training_steps: int | None = None,
                 **kwargs: Any) -> Schedule:
    """transformers ``get_scheduler(name, num_warmup_steps=warmup_steps, num_training_steps=training_steps,
    scheduler_specific_kwargs=kwargs)`` for an optimiser with lr ``peak``.

    Differences (documented, tested): past ``training_steps`` lrkit holds the final value where transformers'
    cosine schedules keep oscillating. ``cosine_warmup_with_min_lr`` runs one step ahead of the others (lr = 1/W
    at step 0), reproduced with ``shift(..., 1)``. ``reduce_lr_on_plateau`` is :func:`lrkit.schedules.plateau`.
    """
    w = "transformers"
    ck.choice(w, "name", name, TRANSFORMERS_NAMES)
    ws = ck.count(w, "warmup_steps", warmup_steps, low=0)
    if name in ("constant", "constant_with_warmup", "inverse_sqrt"):
        if name == "constant":
            return constant(peak)
        if name == "constant_with_warmup":
            return warmup(constant(peak), ws)
        timescale = kwargs.pop("timescale", None) or (ws or 10_000)
        _no_more(name, kwargs)
        return warmup(inverse_sqrt(peak, timescale), ws)
    if training_steps is None:
        raise LrkitError(f"transformers: {name!r} needs training_steps (num_training_steps)")
    n = ck.count(w, "training_steps", training_steps)
    if name == "warmup_stable_decay":
        decay = kwargs.pop("num_decay_steps")
        out = wsd(peak, n, warmup=ws, decay=int(decay), cooldown=kwargs.pop("decay_type", "cosine"),
                  final=peak * kwargs.pop("min_lr_ratio", 0.0), warmup_mode=kwargs.pop("warmup_type", "linear"))
        _no_more(name, kwargs)
        return out
    if n <= ws:
        raise LrkitError(f"transformers: training_steps ({n}) must exceed warmup_steps ({ws})")
    d = n - ws
    if name == "linear":
        body = linear(peak, 0.0, d)
    elif name == "polynomial":
        body = polynomial(peak, d, final=kwargs.pop("lr_end", 1e-7), power=kwargs.pop("power", 1.0))
    elif name == "cosine_with_restarts":
        cycles = kwargs.pop("num_cycles", 1)
        body = join([cosine_restarts(peak, d / cycles), constant(0.0)], [d])
    else:  # cosine, cosine_with_min_lr, cosine_warmup_with_min_lr
        cycles = kwargs.pop("num_cycles", 0.5)
        final = 0.0
        if name != "cosine":
            min_lr, rate = kwargs.pop("min_lr", None), kwargs.pop("min_lr_rate", None)
            if (min_lr is None) == (rate is None):
                raise LrkitError(f"transformers: {name!r} needs exactly one of min_lr or min_lr_rate")
            final = min_lr if min_lr is not None else rate * peak
        body = cosine(peak, d, final=final, cycles=cycles)
        if name == "cosine_warmup_with_min_lr":
            if kwargs.pop("warmup_lr_rate", None) is not None:
                raise LrkitError("transformers: cosine_warmup_with_min_lr with warmup_lr_rate is not reproduced; "
                                 "use warmup(schedule, steps, start=warmup_lr_rate)")
            _no_more(name, kwargs)
            return shift(warmup(body, ws), 1)  # it is one step ahead: lr (t+1)/W in warmup, progress t+1-W after
    _no_more(name, kwargs)
    return warmup(body, ws)


def _no_more(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise LrkitError(f"transformers: {name!r} got arguments it does not take: {', '.join(kwargs)}")


def optax_warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                              end_value: float = 0.0, exponent: float = 1.0) -> Schedule:
    """optax ``warmup_cosine_decay_schedule`` (its ``decay_steps`` includes the warmup)."""
    if decay_steps <= warmup_steps:
        raise LrkitError(f"optax_warmup_cosine_decay: decay_steps ({decay_steps}) includes the warmup and must "
                         f"exceed warmup_steps ({warmup_steps})")
    body = cosine(peak_value, decay_steps - warmup_steps, final=end_value, exponent=exponent)
    return warmup(body, warmup_steps, start=init_value / peak_value if peak_value else 0.0)


def keras_cosine_decay(initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                       warmup_target: float | None = None, warmup_steps: int = 0) -> Schedule:
    """Keras 3 ``CosineDecay`` (decay runs after the warmup; ``alpha`` is relative to the peak)."""
    if warmup_target is None:
        return cosine(initial_learning_rate, decay_steps, final=alpha * initial_learning_rate)
    body = cosine(warmup_target, decay_steps, final=alpha * warmup_target)
    return warmup(body, warmup_steps, start=initial_learning_rate / warmup_target if warmup_target else 0.0)
