"""The engine under :func:`lrkit.sweep` and :func:`lrkit.stepwise_search`, on Optuna's public API.

A study holds what defines it (its *identity*: the objective, the direction, the lrs or the sampler) as a study
user attribute; opening it with another identity is an error. Planned points (lr, seed) are queued with
``study.enqueue_trial(..., skip_if_exists=True)`` by the process that created the study (Optuna creates a study
name once, atomically, so exactly one process plans it), and workers run them with ``study.optimize``:

* a worker takes queued trials through Optuna (atomic on PostgreSQL and, with lrkit's connections, on SQLite and
  journal files) and stops when none is left; when a worker asks just as the queue runs dry, Optuna opens a new
  trial for it, which lrkit closes at once as PRUNED with the user attribute ``lrkit_spare`` (nothing is trained);
* Optuna's heartbeat and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` redo the trial of a worker that
  died (database storages); a worker waits for trials that others run until each finishes or goes stale;
* a stopped worker (Ctrl-C, SIGTERM, its parent gone) leaves its trial RUNNING and marked ``lrkit_interrupted``;
  the next run takes it over with ``study.tell(number, state=FAIL)``, which succeeds for exactly one process, and
  queues it again.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import Any

from lrkit.errors import LrkitError
from lrkit.search import _storage
from lrkit.search._lrs import clean_lr
from lrkit.search._records import (
    ATTR_CURVE,
    ATTR_ERROR,
    ATTR_FAILURE,
    ATTR_INTERRUPTED,
    ATTR_LR,
    ATTR_SEED,
    ATTR_SPARE,
    COMPLETE,
    FAILED,
    RUNNING,
    WAITING,
    Point,
    SweepResult,
    TrialRecord,
    point_state,
    trial_point,
)

ATTR_IDENTITY = "lrkit"  # study user attribute: what defines the study
ATTR_PLANNED = "lrkit_planned"  # study user attribute: every planned point is queued
POLL_S = 1.0  # how often a worker that waits for others' trials looks at the study
PLAN_WAIT_S = 60.0  # how long a worker waits for another process to finish queueing a new study's plan


class NonFiniteLoss(Exception):
    """Raised by :meth:`SweepTrial.report` when a reported value is NaN or infinite; the trial fails."""


class _TrialFailed(Exception):
    """The training failed; its error is in the trial's user attributes. Optuna records the trial as FAIL."""


class _Interrupted(BaseException):
    """The worker is being stopped: Optuna lets this pass without finishing the trial, which stays RUNNING."""


class _Timeout(BaseException):
    """The trial ran past its time limit (a BaseException, so a training's ``except Exception`` cannot hide it)."""


class SweepTrial:
    """What ``train_fn(lr, trial)`` gets: the trial's ``lr``, ``seed`` and ``number``, and :meth:`report`.

    The whole curve is written to the storage once, when the trial ends (user attribute ``lrkit_curve``): a
    database write per training step would cost more than a small step. With a pruner each value is also written
    at once (Optuna's intermediate values), which the pruner needs; then report every few steps, not every step.
    """

    def __init__(self, optuna_trial: Any, lr: float, seed: int, prune: bool) -> None:
        self.optuna_trial, self.lr, self.seed, self.number = optuna_trial, lr, seed, optuna_trial.number
        self._prune = prune
        self._next_step = 0
        self._curve: dict[int, float] = {}
        self.last_value: float | None = None

    def report(self, value: float, step: int | None = None) -> None:
        """Record the score (e.g. the training loss) at ``step`` (default: the next step; a step already reported
        is ignored). A NaN/inf value fails the trial (raises :class:`NonFiniteLoss`); with a pruner, a poor trial
        is stopped (raises ``optuna.TrialPruned``)."""
        value = float(value)
        step = self._next_step if step is None else int(step)
        self._next_step = step + 1
        self.last_value = value
        if step in self._curve:
            return
        self._curve[step] = value
        if self._prune:
            self.optuna_trial.report(value, step)
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the reported value became {value} at step {step}")
        if self._prune and self.optuna_trial.should_prune():
            raise _storage.optuna_module().TrialPruned(f"pruned at step {step} (value {value:.4g})")

    def should_prune(self) -> bool:
        """Whether the study's pruner would stop this trial now."""
        return self._prune and self.optuna_trial.should_prune()

    def flush(self) -> None:
        """Write the curve to the storage in one write (called when the trial ends)."""
        if self._curve:
            steps = sorted(self._curve)
            values = [v if math.isfinite(v) else repr(v) for v in (self._curve[k] for k in steps)]
            self.optuna_trial.set_user_attr(ATTR_CURVE, {"steps": steps, "values": values})


