"""What a sweep returns: one :class:`TrialRecord` per trial and the :class:`SweepResult` (table, JSON, figure), read
from the Optuna trials that the engine wrote."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from lrkit.curve import Curve
from lrkit.search._lrs import clean_lr

# trial states as lrkit reports them
COMPLETE, PRUNED, FAILED, RUNNING, WAITING = "complete", "pruned", "failed", "running", "waiting"

# user attributes lrkit writes on Optuna trials
ATTR_LR, ATTR_SEED = "lr", "seed"  # the point a trial runs (also its params once it started)
ATTR_CURVE = "lrkit_curve"  # {"steps": [...], "values": [...]}, written once when the trial ends
ATTR_FAILURE = "lrkit_failure"  # why the training failed: "error", "nonfinite" or "timeout"
ATTR_ERROR = "lrkit_error"  # the error's text
ATTR_INTERRUPTED = "lrkit_interrupted"  # on a RUNNING trial whose worker was stopped: the next run redoes it
ATTR_SPARE = "lrkit_spare"  # on a PRUNED trial Optuna opened when no work was left: nothing was trained


def _optuna_states() -> Any:
    from lrkit.search._storage import optuna_module

    return optuna_module().trial.TrialState


class Point(Enum):
    """Where one planned (lr, seed) stands, from all the trials that ran it."""

    DONE = "done"  # a trial completed or was pruned
    FAILED = "failed"  # the training failed (raised, went NaN, timed out) or its worker was lost too often
    QUEUED = "queued"  # a trial waits for a worker
    RUNNING = "running"  # a worker runs it
    INTERRUPTED = "interrupted"  # its worker was stopped (or, asked to, one without a heartbeat): run it again
    MISSING = "missing"  # no trial yet


def point_state(trials: Sequence[Any], retry_failed: bool = False, claim_running: bool = False
                ) -> tuple[Point, Any]:
    """Where a point stands and the trial that shows it (the newest of its kind), from its Optuna trials.

    ``retry_failed``: a failed point counts as :attr:`Point.INTERRUPTED` (to be run again); ``claim_running``: so
    does a running one (for storages without a heartbeat, whose lost workers Optuna cannot detect)."""
    ts = _optuna_states()

    def newest(state: Any, keep: Any = lambda t: True) -> Any:
        found = [t for t in trials if t.state == state and keep(t)]
        return max(found, key=lambda t: t.number) if found else None

    if (t := newest(ts.COMPLETE) or newest(ts.PRUNED)) is not None:
        return Point.DONE, t
    if (t := newest(ts.WAITING)) is not None:
        return Point.QUEUED, t
    if (t := newest(ts.RUNNING, lambda t: not t.user_attrs.get(ATTR_INTERRUPTED))) is not None:
        return (Point.INTERRUPTED if claim_running else Point.RUNNING), t
    if (t := newest(ts.RUNNING)) is not None:
        return Point.INTERRUPTED, t
    if (t := newest(ts.FAIL)) is not None:
        return (Point.INTERRUPTED if retry_failed else Point.FAILED), t
    return Point.MISSING, None


def trial_point(t: Any) -> tuple[float, int] | None:
    """The (lr, seed) an lrkit trial runs, or None for a trial that is not one (a spare, another tool's)."""
    lr = t.params.get(ATTR_LR, t.user_attrs.get(ATTR_LR))
    seed = t.params.get(ATTR_SEED, t.user_attrs.get(ATTR_SEED))
    if lr is None or seed is None or t.user_attrs.get(ATTR_SPARE):
        return None
    return clean_lr(lr), int(seed)


@dataclass
class TrialRecord:
    """One trial: its lr and seed, state (complete/pruned/failed/running/waiting), final score, error, curve, how
    long it ran (s), and the doctor's verdict on its curve."""

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
        """A JSON-ready dict (non-finite numbers as null)."""
        def num(v: Any) -> float | None:
            return float(v) if v is not None and math.isfinite(v) else None

        return {"number": self.number, "lr": self.lr, "seed": self.seed, "state": self.state,
                "score": num(self.score), "error": self.error, "steps": [int(s) for s in self.steps],
                "values": [num(v) for v in self.values], "duration_s": self.duration_s, "verdict": self.verdict}

    @classmethod
    def from_frozen(cls, t: Any) -> TrialRecord:
        """Build from an Optuna ``FrozenTrial`` written by lrkit's engine."""
        ts = _optuna_states()
        state = {ts.COMPLETE: COMPLETE, ts.PRUNED: PRUNED, ts.FAIL: FAILED, ts.RUNNING: RUNNING,
                 ts.WAITING: WAITING}[t.state]
        curve = t.user_attrs.get(ATTR_CURVE)
        if curve:
            steps = np.asarray(curve["steps"], dtype=np.int64)
            values = np.array([float(v) for v in curve["values"]], dtype=np.float64)
        else:  # a trial that never finished: what the pruner saw, if anything
            steps = np.array(sorted(t.intermediate_values), dtype=np.int64)
            values = np.array([t.intermediate_values[s] for s in steps], dtype=np.float64)
        score = t.value if state == COMPLETE else (float(values[-1]) if state == PRUNED and len(values) else None)
        error = t.user_attrs.get(ATTR_ERROR)
        if state == FAILED and error is None:
            error = "the worker running this trial was lost (killed, crashed or stopped); a rerun redoes it"
        if state == RUNNING:
            error = ("interrupted; a rerun redoes it" if t.user_attrs.get(ATTR_INTERRUPTED) else
                     "running in another worker; rerun to collect it")
        start, end = t.datetime_start, t.datetime_complete
        point = trial_point(t)
        lr = point[0] if point else clean_lr(t.params.get(ATTR_LR, float("nan")))
        return cls(number=t.number, lr=lr, seed=point[1] if point else None, state=state, score=score,
                   error=error, steps=steps, values=values,
                   duration_s=(end - start).total_seconds() if start and end else None)


@dataclass
class SweepResult:
    """A finished sweep: every trial (lr, seed, state, score, error, curve, doctor's verdict), and the best lr.

    ``best_lr`` is the lr with the best mean score over its seeds, among the lrs where every seed completed.
    """

    trials: list[TrialRecord]
    direction: str = "minimize"
    study_name: str = ""
    storage: str = ""

    def by_lr(self) -> list[dict[str, Any]]:
        """One row per lr: mean score over completed seeds, and how many seeds completed, were pruned, failed or
        are not finished (``other``)."""
        rows: dict[float, dict[str, Any]] = {}
        for t in self.trials:
            r = rows.setdefault(t.lr, {"lr": t.lr, "scores": [], COMPLETE: 0, PRUNED: 0, FAILED: 0, "other": 0})
            if t.state == COMPLETE:
                r["scores"].append(t.score)
            r[t.state if t.state in (COMPLETE, PRUNED, FAILED) else "other"] += 1
        out = []
        for lr in sorted(rows):
            r = rows[lr]
            r["mean_score"] = float(np.mean(r.pop("scores"))) if r[COMPLETE] else None
            out.append(r)
        return out

    @property
    def best(self) -> dict[str, Any] | None:
        """The :meth:`by_lr` row of the best lr (None when no lr completed on every seed)."""
        ok = [r for r in self.by_lr() if r["mean_score"] is not None and not (r[FAILED] or r[PRUNED] or r["other"])]
        if not ok:
            return None
        sign = 1.0 if self.direction == "minimize" else -1.0
        return min(ok, key=lambda r: sign * r["mean_score"])

    @property
    def best_lr(self) -> float | None:
        """The best lr, or None when no lr completed on every seed."""
        b = self.best
        return None if b is None else b["lr"]

    def table(self) -> str:
        """A text table, one row per trial: lr, seed, state, final score, time, the doctor's action, the error."""
        best = self.best_lr
        lines = [f"{'lr':>10}    {'seed':>4}  {'state':<8}  {'score':>10}  {'time':>7}  {'doctor':<8}  note"]
        for t in sorted(self.trials, key=lambda t: (t.lr, t.seed if t.seed is not None else -1, t.number)):
            score = "" if t.score is None else f"{t.score:.5g}"
            took = "" if t.duration_s is None else f"{t.duration_s:.1f}s"
            action = ""
            if t.verdict:
                action = str((t.verdict.get("recommendation") or {}).get("action", ""))
            note = (t.error or "").splitlines()[0][:60] if t.state in (FAILED, RUNNING) and t.error else ""
            mark = " *" if best is not None and t.lr == best else "  "
            lines.append(f"{t.lr:>10.4g}{mark}  {t.seed if t.seed is not None else '':>4}  {t.state:<8}  "
                         f"{score:>10}  {took:>7}  {action:<8}  {note}".rstrip())
        lines.append(f"best lr: {best:.4g}" if best is not None else
                     "best lr: none (no lr completed on every seed)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format ``lrkit.sweep``, version 1)."""
        return {"format": "lrkit.sweep", "version": 1, "study_name": self.study_name, "storage": self.storage,
                "direction": self.direction, "best_lr": self.best_lr, "trials": [t.to_dict() for t in self.trials]}

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from lrkit._files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
        """All trials' curves on one figure, coloured by lr; saved to ``path`` when given. Returns the Axes."""
        from lrkit.plot import plot_sweep

        return plot_sweep(self, path=path, ax=ax)


def attach_verdicts(records: SweepResult | Sequence[TrialRecord]) -> None:
    """Attach the doctor's diagnosis (``lrkit.diagnose(curve).to_dict()``) to each record (of a result, or a list)
    with a curve; a curve the doctor cannot judge gets ``{"error": ...}`` (its LrkitError, e.g. too few points)."""
    from lrkit.doctor import diagnose
    from lrkit.errors import LrkitError

    for t in getattr(records, "trials", records):
        if len(t.values) == 0:
            continue
        try:
            t.verdict = diagnose(t.curve).to_dict()
        except LrkitError as e:
            t.verdict = {"error": str(e)}
