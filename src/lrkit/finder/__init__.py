"""The LR range test: ramp the lr over a few optimiser steps, watch the loss, pick an lr and say why.

One entry, :func:`range_test`, runs the test on any :class:`Stepper` with one :class:`FinderOptions`; every
framework's ``find_lr`` builds its stepper and calls it. The pick comes from a rule (:func:`suggest`,
:func:`rules`, :func:`register_rule`); :class:`FinderResult` holds the curve, the pick and why it stopped
(:class:`Stop`), and saves, loads and plots. :class:`FinderSession` runs the same test from a loop lrkit does not
own (the ``LRFinder`` callbacks). Imports numpy only.
"""

from __future__ import annotations

from lrkit.finder._engine import FinderSession, SessionFront, range_test
from lrkit.finder._options import FinderOptions, check_range
from lrkit.finder._recipe import SCHEDULES, Recipe, recipe
from lrkit.finder._result import FinderResult, Stop
from lrkit.finder._rules import (
    DEFAULT_RULE,
    CurveFit,
    Suggestion,
    clean_curve,
    divergence_factor,
    fit_curve,
    fit_recorded,
    infer_family,
    never_diverged,
    ramp_mode,
    register_rule,
    rules,
    suggest,
    wants_raw,
)
from lrkit.finder._stepper import Replay, Stepper, group_lrs

__all__ = [
    "DEFAULT_RULE", "SCHEDULES", "CurveFit", "FinderOptions", "FinderResult", "FinderSession", "Recipe", "Replay",
    "SessionFront", "Stepper", "Stop", "Suggestion", "check_range", "clean_curve", "divergence_factor", "fit_curve",
    "fit_recorded", "group_lrs", "infer_family", "never_diverged", "ramp_mode", "range_test", "recipe",
    "register_rule", "rules", "suggest", "wants_raw",
]