TrainFn = Callable[[float, SweepTrial], "float | None"]


# -- the study -------------------------------------------------------------------------------------------------------

@dataclass
class SweepStudy:
    """Where a sweep's trials live: a storage and a study name; picklable, so worker processes reopen it.

    ``storage``: None (the SQLite file ``lrkit-sweep.db`` in the working directory), a ``*.db`` path or
    ``sqlite:///`` URL, ``postgresql://user:pw@host/db`` (any SQLAlchemy URL), a ``*.jsonl`` / ``*.log`` path or
    ``journal:PATH`` (Optuna's journal file), or ``"memory"`` (this process only, not kept). Database storages
    keep Optuna's heartbeat every ``heartbeat_interval`` s (default 10; None turns it off): a trial whose worker
    died is failed after ``grace_period`` s (default 3 intervals) and redone, at most ``max_retry`` (3) times.
    """

    storage: str | None = None
    study_name: str = "lrkit-sweep"
    direction: str = "minimize"
    heartbeat_interval: int | None = 10
    grace_period: int | None = None
    max_retry: int = 3

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise LrkitError(f"direction must be 'minimize' or 'maximize', got {self.direction!r}")
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise LrkitError(f"study_name must be a non-empty string, got {self.study_name!r}")
        self.storage = _storage.normalise(self.storage)

    @property
    def kind(self) -> str:
        """'sqlite', 'rdb' (a database server), 'journal' or 'memory'."""
        return _storage.kind(self.storage)

    @property
    def display(self) -> str:
        """The storage as it may be printed (no password)."""
        return _storage.safe_url(self.storage)

    def open_storage(self) -> Any:
        """A new Optuna storage object for this process."""
        return _storage.open_storage(self.storage, self.heartbeat_interval, self.grace_period, self.max_retry)

    def open(self, identity: dict[str, Any], storage: Any = None) -> tuple[Any, bool]:
        """Create the study with this ``identity`` or load it, checking that it has the same one; returns the
        ``optuna.Study`` and whether this call created it."""
        optuna = _storage.optuna_module()
        storage = storage if storage is not None else self.open_storage()
        identity = json.loads(json.dumps(identity))  # as it reads back from the storage
        with quiet_optuna():
            try:
                study = optuna.create_study(storage=storage, study_name=self.study_name, direction=self.direction)
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=self.study_name, storage=storage)
            else:
                study.set_user_attr(ATTR_IDENTITY, identity)
                return study, True
        # its creator records the identity right after creating it; a study with trials but none is another tool's
        stored = study.user_attrs.get(ATTR_IDENTITY)
        if stored is None and not study.get_trials(deepcopy=False):
            stored = _wait_for(lambda: study.user_attrs.get(ATTR_IDENTITY), 10.0)
        if stored is None:
            raise LrkitError(f"study {self.study_name!r} in {self.display} was not made by lrkit (it has no record "
                             "of what it runs); give another study name, or another storage")
        if stored != identity:
            raise LrkitError(f"study {self.study_name!r} in {self.display} holds {describe(stored)}; this run asks "
                             f"for {describe(identity)}. A study is defined by what it runs: give this run its own "
                             "study name (--study-name), or rerun with the study's own settings to resume it")
        return study, False


