"""Every convention of lrkit's schedules, pinned in one place.

1. **Steps count optimiser updates**, 0-based: ``s(0)`` is the lr of the first ``optimizer.step()``. Under
   gradient accumulation one step is one update, not one micro-batch (see :func:`training_steps`).
2. **A family's** ``steps`` **is its own length.** ``cosine(peak, steps)`` reaches ``final`` at ``t == steps``
   and holds it afterwards (no oscillation past the end, unlike torch's chainable ``CosineAnnealingLR``).
   Families with a built-in warmup (``onecycle``, ``wsd``) count it inside their ``steps``.
3. **Warmup is prepended, not carved out.** ``warmup(s, W)`` (spec ``warmup(W) >> s``) runs W steps and then
   ``s`` in its own local time, so the total is ``W + s.length``. This reproduces transformers
   (``num_training_steps = W + decay steps``), optax ``warmup_cosine_decay_schedule`` (``decay_steps`` includes
   the warmup: use ``decay_steps - W``) and Keras ``CosineDecay(warmup_steps=W)`` (decay runs after warmup).
4. **Warmup value at step 0 is** ``start * peak`` (``start=0.0`` by default, as transformers and optax), and it
   reaches ``peak = s(0)`` at step W, the first step of ``s``. torch's ``LinearLR`` forbids ``start=0``; lrkit allows it.
5. **Floors are absolute lrs** (``final=``, as torch ``eta_min``, timm ``lr_min``). Relative floors of
   optax/Keras (``alpha``) and transformers (``min_lr_rate``) are ``final = alpha * peak``; the presets convert.
6. **Boundaries switch at** ``step >= boundary`` and each piece of ``join`` runs in local time (as optax
   ``join_schedules`` and torch ``MultiStepLR``). Keras ``PiecewiseConstantDecay`` switches at ``step > boundary``:
   add 1 to its boundaries.
7. **Annealing primitives** (as fastai and torch ``OneCycleLR``): ``cos``, ``linear``, ``exp`` from ``start`` to
   ``end`` as the fraction ``pct`` goes 0 -> 1, computed with torch's exact formulas so parity holds to 1e-12.
8. **No schedule reads the optimiser's lr**: a schedule is ``(config, step) -> lr``; resuming needs the step only
   (plus the observed-metric state of ``plateau``, its one stateful kind).
"""

from __future__ import annotations

import math
from typing import Any

from lrkit.errors import LrkitError

ANNEALS = ("cos", "linear", "exp")


def anneal(xp: Any, mode: str, start: float, end: float, pct: Any) -> Any:
    """``start`` -> ``end`` as ``pct`` goes 0 -> 1: ``cos`` (half cosine), ``linear`` or ``exp`` (geometric)."""
    if mode == "cos":
        return end + (start - end) / 2.0 * (xp.cos(math.pi * pct) + 1.0)
    if mode == "linear":
        return (end - start) * pct + start
    return start * (end / start) ** pct


def progress(xp: Any, t: Any, steps: float) -> Any:
    """Fraction of ``steps`` done at step ``t``, clipped to [0, 1]."""
    return xp.minimum(xp.maximum(t / steps, 0.0), 1.0)


def switched(t: Any, boundary: float) -> Any:
    """The boundary rule: a piece that starts at ``boundary`` is active from ``step >= boundary``."""
    return t >= boundary


def training_steps(epochs: float, batches_per_epoch: int, accumulation: int = 1, drop_last: bool = False) -> int:
    """Total optimiser updates for ``epochs`` epochs of ``batches_per_epoch`` micro-batches with gradient
    accumulation over ``accumulation`` micro-batches (a partial window at an epoch's end counts as one update
    unless ``drop_last``). Pass the result as a schedule's ``steps``."""
    if not (isinstance(batches_per_epoch, int) and batches_per_epoch >= 1):
        raise LrkitError(f"batches_per_epoch must be an int >= 1, got {batches_per_epoch!r}; "
                         "pass len(train_dataloader)")
    if not (isinstance(accumulation, int) and accumulation >= 1):
        raise LrkitError(f"accumulation must be an int >= 1, got {accumulation!r}; use 1 for no accumulation")
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise LrkitError(f"epochs must be a positive number, got {epochs!r}")
    per_epoch = batches_per_epoch // accumulation if drop_last else -(-batches_per_epoch // accumulation)
    if per_epoch == 0:
        raise LrkitError(f"accumulation={accumulation} exceeds batches_per_epoch={batches_per_epoch} with "
                         "drop_last=True, so no update ever happens; lower accumulation")
    whole = int(epochs)
    rest = epochs - whole
    return whole * per_epoch + (math.ceil(rest * per_epoch - 1e-9) if rest else 0)
