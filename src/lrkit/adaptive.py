"""The adaptive range test: one ramp judged on its raw losses, extended when nothing diverged, and confirmed by
short constant-lr runs at a few candidates, all within a step budget (default 200 = two 100-step ramps).

Cost in optimiser steps: the ramp (``num_iter``, fewer when it diverges early), the extension (``extend_steps``,
only when the ramp never diverged), then ``n_candidates`` confirmation runs sharing what is left of ``max_steps``
(at most ``max_confirm_steps`` each). With ``max_seconds`` the whole search also fits a time budget: the ramp stops
when it is spent, and the confirmation runs share what is left (or are skipped, and the reason says so). The
trainer is restored exactly afterwards, also on an exception.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lrkit.errors import LrkitError
from lrkit.finder import FinderResult, Trainer, check_range, range_test
from lrkit.suggest import Suggestion, _clean, divergence_factor, fit_curve, infer_family, suggest


def never_diverged(lrs, losses) -> bool:
    """True when a recorded ramp (raw losses) never turned up: the divergence point lies beyond its end."""
    n_in = len(lrs)
    x, y = _clean(lrs, losses)
    if len(x) < 5:
        return False
    return not fit_curve(x, y, ended_nonfinite=len(x) < n_in).diverged


class _Continue:
    """A view of a trainer whose snapshot/restore do nothing, so consecutive ramps continue one another."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def step(self, lr: float) -> float | None:
        return self.trainer.step(lr)

    def snapshot(self) -> object:
        return None

    def restore(self, snap: object) -> None:
        return None


@dataclass
class AdaptiveResult:
    """What :func:`find` did: the chosen suggestion, the (possibly extended) ramp, the confirmation runs and the
    optimiser steps each phase cost."""

    suggestion: Suggestion
    ramp: FinderResult
    candidates: list[dict[str, float]] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def lr(self) -> float | None:
        """The suggested lr (None when there is no trustworthy suggestion)."""
        return self.suggestion.lr

    @property
    def total_steps(self) -> int:
        """Optimiser steps used in all."""
        return int(sum(self.steps.values()))

    def __str__(self) -> str:
        s = self.suggestion
        head = "no trustworthy suggestion" if s.lr is None else f"suggested lr {s.lr:.3g} (rule {s.rule!r})"
        runs = ", ".join(f"{c['lr']:.3g}: {c['score']:.4g}" for c in self.candidates)
        return (f"{head}\n  why: {s.reason}\n  steps: {self.total_steps} ({self.steps})"
                + (f"\n  confirmation (lr: loss): {runs}" if runs else ""))


def _concat(a: FinderResult, b: FinderResult) -> FinderResult:
    return FinderResult(lrs=np.concatenate([a.lrs, b.lrs]), losses=np.concatenate([a.losses, b.losses]),
                        smoothed_losses=np.concatenate([a.smoothed_losses, b.smoothed_losses]),
                        stop_reason=b.stop_reason, stopped_at=None if b.stopped_at is None else len(a.lrs) + b.stopped_at,
                        suggestion=b.suggestion, config={**a.config, "extended_to": b.config.get("end_lr")},
                        elapsed_s=a.elapsed_s + b.elapsed_s)


