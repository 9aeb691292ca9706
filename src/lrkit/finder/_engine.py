"""The range-test engine: one program (ramp, extension, confirmation runs, rule) and two ways to drive it.

:func:`program` is a generator that yields :class:`~lrkit.finder._phases.Command` objects and returns the
:class:`~lrkit.finder.FinderResult`. :func:`range_test` drives it with a :class:`~lrkit.finder.Stepper` (lrkit runs
the steps); :class:`FinderSession` lets a framework's own loop run them (the in-fit ``LRFinder`` callbacks): it says
which lr the next step uses and takes the loss back. Both snapshot, restore and evaluate as the program asks, and
restore the last snapshot on any error (Ctrl-C included), so the model is never left modified.

The default (``confirm=True``, no validation mode) is the adaptive test:

1. the ramp: ``num_iter`` steps from ``start_lr`` to ``end_lr`` (stopping at divergence or at the time budget);
2. the extension: when the ramp never turned up, ``extend_steps`` more steps over ``extend_decades`` more decades;
3. the rule's pick on the raw losses (or, when there is none but the fit turned up, a provisional base lr);
4. the confirmation runs: from the restored state, ``n_candidates`` constant-lr runs at the pick and below it,
   sharing what is left of the step and time budgets, each from the restored state; they may move the pick down.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import numpy as np

from lrkit.errors import LrkitError
from lrkit.finder import _phases as ph
from lrkit.finder._options import FinderOptions
from lrkit.finder._phases import RESTORE, SNAPSHOT, Command, Op, Reply
from lrkit.finder._result import FinderResult, Stop
from lrkit.finder._rules import Suggestion, check_rule, infer_family, never_diverged, suggest
from lrkit.finder._stepper import Stepper, can_evaluate
from lrkit.schedules import ramp as ramp_schedule

Program = Generator[Command, Reply, FinderResult]


def _lrs(start_lr: float, end_lr: float, steps: int, mode: str) -> np.ndarray:
    return ramp_schedule(start_lr, end_lr, steps, mode)(np.arange(steps))


def _ramp_options(o: FinderOptions, steps: int) -> dict[str, Any]:
    return dict(smooth=o.smooth, diverge_factor=o.diverge_factor, progress=o.progress,
                max_skipped=steps if o.max_skipped is None else o.max_skipped)


def _config(o: FinderOptions, val_every: int | None, family: str | None, momentum: float | None) -> dict[str, Any]:
    return dict(start_lr=o.start_lr, end_lr=o.end_lr, num_iter=o.num_iter, mode=o.mode, smooth=o.smooth,
                diverge_factor=o.diverge_factor, val_every=val_every, family=family, momentum=momentum,
                max_seconds=o.max_seconds)


def program(o: FinderOptions, *, evaluates: bool, family: str | None, momentum: float | None) -> Program:
    """The whole test as commands: the adaptive test, or one ramp when ``confirm`` is off or the validation loss
    is judged (``val_every`` and a stepper that ``evaluates``)."""
    validation = o.val_every is not None and evaluates
    if o.confirm and not validation:
        return (yield from _adaptive(o, evaluates, family, momentum))
    return (yield from _one_ramp(o, o.val_every if validation else None, family, momentum))


def _one_ramp(o: FinderOptions, val_every: int | None, family: str | None, momentum: float | None) -> Program:
    config = _config(o, val_every, family, momentum)
    t0 = time.perf_counter()
    yield SNAPSHOT
    rec = yield from ph.ramp(_lrs(o.start_lr, o.end_lr, o.num_iter, o.mode), o.end_lr, val_every=val_every,
                             max_seconds=o.max_seconds, **_ramp_options(o, o.num_iter))
    yield RESTORE
    validation = val_every is not None
    result = FinderResult(
        lrs=np.asarray(rec.lrs), losses=np.asarray(rec.losses), smoothed_losses=np.asarray(rec.smoothed),
        stop_reason=rec.stop_reason, stopped_at=rec.stopped_at, stop=rec.stop,
        suggestion=Suggestion(None, None, "", ""), config=config,
        val_steps=np.asarray(rec.val_steps, dtype=np.int64) if validation else None,
        val_losses=np.asarray(rec.val_losses) if validation else None,
        elapsed_s=time.perf_counter() - t0,
    )
    result.suggestion = result.suggest(o.rule)
    config["rule"] = result.suggestion.rule
    return result


class _Clock:
    """The time budget of the adaptive test (``max_seconds`` from its start; None: no budget)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.t0 = time.perf_counter()
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else self.t0 + max_seconds

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def per_step(self, steps: int) -> float:
        """Seconds per optimiser step so far (snapshots and restores included)."""
        return max((time.perf_counter() - self.t0) / max(steps, 1), 1e-9)