def describe(identity: dict[str, Any]) -> str:
    """A study's identity in words (for error messages)."""
    what = f"a {identity.get('kind', '?')} of {identity.get('objective', '?')} ({identity.get('direction', '?')})"
    if identity.get("lrs"):
        lrs = identity["lrs"]
        what += f" over {len(lrs)} lrs {lrs[0]:.4g}..{lrs[-1]:.4g}"
    if identity.get("sampler"):
        lo, hi = identity.get("lr_range", ["?", "?"])
        what += f" with the {identity['sampler']} sampler between {lo:.4g} and {hi:.4g}"
    if identity.get("seeds") is not None:
        what += f", seeds {identity['seeds']}"
    if identity.get("budget_epochs") is not None:
        what += f", budget {identity['budget_epochs']:g} epochs"
    return what


def _wait_for(get: Callable[[], Any], seconds: float, grew: Callable[[], Any] | None = None) -> Any:
    """Poll ``get()`` until it is not None or ``seconds`` pass without ``grew()`` changing; its last value."""
    deadline, seen = time.monotonic() + seconds, grew() if grew else None
    while True:
        value = get()
        if value is not None or time.monotonic() > deadline:
            return value
        if grew is not None and (now := grew()) != seen:
            seen, deadline = now, time.monotonic() + seconds
        time.sleep(0.1)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial logging off while lrkit drives the study (lrkit prints its own progress), restored after."""
    optuna = _storage.optuna_module()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.ERROR))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def queue_points(study: Any, points: Sequence[tuple[float, int]], retry_failed: bool, claim_running: bool) -> int:
    """Queue a trial for each point that has none, or whose last trial was interrupted (taken over with
    ``study.tell``, which only one process can do) or, with ``retry_failed``, failed. Returns how many."""
    optuna = _storage.optuna_module()
    trials = study.get_trials(deepcopy=False)
    by_point: dict[tuple[float, int], list[Any]] = {}
    for t in trials:
        if (p := trial_point(t)) is not None:
            by_point.setdefault(p, []).append(t)
    queued = 0
    with quiet_optuna():
        for lr, seed in points:
            state, t = point_state(by_point.get((lr, seed), []), retry_failed, claim_running)
            if state is Point.INTERRUPTED and t.state == optuna.trial.TrialState.RUNNING:
                try:
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                except (RuntimeError, ValueError):  # another process took it over first
                    continue
            if state in (Point.MISSING, Point.INTERRUPTED):
                # skip_if_exists: another process may have queued a missing point meanwhile (an empty study
                # has nothing to look through); a point to redo needs a new trial beside its old one
                study.enqueue_trial({ATTR_LR: lr, ATTR_SEED: seed}, user_attrs={ATTR_LR: lr, ATTR_SEED: seed},
                                    skip_if_exists=state is Point.MISSING and bool(trials))
                queued += 1
    return queued


def plan(study: Any, created: bool, points: Sequence[tuple[float, int]]) -> None:
    """Queue a new study's whole plan (the process that created it), or wait until that process has."""
    if created:
        queue_points(study, points, False, False)
        study.set_user_attr(ATTR_PLANNED, len(points))
        return
    if _wait_for(lambda: study.user_attrs.get(ATTR_PLANNED), PLAN_WAIT_S,
                 grew=lambda: len(study.get_trials(deepcopy=False))) is None:
        # its creator stopped while queueing: queue the rest (skip_if_exists leaves the queued ones)
        queue_points(study, points, False, False)
        study.set_user_attr(ATTR_PLANNED, len(points))


