"""The range-test engine: one program (ramp, extension, confirmation runs, rule) and two ways to drive it.

:func:`program` is a generator that yields :class:`~lrkit.finder._phases.Command` objects and returns the
:class:`~lrkit.finder.FinderResult`. :func:`range_test` drives it with a :class:`~lrkit.finder.Stepper` (lrkit runs
the steps); :class:`FinderSession` lets a framework's own loop run them (the in-fit ``LRFinder`` callbacks): it says
which lr the next step uses and takes the loss back. Both snapshot, restore and evaluate as the program asks, and
restore the last snapshot on any error (Ctrl-C included), so the model is never left modified: a restore runs to its
end even when Ctrl-C is pressed again meanwhile (the interrupt is raised once it is done).

The default (``confirm=True``, no validation mode) is the adaptive test:

1. the ramp: ``num_iter`` steps from ``start_lr`` to ``end_lr`` (stopping at divergence or at the time budget);
2. the extension (only with ``extend_decades`` > 0: the default never tries an lr past ``end_lr``): when the ramp
   never turned up, ``extend_steps`` more steps over ``extend_decades`` more decades;
3. the rule's pick on the raw losses (or, when there is none but the fit turned up, a provisional base lr);
4. the confirmation runs: from the restored state, ``n_candidates`` constant-lr runs at the pick and below it,
   sharing what is left of the step and time budgets, each from the restored state; they may move the pick down.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
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


def _config(o: FinderOptions, val_every: int | None, family: str | None, momentum: float | None,
            ranges: list[tuple[float, float]] | None) -> dict[str, Any]:
    config = dict(start_lr=o.start_lr, end_lr=o.end_lr, num_iter=o.num_iter, mode=o.mode, smooth=o.smooth,
                  diverge_factor=o.diverge_factor, val_every=val_every, family=family, momentum=momentum,
                  max_seconds=o.max_seconds)
    if ranges is not None:
        config["group_ranges"] = [list(r) for r in ranges]
    return config


def program(o: FinderOptions, *, evaluates: bool, family: str | None, momentum: float | None,
            ranges: list[tuple[float, float]] | None = None) -> Program:
    """The whole test as commands: the adaptive test, or one ramp when ``confirm`` is off or the validation loss
    is judged (``val_every`` and a stepper that ``evaluates``). ``o`` is resolved (see
    :meth:`FinderOptions.resolve`); ``ranges``, every param group's ``(start_lr, end_lr)`` when they differ, is
    recorded in the result's config."""
    validation = o.val_every is not None and evaluates
    if o.confirm and not validation:
        return (yield from _adaptive(o, evaluates, family, momentum, ranges))
    return (yield from _one_ramp(o, o.val_every if validation else None, family, momentum, ranges))


def _one_ramp(o: FinderOptions, val_every: int | None, family: str | None, momentum: float | None,
              ranges: list[tuple[float, float]] | None) -> Program:
    config = _config(o, val_every, family, momentum, ranges)
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