def _adaptive(o: FinderOptions, evaluates: bool, family: str | None, momentum: float | None) -> Program:
    rule = o.rule or "robust"
    clock = _Clock(o.max_seconds)
    steps: dict[str, int] = {}
    config = _config(o, None, family, momentum)
    config["rule"] = rule
    yield SNAPSHOT

    # 1. the ramp, judged on its raw losses
    rec = yield from ph.ramp(_lrs(o.start_lr, o.end_lr, o.num_iter, o.mode), o.end_lr, val_every=None,
                             max_seconds=o.max_seconds, **_ramp_options(o, o.num_iter))
    steps["ramp"] = len(rec.lrs)
    out_of_time = rec.stop is Stop.TIME
    time_note = ""
    if out_of_time:
        time_note = (f"The time budget (max_seconds={o.max_seconds:g}) ran out after {steps['ramp']} ramp steps, "
                     f"at lr {rec.lrs[-1]:.3g}, so the curve stops short of end_lr ({o.end_lr:g}): raise max_seconds, "
                     "or lower num_iter (coarser steps over the same range)")
    sug = suggest(rec.lrs, rec.losses, rule, family=family, momentum=momentum)

    # 2. the extension, when the ramp never turned up and the budgets allow
    left_s = clock.left()
    if (never_diverged(rec.lrs, rec.losses) and o.extend_steps > 0
            and steps["ramp"] + o.extend_steps <= o.step_budget and not out_of_time
            and (left_s is None or left_s > 0)):
        top = o.end_lr * 10**o.extend_decades
        lrs = _lrs(ph.extension_start(o.start_lr, o.end_lr, o.num_iter, top), top, o.extend_steps, o.mode)
        ext = yield from ph.ramp(lrs, top, val_every=None, max_seconds=left_s, **_ramp_options(o, o.extend_steps))
        steps["extend"] = len(ext.lrs)
        rec = ph.join(rec, ext)
        if ext.stop is Stop.TIME:
            time_note = (f"The time budget (max_seconds={o.max_seconds:g}) ran out during the extension of the "
                         f"ramp, at lr {ext.lrs[-1]:.3g}")
            # name the user's budget, not what was left of it
            rec.stop_reason = (f"time budget spent: max_seconds={o.max_seconds:g} s ran out {len(ext.lrs)} steps "
                               f"into the extension (lr {ext.lrs[-1]:.3g})")
        config["extended_to"] = top
        sug = suggest(rec.lrs, rec.losses, rule, family=family, momentum=momentum)
    yield RESTORE
    yield SNAPSHOT

    # 3. the pick to confirm: the rule's, or a provisional one where the curve still turned up
    unconfirmed, is_provisional = sug, False
    if sug.lr is None:
        base = ph.provisional(sug, rec.lrs, rec.losses, family, momentum, o.spread)
        if base is not None:
            sug, is_provisional = base, True

    # 4. the confirmation runs, within what is left of the step and time budgets
    candidates: list[dict[str, Any]] = []
    left = o.step_budget - sum(steps.values())
    per_run = min(o.max_confirm_steps, left // o.n_candidates) if o.n_candidates > 1 else 0
    left_s = clock.left()
    if left_s is not None and sug.lr is not None and o.n_candidates > 1 and per_run >= o.min_confirm_steps:
        per_step = clock.per_step(sum(steps.values()))
        afford = int(max(left_s, 0.0) / per_step) // o.n_candidates
        if afford < o.min_confirm_steps:
            time_note = time_note or (
                f"No confirmation runs: the time budget (max_seconds={o.max_seconds:g}) left "
                f"{max(left_s, 0.0):.3g} s, about {afford} steps per run at {per_step:.3g} s a step, fewer than "
                f"{o.min_confirm_steps}; raise max_seconds to confirm the pick")
        per_run = min(per_run, afford)
    if sug.lr is not None and o.n_candidates > 1 and per_run >= o.min_confirm_steps:
        start = yield from ph.start_score(rec.losses, evaluates)
        taken = 0
        # downward only: short runs favour large lrs (short-horizon bias), so they may veto a pick, not raise it
        for lr in [sug.lr / o.spread**k for k in range(o.n_candidates)]:
            score = yield from ph.constant_run(lr, per_run, evaluates, clock.deadline)
            taken += score.steps
            yield RESTORE
            yield SNAPSHOT
            if score.value is None:  # the time ran out inside this run: its score would not compare with the others
                candidates.clear()
                time_note = (f"The time budget (max_seconds={o.max_seconds:g}) ran out during the confirmation "
                             f"run at {lr:.3g}, so the runs were dropped")
                break
            candidates.append({"lr": float(lr), "score": score.value, "rising": score.rising, "steps": per_run})
        steps["confirm"] = taken
        if candidates:
            sug = ph.choose(sug, candidates, start, family, per_run, o.margin, is_provisional)
    if is_provisional and not candidates:  # the provisional base was never tested: no trustworthy suggestion
        sug = unconfirmed
    yield RESTORE

    if time_note and out_of_time:  # the rule judged a partial curve: say that first
        sug = replace(sug, reason=f"{time_note}. On that partial curve: {sug.reason}")
    elif time_note:
        sug = replace(sug, reason=f"{sug.reason}. {time_note}")
    config.update(rule=sug.rule, confirm=True, steps=steps, max_steps=o.step_budget, max_seconds=o.max_seconds)
    return FinderResult(lrs=np.asarray(rec.lrs), losses=np.asarray(rec.losses),
                        smoothed_losses=np.asarray(rec.smoothed), stop_reason=rec.stop_reason,
                        stopped_at=rec.stopped_at, stop=rec.stop, suggestion=sug, config=config,
                        elapsed_s=time.perf_counter() - clock.t0, confirmations=candidates)


# ---- the two drivers ---------------------------------------------------------------------------------------------
def _prepare(optimizer: Any, options: FinderOptions | None, overrides: dict[str, Any]
             ) -> tuple[FinderOptions, str | None, float | None]:
    """The options, checked before anything runs, and the optimiser family (given, else read from ``optimizer``)."""
    o = FinderOptions.build(options, **overrides)
    check_rule(o.rule)
    family, momentum = o.family, o.momentum
    if family is None and momentum is None:
        family, momentum = infer_family(optimizer)
    return o, family, momentum


def range_test(stepper: Stepper, options: FinderOptions | None = None, **overrides: Any) -> FinderResult:
    """Run the LR range test on any :class:`~lrkit.finder.Stepper` and restore it exactly afterwards (also on an
    error or Ctrl-C): by default the adaptive test (ramp, extension, confirmation runs; see
    :class:`~lrkit.finder.FinderOptions`), one ramp with ``confirm=False`` or in validation mode.

    ``options`` (default: :class:`~lrkit.finder.FinderOptions` ()) with ``overrides`` by field name, e.g.
    ``range_test(stepper, end_lr=1.0, confirm=False)``. Every framework's ``find_lr`` builds its stepper and calls
    this.
    """
    # steppers that wrap an optimiser expose it as .optimizer: the rule then knows Adam from SGD
    o, family, momentum = _prepare(getattr(stepper, "optimizer", None), options, overrides)
    evaluates = can_evaluate(stepper)
    prog = program(o, evaluates=evaluates, family=family, momentum=momentum)
    snap: Any = None
    dirty = False  # a snapshot was taken and not restored since
    try:
        cmd = next(prog)
        while True:
            reply: Reply = None
            if cmd.op is Op.STEP:
                reply = stepper.step(cmd.lr)
            elif cmd.op is Op.SNAPSHOT:
                snap, dirty = stepper.snapshot(), True
            elif cmd.op is Op.RESTORE:
                dirty = False
                stepper.restore(snap)
            else:
                try:
                    reply = stepper.evaluate()  # type: ignore[attr-defined]
                except LrkitError as e:  # e.g. no validation data: the program falls back to the training loss
                    reply = e
            cmd = prog.send(reply)
    except StopIteration as done:
        return done.value
    finally:
        prog.close()
        if dirty:
            stepper.restore(snap)


class FinderSession:
    """The range test driven by a loop lrkit does not own (a framework's ``fit``, or a hand-written loop).

    The loop asks :attr:`lr` for the lr of its next optimiser step, runs the step, and hands its loss to
    :meth:`record` (None for a step the optimiser skipped); ``record`` returns True once the test is over, and
    :attr:`result` holds it. ``snapshot()`` and ``restore(snap)`` capture and put back the model's state, and
    ``evaluate()`` (optional) gives the validation loss; the session calls them between the phases, exactly as
    :func:`range_test` calls a stepper's. ``optimizer`` (optional) tells the rule the optimiser family. On an
    error, and on :meth:`close` before the end, the last snapshot is restored.
    """

    def __init__(self, options: FinderOptions, snapshot: Any, restore: Any, evaluate: Any = None,
                 optimizer: Any = None) -> None:
        self.options, family, momentum = _prepare(optimizer, options, {})
        self._snapshot, self._restore, self._evaluate = snapshot, restore, evaluate
        self._prog = program(self.options, evaluates=evaluate is not None, family=family, momentum=momentum)
        self._snap: Any = None
        self._dirty = False
        self._closed = False
        self.result: FinderResult | None = None
        self.lr: float | None = None
        self.steps = 0
        self._advance(None, first=True)

    @property
    def done(self) -> bool:
        """True once the test is over (the state is restored and :attr:`result` is set)."""
        return self.result is not None

    def record(self, loss: float | None) -> bool:
        """The loss of the step just run at :attr:`lr` (None: the optimiser skipped it); True when the test is
        over."""
        if self.result is not None:
            raise LrkitError("the range test is over; read .result")
        if self._closed:
            raise LrkitError("the range test was stopped (closed, or an error ended it); start a new one")
        self.steps += 1
        self._advance(loss)
        return self.done

    def close(self) -> None:
        """Stop early: restore the last snapshot (if one is pending) and end the program."""
        self._closed = True
        self._prog.close()
        if self._dirty:
            self._dirty = False
            self._restore(self._snap)

    def _advance(self, reply: Reply, first: bool = False) -> None:
        try:
            cmd = next(self._prog) if first else self._prog.send(reply)
            while cmd.op is not Op.STEP:
                reply = None
                if cmd.op is Op.SNAPSHOT:
                    self._snap, self._dirty = self._snapshot(), True
                elif cmd.op is Op.RESTORE:
                    self._dirty = False
                    self._restore(self._snap)
                else:
                    try:
                        reply = self._evaluate()
                    except LrkitError as e:
                        reply = e
                cmd = self._prog.send(reply)
            self.lr = cmd.lr
        except StopIteration as done:
            self.result, self.lr, self._closed = done.value, None, True
        except BaseException:
            self.close()
            raise


class SessionFront:
    """What a loop helper built on a :class:`FinderSession` (held as ``.session``) shows: ``done``, ``result`` and
    the ``lr`` of the next step. The ``LRFinder`` of the frameworks without a fit loop (torch, JAX) use it."""

    session: FinderSession

    @property
    def done(self) -> bool:
        """True once the test is over (the state restored, :attr:`result` set)."""
        return self.session.done

    @property
    def result(self) -> FinderResult | None:
        """The result, once :attr:`done`."""
        return self.session.result

    @property
    def lr(self) -> float | None:
        """The lr the next step runs at; None when done."""
        return self.session.lr