def collect(study: Any, points: Sequence[tuple[float, int]] | None, label: str = "") -> list[TrialRecord]:
    """One record per point (its settled trial, else its newest), or per lrkit trial when ``points`` is None; with
    a ``label``, a line on stderr when some are still running in other workers (storages without a heartbeat,
    where lrkit does not wait for them: it could not tell a dead worker from a slow one)."""
    by_point: dict[tuple[float, int], list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        if (p := trial_point(t)) is not None:
            by_point.setdefault(p, []).append(t)
    if points is None:
        points = sorted(by_point, key=lambda p: min(t.number for t in by_point[p]))
    out = []
    for lr, seed in points:
        _, t = point_state(by_point.get((lr, seed), []))
        out.append(TrialRecord.from_frozen(t) if t is not None else
                   TrialRecord(-1, lr, seed, FAILED, None, "not run"))
    busy = sum(r.state in (RUNNING, WAITING) for r in out)
    if label and busy:
        print(f"lrkit {label}: {busy} trial(s) still running in other workers; rerun the same command to collect "
              "them (if their worker is gone: a journal file keeps no heartbeat, rerun with --retry-failed)",
              file=sys.stderr)
    return out


# -- running trials --------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """What a worker needs to run trials of a study: picklable, so it travels to worker processes."""

    study: SweepStudy
    train_fn: TrainFn
    lr_bounds: tuple[float, float]
    points: list[tuple[float, int]] | None = None  # the planned points (None: sampler mode)
    n_trials: int | None = None  # sampler mode: trials the sampler draws in all
    seed: int = 0  # sampler mode: the seed of drawn trials
    sampler: Any = None
    pruner: Any = None
    timeout_s: float | None = None
    progress: bool = True
    label: str = "sweep"
    wait: bool = True
    reseed: bool = False

    def load(self, storage: Any) -> Any:
        optuna = _storage.optuna_module()
        sampler = self.sampler if self.sampler is not None else optuna.samplers.RandomSampler()
        pruner = self.pruner if self.pruner is not None else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=self.study.study_name, storage=storage, sampler=sampler, pruner=pruner)
        if self.reseed:
            study.sampler.reseed_rng()  # worker processes must not draw the same lrs
        return study

    def drawn(self, trials: Sequence[Any], before: int | None = None) -> int:
        """How many trials the sampler drew (not queued by lrkit, not a retry), with a number below ``before``."""
        return sum(1 for t in trials if (before is None or t.number < before)
                   and "fixed_params" not in t.system_attrs and "failed_trial" not in t.system_attrs)

    def has_work(self, study: Any, trials: Sequence[Any] | None = None) -> bool:
        """Whether a trial waits in the queue, or the sampler has trials left to draw (``trials``: the study's, if
        already read; else only what the answer needs is read)."""
        ts = _storage.optuna_module().trial.TrialState
        if trials is None:
            trials = study.get_trials(deepcopy=False, states=None if self.n_trials is not None else (ts.WAITING,))
        return any(t.state == ts.WAITING for t in trials) or (
            self.n_trials is not None and self.drawn(trials) < self.n_trials)

    def running_here(self, trials: Sequence[Any]) -> bool:
        """Whether one of this job's points (any trial, in sampler mode) is running in some worker."""
        ts = _storage.optuna_module().trial.TrialState
        mine = None if self.points is None else set(self.points)
        return any(t.state == ts.RUNNING and not t.user_attrs.get(ATTR_INTERRUPTED)
                   and (mine is None or trial_point(t) in mine) for t in trials)


