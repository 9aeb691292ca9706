"""LR sweeps on Optuna: run a short training at each candidate lr as a trial of an Optuna study.

The study lives in an Optuna storage (an SQLite file by default; ``postgresql://...`` across machines; a journal
file where no database exists), so a sweep is resumable (rerunning continues it and never redoes a finished
trial) and any number of worker processes, on any number of machines, pull trials from it.

Engine, for callers that plan their own lrs (e.g. a stepwise search): :class:`SweepStudy` names a study, and
:func:`run_points` runs a list of ``(lr, seed)`` points on it, reusing finished trials with the same lr and seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit._util import load_callable
from lrkit.curve import Curve
from lrkit.errors import LrkitError, missing_extra

DEFAULT_STORAGE_FILE = "lrkit-sweep.db"
LR_PARAM = "lr"
# trial states as lrkit reports them
COMPLETE, PRUNED, FAILED, RUNNING, WAITING = "complete", "pruned", "failed", "running", "waiting"
# user attr "lrkit_failure" on a failed trial: a final failure of the training itself, or a lost worker (redone)
_FINAL_FAILURES = ("error", "nonfinite")


def _optuna():
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - exercised only without optuna
        raise missing_extra("optuna", "sweep") from e
    return optuna


# -- lr candidates ----------------------------------------------------------------------------------------------

def _clean_lr(x: float) -> float:
    """Round to 12 significant digits so an lr is the same key in every run and every storage."""
    return float(f"{float(x):.12g}")


def parse_lrs(spec: str | Sequence[float]) -> list[float]:
    """Candidate lrs from ``"lo:hi:n"`` (n log-spaced values, ends included), ``"a,b,c"``, or a sequence."""
    if isinstance(spec, str):
        text = spec.strip()
        unreadable = LrkitError(f"cannot read lrs {spec!r}; write lo:hi:n (e.g. 1e-4:1e-1:7 for 7 log-spaced "
                                "lrs) or a comma-separated list (e.g. 1e-3,3e-3,1e-2)")
        if ":" in text:
            parts = text.split(":")
            try:
                lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            except (ValueError, IndexError):
                raise unreadable from None
            if len(parts) != 3:
                raise unreadable
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi and n >= 2):
                raise LrkitError(f"bad lr range {spec!r}: need 0 < lo < hi and n >= 2, e.g. 1e-4:1e-1:7 "
                                 "(7 log-spaced lrs from 1e-4 to 1e-1)")
            return [_clean_lr(v) for v in np.geomspace(lo, hi, n)]
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise unreadable from None
    else:
        try:
            values = [float(v) for v in np.asarray(spec, dtype=np.float64).ravel()]
        except (TypeError, ValueError):
            raise LrkitError(f"lrs must be numbers, got {spec!r}") from None
    if not values:
        raise LrkitError("no lrs given; pass e.g. lrs='1e-4:1e-1:7'")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise LrkitError(f"every lr must be a positive finite number, got {bad[0]!r}")
    return sorted({_clean_lr(v) for v in values})


def lrs_around(pick: Any, decades: float = 1.0, num: int = 7) -> list[float]:
    """``num`` log-spaced lrs spanning ``decades`` decades centred on ``pick`` (an lr, a Suggestion or a
    FinderResult; default one decade: pick/3.16 .. pick*3.16)."""
    lr = getattr(getattr(pick, "suggestion", pick), "lr", pick)
    if lr is None:
        reason = getattr(getattr(pick, "suggestion", pick), "reason", "")
        raise LrkitError(f"the range test has no suggestion to sweep around ({reason}); give --lrs instead")
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0) or not decades > 0 or int(num) < 2:
        raise LrkitError(f"cannot sweep around lr={lr!r} over {decades!r} decades with {num!r} points; need a "
                         "positive lr, decades > 0 and num >= 2")
    half = 10.0 ** (decades / 2)
    return [_clean_lr(v) for v in np.geomspace(lr / half, lr * half, int(num))]


# -- what train_fn sees -----------------------------------------------------------------------------------------

class NonFiniteLoss(Exception):
    """Raised by :meth:`SweepTrial.report` when a reported value is NaN or infinite; the trial fails."""


class SweepTrial:
    """What ``train_fn(lr, trial)`` gets: the trial's ``lr``, ``seed`` and ``number``, and :meth:`report`.

    The whole curve is written to the storage once, when the trial ends (user attr ``lrkit_curve``): a database
    write per training step would cost more than a small step. With a pruner each value is also written at once
    (Optuna's intermediate values), which the pruner needs; then report every few steps rather than every step.
    """

    def __init__(self, optuna_trial: Any, lr: float, seed: int | None, prune: bool) -> None:
        self.optuna_trial, self.lr, self.seed, self.number = optuna_trial, lr, seed, optuna_trial.number
        self._prune = prune
        self._next_step = 0
        self._curve: dict[int, float] = {}
        self.last_value: float | None = None

    def report(self, value: float, step: int | None = None) -> None:
        """Record the score (e.g. the training loss) at ``step`` (default: the next step; a step already
        reported is ignored). A NaN/inf value fails the trial (raises :class:`NonFiniteLoss`); with a pruner, a
        poor trial is stopped (raises ``optuna.TrialPruned``)."""
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
            raise _optuna().TrialPruned(f"pruned at step {step} (value {value:.4g})")

    def should_prune(self) -> bool:
        """Whether the study's pruner would stop this trial now."""
        return self._prune and self.optuna_trial.should_prune()

    def flush(self) -> None:
        """Write the curve to the storage in one write (called when the trial ends)."""
        if self._curve:
            steps = sorted(self._curve)
            values = [v if math.isfinite(v) else repr(v) for v in (self._curve[k] for k in steps)]
            self.optuna_trial.set_user_attr("lrkit_curve", {"steps": steps, "values": values})


TrainFn = Callable[[float, SweepTrial], "float | None"]


# -- one trial's outcome and the sweep's --------------------------------------------------------------------------

@dataclass
class TrialRecord:
    """One trial: its lr and seed, state (complete/pruned/failed/running/waiting), final score, error, and curve."""

    number: int
    lr: float
    seed: int | None
    state: str
    score: float | None
    error: str | None = None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    duration_s: float | None = None
    verdict: dict | None = None

    @property
    def curve(self) -> Curve:
        """The reported values as a :class:`~lrkit.curve.Curve` (steps as reported, the trial's lr at each)."""
        return Curve(self.steps, self.values, np.full(len(self.values), self.lr), name=f"lr={self.lr:.3g}")

    def to_dict(self) -> dict[str, Any]:
        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        return {"number": self.number, "lr": self.lr, "seed": self.seed, "state": self.state,
                "score": num(self.score), "error": self.error, "steps": [int(s) for s in self.steps],
                "values": [num(v) for v in self.values], "duration_s": self.duration_s, "verdict": self.verdict}

    @classmethod
    def from_frozen(cls, t: Any) -> TrialRecord:
        """Build from an Optuna ``FrozenTrial`` written by this module."""
        ts = _optuna().trial.TrialState
        lr = t.params.get(LR_PARAM, t.system_attrs.get("fixed_params", {}).get(LR_PARAM))
        state = {ts.COMPLETE: COMPLETE, ts.PRUNED: PRUNED, ts.FAIL: FAILED, ts.RUNNING: RUNNING,
                 ts.WAITING: WAITING}[t.state]
        curve = t.user_attrs.get("lrkit_curve")
        if curve:
            steps = np.asarray(curve["steps"], dtype=np.int64)
            values = np.array([float(v) for v in curve["values"]], dtype=np.float64)
        else:  # a trial that never finished: what the pruner saw, if anything
            steps = np.array(sorted(t.intermediate_values), dtype=np.int64)
            values = np.array([t.intermediate_values[s] for s in steps], dtype=np.float64)
        score = t.value if state == COMPLETE else (float(values[-1]) if state == PRUNED and len(values) else None)
        error = t.user_attrs.get("lrkit_error")
        if state == FAILED and error is None:
            error = ("interrupted; rerun the sweep to redo it" if t.user_attrs.get("lrkit_failure") == "interrupted"
                     else "the worker running this trial was lost (killed or crashed); rerun the sweep to redo it")
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
            else None
        return cls(number=t.number, lr=_clean_lr(lr) if lr is not None else float("nan"),
                   seed=t.user_attrs.get("seed"), state=state, score=score, error=error, steps=steps,
                   values=values, duration_s=dur)


@dataclass
class SweepResult:
    """A finished sweep: every trial (lr, seed, state, score, error, curve, doctor's verdict), and the best lr.

    ``best_lr`` is the lr with the best mean score over its seeds among lrs where no seed failed or was pruned.
    """

    trials: list[TrialRecord]
    direction: str = "minimize"
    study_name: str = ""
    storage: str = ""

    def by_lr(self) -> list[dict[str, Any]]:
        """One row per lr: mean score over completed seeds, and how many seeds completed, were pruned or failed."""
        rows: dict[float, dict[str, Any]] = {}
        for t in self.trials:
            r = rows.setdefault(t.lr, {"lr": t.lr, "scores": [], COMPLETE: 0, PRUNED: 0, FAILED: 0, "other": 0})
            if t.state == COMPLETE:
                r["scores"].append(t.score)
            r[t.state if t.state in (COMPLETE, PRUNED, FAILED) else "other"] += 1
        out = []
        for lr in sorted(rows):
            r = rows.pop(lr)
            r["mean_score"] = float(np.mean(r.pop("scores"))) if r[COMPLETE] else None
            out.append(r)
        return out

    @property
    def best(self) -> dict[str, Any] | None:
        """The :meth:`by_lr` row of the best lr (None when no lr completed cleanly)."""
        ok = [r for r in self.by_lr() if r["mean_score"] is not None and not r[FAILED] and not r[PRUNED]
              and not r["other"]]
        if not ok:
            return None
        sign = 1.0 if self.direction == "minimize" else -1.0
        return min(ok, key=lambda r: sign * r["mean_score"])

    @property
    def best_lr(self) -> float | None:
        """The best lr, or None when no lr completed cleanly."""
        b = self.best
        return None if b is None else b["lr"]

    def table(self) -> str:
        """A text table of lr, seed, state, final score, the doctor's action and the error, one row per trial."""
        best = self.best_lr
        lines = [f"{'lr':>10}  {'seed':>4}  {'state':<8}  {'score':>10}  {'doctor':<8}  note"]
        for t in sorted(self.trials, key=lambda t: (t.lr, t.seed if t.seed is not None else -1, t.number)):
            score = "" if t.score is None else f"{t.score:.5g}"
            action = ""
            if t.verdict:
                action = str((t.verdict.get("recommendation") or {}).get("action", ""))
            note = (t.error or "").splitlines()[0][:60] if t.state == FAILED else ""
            mark = " *" if best is not None and t.lr == best else "  "
            lines.append(f"{t.lr:>10.4g}{mark}{t.seed if t.seed is not None else '':>4}  {t.state:<8}  "
                         f"{score:>10}  {action:<8}  {note}".rstrip())
        lines.append(f"best lr: {best:.4g}" if best is not None else "best lr: none (no lr completed cleanly)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"format": "lrkit.sweep", "version": 1, "study_name": self.study_name, "storage": self.storage,
                "direction": self.direction, "best_lr": self.best_lr, "trials": [t.to_dict() for t in self.trials]}

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from lrkit.finder import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
        """All trials' curves on one figure, coloured by lr; saved to ``path`` when given. Returns the Axes."""
        from lrkit.plot import plot_sweep

        return plot_sweep(self, path=path, ax=ax)


# -- the study ---------------------------------------------------------------------------------------------------

@dataclass
class SweepStudy:
    """Where a sweep's trials live: a storage (URL or file) and a study name; picklable, so workers reopen it.

    ``storage``: None (the SQLite file ``lrkit-sweep.db`` here), a ``*.db``/``*.sqlite`` path, an SQLAlchemy URL
    (``sqlite:///x.db``, ``postgresql://user:pw@host/db``), ``journal:PATH`` or a ``*.log``/``*.journal`` path
    (Optuna's JournalStorage on a file), or ``"memory"`` (one process, not kept). ``heartbeat_interval`` (s,
    default 10) lets any worker fail and requeue the trial of a worker that died (RDB storages); ``grace_period``
    defaults to 3 heartbeats.
    """

    storage: str | None = None
    study_name: str = "lrkit-sweep"
    direction: str = "minimize"
    pruner: Any = None
    sampler: Any = None
    heartbeat_interval: int | None = 10
    grace_period: int | None = None
    max_retry: int = 3

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise LrkitError(f"direction must be 'minimize' or 'maximize', got {self.direction!r}")
        self.storage = _normalise_storage(self.storage)

    @property
    def kind(self) -> str:
        """'sqlite', 'rdb', 'journal' or 'memory'."""
        s = self.storage
        if s == "memory":
            return "memory"
        if s.startswith("journal:"):
            return "journal"
        return "sqlite" if s.startswith("sqlite") else "rdb"

    def open_storage(self) -> Any:
        """A new Optuna storage object for this process."""
        optuna = _optuna()
        if self.kind == "memory":
            return optuna.storages.InMemoryStorage()
        if self.kind == "journal":
            path = self.storage[len("journal:"):]
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        kwargs: dict[str, Any] = {}
        if self.kind == "sqlite":
            kwargs["engine_kwargs"] = {"creator": _sqlite_connector(_sqlite_path(self.storage))}
        if self.heartbeat_interval:
            with _no_experimental_warnings():
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)
            kwargs.update(heartbeat_interval=int(self.heartbeat_interval),
                          grace_period=int(self.grace_period or 3 * self.heartbeat_interval),
                          heartbeat_stale_trial_callback=retry)
        try:
            with _no_experimental_warnings():
                return optuna.storages.RDBStorage(_with_driver(self.storage), **kwargs)
        except ImportError as e:
            raise LrkitError(f"cannot open storage {self._safe_url}: {e}; for PostgreSQL install "
                             "'lrkit[postgres]' (psycopg2)") from e
        except Exception as e:  # sqlalchemy errors: bad URL, server down, wrong password
            if type(e).__module__.startswith("sqlalchemy"):
                raise LrkitError(f"cannot open storage {self._safe_url}: {str(e).splitlines()[0]}; check the "
                                 "URL, that the database server runs and that the database exists") from e
            raise

    @property
    def _safe_url(self) -> str:
        """The storage URL with any password hidden."""
        s = str(self.storage)
        if "://" in s and "@" in s:
            head, rest = s.split("://", 1)
            cred, host = rest.rsplit("@", 1)
            if ":" in cred:
                return f"{head}://{cred.split(':')[0]}:***@{host}"
        return s

    def load(self, storage: Any = None) -> Any:
        """Create or load the Optuna study (never deletes or changes existing trials)."""
        optuna = _optuna()
        storage = storage if storage is not None else self.open_storage()
        sampler = self.sampler if self.sampler is not None else optuna.samplers.RandomSampler()
        pruner = self.pruner if self.pruner is not None else optuna.pruners.NopPruner()
        with _quiet_optuna():
            return optuna.create_study(storage=storage, study_name=self.study_name, direction=self.direction,
                                       sampler=sampler, pruner=pruner, load_if_exists=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock among this machine's processes for an SQLite study (a no-op for other storages).

        pysqlite runs a SELECT outside the UPDATE's transaction, so two processes could both take one waiting
        trial; serialising the take with a file lock next to the database makes it atomic."""
        if self.kind != "sqlite":
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: best effort
            yield
            return
        path = _sqlite_path(self.storage)
        with open((path or os.path.abspath(DEFAULT_STORAGE_FILE)) + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _normalise_storage(storage: Any) -> str:
    if storage is None:
        return "sqlite:///" + os.path.abspath(DEFAULT_STORAGE_FILE)
    if not isinstance(storage, (str, os.PathLike)):
        raise LrkitError(f"storage must be a URL or a file path, got {type(storage).__name__}; e.g. "
                         "'sqlite:///sweep.db', 'postgresql://user:pw@host/db' or 'sweep.log' (journal file)")
    s = os.fspath(storage).strip()
    if s in ("memory", ":memory:"):
        return "memory"
    if s.startswith("postgresql:") or s.startswith("postgres:"):
        return "postgresql:" + s.split(":", 1)[1]
    if s.startswith("journal:"):
        return "journal:" + os.path.abspath(s[len("journal:"):])
    if s.startswith("sqlite:///") and not s.startswith("sqlite:////") and s != "sqlite:///:memory:":
        return "sqlite:///" + os.path.abspath(s[len("sqlite:///"):])
    if "://" in s:
        return s
    if s.endswith((".log", ".journal", ".jsonl")):
        return "journal:" + os.path.abspath(s)
    return "sqlite:///" + os.path.abspath(s)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3; fall back to psycopg2."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _sqlite_connector(path: str | None) -> Callable[[], Any]:
    """Connections in WAL mode with synchronous=NORMAL (a commit without an fsync: ~0.1 ms instead of ~15 ms,
    which matters at one report per training step) that wait up to 120 s for a lock instead of failing."""
    import sqlite3

    def connect() -> Any:
        conn = sqlite3.connect(path or ":memory:", timeout=120, check_same_thread=False)
        if path:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def _sqlite_path(url: str) -> str | None:
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    return None if path in (None, "", ":memory:") else path


@contextlib.contextmanager
def _no_experimental_warnings() -> Iterator[None]:
    """Optuna marks its heartbeat API experimental; lrkit relies on it knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _optuna().exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial INFO logging while lrkit drives the study."""
    optuna = _optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(min(max(level, optuna.logging.WARNING), optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


# -- keys, claims, heartbeats --------------------------------------------------------------------------------------

def _key(lr: float, seed: int | None) -> tuple[float, int | None]:
    return (_clean_lr(lr), seed)


def _trial_key(t: Any) -> tuple[float, int | None] | None:
    lr = t.params.get(LR_PARAM, t.system_attrs.get("fixed_params", {}).get(LR_PARAM))
    return None if lr is None else _key(lr, t.user_attrs.get("seed"))


def _rank(t: Any, retry_failed: bool) -> int:
    """How settled a trial is (lower is better): the trial kept for a point among duplicates."""
    ts = _optuna().trial.TrialState
    if t.state == ts.COMPLETE:
        return 0
    if t.state == ts.PRUNED:
        return 1
    if t.state == ts.FAIL and t.user_attrs.get("lrkit_failure") in _FINAL_FAILURES and not retry_failed:
        return 2
    if t.state == ts.RUNNING:
        return 3
    if t.state == ts.WAITING:
        return 4
    return 5  # failed by a lost worker (or failed and retry_failed): to be redone


def _settled(rank: int) -> bool:
    return rank <= 2


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_dead_local_trials(study: Any, storage: Any) -> None:
    """Fail RUNNING trials whose worker ran on this machine and no longer exists (killed sweep), so they are redone."""
    ts = _optuna().trial.TrialState
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(ts.RUNNING,)):
        w = t.user_attrs.get("lrkit_worker") or {}
        if w.get("host") == host and isinstance(w.get("pid"), int) and not _pid_alive(w["pid"]):
            with contextlib.suppress(Exception):  # another process may have finished it meanwhile
                storage.set_trial_user_attr(t._trial_id, "lrkit_failure", "lost")
                storage.set_trial_state_values(t._trial_id, state=ts.FAIL)


def _take_waiting(study: Any, storage: Any, spec: SweepStudy, locked: bool = False,
                  order: dict | None = None) -> int | None:
    """Atomically move one WAITING trial to RUNNING for this worker; its id, or None. Trials of the points in
    ``order`` (key -> position) come first, in that order (a requeued point keeps its place); then oldest first."""
    ts = _optuna().trial.TrialState
    with contextlib.nullcontext() if locked else spec.lock():
        waiting = study.get_trials(deepcopy=False, states=(ts.WAITING,))
        if order:
            waiting.sort(key=lambda t: (order.get(_trial_key(t), len(order)), t.number))
        for t in waiting:
            try:
                if storage.set_trial_state_values(t._trial_id, state=ts.RUNNING):
                    return t._trial_id
            except Exception as e:  # finished or taken by another worker meanwhile
                if type(e).__name__ != "UpdateFinishedTrialError":
                    time.sleep(0.05)
    return None


class _Heartbeat:
    """Record the trial's heartbeat every ``interval`` seconds while it runs (RDB storages with a heartbeat)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread = None
        if interval:
            storage.record_heartbeat(trial_id)

            def beat() -> None:
                while not self._stop.wait(interval):
                    with contextlib.suppress(Exception):
                        storage.record_heartbeat(trial_id)

            self._thread = threading.Thread(target=beat, name="lrkit-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _fail_stale(study: Any) -> None:
    with contextlib.suppress(Exception), _no_experimental_warnings():
        _optuna().storages.fail_stale_trials(study)


# -- running trials ------------------------------------------------------------------------------------------------

def _run_trial(study: Any, storage: Any, trial_id: int, train_fn: TrainFn, spec: SweepStudy,
               lr_bounds: tuple[float, float], default_seed: int | None) -> None:
    """Run ``train_fn`` on one RUNNING trial and record its outcome; a training error fails only this trial."""
    optuna = _optuna()
    ts = optuna.trial.TrialState
    trial = optuna.trial.Trial(study, trial_id)
    storage.set_trial_user_attr(trial_id, "lrkit_worker", {"host": socket.gethostname(), "pid": os.getpid()})
    seed = trial.user_attrs.get("seed", default_seed)
    if "seed" not in trial.user_attrs:
        storage.set_trial_user_attr(trial_id, "seed", seed)
    lr = trial.suggest_float(LR_PARAM, lr_bounds[0], lr_bounds[1], log=True)
    reporter = SweepTrial(trial, float(lr), seed, prune=not isinstance(study.pruner, optuna.pruners.NopPruner))
    beat = _Heartbeat(storage, trial_id)
    failure = None
    try:
        try:
            try:
                out = train_fn(float(lr), reporter)
            finally:
                reporter.flush()
            score = reporter.last_value if out is None else out
            if score is None:
                raise LrkitError("train_fn returned None and reported no value; return the final score "
                                 "(e.g. the last training loss) or call trial.report(value, step)")
            score = float(score)
            if not math.isfinite(score):
                raise NonFiniteLoss(f"train_fn returned a final score of {score}")
        except optuna.TrialPruned:
            study.tell(trial, state=ts.PRUNED)
            return
        except NonFiniteLoss as e:
            failure, message = "nonfinite", f"diverged: {e}"
        except Exception as e:  # the training's own error: record it, the sweep goes on
            failure = "error"
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            message = f"{type(e).__name__}: {e}\n" + "".join(tb[-3:])
        except BaseException:  # interrupted: not final, a rerun redoes this trial
            storage.set_trial_user_attr(trial_id, "lrkit_failure", "interrupted")
            study.tell(trial, state=ts.FAIL)
            raise
        if failure is None:
            study.tell(trial, score)
        else:
            storage.set_trial_user_attr(trial_id, "lrkit_failure", failure)
            storage.set_trial_user_attr(trial_id, "lrkit_error", message[:2000])
            study.tell(trial, state=ts.FAIL)
    finally:
        beat.stop()


def _plan_status(study: Any, points: Sequence[tuple[float, int | None]], retry_failed: bool
                 ) -> dict[tuple[float, int | None], tuple[int, Any, int]]:
    """For each point: (rank, frozen trial) of its most settled trial (the newest among equals; rank 6 and None
    when it has none), and how many of its trials were lost with their worker."""
    ts = _optuna().trial.TrialState
    best: dict[tuple[float, int | None], tuple[int, Any, int]] = {_key(*p): (6, None, 0) for p in points}
    for t in study.get_trials(deepcopy=False):
        k = _trial_key(t)
        if k in best:
            r, bt, lost = best[k]
            lost += t.state == ts.FAIL and t.user_attrs.get("lrkit_failure") not in _FINAL_FAILURES
            rt = _rank(t, retry_failed)
            best[k] = (rt, t, lost) if rt <= r else (r, bt, lost)
    return best


def _requeue(study: Any, storage: Any, spec: SweepStudy, points: Sequence[tuple[float, int | None]],
             retry_failed: bool, first: bool) -> int:
    """Queue a WAITING trial for each point with no trial yet (``first``), or whose trial was lost with its
    worker (at most ``spec.max_retry`` times); fail the trials of dead workers on this machine first."""
    n = 0
    with spec.lock():
        _fail_dead_local_trials(study, storage)
        for (lr, seed), (rank, _, lost) in _plan_status(study, points, retry_failed).items():
            if rank == 6 and first or rank == 5 and (first or lost <= spec.max_retry):
                with _quiet_optuna():
                    study.enqueue_trial({LR_PARAM: lr}, user_attrs={"seed": seed})
                n += 1
    return n


def _worker_loop(spec: SweepStudy, train_fn: TrainFn, points: Sequence[tuple[float, int | None]] | None,
                 n_trials: int | None, lr_bounds: tuple[float, float], default_seed: int | None,
                 retry_failed: bool, wait: bool, storage: Any = None, poll_s: float = 0.5) -> None:
    """One worker: take waiting trials (grid mode, ``points``) or ask the sampler (``n_trials``) until done."""
    storage = storage if storage is not None else spec.open_storage()
    study = spec.load(storage)
    heartbeat = bool(getattr(storage, "get_heartbeat_interval", lambda: None)())
    with _quiet_optuna():
        if points is None:  # sampler mode: a shared budget of n_trials
            if spec.sampler is not None and hasattr(study.sampler, "reseed_rng"):
                study.sampler.reseed_rng()  # workers must not draw the same lrs
            while True:
                _fail_stale(study)
                with spec.lock():
                    taken = [t for t in study.get_trials(deepcopy=False) if _rank(t, retry_failed) <= 4]
                    if len(taken) >= n_trials:
                        return
                    tid = _take_waiting(study, storage, spec, locked=True)
                    if tid is None:
                        with warnings.catch_warnings():  # Optuna: heartbeat "supposed to be used with optimize"
                            warnings.simplefilter("ignore", UserWarning)
                            tid = study.ask()._trial_id
                        storage.set_trial_user_attr(tid, "seed", default_seed)
                _run_trial(study, storage, tid, train_fn, spec, lr_bounds, default_seed)
        order = {_key(*p): i for i, p in enumerate(points)}
        while True:
            _fail_stale(study)  # a dead worker's trial (no heartbeat for grace_period) is failed and requeued
            tid = _take_waiting(study, storage, spec, order=order)
            if tid is not None:
                _run_trial(study, storage, tid, train_fn, spec, lr_bounds, default_seed)
                continue
            if _requeue(study, storage, spec, points, False, first=False):
                continue
            status = _plan_status(study, points, False)
            if all(_settled(r) for r, _, _ in status.values()):
                return
            running_elsewhere = any(r == 3 for r, _, _ in status.values())
            if not (wait and heartbeat and running_elsewhere):
                return
            time.sleep(poll_s)


def _worker_main(*args: Any) -> None:  # entry of a worker process
    try:
        _worker_loop(*args)
    except KeyboardInterrupt:
        sys.exit(130)


def _check_picklable(train_fn: TrainFn) -> None:
    try:
        pickle.dumps(train_fn)
    except Exception as e:
        raise LrkitError(f"train_fn {train_fn!r} cannot be sent to worker processes ({e}); with n_workers > 1 "
                         "define it at the top level of an importable module (not a lambda or a closure)") from e


def _run_workers(n_workers: int, spec: SweepStudy, args: tuple, storage: Any = None) -> None:
    if n_workers == 1:
        _worker_loop(spec, *args, storage=storage if spec.kind == "memory" else None)
        return
    if spec.kind == "memory":
        raise LrkitError("storage='memory' lives in one process; with n_workers > 1 use a file or database "
                         "storage (the default SQLite file, or storage='sweep.db')")
    _check_picklable(args[0])
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork is unsafe with database connections and framework threads
    procs = [ctx.Process(target=_worker_main, args=(spec, *args), name=f"lrkit-sweep-{i}") for i in range(n_workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad and all(c == 130 for c in bad):
        raise KeyboardInterrupt
    if bad:
        print(f"lrkit sweep: warning: {len(bad)} worker process(es) exited with status {bad}; their trials are "
              "marked lost and a rerun redoes them", file=sys.stderr)


def run_points(study: SweepStudy, train_fn: TrainFn, points: Sequence[tuple[float, int | None]] | Sequence[float],
               *, n_workers: int = 1, retry_failed: bool = False, wait: bool = True) -> list[TrialRecord]:
    """Run ``train_fn`` at each ``(lr, seed)`` point (or bare lr, seed None) on ``study``; one record per point.

    A point that already has a finished trial (complete, pruned, or failed by the training itself) is not run
    again (``retry_failed=True`` redoes failed ones); a trial lost with a killed worker is redone. With
    ``n_workers > 1`` separate processes take the points; with ``wait`` (default) points that another machine
    runs are waited for (storages with a heartbeat). The engine behind :func:`sweep`, for custom searches.
    """
    pts = [(float(p), None) if np.isscalar(p) else (float(p[0]), None if p[1] is None else int(p[1]))
           for p in points]
    if not pts:
        return []
    if int(n_workers) < 1:
        raise LrkitError(f"n_workers must be >= 1, got {n_workers!r}")
    bad = [lr for lr, _ in pts if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise LrkitError(f"every lr must be a positive finite number, got {bad[0]!r}")
    storage = study.open_storage()
    st = study.load(storage)
    _requeue(st, storage, study, pts, retry_failed, first=True)
    bounds = (min(lr for lr, _ in pts), max(lr for lr, _ in pts))
    _run_workers(int(n_workers), study, (train_fn, pts, None, bounds, None, retry_failed, wait), storage)
    status = _plan_status(st, pts, retry_failed)
    out = []
    for lr, seed in pts:
        _, t, _ = status[_key(lr, seed)]
        out.append(TrialRecord.from_frozen(t) if t is not None else
                   TrialRecord(-1, _clean_lr(lr), seed, FAILED, None, "not run"))
    return out


# -- the sweep ---------------------------------------------------------------------------------------------------

_SAMPLERS = ("grid", "random", "tpe", "qmc", "gp", "cmaes")
_PRUNERS = ("none", "median", "percentile", "hyperband", "successive-halving")


def make_sampler(name: str | Any, seed: int | None = None) -> Any:
    """An Optuna sampler by name (random, tpe, qmc, gp, cmaes), or the object given; None for "grid"."""
    if name is None or name == "grid":
        return None
    if not isinstance(name, str):
        return name
    s = _optuna().samplers
    table = {"random": s.RandomSampler, "tpe": s.TPESampler, "qmc": s.QMCSampler, "gp": s.GPSampler,
             "cmaes": s.CmaEsSampler}
    if name not in table:
        raise LrkitError(f"unknown sampler {name!r}; choose one of: {', '.join(_SAMPLERS)}")
    return table[name](seed=seed)


def make_pruner(name: str | Any) -> Any:
    """An Optuna pruner by name (median, percentile, hyperband, successive-halving), or the object given."""
    if name is None or name == "none":
        return None
    if not isinstance(name, str):
        return name
    p = _optuna().pruners
    table = {"median": p.MedianPruner, "percentile": lambda: p.PercentilePruner(25.0),
             "hyperband": p.HyperbandPruner, "successive-halving": p.SuccessiveHalvingPruner}
    if name not in table:
        raise LrkitError(f"unknown pruner {name!r}; choose one of: {', '.join(_PRUNERS)}")
    return table[name]()


def sweep(
    train_fn: TrainFn,
    lrs: str | Sequence[float] = "1e-4:1e-1:7",
    *,
    seeds: Sequence[int] = (0,),
    storage: str | None = None,
    study_name: str | None = None,
    n_workers: int = 1,
    sampler: str | Any = "grid",
    n_trials: int | None = None,
    pruner: str | Any = None,
    direction: str = "minimize",
    retry_failed: bool = False,
    diagnose: bool = True,
    heartbeat_interval: int | None = 10,
) -> SweepResult:
    """Sweep the lr: run ``train_fn(lr, trial)`` (a short training that calls ``trial.report(loss, step)`` and
    returns the final score) at each lr as a trial of an Optuna study, and collect the results.

    Args:
        lrs: ``"lo:hi:n"`` (n log-spaced lrs, default ``1e-4:1e-1:7``), ``"a,b,c"`` or a sequence of lrs.
        seeds: each lr runs once per seed (``trial.seed``; seeding the training is up to ``train_fn``).
        storage: see :class:`SweepStudy` (default: SQLite file ``lrkit-sweep.db`` in the working directory).
        study_name: default ``"<module>.<function>"`` of ``train_fn``; rerunning with the same name resumes.
        n_workers: worker processes sharing the study (default 1: in this process).
        sampler: "grid" (default: every lr of ``lrs``) or an Optuna sampler (name or object) drawing
            ``n_trials`` (default ``len(lrs)``) lrs between ``min(lrs)`` and ``max(lrs)`` with the first seed.
        pruner: None, "median" (Optuna's median rule on the reported values) or another name/object.
        direction: "minimize" (default, a loss) or "maximize" (an accuracy).
        retry_failed: rerun trials that failed in an earlier run (default: keep them as failed).
        diagnose: attach the doctor's verdict to each trial's curve when ``lrkit.doctor`` is available.
    """
    _optuna()  # a clear error naming the extra when Optuna is missing
    if not callable(train_fn):
        raise LrkitError(f"train_fn must be a callable train_fn(lr, trial), got {type(train_fn).__name__}")
    candidates = parse_lrs(lrs)
    seeds = [int(s) for s in (seeds if isinstance(seeds, Sequence) else [seeds])]
    if not seeds:
        raise LrkitError("seeds is empty; pass at least one seed, e.g. seeds=(0,)")
    if study_name is None:
        study_name = f"{getattr(train_fn, '__module__', 'lrkit')}.{getattr(train_fn, '__qualname__', 'train')}"
    spec = SweepStudy(storage=storage, study_name=study_name, direction=direction, pruner=make_pruner(pruner),
                      sampler=make_sampler(sampler, seed=seeds[0]), heartbeat_interval=heartbeat_interval)
    if spec.sampler is None:
        records = run_points(spec, train_fn, [(lr, s) for lr in candidates for s in seeds], n_workers=n_workers,
                             retry_failed=retry_failed)
    else:
        n_trials = int(n_trials or len(candidates))
        if len(candidates) < 2:
            raise LrkitError("a sampler needs a range of lrs to draw from; give lrs='lo:hi:n'")
        stor = spec.open_storage()
        st = spec.load(stor)
        bounds = (candidates[0], candidates[-1])
        _run_workers(int(n_workers), spec, (train_fn, None, n_trials, bounds, seeds[0], retry_failed, True), stor)
        records = [TrialRecord.from_frozen(t) for t in st.get_trials(deepcopy=False)
                   if _trial_key(t) is not None]
    result = SweepResult(records, direction=direction, study_name=study_name, storage=spec._safe_url)
    if diagnose:
        attach_verdicts(result)
    return result


def attach_verdicts(result: SweepResult) -> bool:
    """Attach the doctor's diagnosis (``Diagnosis.to_dict()``) to each trial with a curve; False without a doctor."""
    try:
        from lrkit.doctor import diagnose
    except ImportError:
        return False
    for t in result.trials:
        if len(t.values) == 0:
            continue
        try:
            t.verdict = diagnose(t.curve).to_dict()
        except Exception as e:  # a doctor that cannot judge a short curve must not break the sweep
            t.verdict = {"error": f"{type(e).__name__}: {e}"}
    return True


# -- loading a train function by name ------------------------------------------------------------------------------

__all__ = [
    "SweepResult", "SweepStudy", "SweepTrial", "TrialRecord", "NonFiniteLoss", "attach_verdicts",
    "load_callable", "lrs_around", "make_pruner", "make_sampler", "parse_lrs", "run_points", "sweep",
]
