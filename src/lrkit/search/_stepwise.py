"""Stepwise lr search, the practitioner's method done carefully: train briefly at ``start``, multiply the lr by
``factor`` until the score gets clearly worse (more seeds when the difference is within noise), then refine
between the best lr and its neighbours in log space (factor -> sqrt(factor) -> ...) and choose.

Two layers: :func:`stepwise` is the decision logic, pure and deterministic, driven by any
``evaluate(lrs, seed) -> scores``; :func:`stepwise_search` runs it on the sweep engine: every candidate is a trial
of an Optuna study, so an interrupted search resumes without redoing a finished trial and several workers evaluate
the next few candidates at once.

Comparing lrs: seed k of every lr is the same draw (``seed``, ``seed+1``, ... in order), so two lrs are compared on
equal footing only over the same seeds. Before an lr is chosen (and before the refinement centres on it), any lr
that has more seeds and that it does not beat by more than the noise makes it run more seeds, up to
``max_seeds``; when the budget (``max_trials``) runs out first, the lrs are compared on the seeds they share.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from lrkit.errors import LrkitError
from lrkit.search._lrs import clean_lr

# what a trial's status says
OK, FAILED = "ok", "failed"
CHOICES = ("best", "below_edge")

Evaluate = Callable[[list[float], int], Sequence[Any]]


# -- the record of one trial and of the search ---------------------------------------------------------------------

@dataclass
class StepTrial:
    """One evaluation: ``lr``, ``seed``, ``score`` (NaN when it failed), ``status`` ("ok", "failed", "pruned"),
    the ``phase`` that asked for it (ascend, confirm, descend, refine), its cost in training ``steps`` (None when
    unknown), the ``error`` text of a failure, and ``record`` (the sweep engine's TrialRecord, with the curve)."""

    lr: float
    seed: int
    score: float
    status: str
    phase: str
    steps: int | None = None
    error: str | None = None
    note: str = ""
    record: Any = None

    @property
    def verdict(self) -> dict | None:
        """The doctor's verdict on this trial's curve (engine runs with the doctor available), else None."""
        return getattr(self.record, "verdict", None)

    def to_dict(self) -> dict[str, Any]:
        out = {"lr": self.lr, "seed": self.seed, "score": self.score if math.isfinite(self.score) else None,
               "status": self.status, "phase": self.phase, "steps": self.steps, "error": self.error,
               "note": self.note}
        if self.record is not None and hasattr(self.record, "to_dict"):
            out["trial"] = self.record.to_dict()
        return out


@dataclass
class StepwiseResult:
    """A finished stepwise search.

    ``lr`` is the choice and ``rule`` how it was made ("best": lowest mean score; "below_edge": the largest lr
    within ``margin`` of the best, below the edge); ``edge_lr`` is the first lr that was clearly worse or failed
    (None when ``max_lr`` was reached first); ``stop_reason`` says why the ascent stopped; ``trials`` holds every
    evaluation in the order run. Scores are as ``evaluate`` returned them (lower is better unless ``direction``
    is "maximize").
    """

    lr: float
    rule: str
    reason: str
    best_lr: float
    best_score: float
    edge_lr: float | None
    stop_reason: str
    trials: list[StepTrial]
    noise: float | None = None
    direction: str = "minimize"
    config: dict[str, Any] = field(default_factory=dict)
    study_name: str | None = None
    storage: str | None = None

    @property
    def cost_trials(self) -> int:
        """How many trials (training runs) the search used, extra seeds and speculative ones included."""
        return len(self.trials)

    @property
    def cost_steps(self) -> int | None:
        """Total training steps over all trials (None when no trial said its cost)."""
        known = [t.steps for t in self.trials if t.steps is not None]
        return int(sum(known)) if known else None

    @property
    def cost_epochs(self) -> float | None:
        """Total epochs (trials x ``budget_epochs``) when the search was given a budget in epochs."""
        b = self.config.get("budget_epochs")
        return None if b is None else float(b) * len(self.trials)

    def by_lr(self) -> list[dict[str, Any]]:
        """One row per lr, increasing: mean score over its seeds (NaN if any seed failed), seeds, statuses."""
        rows: dict[float, list[StepTrial]] = {}
        for t in self.trials:
            rows.setdefault(t.lr, []).append(t)
        out = []
        for lr in sorted(rows):
            ts = rows[lr]
            scores = [t.score for t in ts]
            ok = all(t.status == OK for t in ts)
            out.append({"lr": lr, "mean_score": float(np.mean(scores)) if ok else float("nan"), "n_seeds": len(ts),
                        "seeds": [t.seed for t in ts], "status": OK if ok else next(
                            t.status for t in ts if t.status != OK)})
        return out

    def table(self) -> str:
        """A text table, one row per trial in increasing lr, with the choice, the edge and the total cost."""
        lines = [f"{'lr':>11}  {'seed':>4}  {'phase':<8} {'status':<7} {'score':>10}  {'steps':>6}  "
                 f"{'doctor':<16} note"]
        for t in sorted(self.trials, key=lambda t: (t.lr, t.seed)):
            mark = " *" if t.lr == self.lr else ("  " if t.lr != self.edge_lr else " !")
            score = f"{t.score:.5g}" if math.isfinite(t.score) else "nan"
            v = t.verdict if isinstance(t.verdict, dict) else {}
            action = str((v.get("recommendation") or {}).get("action", ""))
            doctor = "n/a" if "error" in v else "/".join(x for x in (str(v.get("verdict", "")), action) if x)
            note = t.note or ""
            if t.error and t.status != OK:
                note = (note + " " if note else "") + t.error.splitlines()[0][:60]
            steps = "" if t.steps is None else str(t.steps)
            lines.append(f"{t.lr:>11.4g}{mark}{t.seed:>4}  {t.phase:<8} {t.status:<7} {score:>10}  {steps:>6}  "
                         f"{doctor:<16} {note}".rstrip())
        lines.append(f"chosen lr: {self.lr:.4g} ({self.rule}: {self.reason})")
        lines.append(f"stopped: {self.stop_reason}")
        cost = f"cost: {self.cost_trials} trials"
        if self.cost_steps is not None:
            cost += f", {self.cost_steps} training steps"
        if self.cost_epochs is not None:
            cost += f", {self.cost_epochs:g} epochs"
        lines.append(cost)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format ``lrkit.stepwise``, version 1)."""
        return {"format": "lrkit.stepwise", "version": 1, "lr": self.lr, "rule": self.rule, "reason": self.reason,
                "best_lr": self.best_lr, "best_score": self.best_score, "edge_lr": self.edge_lr,
                "stop_reason": self.stop_reason, "noise": self.noise, "direction": self.direction,
                "cost_trials": self.cost_trials, "cost_steps": self.cost_steps, "cost_epochs": self.cost_epochs,
                "config": self.config, "study_name": self.study_name, "storage": self.storage,
                "trials": [t.to_dict() for t in self.trials]}

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file renamed into place)."""
        from lrkit._files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Score against lr and every trial's curve on one figure; saved to ``path`` when given. Returns the Figure."""
        from lrkit.plot import plot_stepwise

        return plot_stepwise(self, path=path)