def _score(trainer: Trainer, lr: float, steps: int,
           deadline: float | None = None) -> tuple[float | None, bool, int]:
    """Train ``steps`` steps at constant ``lr``: (the validation loss after, via ``evaluate()``, else the mean
    training loss of the last third; whether the training loss was rising: last third > 1.05 x middle third;
    the steps run). A non-finite loss means the lr diverged: (+inf, True, n). The score is None when
    ``deadline`` (a ``time.perf_counter()`` value) passed before the run was complete."""
    losses = []
    for i in range(steps):
        if deadline is not None and time.perf_counter() >= deadline:
            return None, False, i
        loss = trainer.step(lr)
        if loss is None:
            continue
        if not math.isfinite(loss):
            return math.inf, True, i + 1
        losses.append(float(loss))
    if not losses:
        return math.inf, True, steps
    k = max(1, len(losses) // 3)
    rising = len(losses) >= 3 and float(np.mean(losses[-k:])) > 1.05 * float(np.mean(losses[-2 * k:-k]))
    evaluate = getattr(trainer, "evaluate", None)
    if callable(evaluate):
        try:
            v = float(evaluate())
            return (v, rising, steps) if math.isfinite(v) else (math.inf, True, steps)
        except LrkitError:  # e.g. a TorchTrainer without val_loader
            pass
    return float(np.mean(losses[-k:])), rising, steps


def _start_score(trainer: Trainer, ramp: FinderResult) -> float:
    """The loss before any training, on the scale of :func:`_score` (validation loss when there is one)."""
    evaluate = getattr(trainer, "evaluate", None)
    if callable(evaluate):
        try:
            v = float(evaluate())
            if math.isfinite(v):
                return v
        except LrkitError:
            pass
    return float(np.mean(ramp.losses[:3]))


def _choose(sug: Suggestion, candidates: list[dict[str, float]], start_score: float, family: str | None,
            per_run: int, margin: float, provisional: bool) -> Suggestion:
    """Pick among confirmation runs (ordered from the rule's lr downwards).

    Adam-like (and unknown): move down to the best run when it beats the rule's pick by more than ``margin``.
    SGD: short runs are dominated by the momentum transient, which punishes the larger lrs that win over a full
    run, so they only veto a candidate that made no progress (ended at or above the untrained loss) or whose
    training loss was rising at the end (diverging); the pick is the largest candidate left. When no candidate
    made progress (fine-tuning a model already near its best), the least harmful one is suggested, flagged.
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
    progressed = [c for c in stable if c["score"] < start_score]
    if not progressed:
        low = min(stable, key=lambda c: c["score"])
        return Suggestion(low["lr"], (low["lr"] / 10, low["lr"]), sug.rule + "+confirm",
                          f"{sug.reason}. But short runs of {per_run} steps at {tried} all ended above the starting "
                          f"loss ({start_score:.4g}): the model may already be near its best (e.g. fine-tuning a "
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


def find(
    trainer: Trainer,
    *,
    family: str | None = None,
    momentum: float | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    max_steps: int = 200,
    extend_steps: int = 25,
    extend_decades: float = 2.0,
    n_candidates: int = 3,
    spread: float = 3.0,
    max_confirm_steps: int = 40,
    min_confirm_steps: int = 10,
    margin: float = 0.02,
    rule: str = "robust",
    max_seconds: float | None = None,
    progress: bool = False,
    **ramp_options: Any,
) -> AdaptiveResult:
    """Adaptive range test on any :class:`~lrkit.finder.Trainer`; the trainer is restored exactly afterwards.

    Args:
        family, momentum: the optimiser family ("adam" | "sgd") and SGD momentum; default: read from
            ``trainer.optimizer`` when it has one (see :func:`infer_family`).
        start_lr, end_lr, num_iter: the first ramp (default 1e-7 .. 10 over 100 steps).
        max_steps: the budget of optimiser steps for everything (default 200).
        extend_steps, extend_decades: when the ramp never diverged, continue it over ``extend_decades`` more
            decades in ``extend_steps`` steps (default 25 steps, 2 decades).
        n_candidates, spread: confirm at the rule's lr and at ``spread`` and ``spread**2`` times below it (3 runs,
            3x); the pick moves down to the best of them, never up (short runs favour too-large lrs).
        max_confirm_steps, min_confirm_steps: steps per confirmation run (what the budget leaves, at most 40);
            below the minimum no confirmation is run and the rule's pick stands.
        margin: how much lower (relative) a smaller candidate's loss must be to move an Adam-like pick (2%).
        max_seconds: time budget in seconds for everything (default: none). The ramp stops once it is spent (its
            stop reason says so; no extension then); the confirmation runs get what is left, at the ramp's cost
            per step, and are skipped when that is too little, or dropped when the time runs out during them:
            the rule's pick then stands and its reason says so.
        ramp_options: passed to :func:`~lrkit.finder.range_test` (``mode``, ``smooth``, ``diverge_factor``).
    """
    check_range(start_lr, end_lr, num_iter)
    if max_steps < num_iter:
        raise LrkitError(f"max_steps ({max_steps}) is smaller than the ramp (num_iter={num_iter}); raise max_steps "
                         "or lower num_iter")
    if n_candidates not in (1, 2, 3):
        raise LrkitError(f"n_candidates must be 1, 2 or 3, got {n_candidates!r}")
    if not spread > 1:
        raise LrkitError(f"spread must be > 1 (the factor between candidates), got {spread!r}")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise LrkitError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}; or None for no "
                         "time budget")
    if family is None and momentum is None:
        family, momentum = infer_family(getattr(trainer, "optimizer", None))
    t0 = time.perf_counter()
    deadline = None if max_seconds is None else t0 + max_seconds

    def seconds_left() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    steps: dict[str, int] = {}
    time_note = ""
    snap = trainer.snapshot()
    try:
        ramp = range_test(_Continue(trainer), start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, rule=rule,
                          progress=progress, family=family, momentum=momentum, max_seconds=max_seconds,
                          **ramp_options)
        steps["ramp"] = len(ramp.lrs)
        out_of_time = ramp.stop_reason.startswith("time budget spent")
        if out_of_time:
            time_note = (f"The time budget (max_seconds={max_seconds:g}) ran out after {steps['ramp']} ramp steps, "
                         f"at lr {ramp.lrs[-1]:.3g}, so the curve stops short of end_lr ({end_lr:g}): raise max_seconds, or "
                         "lower num_iter (coarser steps over the same range)")
        sug = suggest(ramp.lrs, ramp.losses, rule, family=family, momentum=momentum)
        left_s = seconds_left()
        if (never_diverged(ramp.lrs, ramp.losses) and extend_steps > 0 and steps["ramp"] + extend_steps <= max_steps
                and not out_of_time and (left_s is None or left_s > 0)):
            top = end_lr * 10 ** extend_decades
            step_factor = (end_lr / start_lr) ** (1.0 / max(num_iter - 1, 1))
            ext = range_test(_Continue(trainer), start_lr=min(end_lr * step_factor, top / 10), end_lr=top, num_iter=extend_steps,
                             rule=rule, progress=progress, family=family, momentum=momentum, max_seconds=left_s,
                             **ramp_options)
            steps["extend"] = len(ext.lrs)
            if ext.stop_reason.startswith("time budget spent"):
                time_note = (f"The time budget (max_seconds={max_seconds:g}) ran out during the extension of the "
                             f"ramp, at lr {ext.lrs[-1]:.3g}")
            ramp = _concat(ramp, ext)
            if time_note:  # name the user's budget, not what was left of it
                ramp.stop_reason = (f"time budget spent: max_seconds={max_seconds:g} s ran out {len(ext.lrs)} steps "
                                    f"into the extension (lr {ext.lrs[-1]:.3g})")
            sug = suggest(ramp.lrs, ramp.losses, rule, family=family, momentum=momentum)
        trainer.restore(snap)
        snap = trainer.snapshot()
        candidates: list[dict[str, float]] = []
        left = max_steps - sum(steps.values())
        per_run = min(max_confirm_steps, left // n_candidates) if n_candidates > 1 else 0
        provisional, unconfirmed = False, sug
        if sug.lr is None:
            # no trustworthy pick from the curve alone; if it did diverge, let the short runs decide around it
            x, y = _clean(ramp.lrs, ramp.losses)
            if len(x) >= 5:
                fit = fit_curve(x, y, ended_nonfinite=len(x) < len(ramp.lrs))
                if fit.diverged and fit.lr_diverge is not None and fit.lr_diverge > fit.lr_min:
                    provisional = True
                    base = fit.lr_diverge / divergence_factor(family, momentum)
                    sug = Suggestion(base, (base / spread**2, base), sug.rule,
                                     f"{sug.reason}. The fit still turns up at {fit.lr_diverge:.3g}, so short runs "
                                     f"test {base:.3g} and below", 0.1)
        left_s = seconds_left()
        if left_s is not None and sug.lr is not None and n_candidates > 1 and per_run >= min_confirm_steps:
            # what the time left buys at the cost per step measured so far (snapshots and restores included)
            per_step = max((time.perf_counter() - t0) / max(sum(steps.values()), 1), 1e-9)
            afford = int(max(left_s, 0.0) / per_step) // n_candidates
            if afford < min_confirm_steps:
                time_note = time_note or (
                    f"No confirmation runs: the time budget (max_seconds={max_seconds:g}) left {max(left_s, 0.0):.3g} s, "
                    f"about {afford} steps per run at {per_step:.3g} s a step, fewer than {min_confirm_steps}; raise "
                    "max_seconds to confirm the pick")
            per_run = min(per_run, afford)
        if sug.lr is not None and n_candidates > 1 and per_run >= min_confirm_steps:
            start_score = _start_score(trainer, ramp)
            # downward only: short runs favour large lrs (short-horizon bias), so they may veto a pick, not raise it
            lrs = [sug.lr / spread**k for k in range(n_candidates)]
            taken = 0
            for lr in lrs:
                score, rising, n = _score(trainer, lr, per_run, deadline)
                taken += n
                trainer.restore(snap)
                snap = trainer.snapshot()
                if score is None:  # the time ran out inside this run: its score would not compare with the others
                    candidates.clear()
                    time_note = (f"The time budget (max_seconds={max_seconds:g}) ran out during the confirmation "
                                 f"run at {lr:.3g}, so the runs were dropped")
                    break
                candidates.append({"lr": float(lr), "score": score, "rising": rising, "steps": per_run})
            steps["confirm"] = taken
            if candidates:
                sug = _choose(sug, candidates, start_score, family, per_run, margin, provisional)
        if provisional and not candidates:  # the provisional base was never tested: no trustworthy suggestion
            sug = unconfirmed
    finally:
        trainer.restore(snap)
    if time_note and out_of_time:  # the rule judged a partial curve: say that first
        sug = replace(sug, reason=f"{time_note}. On that partial curve: {sug.reason}")
    elif time_note:
        sug = replace(sug, reason=f"{sug.reason}. {time_note}")
    ramp.suggestion, ramp.confirmations = sug, candidates
    ramp.config.update(rule=sug.rule, confirm=True, steps=steps, max_steps=max_steps, max_seconds=max_seconds)
    return AdaptiveResult(sug, ramp, candidates, steps, time.perf_counter() - t0)


def run_finder(
    trainer: Trainer,
    *,
    confirm: bool = True,
    max_steps: int = 200,
    max_seconds: float | None = None,
    val_every: int | None = None,
    rule: str | None = None,
    family: str | None = None,
    momentum: float | None = None,
    progress: bool = False,
    **ramp_options: Any,
) -> FinderResult:
    """The default path of every framework's ``find_lr``: :func:`find` (``.ramp``, within ``max_steps``, at least
    the ramp's ``num_iter``) when ``confirm`` and not in validation mode (``val_every``), else one
    :func:`~lrkit.finder.range_test`. ``ramp_options``: ``start_lr``, ``end_lr``, ``num_iter``, ``mode``, ..."""
    if confirm and val_every is None:
        num_iter = ramp_options.get("num_iter", 100)
        return find(trainer, family=family, momentum=momentum, max_steps=max(max_steps, num_iter),
                    max_seconds=max_seconds, rule=rule or "robust", progress=progress, **ramp_options).ramp
    return range_test(trainer, val_every=val_every, rule=rule, progress=progress, family=family, momentum=momentum,
                      max_seconds=max_seconds, **ramp_options)


__all__ = ["AdaptiveResult", "find", "infer_family", "never_diverged", "run_finder"]
