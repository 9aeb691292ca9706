"""The phases of the range test, each a small generator or a pure function.

A phase that trains yields :class:`Command` objects (run a step at this lr, evaluate) and receives what the stepper
returned; snapshot and restore between phases belong to the engine (:mod:`lrkit.finder._engine`). The same phases
therefore run whether lrkit drives the steps (``range_test``) or a framework's own loop does (the ``LRFinder``
callbacks), and no phase can leave the model modified.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit.curve import EMA
from lrkit.errors import LrkitError
from lrkit.finder._result import Stop
from lrkit.finder._rules import Suggestion, divergence_factor, fit_recorded


class Op(enum.Enum):
    """What the engine asks of a stepper."""

    STEP = "step"          # one optimiser step at ``lr``; reply: the loss, or None when the step was skipped
    EVALUATE = "evaluate"  # the validation loss; reply: a float, or the LrkitError evaluate() raised
    SNAPSHOT = "snapshot"  # capture the state; reply: None
    RESTORE = "restore"    # put the last snapshot back; reply: None


@dataclass(frozen=True)
class Command:
    op: Op
    lr: float = math.nan


SNAPSHOT, RESTORE, EVALUATE = Command(Op.SNAPSHOT), Command(Op.RESTORE), Command(Op.EVALUATE)
Reply = Any  # float | None | LrkitError, as the command says
Phase = Generator[Command, Reply, Any]


# ---- the ramp ----------------------------------------------------------------------------------------------------
class Baseline:
    """The smoothed loss the divergence stop compares with: the lowest so far, counted from the first step at which
    the bias-corrected EMA averages enough steps that batch noise cannot fake the rise.

    Early on the EMA is the mean of a few steps; where the per-step losses vary a lot (a batch of one: +-100% from
    step to step) its lowest value is a chance one, which a later ordinary value exceeds ``diverge_factor`` times.
    So a step counts once ``r * se(k) <= 0.1``, where ``r`` is the relative noise of the raw losses (robust: the MAD
    of their step-to-step differences over the first ``window`` steps, against their median) and ``se(k)`` the
    standard error of a bias-corrected EMA of ``k`` steps relative to one step's. A usual batch (r ~ 0.1) counts
    from the first step, as before; the wait is at most the EMA's horizon ``1 / (1 - smooth)`` steps.
    ``noise_aware=False`` (the validation loss, not a batch's) counts every step.
    """

    def __init__(self, smooth: float, noise_aware: bool = True, window: int = 50, rho: float = 0.1) -> None:
        self.beta, self.noise_aware, self.window, self.rho = smooth, noise_aware, window, rho
        self.horizon = int(np.ceil(1.0 / (1.0 - smooth))) - 1
        self._raw: list[float] = []
        self._smoothed: list[float] = []
        self._first = 0  # the first step that counts
        self.best = math.inf

    def _se(self, k: int) -> float:
        b = self.beta
        return math.sqrt((1 - b) / (1 + b) * (1 - b ** (2 * k))) / (1 - b**k) if b > 0 else 1.0

    def observe(self, raw: float) -> float:
        """Take this step's raw loss into the noise estimate; the baseline for this step (best of the steps before
        it that count)."""
        if self.noise_aware and len(self._raw) < self.window:
            self._raw.append(raw)
            first = 0
            if len(self._raw) >= 2:
                x = np.asarray(self._raw)
                level = float(np.median(np.abs(x)))
                r = 1.4826 * float(np.median(np.abs(np.diff(x)))) / (math.sqrt(2) * level) if level > 0 else 0.0
                while first < self.horizon and r * self._se(first + 1) > self.rho:
                    first += 1
            if first != self._first:
                self._first = first
                self.best = min(self._smoothed[first:], default=math.inf)
        return self.best

    def record(self, smoothed: float) -> None:
        """This step's smoothed loss, once judged."""
        self._smoothed.append(smoothed)
        if len(self._smoothed) - 1 >= self._first:
            self.best = min(self.best, smoothed)