def _adaptive(o: FinderOptions, evaluates: bool, family: str | None, momentum: float | None,
              ranges: list[tuple[float, float]] | None) -> Program:
    rule = o.rule or "robust"
    clock = _Clock(o.max_seconds)
    steps: dict[str, int] = {}
    config = _config(o, None, family, momentum, ranges)
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
    sug = suggest(rec.lrs, rec.losses, rule, family=family, momentum=momentum, mode=o.mode)

    # 2. the extension past end_lr (only when asked for), when the ramp never turned up and the budgets allow
    left_s = clock.left()
    if (o.extend_decades > 0 and o.extend_steps > 0 and never_diverged(rec.lrs, rec.losses, o.mode)
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
        sug = suggest(rec.lrs, rec.losses, rule, family=family, momentum=momentum, mode=o.mode)
    yield RESTORE
    yield SNAPSHOT

    # 3. the pick to confirm: the rule's, or a provisional one where the curve still turned up
    unconfirmed, is_provisional = sug, False
    if sug.lr is None:
        base = ph.provisional(sug, rec.lrs, rec.losses, family, momentum, o.spread, o.mode)
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
        start, start_se = yield from ph.start_score(rec.losses, evaluates)
        taken = 0
        run_se = 0.0
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
            run_se = max(run_se, score.se)
            candidates.append({"lr": float(lr), "score": score.value, "rising": score.rising, "steps": per_run})
        steps["confirm"] = taken
        if candidates:
            noise = float(np.hypot(start_se, run_se))  # 0 for validation scores
            sug = ph.choose(sug, candidates, start, family, per_run, o.margin, is_provisional, noise)
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
@contextlib.contextmanager
def _hold_interrupt(raise_after: bool = True) -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) while the block runs, so it runs to its end (a restore must not stop half-way); one that
    arrived meanwhile is raised as KeyboardInterrupt afterwards (``raise_after``; False while an error, e.g. the
    first Ctrl-C, is already on its way out). Only in the main thread and over Python's own handler; elsewhere the
    block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN, SIG_DFL, or a handler not installed from Python: leave it alone
        yield
        return
    caught: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and raise_after:
        previous(*caught[0])  # Python's handler raises KeyboardInterrupt; a user's handler does what it does


class _Driver:
    """What both drivers do for the commands that are not steps: snapshot, restore (held against Ctrl-C),
    evaluate; and, on the way out of an error, the restore of a pending snapshot."""

    def __init__(self, snapshot: Callable[[], Any], restore: Callable[[Any], None],
                 evaluate: Callable[[], float] | None) -> None:
        self._snapshot, self._restore, self._evaluate = snapshot, restore, evaluate
        self._snap: Any = None
        self.dirty = False  # a snapshot was taken and the state may have changed since

    def run(self, cmd: Command) -> Reply:
        if cmd.op is Op.SNAPSHOT:
            self._snap = self._snapshot()
            self.dirty = True
        elif cmd.op is Op.RESTORE:
            with _hold_interrupt():
                self._restore(self._snap)
                self.dirty = False
        elif cmd.op is Op.EVALUATE:
            try:
                return self._evaluate()  # type: ignore[misc]
            except LrkitError as e:  # e.g. no validation data: the program falls back to the training loss
                return e
        return None

    def undo(self) -> None:
        """Restore the pending snapshot, if any (an error or an early stop is on its way out)."""
        if self.dirty:
            with _hold_interrupt(raise_after=False):
                self._restore(self._snap)
                self.dirty = False


def _step(step: Callable[[float], Any], lr: float) -> Any:
    try:
        return step(lr)
    except StopIteration as e:  # a bare StopIteration would end the test's own generator silently
        raise LrkitError("the training data ran out during the range test and cannot start again (step() raised "
                         "StopIteration): pass a re-iterable loader (a DataLoader or a list of batches) rather "
                         "than a one-shot iterator or generator") from e


def _prepare(optimizer: Any, options: FinderOptions | None, overrides: dict[str, Any], base_lrs: Any = None,
             steps_per_epoch: Any = None
             ) -> tuple[FinderOptions, str | None, float | None, list[tuple[float, float]] | None]:
    """The options, checked and resolved before anything runs (see :meth:`FinderOptions.resolve`), the optimiser
    family (given, else read from ``optimizer``) and the per-group ramps (None: one ramp, ratios kept)."""
    o = FinderOptions.build(options, **overrides)
    check_rule(o.rule)
    family, momentum = o.family, o.momentum
    if family is None and momentum is None:
        family, momentum = infer_family(optimizer)
    base = [float(v) for v in base_lrs] if base_lrs is not None else None
    o, ranges = o.resolve(base, steps_per_epoch)
    return o, family, momentum, ranges


