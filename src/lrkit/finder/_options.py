"""Every option of the range test in one typed object, with the defaults every adapter uses."""

from __future__ import annotations

import dataclasses
import math
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
        start_lr, end_lr: its first and last lr (default 1e-7 .. 10); ``mode`` "exponential" (default) or
            "linear"; num_iter: optimiser steps in it (>= 5; default 100).
        smooth: EMA factor of the bias-corrected smoothed loss (default 0.98).
        diverge_factor: stop once the smoothed loss exceeds this times the best so far (> 1; default 4).
        max_skipped: skipped steps (a step returning None) tolerated per ramp (default: its number of steps).
    The pick:
        rule: suggestion rule by name (default "robust"; see :func:`lrkit.finder.rules`).
        family, momentum: the optimiser family ("adam" | "sgd") and SGD's momentum, for the rules that use them
            (default: read from the stepper's ``optimizer``, see :func:`lrkit.finder.infer_family`).
    The adaptive test (``confirm=True``, the default): the ramp is judged on its raw losses; when it never
    diverged it is extended by ``extend_steps`` steps (default 25; 0: never) over ``extend_decades`` more decades
    (default 2); then ``n_candidates`` (1-3; default 3) short constant-lr runs at the pick and ``spread`` (3) and
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

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_iter: int = 100
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
    extend_decades: float = 2.0
    n_candidates: int = 3
    spread: float = 3.0
    max_confirm_steps: int = 40
    min_confirm_steps: int = 10
    margin: float = 0.02
    val_every: int | None = 5
    progress: bool = True

    def __post_init__(self) -> None:
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
        if not _count(self.max_steps):
            raise LrkitError(f"max_steps must be an integer number of optimiser steps, got {self.max_steps!r}")
        if not (_count(self.extend_steps) and (self.extend_steps == 0 or self.extend_steps >= 5)):
            raise LrkitError(f"extend_steps must be 0 (no extension) or an integer >= 5, got {self.extend_steps!r}")
        if not (_number(self.extend_decades) and self.extend_decades > 0):
            raise LrkitError(f"extend_decades must be positive, got {self.extend_decades!r}")
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
        return max(int(self.max_steps), int(self.num_iter))

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


def check_range(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Raise :class:`LrkitError` for a ramp the test cannot run."""
    if not _count(num_iter) or num_iter < 5:
        raise LrkitError(f"num_iter must be an integer >= 5 (the test needs a curve), got {num_iter!r}; "
                         "use about 100")
    if not (_number(start_lr) and math.isfinite(start_lr) and start_lr > 0):
        raise LrkitError(f"start_lr must be a positive number, got {start_lr!r}")
    if not (_number(end_lr) and math.isfinite(end_lr)):
        raise LrkitError(f"end_lr must be a finite number, got {end_lr!r}")
    if start_lr >= end_lr:
        raise LrkitError(f"start_lr ({start_lr:g}) must be smaller than end_lr ({end_lr:g}); "
                         "the test ramps the lr up, e.g. start_lr=1e-7, end_lr=10")