@dataclass
class Ramp:
    """What one ramp recorded."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    stop: Stop = Stop.END
    stop_reason: str = ""
    stopped_at: int | None = None


def ramp(lr_at: np.ndarray, end_lr: float, *, smooth: float, diverge_factor: float, val_every: int | None,
         max_skipped: int, max_seconds: float | None, progress: bool) -> Generator[Command, Reply, Ramp]:
    """Step through the lrs ``lr_at`` recording the raw and smoothed (bias-corrected EMA) loss; stop when the
    smoothed loss exceeds ``diverge_factor`` x its best (see :class:`Baseline`), at a NaN/inf loss, or when
    ``max_seconds`` (counted from the first step; the first step always runs) is spent. With ``val_every`` the
    validation loss, evaluated every ``val_every`` steps and at the last, is what is smoothed and judged. A skipped
    step (reply None) is not a point: the same lr runs again, up to ``max_skipped`` times in all."""
    from tqdm.auto import tqdm

    num_iter = len(lr_at)
    rec = Ramp(stop_reason=f"reached end_lr ({end_lr:g}) after {num_iter} steps without diverging")
    avg, val_avg = EMA(smooth), EMA(smooth)
    baseline = Baseline(smooth, noise_aware=val_every is None)
    skipped = 0
    t0 = time.perf_counter()
    bar = tqdm(total=num_iter, desc="lrkit find", unit="step", disable=not progress, leave=False)
    try:
        i = 0
        while i < num_iter:
            lr = float(lr_at[i])
            if max_seconds is not None and i > 0 and time.perf_counter() - t0 >= max_seconds:
                rec.stop = Stop.TIME
                rec.stop_reason = (f"time budget spent: max_seconds={max_seconds:g} s ran out after {i} steps "
                                   f"(lr {float(lr_at[i - 1]):.3g}), before end_lr ({end_lr:g})")
                break
            loss = yield Command(Op.STEP, lr)
            if loss is None:  # the optimiser skipped this step (AMP overflow): not a point, same lr again
                skipped += 1
                if skipped > max_skipped:
                    raise LrkitError(f"{skipped} optimiser steps were skipped (e.g. by a GradScaler finding "
                                     "inf/NaN gradients); the model overflows at these lrs. Lower end_lr, "
                                     "or use bfloat16 instead of float16")
                continue
            loss = float(loss)
            if i == 0 and not math.isfinite(loss):
                raise LrkitError(f"the loss is {loss} at the first step (lr={lr:.3g}), before the lr can "
                                 "matter; check the data and the loss (e.g. log of 0, labels out of range) "
                                 "or lower start_lr")
            rec.lrs.append(lr)
            rec.losses.append(loss)
            value = loss
            if val_every is not None and (i % val_every == 0 or i == num_iter - 1):
                reply = yield EVALUATE
                if isinstance(reply, LrkitError):
                    raise reply
                value = float(reply)
                rec.val_steps.append(i)
                rec.val_losses.append(value)
                s = val_avg.update(value)
                rec.smoothed.append(avg.update(loss))
            else:
                s = avg.update(loss)
                rec.smoothed.append(s)
            bar.update(1)
            if progress:
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{s:.4g}", refresh=False)
            if not math.isfinite(value):
                rec.stop, rec.stopped_at = Stop.NON_FINITE, i
                rec.stop_reason = f"non-finite loss: the loss became {value} at step {i} (lr {lr:.3g})"
                break
            if val_every is None or rec.val_steps and rec.val_steps[-1] == i:
                best = baseline.observe(value)
                if i > 0 and s > diverge_factor * best:
                    rec.stop, rec.stopped_at = Stop.DIVERGED, i
                    rec.stop_reason = (f"diverged at step {i} (lr {lr:.3g}): smoothed loss {s:.4g} exceeded "
                                       f"{diverge_factor:g}x the best ({best:.4g})")
                    break
                baseline.record(s)
            i += 1
    finally:
        bar.close()
    return rec


def extension_start(start_lr: float, end_lr: float, num_iter: int, top: float) -> float:
    """Where the extension of a ramp begins: one ramp step above ``end_lr`` (at most a decade below ``top``)."""
    step_factor = (end_lr / start_lr) ** (1.0 / max(num_iter - 1, 1))
    return min(end_lr * step_factor, top / 10)


def join(a: Ramp, b: Ramp) -> Ramp:
    """Ramp ``b`` (the extension) appended to ``a``; the stop is ``b``'s."""
    return Ramp(lrs=a.lrs + b.lrs, losses=a.losses + b.losses, smoothed=a.smoothed + b.smoothed,
                stop=b.stop, stop_reason=b.stop_reason,
                stopped_at=None if b.stopped_at is None else len(a.lrs) + b.stopped_at)