def range_test(stepper: Stepper, options: FinderOptions | None = None, **overrides: Any) -> FinderResult:
    """Run the LR range test on any :class:`~lrkit.finder.Stepper` and restore it exactly afterwards (also on an
    error or Ctrl-C): by default the adaptive test (ramp, confirmation runs; see
    :class:`~lrkit.finder.FinderOptions`), one ramp with ``confirm=False`` or in validation mode.

    ``options`` (default: :class:`~lrkit.finder.FinderOptions` ()) with ``overrides`` by field name, e.g.
    ``range_test(stepper, end_lr=1.0, confirm=False)``. Every framework's ``find_lr`` builds its stepper and calls
    this. ``start_lr=None`` needs a stepper with ``base_lrs``, ``num_iter=None`` one with ``steps_per_epoch``, and
    per-group ``start_lr``/``end_lr`` lists one with ``use_group_ramps`` (see :class:`~lrkit.finder.Stepper`).
    """
    # steppers that wrap an optimiser expose it as .optimizer: the rule then knows Adam from SGD
    o, family, momentum, ranges = _prepare(getattr(stepper, "optimizer", None), options, overrides,
                                           getattr(stepper, "base_lrs", None),
                                           getattr(stepper, "steps_per_epoch", None))
    if ranges is not None:
        use = getattr(stepper, "use_group_ramps", None)
        if not callable(use):
            raise LrkitError(f"per-group start_lr/end_lr lists need a stepper that drives param groups (e.g. "
                             f"lrkit.torch.TorchStepper); {type(stepper).__name__} has no use_group_ramps")
        use(ranges, o.mode)
    evaluates = can_evaluate(stepper)
    prog = program(o, evaluates=evaluates, family=family, momentum=momentum, ranges=ranges)
    driver = _Driver(stepper.snapshot, stepper.restore, getattr(stepper, "evaluate", None))
    try:
        cmd = next(prog)
        while True:
            reply = _step(stepper.step, cmd.lr) if cmd.op is Op.STEP else driver.run(cmd)
            try:
                cmd = prog.send(reply)
            except StopIteration as done:
                return done.value
    except BaseException:
        driver.undo()
        raise
    finally:
        prog.close()


class FinderSession:
    """The range test driven by a loop lrkit does not own (a framework's ``fit``, or a hand-written loop).

    The loop asks :attr:`lr` for the lr of its next optimiser step, runs the step, and hands its loss to
    :meth:`record` (None for a step the optimiser skipped); ``record`` returns True once the test is over, and
    :attr:`result` holds it. ``snapshot()`` and ``restore(snap)`` capture and put back the model's state, and
    ``evaluate()`` (optional) gives the validation loss; the session calls them between the phases, exactly as
    :func:`range_test` calls a stepper's. ``optimizer`` (optional) tells the rule the optimiser family;
    ``base_lrs`` (the optimiser's lr per param group) lets ``start_lr=None`` and per-group lists resolve, and
    ``steps_per_epoch`` ``num_iter=None``; :attr:`group_ranges` then holds every group's ``(start, end)``. On an
    error, and on :meth:`close` before the end, the last snapshot is restored.
    """

    def __init__(self, options: FinderOptions, snapshot: Any, restore: Any, evaluate: Any = None,
                 optimizer: Any = None, base_lrs: Sequence[float] | None = None,
                 steps_per_epoch: int | None = None) -> None:
        self.options, family, momentum, self.group_ranges = _prepare(optimizer, options, {}, base_lrs,
                                                                     steps_per_epoch)
        self._driver = _Driver(snapshot, restore, evaluate)
        self._prog = program(self.options, evaluates=evaluate is not None, family=family, momentum=momentum,
                             ranges=self.group_ranges)
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
        self._driver.undo()

    def _advance(self, reply: Reply, first: bool = False) -> None:
        try:
            cmd = next(self._prog) if first else self._prog.send(reply)
            while cmd.op is not Op.STEP:
                cmd = self._prog.send(self._driver.run(cmd))
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
