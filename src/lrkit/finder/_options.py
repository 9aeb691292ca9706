"""Every option of the range test in one typed object, with the defaults every adapter uses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrkit.errors import LrkitError
from lrkit.finder._rules import FAMILIES


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class FinderOptions:
    """The options of the LR range test (:func:`lrkit.range_test` and every framework's ``find_lr``).

    The ramp:
        start_lr, end_lr: its first and last lr (default 1e-7 .. 10); no step runs past ``end_lr``.
            ``start_lr=None``: the optimiser's current lr. A list (one per param group) ramps each group from its
            own start to its own end (``start_lr=None`` with a list ``end_lr``: each group from its current lr);
            the curve, the rule and ``suggestion`` are group 0's, ``FinderResult.group_suggestions`` every group's.
        mode: "exponential" (default) or "linear".
        num_iter: optimiser steps in it (>= 5; default 100); None: one epoch of the training data (its length).
        smooth: EMA factor of the bias-corrected smoothed loss (default 0.98).
        diverge_factor: stop once the smoothed loss exceeds this times the best so far (> 1; default 4).
        max_skipped: skipped steps (a step returning None) tolerated per ramp (default: its number of steps).
    The pick:
        rule: suggestion rule by name (default "robust"; see :func:`lrkit.finder.rules`).
        family, momentum: the optimiser family ("adam" | "sgd") and SGD's momentum, for the rules that use them
            (default: read from the stepper's ``optimizer``, see :func:`lrkit.finder.infer_family`).
    The adaptive test (``confirm=True``, the default): the ramp is judged on its raw losses; with
    ``extend_decades`` > 0 (default 0: never past ``end_lr``), a ramp that never diverged is extended by
    ``extend_steps`` steps (default 25; 0: never) over that many decades past ``end_lr``; then ``n_candidates``
    (1-3; default 3) short constant-lr runs at the pick and ``spread`` (3) and
    ``spread**2`` times below it may move the pick down, never up (Adam-like: to a run whose loss is more than
    ``margin``, 2%, lower; SGD: to the largest run that made progress and was not rising). Everything fits in
    ``max_steps`` optimiser steps (default 200, at least ``num_iter``); each run gets what the budget leaves, at most
    ``max_confirm_steps`` (40), and none runs below ``min_confirm_steps`` (10).
        max_seconds: a time budget for all of it in seconds (default: none): no step starts once it is spent;
            the confirmation runs share what is left, or are skipped, and the reason says so.
    Validation:
        val_every: when the stepper has validation data (``evaluate``), judge the validation loss every this many
            steps (default 5) on one ramp, without confirmation runs. None: judge the training loss; the
            confirmation runs are then scored on the validation loss.
    progress: show a progress bar (default True).
    """

    start_lr: float | Sequence[float] | None = 1e-7
    end_lr: float | Sequence[float] = 10.0
    num_iter: int | None = 100
    mode: str = "exponential"
    smooth: float = 0.98
    diverge_factor: float = 4.0
    max_skipped: int | None = None
    rule: str | None = None
    family: str | None = None
    momentum: float | None = None
    confirm: bool = True
    max_steps: int = 200
    max_seconds: float | None = None
    extend_steps: int = 25
    extend_decades: float = 0.0
    n_candidates: int = 3
    spread: float = 3.0
    max_confirm_steps: int = 40
    min_confirm_steps: int = 10
    margin: float = 0.02
    val_every: int | None = 5
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("start_lr", "end_lr"):  # lists become tuples: the options stay hashable and frozen
            v = getattr(self, name)
            if isinstance(v, Sequence) and not isinstance(v, str):
                object.__setattr__(self, name, tuple(v))
        check_range(self.start_lr, self.end_lr, self.num_iter)
        if self.mode not in ("exponential", "linear"):
            raise LrkitError(f"mode must be 'exponential' or 'linear', got {self.mode!r}")
        if not (_number(self.smooth) and 0 <= self.smooth < 1):
            raise LrkitError(f"smooth must be in [0, 1), got {self.smooth!r}; the usual value is 0.98")
        if not (_number(self.diverge_factor) and self.diverge_factor > 1):
            raise LrkitError(f"diverge_factor must be > 1, got {self.diverge_factor!r}; the usual value is 4")
        if self.max_skipped is not None and not (_count(self.max_skipped) and self.max_skipped >= 0):
            raise LrkitError(f"max_skipped must be a count >= 0 or None, got {self.max_skipped!r}")
        if self.family is not None and self.family not in FAMILIES:
            raise LrkitError(f"unknown optimiser family {self.family!r}; use 'adam' (Adam, AdamW, RMSprop, "
                             "Adagrad...), 'sgd', or None to read it from the optimiser")
        if self.momentum is not None and not (_number(self.momentum) and 0 <= self.momentum < 1):
            raise LrkitError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.max_seconds is not None and not (_number(self.max_seconds) and self.max_seconds > 0):
            raise LrkitError(f"max_seconds must be a positive number of seconds, got {self.max_seconds!r}; or "
                             "None for no time budget")
        if self.val_every is not None and not (_count(self.val_every) and self.val_every >= 1):
            raise LrkitError(f"val_every must be a positive number of steps, got {self.val_every!r}; or None to "
                             "judge the training loss")
        if not (_count(self.max_steps) and self.max_steps >= 1):
            raise LrkitError(f"max_steps must be a positive integer number of optimiser steps, got "
                             f"{self.max_steps!r}; the default 200 runs the ramp and the confirmation runs")
        if not (_count(self.extend_steps) and (self.extend_steps == 0 or self.extend_steps >= 5)):
            raise LrkitError(f"extend_steps must be 0 (no extension) or an integer >= 5, got {self.extend_steps!r}")
        if not (_number(self.extend_decades) and math.isfinite(self.extend_decades) and self.extend_decades >= 0):
            raise LrkitError(f"extend_decades must be >= 0 (decades past end_lr the test may try; 0: none), got "
                             f"{self.extend_decades!r}")
        if self.n_candidates not in (1, 2, 3):
            raise LrkitError(f"n_candidates must be 1, 2 or 3, got {self.n_candidates!r}")
        if not (_number(self.spread) and self.spread > 1):
            raise LrkitError(f"spread must be > 1 (the factor between candidates), got {self.spread!r}")
        for name in ("max_confirm_steps", "min_confirm_steps"):
            v = getattr(self, name)
            if not (_count(v) and v >= 1):
                raise LrkitError(f"{name} must be an integer >= 1, got {v!r}")
        if not (_number(self.margin) and 0 <= self.margin < 1):
            raise LrkitError(f"margin must be in [0, 1), got {self.margin!r}")

    @property
    def step_budget(self) -> int:
        """The optimiser steps the adaptive test may spend: ``max_steps``, at least the ramp's ``num_iter``."""
        return max(int(self.max_steps), int(self.num_iter or 0))

    def resolve(self, base_lrs: Sequence[float] | None = None, steps_per_epoch: int | None = None
                ) -> tuple[FinderOptions, list[tuple[float, float]] | None]:
        """The options with a concrete ramp: ``start_lr=None`` read from ``base_lrs`` (the optimiser's lr of each
        param group, group 0 first), ``num_iter=None`` from ``steps_per_epoch``, and per-group lists reduced to
        group 0's (returned with every group's ``(start, end)``; None when the lrs are one for all groups, which
        then keep their ratios). :class:`LrkitError` when something needed is unknown."""
        starts, ends, num_iter = self.start_lr, self.end_lr, self.num_iter
        if num_iter is None:
            if not steps_per_epoch:
                raise LrkitError("num_iter=None runs one epoch, but the length of the training data is unknown (a "
                                 "loader without len(), or a loop lrkit does not own); pass num_iter")
            if steps_per_epoch < 5:
                raise LrkitError(f"num_iter=None runs one epoch, which is only {steps_per_epoch} optimiser steps; "
                                 "the test needs >= 5: pass num_iter")
            num_iter = int(steps_per_epoch)
        grouped = isinstance(starts, tuple) or isinstance(ends, tuple)
        if starts is None:
            if not base_lrs:
                raise LrkitError("start_lr=None starts at the optimiser's lr, which this stepper does not expose "
                                 "(no base_lrs); pass start_lr")
            starts = tuple(float(v) for v in base_lrs) if grouped else float(base_lrs[0])
        ranges = None
        if grouped:
            n = len(base_lrs) if base_lrs else None
            starts_t = starts if isinstance(starts, tuple) else None
            ends_t = ends if isinstance(ends, tuple) else None
            k = len(starts_t) if starts_t is not None else len(ends_t)  # type: ignore[arg-type]
            for name, v in (("start_lr", starts_t), ("end_lr", ends_t)):
                if v is not None and (len(v) != k or (n is not None and len(v) != n)):
                    raise LrkitError(f"{name} has {len(v)} values but the optimiser has {n if n is not None else k} "
                                     "param groups; give one per group (or one number for all)")
            starts_t = starts_t or (float(starts),) * k  # type: ignore[arg-type]
            ends_t = ends_t or (float(ends),) * k  # type: ignore[arg-type]
            check_range(starts_t, ends_t, num_iter)  # every group's, named by its index
            ranges = [(float(a), float(b)) for a, b in zip(starts_t, ends_t)]
            starts, ends = ranges[0]
        check_range(starts, ends, num_iter)
        return dataclasses.replace(self, start_lr=starts, end_lr=ends, num_iter=num_iter), ranges

    @classmethod
    def build(cls, options: FinderOptions | None = None, **overrides: Any) -> FinderOptions:
        """``options`` (default: the defaults) with ``overrides`` (field names) replaced; a name that is no field
        is an :class:`LrkitError` listing the fields. Every ``find_lr`` builds its options this way."""
        if options is not None and not isinstance(options, FinderOptions):
            raise LrkitError(f"options must be an lrkit.FinderOptions, got {type(options).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise LrkitError(f"unknown range-test option(s) {', '.join(unknown)}; the options are the fields of "
                             f"lrkit.FinderOptions: {', '.join(sorted(names))}")
        return dataclasses.replace(options or cls(), **overrides)


def check_range(start_lr: Any, end_lr: Any, num_iter: Any) -> None:
    """Raise :class:`LrkitError` for a ramp the test cannot run. ``start_lr=None``, ``num_iter=None`` and per-group
    lists (tuples) are checked as far as they can be before the optimiser is known (see
    :meth:`FinderOptions.resolve`)."""
    if num_iter is not None and (not _count(num_iter) or num_iter < 5):
        raise LrkitError(f"num_iter must be an integer >= 5 (the test needs a curve), got {num_iter!r}; "
                         "use about 100, or None for one epoch")
    if isinstance(start_lr, tuple) or isinstance(end_lr, tuple):
        starts = start_lr if isinstance(start_lr, tuple) else None
        ends = end_lr if isinstance(end_lr, tuple) else None
        if starts is not None and ends is not None and len(starts) != len(ends):
            raise LrkitError(f"start_lr has {len(starts)} values and end_lr {len(ends)}; give one per param group")
        for name, values in (("start_lr", starts), ("end_lr", ends)):
            if values is not None and not values:
                raise LrkitError(f"{name} is an empty list; give one lr per param group")
        k = len(starts if starts is not None else ends)  # type: ignore[arg-type]
        for g in range(k):
            a = starts[g] if starts is not None else start_lr
            b = ends[g] if ends is not None else end_lr
            try:
                check_range(a, b, None)
            except LrkitError as e:
                raise LrkitError(f"param group {g}: {e}") from None
        return
    if start_lr is None:
        if not (_number(end_lr) and math.isfinite(end_lr) and end_lr > 0):
            raise LrkitError(f"end_lr must be a positive number, got {end_lr!r}")
        return
    if not (_number(start_lr) and math.isfinite(start_lr) and start_lr > 0):
        raise LrkitError(f"start_lr must be a positive number, got {start_lr!r}")
    if not (_number(end_lr) and math.isfinite(end_lr)):
        raise LrkitError(f"end_lr must be a finite number, got {end_lr!r}")
    if start_lr >= end_lr:
        raise LrkitError(f"start_lr ({start_lr:g}) must be smaller than end_lr ({end_lr:g}); "
                         "the test ramps the lr up, e.g. start_lr=1e-7, end_lr=10")