# ---- the confirmation runs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """A constant-lr run: its score (the validation loss after it, else the mean training loss of its last third;
    +inf when it diverged; None when the time ran out before it was complete), whether the training loss was rising
    at its end (last third > 1.05 x middle third, by more than twice the noise of that difference), the steps it
    took, and the standard error of a training-loss score (0 for a validation score: one evaluation)."""

    value: float | None
    rising: bool
    steps: int
    se: float = 0.0


def _mean_se(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.mean(a)), (float(np.std(a, ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else 0.0)


def constant_run(lr: float, steps: int, can_evaluate: bool,
                 deadline: float | None = None) -> Generator[Command, Reply, Score]:
    """Train ``steps`` steps at constant ``lr`` (stopping early at a non-finite loss or at ``deadline``, a
    ``time.perf_counter()`` value) and score the run (see :class:`Score`)."""
    losses: list[float] = []
    for i in range(steps):
        if deadline is not None and time.perf_counter() >= deadline:
            return Score(None, False, i)
        loss = yield Command(Op.STEP, lr)
        if loss is None:
            continue
        if not math.isfinite(loss):
            return Score(math.inf, True, i + 1)
        losses.append(float(loss))
    if not losses:
        return Score(math.inf, True, steps)
    k = max(1, len(losses) // 3)
    rising = False
    if len(losses) >= 3:
        (last, se_last), (middle, se_middle) = _mean_se(losses[-k:]), _mean_se(losses[-2 * k:-k])
        # a rise the batch noise explains is no rise (a batch of one: losses vary 100% from step to step)
        rising = last > 1.05 * middle and last - middle > 2.0 * math.hypot(se_last, se_middle)
    if can_evaluate:
        reply = yield EVALUATE
        if not isinstance(reply, LrkitError):
            v = float(reply)
            return Score(v, rising, steps) if math.isfinite(v) else Score(math.inf, True, steps)
    value, se = _mean_se(losses[-k:])
    return Score(value, rising, steps, se)


def start_score(losses: list[float], can_evaluate: bool) -> Generator[Command, Reply, tuple[float, float]]:
    """The loss before any training on the scale of :func:`constant_run`, and its standard error: the validation
    loss when there is one (error 0), else the mean of the ramp's first three training losses (its error from the
    spread of the first ten)."""
    if can_evaluate:
        reply = yield EVALUATE
        if not isinstance(reply, LrkitError):
            v = float(reply)
            if math.isfinite(v):
                return v, 0.0
    spread = float(np.std(losses[:10], ddof=1)) if len(losses) > 1 else 0.0
    return float(np.mean(losses[:3])), spread / math.sqrt(min(3, len(losses)))


def provisional(sug: Suggestion, lrs: list[float], losses: list[float], family: str | None,
                momentum: float | None, spread: float, mode: str | None = None) -> Suggestion | None:
    """For a curve with no trustworthy pick that still turned up: a base lr for the confirmation runs to test
    (the family's factor below where the fit turns up), else None."""
    fit = fit_recorded(lrs, losses, mode)
    if fit is None:
        return None
    if not (fit.diverged and fit.lr_diverge is not None and fit.lr_diverge > fit.lr_min):
        return None
    base = fit.lr_diverge / divergence_factor(family, momentum)
    return Suggestion(base, (base / spread**2, base), sug.rule,
                      f"{sug.reason}. The fit still turns up at {fit.lr_diverge:.3g}, so short runs test {base:.3g} "
                      "and below", 0.1)


def choose(sug: Suggestion, candidates: list[dict[str, Any]], start: float, family: str | None, per_run: int,
           margin: float, provisional: bool, noise: float = 0.0) -> Suggestion:
    """Pick among confirmation runs (ordered from the rule's lr downwards).

    Adam-like (and unknown): move down to the best run when it beats the rule's pick by more than ``margin``.
    SGD: short runs are dominated by the momentum transient, which punishes the larger lrs that win over a full
    run, so they only veto a candidate that made no progress (ended at or above the untrained loss ``start``) or
    whose training loss was rising at the end (diverging); the pick is the largest candidate left. When no candidate
    made progress, the least harmful one is suggested, flagged: as a model already near its best (fine-tuning) when
    the runs ended clearly above ``start``, as a test that could not tell when they ended within ``noise`` (the
    standard error of a run's score against ``start``'s; 0 for validation scores) twice of it.
    """
    tried = ", ".join(f"{c['lr']:.3g}" for c in candidates)
    first = candidates[0]
    # a rising training loss vetoes an SGD run (diverging); Adam-like runs are judged by their loss alone
    stable = [c for c in candidates if math.isfinite(c["score"]) and not (family == "sgd" and c["rising"])]
    if not stable:
        return Suggestion(None, None, sug.rule + "+confirm",
                          f"{sug.reason}. But short runs of {per_run} steps at {tried} all diverged: no trustworthy "
                          f"suggestion; run again with a lower end_lr (e.g. {candidates[-1]['lr']:.3g}) or check the "
                          "model", 0.0)
    progressed = [c for c in stable if c["score"] < start]
    if not progressed:
        low = min(stable, key=lambda c: c["score"])
        if low["score"] - start <= 2.0 * noise:  # within the batch noise: the runs could not tell
            return Suggestion(low["lr"], (low["lr"] / 10, low["lr"]), sug.rule + "+confirm",
                              f"{sug.reason}. Short runs of {per_run} steps at {tried} ended no lower than the "
                              f"starting loss ({start:.4g}), but within the noise of the per-step losses "
                              f"(+-{noise:.3g}), so they could not tell the lrs apart; {low['lr']:.3g}, the lowest "
                              "score, is suggested: run more steps (max_steps) or use a larger batch for a surer "
                              "pick", 0.2)
        return Suggestion(low["lr"], (low["lr"] / 10, low["lr"]), sug.rule + "+confirm",
                          f"{sug.reason}. But short runs of {per_run} steps at {tried} all ended above the starting "
                          f"loss ({start:.4g}): the model may already be near its best (e.g. fine-tuning a "
                          f"pretrained model), so the least harmful, {low['lr']:.3g}, is suggested; lower lrs may be "
                          "better still: try a few below it", 0.2)
    if family == "sgd":
        chosen = progressed[0]
        why = "the largest that made progress"
    else:
        best = min(progressed, key=lambda c: c["score"])
        ok_first = first in progressed and best["score"] >= first["score"] * (1 - margin)
        chosen = first if ok_first else best
        why = "the lowest loss" if chosen is best else f"within {margin:.0%} of the lowest loss"
    conf = min(1.0, sug.confidence + (0.2 if provisional else 0.1))
    if chosen is first:
        return Suggestion(sug.lr, sug.interval, sug.rule + "+confirm",
                          f"{sug.reason}. Short runs of {per_run} steps at {tried} confirmed it ({why})", conf)
    lo, hi = sug.interval if sug.interval else (chosen["lr"], chosen["lr"])
    return Suggestion(chosen["lr"], (min(lo, chosen["lr"] / 2), min(hi, chosen["lr"] * 2)), sug.rule + "+confirm",
                      f"{sug.reason}. Short runs of {per_run} steps at {tried}: {chosen['lr']:.3g} was {why}, so "
                      "the pick moved down to it", conf)