class _Objective:
    """The function ``study.optimize`` calls: run ``train_fn`` on the trial's point and record how it ended."""

    def __init__(self, job: Job, storage: Any) -> None:
        self.job, self.storage = job, storage
        self.prune = job.pruner is not None
        self.study_id = storage.get_study_id_from_name(job.study.study_name) if _storage.has_heartbeat(storage) \
            else None

    def first_heartbeat(self, number: int) -> None:
        """Record the trial's first heartbeat now. Optuna's heartbeat thread records it a moment after the trial
        starts, and a trial that never got one is never found stale: a worker killed in that moment would leave
        it running for good."""
        if self.study_id is not None:
            self.storage.record_heartbeat(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))

    def __call__(self, trial: Any) -> float:
        job, optuna = self.job, _storage.optuna_module()
        if ATTR_LR in trial.user_attrs:  # queued by lrkit (or Optuna's retry of such a trial)
            lr, seed = float(trial.user_attrs[ATTR_LR]), int(trial.user_attrs[ATTR_SEED])
        elif job.n_trials is not None and job.drawn(trial.study.get_trials(deepcopy=False),
                                                    before=trial.number) < job.n_trials:
            lr, seed = None, job.seed  # drawn by the sampler, within the budget
        else:  # Optuna opened a new trial because the queue ran dry: nothing to train
            trial.set_user_attr(ATTR_SPARE, True)
            trial.study.stop()
            raise optuna.TrialPruned("no work left")
        lo, hi = job.lr_bounds
        lr = clean_lr(trial.suggest_float(ATTR_LR, min(lo, lr or lo), max(hi, lr or hi), log=True))
        trial.suggest_int(ATTR_SEED, seed, seed)
        if ATTR_LR not in trial.user_attrs:
            trial.set_user_attr(ATTR_LR, lr)
            trial.set_user_attr(ATTR_SEED, seed)
        reporter = SweepTrial(trial, lr, seed, self.prune)
        self.first_heartbeat(trial.number)
        try:
            with _deadline(job.timeout_s):
                try:
                    out = job.train_fn(lr, reporter)
                finally:
                    reporter.flush()
            score = reporter.last_value if out is None else out
            if score is None:
                raise LrkitError("train_fn returned None and reported no value; return the final score "
                                 "(e.g. the last training loss) or call trial.report(value, step)")
            score = float(score)
            if not math.isfinite(score):
                raise NonFiniteLoss(f"train_fn returned a final score of {score}")
            return score
        except optuna.TrialPruned:
            raise
        except NonFiniteLoss as e:
            self._fail(trial, "nonfinite", f"diverged: {e}")
        except _Timeout:
            self._fail(trial, "timeout", f"timed out after {job.timeout_s:g} s (the per-trial time limit)")
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr(ATTR_INTERRUPTED, True)
            raise _Interrupted from None
        except Exception as e:  # the training's own error: recorded on the trial, the sweep goes on
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            self._fail(trial, "error", f"{type(e).__name__}: {e}\n" + "".join(tb[-3:]))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _fail(trial: Any, failure: str, message: str) -> None:
        trial.set_user_attr(ATTR_FAILURE, failure)
        trial.set_user_attr(ATTR_ERROR, message[:2000])
        raise _TrialFailed(message)


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_Timeout` in this (main) thread after ``seconds`` (SIGALRM); no limit when None."""
    if not seconds:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_timeout(timeout_s: float | None, n_workers: int) -> float | None:
    """Validate a per-trial time limit (s); it needs SIGALRM, in the main thread when trials run in this process."""
    if timeout_s is None:
        return None
    try:
        t = float(timeout_s)
    except (TypeError, ValueError):
        t = float("nan")
    if not (math.isfinite(t) and t > 0):
        raise LrkitError(f"the per-trial timeout must be a positive number of seconds, got {timeout_s!r}")
    if not hasattr(signal, "setitimer"):  # pragma: no cover - Windows
        raise LrkitError("a per-trial timeout needs SIGALRM, which this platform lacks; leave the timeout unset")
    if n_workers == 1 and threading.current_thread() is not threading.main_thread():
        raise LrkitError("a per-trial timeout works in the main thread only; call from the main thread, or use "
                         "n_workers >= 2 (trials then run in worker processes)")
    return t


class _Progress:
    """After each trial: one line on stderr (lr, seed, outcome, score, time, best so far), and stop the worker when
    no work is left."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self, study: Any, frozen: Any) -> None:
        if frozen.user_attrs.get(ATTR_SPARE):
            return
        trials = study.get_trials(deepcopy=False) if self.job.progress else None
        if trials is not None:
            print(progress_line(self.job, trials, TrialRecord.from_frozen(frozen)), file=sys.stderr, flush=True)
        if not self.job.has_work(study, trials):
            study.stop()


def progress_line(job: Job, trials: Sequence[Any], rec: TrialRecord) -> str:
    """``lrkit sweep [3/7] lr 0.001 seed 0: complete, score 0.1234, 2.1 s; best so far lr 0.003 (0.1, 1 seed)``."""
    ts = _storage.optuna_module().trial.TrialState
    finished = {p for t in trials if t.state.is_finished() and (p := trial_point(t)) is not None}
    if job.points is not None and job.label == "sweep":
        count = f"[{len(finished & set(job.points))}/{len(job.points)}]"
    elif job.n_trials is not None:
        count = f"[{len(finished)}/{job.n_trials}]"
    else:
        count = f"trial {len(finished)}"
    outcome = rec.state if rec.score is None else f"{rec.state}, score {rec.score:.5g}"
    if rec.state == FAILED and rec.error:
        outcome += f" ({rec.error.splitlines()[0][:70]})"
    took = "" if rec.duration_s is None else f", {rec.duration_s:.1f} s"
    done = [TrialRecord.from_frozen(t) for t in trials if t.state == ts.COMPLETE and trial_point(t) is not None]
    best = SweepResult(done, direction=job.study.direction).best
    tail = "" if best is None else (f"; best so far lr {best['lr']:.4g} ({best['mean_score']:.5g}, "
                                    f"{best[COMPLETE]} seed{'s' if best[COMPLETE] > 1 else ''})")
    return f"lrkit {job.label} {count} lr {rec.lr:.4g} seed {rec.seed}: {outcome}{took}{tail}"


def work(job: Job, storage: Any = None) -> None:
    """One worker: run queued trials (and the sampler's, within its budget) with ``study.optimize`` until none is
    left, then wait for this job's trials that other workers run (storages with a heartbeat), running any that
    Optuna queues again because their worker died. ``storage``: an open one to reuse (this process only)."""
    optuna = _storage.optuna_module()
    storage = storage if storage is not None else job.study.open_storage()
    study = job.load(storage)
    objective, callbacks = _Objective(job, storage), [_Progress(job)]
    heartbeat = _storage.has_heartbeat(storage)
    with quiet_optuna():
        while True:
            if job.has_work(study):
                study.optimize(objective, callbacks=callbacks, catch=(_TrialFailed,), gc_after_trial=False)
                continue
            if not (job.wait and heartbeat and job.running_here(study.get_trials(deepcopy=False))):
                return
            time.sleep(POLL_S)
            with warnings.catch_warnings():  # experimental in Optuna; lrkit relies on it knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and queued again


def _worker_main(job: Job) -> None:
    """Entry of a worker process: it stops with its parent, and on SIGTERM leaves its trial for the next run."""
    _exit_with_parent()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        work(job)
    except (KeyboardInterrupt, _Interrupted):
        sys.exit(130)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _exit_with_parent(grace_s: float = 10.0) -> None:
    """When the parent process ends (even by SIGKILL), interrupt this worker; end it outright ``grace_s`` later."""
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - only worker processes call this
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        signal.raise_signal(signal.SIGTERM)  # -> KeyboardInterrupt in the main thread, between bytecodes
        time.sleep(grace_s)
        os._exit(130)

    threading.Thread(target=watch, name="lrkit-parent-watch", daemon=True).start()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread meanwhile, so a stopped run cleans up (its workers and
    its trial); a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workers(job: Job, n_workers: int, storage: Any = None) -> None:
    """Run ``job`` in this process (``n_workers == 1``, on ``storage`` when given) or in ``n_workers`` spawned
    processes, which end when this one does; a KeyboardInterrupt stops them and is raised here."""
    if n_workers == 1:
        try:
            work(job, storage)
        except _Interrupted:
            raise KeyboardInterrupt from None
        return
    check_sendable(job.study, job.train_fn, n_workers)
    job = replace(job, reseed=job.sampler is not None)
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with database connections and framework threads
    procs = [ctx.Process(target=_worker_main, args=(job,), name=f"lrkit-worker-{i}") for i in range(n_workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker leaves its trial marked interrupted, for the next run
        for p in procs:
            p.join(15)
            if p.is_alive():  # pragma: no cover - a worker stuck in native code
                p.kill()
                p.join()
    codes = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if codes and all(c == 130 for c in codes):
        raise KeyboardInterrupt
    if len(codes) == len(procs) and all(c > 0 for c in codes):
        raise LrkitError(f"every worker process failed (exit status {codes}; their error is printed above); a "
                         "common cause: train_fn lives in a script run from stdin or a notebook, which worker "
                         "processes cannot import: put it in a module file")
    if codes:
        print(f"lrkit {job.label}: warning: {len(codes)} worker process(es) exited with status {codes}; Optuna's "
              "heartbeat fails their trials and queues them again (database storages), or a rerun redoes them",
              file=sys.stderr)


def run_points(study: SweepStudy, train_fn: TrainFn, points: Sequence[tuple[float, int]] | Sequence[float], *,
               identity: dict[str, Any] | None = None, n_workers: int = 1, retry_failed: bool = False,
               wait: bool = True, timeout_s: float | None = None, progress: bool = False,
               label: str = "search") -> list[TrialRecord]:
    """Run ``train_fn`` at each ``(lr, seed)`` point (a bare lr is seed 0) on ``study``; one record per point.

    A point with a finished trial (complete, pruned, or failed by the training itself) is not run again
    (``retry_failed=True`` redoes failed ones); an interrupted one is. ``identity`` (default: the objective's name
    and the direction) is checked against the study's. With ``n_workers > 1`` worker processes take the points;
    with ``wait`` (default) points that other workers run are waited for (storages with a heartbeat). The engine
    behind :func:`lrkit.stepwise_search`, for custom searches.
    """
    pts = [(clean_lr(p), 0) if not isinstance(p, (tuple, list)) else (clean_lr(p[0]), int(p[1])) for p in points]
    n_workers = check_workers(n_workers)
    bad = [lr for lr, _ in pts if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise LrkitError(f"every lr must be a positive finite number, got {bad[0]!r}")
    timeout_s = check_timeout(timeout_s, n_workers)
    if not pts:
        return []
    check_sendable(study, train_fn, min(n_workers, len(pts)))
    storage = study.open_storage()
    opened, _ = study.open(identity or {"kind": "points", "objective": objective_name(train_fn),
                                        "direction": study.direction}, storage)
    return run_open(study, opened, storage, train_fn, pts, n_workers=n_workers, retry_failed=retry_failed,
                    wait=wait, timeout_s=timeout_s, progress=progress, label=label)


def run_open(spec: SweepStudy, study: Any, storage: Any, train_fn: TrainFn, points: list[tuple[float, int]], *,
             n_workers: int, retry_failed: bool, wait: bool, timeout_s: float | None, progress: bool,
             label: str) -> list[TrialRecord]:
    """:func:`run_points` on a study already opened (and checked) in this process, with checked arguments."""
    queue_points(study, points, retry_failed, claim_running=retry_failed and not _storage.has_heartbeat(storage))
    lrs = [lr for lr, _ in points]
    job = Job(spec, train_fn, (min(lrs), max(lrs)), points=points, timeout_s=timeout_s, progress=progress,
              label=label, wait=wait)
    run_workers(job, min(n_workers, len(points)), storage)
    return collect(study, points)


def check_sendable(study: SweepStudy, train_fn: Any, n_workers: int) -> None:
    """With several workers: a storage other processes can open, and a train_fn they can import."""
    if n_workers == 1:
        return
    if study.kind == "memory":
        raise LrkitError("storage='memory' lives in one process; with several workers use a file or a database "
                         "(the default SQLite file, or storage='sweep.db')")
    try:
        pickle.dumps(train_fn)
    except Exception as e:
        raise LrkitError(f"train_fn {train_fn!r} cannot be sent to worker processes ({e}); with several workers "
                         "define it at the top level of an importable module (not a lambda or a closure)") from e


def check_workers(n_workers: Any) -> int:
    """``n_workers`` as an int >= 1, or a clear error."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, Integral) or n_workers < 1:
        raise LrkitError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    return int(n_workers)


def objective_name(train_fn: Any) -> str:
    """``module.qualname`` of a training function (what a study's identity and default name use)."""
    fn = getattr(train_fn, "func", train_fn)  # a functools.partial names its function
    return f"{getattr(fn, '__module__', None) or 'lrkit'}.{getattr(fn, '__qualname__', type(fn).__name__)}"