# -- argument checks -------------------------------------------------------------------------------------------------

def _positive(name: str, value: Any, example: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LrkitError(f"{name} must be a number, got {value!r}; e.g. {example}") from None
    if not (math.isfinite(v) and v > 0):
        raise LrkitError(f"{name} must be a positive finite number, got {value!r}; e.g. {example}")
    return v


def check_stepwise_args(start: Any, factor: Any, *, margin: Any = 0.05, noise: Any = None, max_lr: Any = 10.0,
                        resolution: Any = 1.5, max_seeds: Any = 3, max_trials: Any = 40, lookahead: Any = 1,
                        choose: str = "best", direction: str = "minimize") -> dict[str, Any]:
    """Validate the search's settings (a :class:`LrkitError` naming the fix); return them as clean numbers."""
    start = _positive("start", start, "start=1e-6 (the first, smallest lr tried)")
    factor = _positive("factor", factor, "factor=3")
    if factor <= 1.0:
        raise LrkitError(f"factor must be > 1 (each step multiplies the lr by it), got {factor!r}; "
                         "use e.g. factor=3 or factor=10")
    max_lr = _positive("max_lr", max_lr, "max_lr=10")
    if max_lr <= start:
        raise LrkitError(f"max_lr ({max_lr:g}) must be larger than start ({start:g}); the search raises the lr")
    resolution = _positive("resolution", resolution, "resolution=1.5")
    if resolution <= 1.0:
        raise LrkitError(f"resolution must be > 1 (refine until neighbouring lrs differ by at most this "
                         f"factor), got {resolution!r}; e.g. resolution=1.5")
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        margin = float("nan")
    if not (math.isfinite(margin) and margin >= 0):
        raise LrkitError(f"margin must be a number >= 0 (how much worse than the best, relative, stops the "
                         f"ascent), got {margin!r}; e.g. margin=0.05 for 5%")
    if noise is not None:
        try:
            noise = float(noise)
        except (TypeError, ValueError):
            noise = float("nan")
        if not (math.isfinite(noise) and noise >= 0):
            raise LrkitError(f"noise must be None (estimated from repeated seeds) or the score's standard "
                             f"deviation between seeds (>= 0), got {noise!r}")
    ints = {}
    for name, v, lo, ex in (("max_seeds", max_seeds, 1, "max_seeds=3"), ("max_trials", max_trials, 2, "40"),
                            ("lookahead", lookahead, 1, "lookahead=1")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise LrkitError(f"{name} must be an integer >= {lo}, got {v!r}; e.g. {ex}")
        ints[name] = int(v)
    if choose not in CHOICES:
        raise LrkitError(f"choose must be one of {', '.join(CHOICES)}, got {choose!r}")
    if direction not in ("minimize", "maximize"):
        raise LrkitError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return dict(start=start, factor=factor, margin=margin, noise=noise, max_lr=max_lr, resolution=resolution,
                choose=choose, direction=direction, **ints)


# -- the decision logic ----------------------------------------------------------------------------------------------

def _outcome(item: Any, steps_per_trial: int | None) -> tuple[float, str, str | None, int | None, Any]:
    """(score, status, error, steps, record) from what ``evaluate`` returned for one lr."""
    if item is None:
        return float("nan"), FAILED, "evaluate returned no score (None)", steps_per_trial, None
    if isinstance(item, (int, float, np.integer, np.floating)) and not isinstance(item, bool):
        v = float(item)
        if math.isfinite(v):
            return v, OK, None, steps_per_trial, None
        return float("nan"), FAILED, f"non-finite score ({v})", steps_per_trial, None
    if hasattr(item, "state") and hasattr(item, "score"):  # a sweep engine TrialRecord
        state = str(item.state)
        score = item.score
        steps_arr = getattr(item, "steps", None)
        steps = int(steps_arr[-1]) + 1 if steps_arr is not None and len(steps_arr) else steps_per_trial
        if state == "complete" and score is not None and math.isfinite(float(score)):
            return float(score), OK, None, steps, item
        status = FAILED if state in ("complete", "failed") else state
        return float("nan"), status, getattr(item, "error", None) or f"trial {state}", steps, item
    raise LrkitError(f"evaluate returned a {type(item).__name__} for an lr; it must return one score per lr "
                     "(a float, lower is better, NaN when the training failed)")


class _Search:
    """The search's memory: trials by lr exponent (lr = start * factor**e, e a Fraction, so keys are exact)."""

    def __init__(self, evaluate: Evaluate, cfg: dict[str, Any], seed: int, steps_per_trial: int | None) -> None:
        self.evaluate, self.cfg, self.seed, self.steps_per_trial = evaluate, cfg, int(seed), steps_per_trial
        self.sign = 1.0 if cfg["direction"] == "minimize" else -1.0
        self.trials: list[StepTrial] = []
        self.at: dict[Fraction, list[StepTrial]] = {}

    def lr(self, e: Fraction) -> float:
        return clean_lr(self.cfg["start"] * self.cfg["factor"] ** float(e))

    def n(self, e: Fraction) -> int:
        return len(self.at.get(e, []))

    def run(self, exps: Sequence[Fraction], phase: str) -> None:
        """Evaluate each exponent once more (its next seed); one ``evaluate`` call per seed value."""
        if len(self.trials) + len(exps) > self.cfg["max_trials"]:
            exps = exps[: max(self.cfg["max_trials"] - len(self.trials), 0)]
        groups: dict[int, list[Fraction]] = {}
        for e in exps:
            groups.setdefault(self.seed + self.n(e), []).append(e)
        for seed, es in groups.items():
            lrs = [self.lr(e) for e in es]
            out = self.evaluate(lrs, seed)
            if out is None or isinstance(out, (str, bytes)) or not hasattr(out, "__len__") or len(out) != len(lrs):
                got = "nothing" if out is None else f"{type(out).__name__}" + (
                    f" of length {len(out)}" if hasattr(out, "__len__") else "")
                raise LrkitError(f"evaluate(lrs, seed) returned {got} for {len(lrs)} lrs; it must return one "
                                 "score per lr (a list of floats, lower is better, NaN when a training failed)")
            for e, lr, item in zip(es, lrs, out):
                score, status, error, steps, record = _outcome(item, self.steps_per_trial)
                t = StepTrial(lr=lr, seed=seed, score=score, status=status, phase=phase, steps=steps, error=error,
                              record=record)
                self.trials.append(t)
                self.at.setdefault(e, []).append(t)

    def mean(self, e: Fraction) -> float:
        """Signed mean score over the seeds at ``e`` (lower is better); NaN when untried or any seed failed."""
        ts = self.at.get(e)
        if not ts or any(t.status != OK for t in ts):
            return float("nan")
        return self.sign * float(np.mean([t.score for t in ts]))

    def noise(self) -> float | None:
        """The score's standard deviation between seeds: the given one, else pooled over repeated lrs."""
        if self.cfg["noise"] is not None:
            return self.cfg["noise"]
        ss, dof = 0.0, 0
        for ts in self.at.values():
            v = [t.score for t in ts if t.status == OK]
            if len(v) >= 2:
                ss += float(np.sum((np.asarray(v) - np.mean(v)) ** 2))
                dof += len(v) - 1
        return math.sqrt(ss / dof) if dof else None

    def best(self, below: Fraction | None = None) -> Fraction | None:
        """The exponent with the lowest mean score (below ``below`` when given); ties go to the smaller lr."""
        ok = [e for e in self.at if (below is None or e < below) and math.isfinite(self.mean(e))]
        return min(ok, key=lambda e: (self.mean(e), e)) if ok else None

    def mean_over(self, e: Fraction, n: int) -> float:
        """Signed mean score over the first ``n`` seeds at ``e`` (the seeds every lr tried n times shares)."""
        return self.sign * float(np.mean([t.score for t in self.at[e][:n]]))

    def clearly_worse(self, e: Fraction, b: Fraction) -> bool:
        """Whether ``e``'s mean is worse than ``b``'s by more than the margin, and that excess is more than ``z``
        standard errors of the seed noise (never when the noise is not known yet): the ascent's stopping test."""
        m, mb = self.mean(e), self.mean(b)
        d, thr = m - mb, self.cfg["margin"] * abs(mb)
        if d <= thr:
            return False
        sd = self.noise()
        return sd is not None and d - thr > self.cfg["z"] * sd * math.sqrt(1 / self.n(e) + 1 / self.n(b))

    def leader(self, below: Fraction | None = None) -> Fraction | None:
        """The best lr below ``below``, compared on equal seeds: while an lr with more seeds is not clearly worse
        (:meth:`clearly_worse`) than the lowest mean, the lowest mean runs its next seed (up to ``max_seeds``,
        within ``max_trials``); past that, the lowest mean over the seeds they share (ties to the smaller lr).
        Without seed noise one seed is exact: the lowest mean."""
        cfg = self.cfg
        while True:
            b = self.best(below)
            if b is None or self.noise() == 0:  # no seed noise (given, or every repeat scored the same)
                return b
            rivals = [e for e in self.at if e != b and (below is None or e < below) and math.isfinite(self.mean(e))
                      and self.n(e) > self.n(b) and not self.clearly_worse(e, b)]
            if not rivals:
                return b
            if self.n(b) < cfg["max_seeds"] and len(self.trials) < cfg["max_trials"]:
                self.run([b], "confirm")
                continue
            group = [b, *rivals]
            shared = min(self.n(e) for e in group)
            return min(group, key=lambda e: (self.mean_over(e, shared), e))

    def worse(self, e: Fraction, b: Fraction) -> bool:
        """Whether ``e`` is worse than ``b`` by more than the margin, running more seeds while it is unclear."""
        cfg = self.cfg
        while True:
            m, mb = self.mean(e), self.mean(b)
            if not math.isfinite(m):
                return True
            if not math.isfinite(mb):
                return False  # the best failed on a new seed; the caller picks another best
            if m - mb <= cfg["margin"] * abs(mb):
                return False
            if self.clearly_worse(e, b):
                return True
            more = [x for x in (e, b) if self.n(x) < cfg["max_seeds"]]
            if not more or len(self.trials) >= cfg["max_trials"]:
                return True  # worse by more than the margin, and no seeds left to say it is noise
            # the difference is within noise (or the noise is unknown yet): one more seed where fewest were run
            fewest = min(self.n(x) for x in more)
            self.run([x for x in more if self.n(x) == fewest], "confirm")


def stepwise(
    evaluate: Evaluate,
    start: float = 1e-6,
    factor: float = 3.0,
    *,
    margin: float = 0.05,
    noise: float | None = None,
    z: float = 2.0,
    max_seeds: int = 3,
    resolution: float = 1.5,
    max_lr: float = 10.0,
    max_trials: int = 40,
    lookahead: int = 1,
    choose: str = "best",
    direction: str = "minimize",
    seed: int = 0,
    steps_per_trial: int | None = None,
) -> StepwiseResult:
    """Stepwise lr search on any ``evaluate(lrs, seed) -> scores`` (one score per lr, lower is better, NaN or None
    when the training failed); deterministic for a deterministic ``evaluate``.

    1. Ascend: lr = start, start*factor, ... (default 1e-6 x 3^k); stop at the first lr that fails, or whose mean
       score is worse than the best so far by more than ``margin`` x |best| (default 5%). When that excess is within
       ``z`` (2) standard errors of the seed noise, or the noise is unknown, run the next seed at both lrs (up to
       ``max_seeds``, 3) before deciding. ``noise``: the score's standard deviation between seeds if known (0 for a
       deterministic score); default None = estimated from the repeated seeds.
    2. If the best is the first lr, descend by ``factor`` while the score improves.
    3. Refine: try best/f and best*f with f = sqrt(spacing), and again around the new best, until neighbouring lrs
       differ by at most ``resolution`` (default 1.5): factor 3 -> 1.73 -> 1.32, factor 10 -> 3.16 -> 1.78 -> 1.33.
    4. Choose (``choose``): "best", the lowest mean score below the edge; or "below_edge", the classic guides' pick,
       the largest lr below the edge within ``margin`` of the best.

    ``lookahead`` (default 1) lrs of the ascent are evaluated per call (speculatively, for parallel workers);
    ``max_lr`` (10) and ``max_trials`` (40) bound the search; ``steps_per_trial`` is the cost of one trial in
    training steps when ``evaluate`` returns bare floats. Seeds are ``seed``, ``seed+1``, ... per lr.
    """
    if not callable(evaluate):
        raise LrkitError(f"evaluate must be a callable evaluate(lrs, seed) -> scores, got {type(evaluate).__name__}")
    cfg = check_stepwise_args(start, factor, margin=margin, noise=noise, max_lr=max_lr, resolution=resolution,
                              max_seeds=max_seeds, max_trials=max_trials, lookahead=lookahead, choose=choose,
                              direction=direction)
    z = _positive("z", z, "z=2 (standard errors)")
    cfg["z"] = z
    s = _Search(evaluate, cfg, seed, steps_per_trial)
    f = cfg["factor"]

    # 1. ascend
    edge: Fraction | None = None
    k = 0
    stop_reason = ""
    while True:
        if len(s.trials) >= cfg["max_trials"]:
            stop_reason = f"max_trials={cfg['max_trials']} reached while the score was still improving"
            break
        if s.lr(Fraction(k)) > cfg["max_lr"] * (1 + 1e-9):
            stop_reason = (f"reached max_lr={cfg['max_lr']:g} without the score getting worse; raise max_lr if the "
                           "best lr is at the top")
            break
        batch = [Fraction(j) for j in range(k, k + cfg["lookahead"])
                 if s.lr(Fraction(j)) <= cfg["max_lr"] * (1 + 1e-9) and s.n(Fraction(j)) == 0]
        s.run(batch, "ascend")
        for e in batch:
            if s.n(e) == 0:  # cut by max_trials
                break
            b = s.best(below=e)
            if not math.isfinite(s.mean(e)):
                if b is None:
                    _raise_no_score(s)
                edge = e
                t = s.at[e][-1]
                stop_reason = f"lr {s.lr(e):.4g} {'diverged or failed' if t.status == FAILED else t.status}" + (
                    f" ({t.error.splitlines()[0][:80]})" if t.error else "")
                break
            if b is not None and s.worse(e, b):
                if not math.isfinite(s.mean(e)):
                    edge = e
                    stop_reason = f"lr {s.lr(e):.4g} failed on seed {s.at[e][-1].seed}"
                    break
                b = s.best(below=e)
                edge = e
                stop_reason = (f"lr {s.lr(e):.4g} scored {s.sign * s.mean(e):.4g}, worse than the best "
                               f"{s.sign * s.mean(b):.4g} (lr {s.lr(b):.4g}) by more than the margin "
                               f"({cfg['margin']:g}) over {s.n(e)} seed(s)")
                break
            k = int(e) + 1
        if edge is not None:
            break
        if batch and s.n(batch[-1]) == 0:
            stop_reason = f"max_trials={cfg['max_trials']} reached while the score was still improving"
            break
    for e, ts in s.at.items():
        if edge is not None and e > edge:
            for t in ts:
                t.note = "beyond the edge (speculative)"
    if s.best(below=edge) is None:
        _raise_no_score(s)

    # 2. descend when the best is the smallest lr tried
    while len(s.trials) < cfg["max_trials"]:
        b = s.leader(below=edge)
        if b != min(s.at):
            break
        lower = b - 1
        s.run([lower], "descend")
        if s.n(lower) == 0 or not s.mean(lower) < s.mean(b):
            break

    # 3. refine around the best, halving the log-spacing
    step = Fraction(1)
    while f ** float(step) > cfg["resolution"] * (1 + 1e-9) and len(s.trials) < cfg["max_trials"]:
        step /= 2
        b = s.leader(below=edge)
        cands = [e for e in (b - step, b + step)
                 if s.n(e) == 0 and (edge is None or e < edge) and s.lr(e) <= cfg["max_lr"] * (1 + 1e-9)]
        s.run(cands, "refine")

    # 4. choose
    b = s.leader(below=edge)
    mb = s.mean(b)
    if cfg["choose"] == "best":
        chosen = b
        reason = f"lowest mean score {s.sign * mb:.4g} over {s.n(b)} seed(s)"
    else:
        near = [e for e in s.at if (edge is None or e < edge) and math.isfinite(s.mean(e))
                and s.mean(e) - mb <= cfg["margin"] * abs(mb)]
        chosen = max(near)
        reason = (f"largest lr below the edge within {cfg['margin']:g} of the best score "
                  f"{s.sign * mb:.4g} (best lr {s.lr(b):.4g})")
    result_cfg = {k2: v for k2, v in cfg.items()}
    result_cfg.update(seed=int(seed), steps_per_trial=steps_per_trial)
    return StepwiseResult(lr=s.lr(chosen), rule=cfg["choose"], reason=reason, best_lr=s.lr(b),
                          best_score=s.sign * mb, edge_lr=None if edge is None else s.lr(edge),
                          stop_reason=stop_reason, trials=s.trials, noise=s.noise(), direction=cfg["direction"],
                          config=result_cfg)


def _raise_no_score(s: _Search) -> None:
    errors = [t.error for t in s.trials if t.error]
    first = s.trials[0] if s.trials else None
    detail = f"; first error at lr {first.lr:.3g}: {errors[0].splitlines()[0][:160]}" if errors and first else ""
    raise LrkitError(
        f"every trial failed ({len(s.trials)} tried from lr {s.lr(Fraction(0)):.3g}){detail}. Fix the training "
        "function so it returns a finite score (e.g. the final validation loss); if it works at smaller lrs, "
        "lower start (e.g. start=1e-8)")


# -- on the sweep engine ---------------------------------------------------------------------------------------------

def _accepts_budget(train_fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(train_fn).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell (a builtin or C callable): let the call say
    return any(p.name == "budget_epochs" or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def stepwise_search(
    train_fn: Callable[..., Any],
    start: float = 1e-6,
    factor: float = 3.0,
    *,
    budget_epochs: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_workers: int = 1,
    lookahead: int | None = None,
    margin: float = 0.05,
    noise: float | None = None,
    z: float = 2.0,
    max_seeds: int = 3,
    resolution: float = 1.5,
    max_lr: float = 10.0,
    max_trials: int = 40,
    choose: str = "best",
    direction: str = "minimize",
    seed: int = 0,
    retry_failed: bool = False,
    timeout_s: float | None = None,
    progress: bool = True,
    diagnose: bool = True,
    heartbeat_interval: int | None = 10,
) -> StepwiseResult:
    """The stepwise search (see :func:`stepwise`) with each candidate a trial of the sweep engine's Optuna study.

    ``train_fn(lr, trial)`` trains a short budget, calls ``trial.report(loss, step)`` and returns the final score,
    exactly as for :func:`lrkit.sweep`; with ``budget_epochs`` it is called as
    ``train_fn(lr, trial, budget_epochs=...)``. ``trial.seed`` is the seed to train with. ``storage`` (default: the
    SQLite file ``lrkit-sweep.db`` here) and ``study_name`` (default ``"search:<module>.<function>"``, plus
    ``"[epochs=B]"`` with a budget) name the study, which is defined by the objective, the direction and the
    budget: rerunning resumes it and reuses every finished trial with the same lr and seed (whatever ``start``
    and ``factor``). One process drives a search: its ``n_workers`` processes run the next ``lookahead`` (default
    ``n_workers``) candidates of the ascent at once. ``timeout_s``, ``progress``, ``retry_failed`` and
    ``heartbeat_interval`` are as for :func:`lrkit.sweep`. The cost in steps is the last reported step + 1, summed
    over the trials. ``diagnose`` attaches the doctor's verdict to each trial.
    """
    from lrkit.search import _engine, _storage
    from lrkit.search._records import RUNNING, WAITING, attach_verdicts

    _storage.optuna_module()  # a clear error naming the extra when Optuna is missing
    if not callable(train_fn):
        raise LrkitError(f"train_fn must be a callable train_fn(lr, trial), got {type(train_fn).__name__}")
    n_workers = _engine.check_workers(n_workers)
    lookahead = n_workers if lookahead is None else lookahead
    check_stepwise_args(start, factor, margin=margin, noise=noise, max_lr=max_lr, resolution=resolution,
                        max_seeds=max_seeds, max_trials=max_trials, lookahead=lookahead, choose=choose,
                        direction=direction)
    timeout_s = _engine.check_timeout(timeout_s, n_workers)
    fn: Callable[..., Any] = train_fn
    if budget_epochs is not None:
        budget_epochs = _positive("budget_epochs", budget_epochs, "budget_epochs=2")
        if not _accepts_budget(train_fn):
            raise LrkitError(f"budget_epochs={budget_epochs:g} is passed to train_fn as a keyword, but "
                             f"{getattr(train_fn, '__name__', 'train_fn')} has no budget_epochs parameter; add "
                             "one (def train(lr, trial, budget_epochs=2)) or leave budget_epochs unset")
        fn = functools.partial(train_fn, budget_epochs=budget_epochs)
    name = _engine.objective_name(train_fn)
    if study_name is None:
        study_name = f"search:{name}" + ("" if budget_epochs is None else f"[epochs={budget_epochs:g}]")
    spec = _engine.SweepStudy(storage=storage, study_name=study_name, direction=direction,
                              heartbeat_interval=heartbeat_interval)
    identity = {"kind": "search", "objective": name, "direction": direction, "budget_epochs": budget_epochs}
    _engine.check_sendable(spec, fn, n_workers)
    storage = spec.open_storage()
    study, _ = spec.open(identity, storage)  # a clear error before any training when the study holds another

    def evaluate(lrs: list[float], trial_seed: int) -> list[Any]:
        records = _engine.run_open(spec, study, storage, fn, [(lr, trial_seed) for lr in lrs],
                                   n_workers=min(n_workers, len(lrs)), retry_failed=retry_failed, wait=True,
                                   timeout_s=timeout_s, progress=progress, label="search")
        busy = [r for r in records if r.state in (RUNNING, WAITING)]
        if busy:
            raise LrkitError(f"lr {busy[0].lr:.4g} (seed {busy[0].seed}) is being run by another worker and "
                             f"{spec.display} keeps no heartbeat to tell whether it is alive; rerun when it is done, "
                             "or, if its worker is gone, rerun with retry_failed (--retry-failed)")
        return records

    result = stepwise(evaluate, start, factor, margin=margin, noise=noise, z=z, max_seeds=max_seeds,
                      resolution=resolution, max_lr=max_lr, max_trials=max_trials, lookahead=lookahead,
                      choose=choose, direction=direction, seed=seed)
    result.config.update(budget_epochs=budget_epochs, n_workers=n_workers)
    result.study_name, result.storage = study_name, spec.display
    if diagnose:
        attach_verdicts([t.record for t in result.trials if t.record is not None])
    return result


__all__ = ["StepTrial", "StepwiseResult", "check_stepwise_args", "stepwise", "stepwise_search"]
