"""The checks: a :class:`~lrkit.curve.Curve` -> :class:`Diagnosis` (findings with their evidence, and advice on the lr).

The doctor reads a run as it was trained and says only what the log shows. Each check is a rule a reader can verify
on the plot, and says what it measured:

==================  ==============================================================================  ==============
finding             what the log shows                                                              advice
==================  ==============================================================================  ==============
``not_a_loss``      the metric does not descend by design (reward, return, surrogate, accuracy)     cannot judge
``numerics``        the loss is NaN/inf from the first step, or where the lr is still tiny            not the lr
``diverging``       NaN/inf after finite values, for good; the loss (or the eval loss) climbed      lower (the lr
                    back and stayed up, or ended above where it started                             it blew up at)
``stuck``           the loss sat above its starting level for most of the run, or flat at chance   lower
                    level (ln K for K classes): a too-high lr collapses a model to a constant
``spiking``         spikes the run recovered from (how much progress each undid), NaN rows it       keep, with
                    went on from                                                                    advice
``oscillating``     the eval loss jumps between evaluations late in the run                         lower x0.5
``overfitting``     the eval loss rose from its best while the training loss kept falling           not the lr
``too_slow``        at a constant lr, still falling at an undiminished rate at the end              raise <= 3x
``plateau``         flat from the start, not at chance: far too low, far too high, or a bug         cannot tell
``healthy``         none of the above                                                                keep
==================  ==============================================================================  ==============

A warmup is no blow-up (a climb is measured from the lowest level reached so far, never from the untrained first
loss), a flattening while the logged lr decays is the schedule (no crawl is read where the lr decays), and advice is
about the peak lr. A factor beyond 3x rests on direct evidence only (a measured divergence, a collapse to chance);
where one curve cannot tell (a healthy-looking run may still be 2-4x off), the advice is keep, saying so and naming
the cheap check that would tell. Several runs of one sweep are compared by :func:`lrkit.diagnose_runs`.

Where nothing above fires, a small fitted shape model (:mod:`lrkit.doctor.direction`) may say which way the lr is
likely off, for runs like those it was fitted on (raw per-step losses from the first step, a constant or
warmup+cosine lr); its advice is a factor of at most 3 and says it is a likelihood.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lrkit.curve import Curve, robust_std, running_median, spikes, step_noise
from lrkit.errors import LrkitError

MAX_POINTS = 20_000  # longer curves are averaged into this many bins before the checks (a 10M-row log stays fast)
KINDS = ("not_a_loss", "numerics", "diverging", "stuck", "spiking", "oscillating", "overfitting", "too_slow",
         "plateau", "healthy")
DIRECT, LIKELY, CANNOT_TELL = "direct", "likely", "cannot tell"
CHEAP_CHECK = ("a 3-lr sweep would tell: the same run at 1/3x, 1x and 3x this lr for a tenth of its steps "
               "(`lrkit search`), or `lrkit find` on the model")


@dataclass
class Thresholds:
    """Every threshold of the doctor, with what it means. The defaults are round numbers a reader can check on a
    plot; they were set on the development corpus of real logs (``benchmarks/doctor/bench_reallogs.py``)."""

    diverged: float = 0.5  # the run ended this share of its descent (start - best) back above its best: diverged
    severe_spike: float = 0.25  # a spike that undid this share of the progress made so far (then recovered)
    stuck_share: float = 0.5  # the loss sat above its starting level for this share of the run: lr too high
    chance_tol: float = 0.003  # a flat loss within this relative distance of ln K (K classes) sits at chance ...
    chance_noise: float = 0.005  # ... with batch noise under this share of the level: a constant prediction
    overfit: float = 0.1  # the eval loss rose this fraction above its best while the training loss fell
    eval_jump: float = 0.25  # the eval loss jumped up by this fraction of its level between two evaluations ...
    eval_jumps: int = 2  # ... this many times in the second half of the run: erratic, lr likely too high
    crawl_z: float = 4.0  # the last third fell this many standard errors of the batch noise ...
    crawl_pace: float = 0.6  # ... at this fraction of the middle third's pace or more, at a constant lr: a crawl
    spike_z: float = 6.0  # robust z-score of a spike
    spike_persistence: int = 3  # consecutive outliers (in logged points) that make a spike
    # the live Monitor's divergence and crawl checks
    early_blowup: float = 1.5  # the smoothed loss above this x its initial value: divergence
    rise: float = 0.2  # the smoothed loss climbed back this share of the progress: divergence
    slow_drop: float = 0.2  # relative drop below this after ``check_after`` steps: a crawl
    flat_drop: float = 0.03  # relative drop below this: flat
    # a blow-up or climb-back while the update ratios (x the steps between logged points) summed to less than this,
    # i.e. the weights moved by under 5%, is batch noise, not the lr
    still_weights: float = 0.05
    # update/weight ratio bounds (the shape model reads the ratio itself when it is logged)
    update_ratio_high: float = 0.5  # the second half's median above this: lr too high
    update_ratio_low: float = 1e-4  # below this: lr too low
    shape_confidence: float = 0.65  # the shape model's vote it takes to advise a direction (at most 3x, "likely")
    shape_points: int = 300  # longer curves are read at this many evenly spaced points by the shape model (0: all)
    shape_max_steps: int = 5_000  # the shape model reads runs of at most this many optimiser steps (it was fitted on
    # runs of 300 and 1500)

    def __post_init__(self) -> None:
        """Settings out of their range: a clear error (for diagnose and the Monitor)."""
        if not (isinstance(self.shape_points, int) and self.shape_points >= 0):
            raise LrkitError(f"shape_points must be a whole number >= 0 (0: read every point), got "
                             f"{self.shape_points!r}")
        if not self.still_weights >= 0:
            raise LrkitError(f"still_weights is a summed update/weight ratio: give a number >= 0 (0: never read a "
                             f"rise as batch noise), got {self.still_weights!r}")
        for name in ("shape_confidence", "diverged", "severe_spike", "stuck_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LrkitError(f"{name} is a share of a run or of a vote: give a number in [0, 1], got "
                                 f"{getattr(self, name)!r}")


@dataclass
class Finding:
    """One thing the doctor saw: its kind, the steps that show it, the evidence in words (and numbers), and what it
    means for the lr: ``action`` (lower / raise / keep, or None when it says nothing about the lr), ``factor``,
    ``certainty`` (direct, likely, cannot tell) and extra ``advice``."""

    kind: str
    steps: list[int]
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)
    action: str | None = None
    factor: float = 1.0
    certainty: str = DIRECT
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [int(s) for s in self.steps], "evidence": self.evidence,
                "action": self.action, "factor": float(self.factor), "certainty": self.certainty,
                "data": _jsonable(self.data)}


@dataclass
class Recommendation:
    """What to do with the lr: ``action`` raise/lower/keep, ``factor`` (multiply the peak lr by it), why, how sure
    (``certainty``: direct evidence in the log, likely from the curve's shape, or cannot tell), extras such as "add
    warmup", and ``check``: the cheap experiment that would settle it where one log cannot."""

    action: str
    factor: float
    reason: str
    advice: list[str] = field(default_factory=list)
    certainty: str = DIRECT
    check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "factor": float(self.factor), "reason": self.reason,
                "advice": list(self.advice), "certainty": self.certainty, "check": self.check}


@dataclass(frozen=True)
class Schedule:
    """What the logged lr did over the run (all NaN / False when no lr was logged)."""

    known: bool
    peak: float = math.nan  # the highest lr logged: what a user sets
    peak_step: int = 0
    warmup: bool = False  # it started below half the peak
    decays: bool = False  # it ended below half the peak
    end_ratio: float = math.nan  # the last lr over the peak

    @classmethod
    def of(cls, curve: Curve, valid: int) -> Schedule:
        lrs = curve.lrs
        if lrs is None or not np.isfinite(lrs[:valid]).any():
            return cls(False)
        lr = lrs[:valid]
        ok = np.isfinite(lr)
        peak = float(np.nanmax(lr))
        if not peak > 0:
            return cls(False)
        first, last = float(lr[ok][0]), float(lr[ok][-1])
        return cls(True, peak, int(curve.steps[int(np.nanargmax(lr))]), first < 0.5 * peak, last < 0.5 * peak,
                   last / peak)


@dataclass(frozen=True)
class Features:
    """The robust statistics of the finite part of a run that the checks read (levels in the loss's units)."""

    n: int  # finite points read
    start: float  # the starting level: the median of the first 3 values (the first, if it blew up within them)
    final: float  # the median of the last 10% of the points
    best: float  # the lowest level of the smoothed curve
    best_step: int
    noise: float  # batch noise: robust standard deviation of first differences / sqrt(2)
    window: int  # the running median's width (points)
    drop: float  # (start - final) / |start|

    def se(self, points: int) -> float:
        """The standard error of the median of ``points`` values of batch noise."""
        return 1.2533 * self.noise / math.sqrt(max(points, 1))


@dataclass
class Diagnosis:
    """The doctor's verdict on one curve: findings (most severe first), a recommendation, the metric used."""

    metric: str
    findings: list[Finding]
    recommendation: Recommendation
    curve: Curve | None = None
    notes: list[str] = field(default_factory=list)
    features: Features | None = None
    schedule: Schedule | None = None
    shape: dict[str, Any] = field(default_factory=dict)  # the shape model's vote and variant, where it was asked
    sweep: Any = None  # the SweepDiagnosis it was compared in, where its sweep's other runs were read beside it

    @property
    def verdict(self) -> str:
        """The kind of the most severe finding ("healthy" when nothing is wrong)."""
        return self.findings[0].kind if self.findings else "healthy"

    @property
    def stats(self) -> dict[str, float]:
        """The features and the lr schedule as one flat dict of numbers (for JSON and ranking)."""
        out: dict[str, float] = {}
        if self.features is not None:
            out.update({k: float(v) for k, v in asdict(self.features).items()})
        if self.schedule is not None and self.schedule.known:
            out.update(peak_lr=self.schedule.peak, lr_end_ratio=self.schedule.end_ratio)
        out.update({f"p_{k}": v for k, v in self.shape.items() if k != "variant"})
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``recommendation``, ``findings``, ``metric`` (plus ``verdict``, ``notes``, ``stats``)."""
        d = {"recommendation": self.recommendation.to_dict(), "findings": [f.to_dict() for f in self.findings],
             "metric": self.metric, "verdict": self.verdict, "notes": list(self.notes), "stats": _jsonable(self.stats)}
        if self.curve is not None and self.curve.meta.get("source"):
            d["source"] = self.curve.meta["source"]
            if self.curve.meta.get("run"):
                d["run"] = self.curve.meta["run"]
        return d

    def __str__(self) -> str:
        r = self.recommendation
        head = {"raise": f"raise the lr about {r.factor:.3g}x", "lower": f"lower the lr about {1 / r.factor:.3g}x "
                f"(multiply by {r.factor:.3g})", "keep": "keep the lr"}[r.action]
        sure = "" if r.certainty == DIRECT else f" ({r.certainty})"
        lines = [f"verdict: {self.verdict} — {head}{sure}", f"  why: {r.reason}"]
        lines += [f"  also: {a}" for a in r.advice]
        if r.check:
            lines.append(f"  check: {r.check}")
        lines += [f"  [{f.kind}] {f.evidence}" for f in self.findings if f.kind != "healthy" and
                  not r.reason.startswith(f.evidence)]
        lines.append(f"  metric: {self.metric}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def plot(self, path: Any = None, ax: Any = None) -> Any:
        """The curve annotated with the findings (see :func:`lrkit.plot.plot_diagnosis`)."""
        from lrkit.plot import plot_diagnosis

        return plot_diagnosis(self, path=path, ax=ax)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------------------------------- preparation
def prepare(curve: Curve) -> tuple[Curve, list[str]]:
    """Sorted, de-duplicated steps; at most :data:`MAX_POINTS` points (bin means). Returns (curve, notes)."""
    notes: list[str] = list(curve.meta.get("notes", []))
    steps, values = curve.steps, curve.values
    lrs = curve.lrs
    extra = {k: v for k, v in curve.extra.items() if v.ndim == 1 and v.shape == values.shape}
    d = np.diff(steps)
    if d.size and (d <= 0).any():
        order = np.argsort(steps, kind="stable")
        keep_last = np.r_[steps[order][1:] != steps[order][:-1], True]
        idx = order[keep_last]
        notes.append(f"steps were not strictly increasing: sorted, kept the last of {len(steps) - len(idx)} "
                     "repeated step(s)")
        steps, values = steps[idx], values[idx]
        lrs = lrs[idx] if lrs is not None else None
        extra = {k: v[idx] for k, v in extra.items()}
    n = len(values)
    if n > MAX_POINTS:
        b = int(math.ceil(n / MAX_POINTS))
        m = n // b * b
        notes.append(f"{n} points: averaged in bins of {b} steps for the checks")

        def binned(a: np.ndarray, how: str = "mean") -> np.ndarray:
            head = a[:m].reshape(-1, b)
            out = head[:, 0] if how == "first" else (head.mean(axis=1) if how == "mean" else head[:, -1])
            if m < n:
                tail = a[m:]
                out = np.r_[out, tail[0] if how == "first" else (tail.mean() if how == "mean" else tail[-1])]
            return out

        steps, values = binned(steps, "first").astype(np.int64), binned(values)
        lrs = binned(lrs, "last") if lrs is not None else None
        extra = {k: binned(v) for k, v in extra.items()}
    extra.update({k: v for k, v in curve.extra.items() if v.ndim != 1 or v.shape != curve.values.shape})
    return Curve(steps, values, lrs, name=curve.name, extra=extra, meta=dict(curve.meta)), notes


def initial_level(head: Any) -> float:
    """A run's starting loss from its first values: their median (robust to one lucky or bad batch), or the first value
    alone when the median is over twice it (the loss blew up within them)."""
    med = float(np.median(head))
    return float(head[0]) if med > 2 * abs(head[0]) else med


def features(y: np.ndarray, steps: np.ndarray) -> Features:
    """The :class:`Features` of a finite loss series (at least 3 points)."""
    m = len(y)
    w = int(min(max(3, m // 25), 301)) | 1
    sm = running_median(y, w)
    start = float(np.median(y[:3]))
    if y[0] > 0 and start > 1.5 * y[0]:  # it blew up within the first three values: the first one is the start
        start = float(y[0])
    tail = y[-max(3, m // 10):]
    final = float(np.median(tail))
    ib = int(np.argmin(sm))
    noise = max(step_noise(y), 1e-12 * max(abs(final), 1.0))
    return Features(m, start, final, float(sm[ib]), int(steps[ib]), noise, w,
                    (start - final) / abs(start) if start else 0.0)


# -------------------------------------------------------------------------------------------------------- checks
def diagnose(curve: Curve, thresholds: Thresholds | None = None, use_shape: bool = True,
             **overrides: float) -> Diagnosis:
    """Diagnose one loss curve: findings (most severe first) and a recommendation for the lr.

    ``thresholds`` (or keyword overrides of :class:`Thresholds` fields) tune the checks; ``use_shape=False`` leaves
    out the fitted shape model (:mod:`lrkit.doctor.direction`) and judges by the rules alone."""
    if not isinstance(curve, Curve):
        raise LrkitError(f"diagnose needs a Curve or a log path, got {type(curve).__name__}")
    t = thresholds or Thresholds()
    if overrides:
        bad = [k for k in overrides if k not in Thresholds.__dataclass_fields__]
        if bad:
            raise LrkitError(f"unknown threshold(s) {bad}; choose from {list(Thresholds.__dataclass_fields__)}")
        t = Thresholds(**{**t.__dict__, **overrides})
    c, notes = prepare(curve)
    metric = c.name
    if len(c) < 8 and np.isfinite(c.values).all():
        raise LrkitError(f"{metric}: only {len(c)} logged point(s); the doctor needs at least 8 to judge a trend "
                         "(log the loss more often, or train longer)")
    window = c.meta.get("window")
    if window:
        notes.append(f"each point is a mean over {window} steps, so one bad batch is diluted and a spike that "
                     "shows in one point lasted or was large")
    if c.meta.get("semantics") and c.meta["semantics"] not in notes:
        notes.append(c.meta["semantics"])
    findings: list[Finding] = []
    f: Features | None = None
    sched = Schedule.of(c, len(c))
    shape: dict[str, float] = {}

    not_loss = _not_a_loss(c)
    if not_loss is not None:
        findings.append(not_loss)
        return _finish(metric, findings, c, notes, f, sched, shape)
    nonfinite = _nonfinite(c, sched)
    if nonfinite is not None:
        findings.append(nonfinite)
        if nonfinite.kind == "numerics":
            return _finish(metric, findings, c, notes, f, sched, shape)
    # the finite part the trend checks read: up to a divergence to NaN for good, or every finite point
    finite = np.isfinite(c.values)
    stop = int(nonfinite.data["index"]) if nonfinite is not None and nonfinite.kind == "diverging" else len(c)
    keep = finite.copy()
    keep[stop:] = False
    ys, ss = c.values[keep], c.steps[keep]
    if len(ys) >= 8:
        f = features(ys, ss)
        lr_at = _lr_lookup(c)
        x = _diverged(ys, ss, f, t, lr_at, sched) or _stuck(ys, ss, f, t, lr_at, sched)
        if x is not None:
            findings.append(x)
        findings += _eval_checks(c, ys, ss, f, t)
        sp = _spike_finding(c, ys, ss, f, t, window, lr_at, sched, big_jump=x is None)
        if sp is not None and not any(y.kind == "spiking" for y in findings):
            findings.append(sp)
        if not any(x.action in ("lower", "raise") for x in findings):
            x = _flat(ys, ss, f, t) or _crawl(ys, ss, f, t, sched, c)
            if x is not None:
                findings.append(x)
        if use_shape and not any(x.action in ("lower", "raise") or x.kind == "not_a_loss" for x in findings):
            x, shape = _shape_call(c, ys, f, t, sched, notes)
            if x is not None:  # a flat run's shape may still say which way (the rules cannot)
                findings = [y for y in findings if y.kind not in ("too_slow", "plateau")] + [x]
        x = _update_ratio_finding(c, t, findings, shape)
        if x is not None:
            findings.append(x)
    return _finish(metric, findings, c, notes, f, sched, shape)


def _finish(metric: str, findings: list[Finding], c: Curve, notes: list[str], f: Features | None,
            sched: Schedule, shape: dict[str, float]) -> Diagnosis:
    if not findings:
        findings.append(Finding("healthy", [], "the loss fell and levelled off without divergence, a collapse, "
                                "large spikes or an erratic eval loss", {}, "keep", 1.0, CANNOT_TELL))
    findings.sort(key=lambda x: KINDS.index(x.kind))
    rec = recommend(findings, sched, c)
    return Diagnosis(metric, findings, rec, curve=c, notes=notes, features=f, schedule=sched, shape=shape)


def _lr_lookup(c: Curve):
    """step -> the logged lr at that step (NaN when none was logged)."""
    if c.lrs is None:
        return lambda step: math.nan
    ok = np.isfinite(c.lrs)
    s, v = c.steps[ok], c.lrs[ok]

    def at(step: int) -> float:
        if not s.size:
            return math.nan
        i = int(np.searchsorted(s, step, side="right")) - 1
        return float(v[max(i, 0)])

    return at


def _not_a_loss(c: Curve) -> Finding | None:
    """A metric that does not descend by design (reward, return, a policy surrogate, accuracy): no lr verdict."""
    from lrkit.doctor.readers import NOT_A_LOSS

    name = c.name.lower()
    cols = [str(n).lower() for n in c.meta.get("columns", [])]
    rl = [n for n in cols if any(w in n for w in ("reward", "ep_rew", "episode_return", "approx_kl", "clip_frac",
                                                   "policy_gradient", "entropy_loss", "value_loss"))]
    y = c.values[np.isfinite(c.values)]
    crosses = int(np.sum(np.diff(np.sign(y[y != 0])) != 0)) if y.size > 1 else 0
    signed = y.size >= 8 and y.min() < -0.1 * abs(y.max()) and crosses >= 3
    why = None
    if NOT_A_LOSS.search(name):
        why = f"{c.name!r} is not a loss that training drives down (a reward, a surrogate or a score)"
    elif rl and ("loss" == name or name.endswith("/loss")):
        why = (f"the log is from reinforcement learning ({', '.join(rl[:3])}): its {c.name!r} mixes a policy surrogate "
               "with value and entropy terms and does not descend as a supervised loss does")
    elif signed:
        why = (f"{c.name!r} takes both signs ({y.min():.3g} .. {y.max():.3g}, {crosses} sign changes): a surrogate, "
               "not a loss that descends")
    if why is None:
        return None
    return Finding("not_a_loss", [], f"cannot judge the lr from this metric: {why}; pass the training loss with "
                   "--metric (metric= in Python), or judge an RL run by its return over several lrs",
                   {}, "keep", 1.0, CANNOT_TELL)


def _nonfinite(c: Curve, sched: Schedule) -> Finding | None:
    """NaN/inf in the loss: from the first step or at a tiny lr (numerics, not the lr); isolated rows the run
    recovered from (keep); or for good after finite values (diverged: lower)."""
    y = c.values
    bad = ~np.isfinite(y)
    if not bad.any():
        return None
    i0 = int(np.argmax(bad))
    s0 = int(c.steps[i0])
    lr0 = float(c.lrs[i0]) if c.lrs is not None and np.isfinite(c.lrs[i0]) else math.nan
    tiny = sched.known and lr0 == lr0 and lr0 <= 0.01 * sched.peak
    lr_words = f" at lr {lr0:.3g}" if lr0 == lr0 else ""
    if i0 == 0 and s0 <= 1 or tiny:
        where = "from the first logged step" if i0 == 0 else f"at step {s0}"
        why = ("before any update could have moved the weights" if i0 == 0 and s0 <= 1 else
               f"where the lr was still {lr0 / sched.peak:.1%} of its peak")
        return Finding("numerics", [s0], f"the loss is {y[i0]} {where}{lr_words}, {why}: not the lr but numerics, "
                       "the data or the code — check for NaN/inf in the inputs and labels, log(0) or division by zero "
                       "in the loss, and fp16 overflow (use bf16 or a GradScaler)", {"index": i0, "nan_step": s0},
                       "keep", 1.0, CANNOT_TELL)
    if i0 == 0 and bad.mean() > 0.9:
        # NaN at the first logged row, but that row is past the first step (a log written every N steps): the run
        # may have blown up within those steps, or its numerics fail from the start; one log cannot tell which
        return Finding("diverging", [s0], f"the loss is {y[i0]} from the first logged step, step {s0}{lr_words}, at "
                       "almost every logged step: the run blew up within its first steps (an lr far too high), "
                       "unless the data or the loss code give NaN", {"index": 0, "nan_step": s0, "lr": lr0}, "lower",
                       0.3, LIKELY, ["a short run at a tenth of this lr tells which: if it is NaN too, look at the "
                                     "data and the loss code (NaN/inf inputs, log(0), fp16 overflow)"])
    after = np.flatnonzero(~bad[i0:]) + i0
    pre = y[max(0, i0 - 5):i0]
    pre = pre[np.isfinite(pre)]
    if after.size >= 3 and bad[i0:].mean() < 0.2 and pre.size:
        tail = y[after[-max(3, after.size // 10):]]
        if np.median(tail) <= np.median(pre) + 0.5 * abs(np.median(pre)):
            idx = np.flatnonzero(bad)
            shown = ", ".join(str(int(c.steps[i])) for i in idx[:5]) + (f" and {idx.size - 5} more" if idx.size > 5
                                                                        else "")
            return Finding("spiking", [int(c.steps[i]) for i in idx[:20]], f"{idx.size} non-finite loss value(s) "
                           f"(at step {shown}), after which the run went on and recovered (last {float(tail[-1]):.4g}): "
                           "skipped steps under fp16 loss scaling, or bad batches — not a divergence",
                           {"index": -1, "nonfinite": int(idx.size)}, "keep", 1.0, DIRECT,
                           ["check the batches at those steps for NaN/inf; under fp16, a GradScaler skips such steps"])
    prev = f" (last finite value {y[i0 - 1]:.4g} at step {c.steps[i0 - 1]})" if i0 else ""
    factor, how = _factor_at(lr0, sched, 0.1)
    return Finding("diverging", [s0], f"the loss became {y[i0]} at step {s0}{lr_words}{prev} and did not come back"
                   + how, {"index": i0, "nan_step": s0, "lr": lr0}, "lower", factor, DIRECT,
                   _warmup_advice(sched, i0 < 0.3 * len(y)))


def _factor_at(lr: float, sched: Schedule, default: float) -> tuple[float, str]:
    """The factor on the peak lr after a divergence at ``lr``: below the lr it blew up at when that was under the
    peak (during warmup), else ``default``; with the words saying so."""
    if sched.known and lr == lr and 0 < lr < 0.9 * sched.peak:
        factor = float(np.clip(0.5 * lr / sched.peak, 0.01, 0.5))
        return factor, (f"; it blew up while the lr was {lr:.3g}, below the peak {sched.peak:.3g}: set the peak to "
                        f"about half that ({factor * sched.peak:.3g})")
    return default, ""


def _warmup_advice(sched: Schedule, early: bool) -> list[str]:
    if early and not sched.warmup:
        return ["add a warmup (a few hundred steps) so the first updates are small"]
    return []


def _diverged(y: np.ndarray, s: np.ndarray, f: Features, t: Thresholds, lr_at, sched: Schedule) -> Finding | None:
    """The loss made a real descent and climbed back at least half of it, staying up to the end; or it ended clearly
    above where it started. Margins are in batch-noise units as well as standard errors, so a flat run's wander (the
    data's order) is no climb."""
    sm = running_median(y, f.window)
    top = max(f.start, float(sm[0]))
    descent = top - f.best
    tail_n = max(3, f.n // 10)
    margin = max(5 * f.se(tail_n), 1.5 * f.noise, 0.01 * abs(f.best))
    ib_all = int(np.argmin(sm))
    lost = 0.0
    if descent > max(margin, 0.05 * abs(top)) and ib_all < f.n - tail_n:  # a real descent, its low before the end
        lost = (f.final - f.best) / descent
    above = f.final - top > max(margin, 3 * f.noise, 0.05 * abs(top))
    if not (above or (lost >= t.diverged and f.final - f.best > margin)):
        return None
    near = np.flatnonzero(sm[: max(1, f.n - tail_n)] <= f.best + 0.1 * (f.final - f.best))
    ib = int(near[-1]) if near.size else int(np.argmin(sm))
    lr = lr_at(int(s[ib]))
    factor, how = _factor_at(lr, sched, 0.3 if above else 0.5)
    what = (f"ended at {f.final:.4g}, above where it started ({top:.4g})" if above else
            f"went down to {f.best:.4g} and from step {s[ib]} climbed back to {f.final:.4g}: {lost:.0%} of its "
            f"descent lost")
    return Finding("diverging", [int(s[ib]), int(s[-1])], f"the loss {what}" + how,
                   {"rise": lost if math.isfinite(lost) else None, "best": f.best, "final": f.final, "lr": lr},
                   "lower", factor, DIRECT, _warmup_advice(sched, ib < 0.3 * f.n))


def _stuck(y: np.ndarray, s: np.ndarray, f: Features, t: Thresholds, lr_at, sched: Schedule) -> Finding | None:
    """The loss sat above its starting level for most of the run, or stayed flat at chance level (ln K)."""
    sm = running_median(y, f.window)
    head = max(1, f.n // 20)
    margin = max(3 * f.noise, 0.002 * abs(f.start))  # three batch-noise scales: a drift with the data's order is less
    above = sm[head:] > f.start + margin
    share = float(above.mean()) if above.size else 0.0
    if share >= t.stuck_share:
        idx = np.flatnonzero(above) + head
        return Finding("stuck", [int(s[idx[0]]), int(s[idx[-1]])], f"the loss sat above its starting level "
                       f"{f.start:.4g} for {share:.0%} of the run (steps {s[idx[0]]}-{s[idx[-1]]}, up to "
                       f"{float(sm[head:].max()):.4g}): the model was not learning; a too-high lr pushes the weights "
                       "to where the loss is worse than at the start", {"share": share, "start": f.start},
                       "lower", 0.3, DIRECT)
    k = chance_classes(float(np.median(y[f.n // 2:])), t.chance_tol)
    flat = f.final >= f.start - max(5 * f.se(max(3, f.n // 10)), 0.01 * abs(f.start))
    # a collapsed model predicts a constant: its loss barely varies from batch to batch, while an untrained one at a
    # tiny lr (also near ln K) still answers each input differently
    quiet = f.noise <= t.chance_noise * abs(f.final)
    if k is not None and flat and quiet:
        return Finding("stuck", [int(s[0]), int(s[-1])], f"the loss sits at {float(np.median(y[f.n // 2:])):.4g} = "
                       f"ln {k} from the start to the end with almost no batch noise (±{f.noise:.2g}): chance level "
                       f"for {k} classes, a model collapsed to a constant prediction — the mark of a far too high lr "
                       "(or labels that carry no signal)",
                       {"classes": k, "level": float(np.median(y[f.n // 2:]))}, "lower", 0.1, DIRECT)
    return None


def chance_classes(level: float, tol: float = 0.003) -> int | None:
    """K when ``level`` is ln K (the loss of a uniform guess over K classes, K = 2..1000) within the relative ``tol``
    and within a quarter of the gap to ln(K +- 1) (so a level near ln 1000 must match it closely); else None."""
    if not 0.6 < level < 7.0:
        return None
    k = int(round(math.exp(level)))
    if k < 2:
        return None
    gap = 0.25 * min(math.log(k + 1) - math.log(k), math.log(k) - math.log(k - 1) if k > 2 else 1.0)
    return k if abs(level - math.log(k)) <= min(tol * math.log(k), gap) else None


def _big_jump(y: np.ndarray, s: np.ndarray, f: Features, t: Thresholds, sched: Schedule) -> tuple[int, int, float] | None:
    """The first jump after the early phase, ten times the batch noise or more, that undid ``severe_spike`` (a quarter)
    or more of the progress made by then: (its index, the index of its top, the share of the progress it undid). A slow
    bump of the data's own is smaller than that against the batch noise, however it compares with slow progress; the
    early phase (the first tenth of the run, and with a warmup until a twentieth after its peak) is a warmup's
    business."""
    sm = running_median(y, 3)  # a jump counts when two consecutive points show it
    # the lowest level before each point: trailing 3-point medians, no look-ahead (their minimum sits below the level
    # by a few batch-noise scales at most, well inside the 10 scales a jump must clear)
    level = np.median(np.lib.stride_tricks.sliding_window_view(np.r_[y[0], y[0], y], 3), axis=1)
    runmin = np.minimum.accumulate(level)
    top = max(f.start, float(sm[0]))
    progress = top - runmin
    total = top - f.best
    if total <= 0:
        return None
    climb = sm - runmin
    early = len(y) // 10
    if sched.warmup:
        early = max(early, int(np.searchsorted(s, sched.peak_step)) + len(y) // 20)
    big = (np.arange(len(y)) >= early) & (climb >= t.severe_spike * np.maximum(progress, 1e-300)) & \
        (climb >= max(10 * f.noise, 0.1 * total)) & (progress >= 0.2 * total)
    if not big.any():
        return None
    i = int(np.argmax(big))
    j = i + int(np.argmax(climb[i:i + max(3, len(y) // 20)]))
    return i, j, float(climb[j] / progress[j])


def _spike_finding(c: Curve, ys: np.ndarray, ss: np.ndarray, f: Features, t: Thresholds, window: int | None, lr_at,
                   sched: Schedule, big_jump: bool = True) -> Finding | None:
    """Spikes the run recovered from (persistent outliers above the recent robust baseline, and a jump that undid a
    quarter of the progress): advice, not a change of lr. At the best lr of many tasks, Adam-type and momentum runs
    spike and recover; a spike that does not come back is the divergence check's."""
    persistence = t.spike_persistence if not window else 1
    loss_spikes = spikes(ys, ss, z=t.spike_z, persistence=persistence) if len(ys) >= 16 else []
    jump = _big_jump(ys, ss, f, t, sched) if big_jump else None
    if not loss_spikes and jump is None:
        return None
    parts = []
    for sp in loss_spikes[:5]:
        back = f"recovered by step {sp.end}" if sp.recovered else "did not recover"
        parts.append(f"step {sp.start} (peak {sp.peak_value:.4g}, {sp.peak_value - sp.baseline:+.3g} over the level "
                     f"{sp.baseline:.4g} at step {sp.peak}, {back})")
    more = f" and {len(loss_spikes) - 5} more" if len(loss_spikes) > 5 else ""
    ev = [f"{len(loss_spikes)} loss spike(s): " + "; ".join(parts) + more] if loss_spikes else []
    data: dict[str, Any] = {"spikes": [{"start": s.start, "peak": s.peak, "end": s.end,
                                        "excess": s.peak_value - s.baseline} for s in loss_spikes]}
    advice = ["clip gradients (e.g. max norm 1.0) if spikes recur"]
    steps = [s.start for s in loss_spikes]
    if jump is not None:
        i, j, lost = jump
        lr = lr_at(int(ss[i]))
        ev.insert(0, f"at step {ss[i]}{f' at lr {lr:.3g}' if lr == lr else ''} the loss jumped to "
                     f"{float(np.median(ys[max(0, j - 1):j + 2])):.4g}, undoing {lost:.0%} of the progress made by then")
        data.update(severe=True, lost=lost)
        advice.append("if such jumps recur, lower the lr about 0.7x")
        steps = sorted(set(steps) | {int(ss[i])})
    gn = c.extra.get("grad_norm")
    if loss_spikes and gn is not None and gn.shape == c.values.shape:
        g = gn[np.isfinite(c.values)][: len(ys)]
        ok = np.isfinite(g) & (g > 0)
        gn_starts = {s.start for s in spikes(g[ok], ss[ok], z=t.spike_z, persistence=persistence, log=True)} \
            if ok.sum() >= 16 else set()
        with_gn = [s for s in loss_spikes if any(abs(s.start - g) <= 3 for g in gn_starts)]
        if with_gn:
            ev.append(f"the gradient norm spiked with {len(with_gn)} of them")
    if sched.known and sched.warmup and abs(steps[0] - sched.peak_step) <= max(0.1 * (c.steps[-1] - c.steps[0]), 3):
        ev.append(f"the first spike began at step {steps[0]}, when warmup brought the lr to its peak "
                  f"{sched.peak:.3g} (step {sched.peak_step})")
        data["near_lr_peak"] = True
        advice.insert(0, "lengthen the warmup or lower the peak lr slightly: spikes start where warmup ends")
    return Finding("spiking", steps, "; ".join(ev) + ": the run recovered, so the lr stands", data, "keep", 1.0,
                   DIRECT, advice)


def _eval_series(c: Curve) -> tuple[str, np.ndarray, np.ndarray] | None:
    for k, v in c.extra.items():
        if k.startswith("eval:") and v.ndim == 2 and v.shape[0] == 2:
            return k[5:], v[0], v[1]
    return None


def _eval_checks(c: Curve, ys: np.ndarray, ss: np.ndarray, f: Features, t: Thresholds) -> list[Finding]:
    """The eval loss: diverged (NaN, or climbed far above its start), erratic late, or rising while the training
    loss falls (overfitting, not the lr)."""
    ev = _eval_series(c)
    if ev is None:
        return []
    name, es, vals = ev
    out: list[Finding] = []
    bad = ~np.isfinite(vals)
    if bad.any() and np.isfinite(vals[: int(np.argmax(bad))]).any() and bad[int(np.argmax(bad)):].all():
        i = int(np.argmax(bad))
        return [Finding("diverging", [int(es[i])], f"the eval loss {name!r} became {vals[i]} at step {es[i]} and "
                        "stayed so", {"eval_nan_step": int(es[i])}, "lower", 0.3, DIRECT)]
    ok = np.isfinite(vals)
    es, vals = es[ok], vals[ok]
    if len(vals) < 4:
        return out
    sm = running_median(vals, 3) if len(vals) >= 10 else vals  # a few evaluations: each one counts
    first, ib = float(vals[0]), int(np.argmin(sm))
    best = float(sm[ib])
    last = float(np.median(vals[-2:]))
    span = first - best
    # the training loss over the stretch where the eval loss rose (None where it was not logged then)
    train_then = ys[(ss >= es[ib]) & (ss <= es[-1])]
    covered = train_then.size >= 3 and ss[-1] >= es[ib] + 0.9 * (es[-1] - es[ib])
    train_fell = covered and float(np.median(train_then[-max(1, train_then.size // 5):])) < \
        float(np.median(train_then[: max(1, train_then.size // 5)])) and last < 3 * first
    above = last > 1.1 * first and last - best > 0.05 * abs(best)
    lost = span > 0.05 * abs(best) and last - best >= t.diverged * span
    if (above or lost) and not train_fell:
        where = f"above where it started ({first:.4g})" if above else f"{(last - best) / span:.0%} of its descent lost"
        return [Finding("diverging", [int(es[ib]), int(es[-1])], f"the eval loss {name!r} fell to {best:.4g} "
                        f"(step {es[ib]}) and then climbed to {last:.4g}, {where}"
                        + ("" if covered else "; the training loss was not logged over that stretch"),
                        {"eval_best": best, "eval_last": last}, "lower", 0.3, DIRECT)]
    half = vals[len(vals) // 2 - 1:]
    up = np.diff(half)
    # a jump counts when it is large against the level and against the eval loss's whole descent (a converged loss
    # near 0 swings by large fractions of a tiny level)
    jumps = np.flatnonzero((up >= t.eval_jump * np.maximum(np.abs(half[:-1]), 1e-300)) & (up >= 0.1 * max(span, 0)))
    if jumps.size >= t.eval_jumps:
        at = [int(es[len(vals) // 2 + int(j)]) for j in jumps]
        out.append(Finding("oscillating", at, f"the eval loss {name!r} jumps between evaluations late in the run: "
                           f"{jumps.size} rises of {t.eval_jump:.0%} or more in its second half (at step "
                           f"{', '.join(map(str, at[:4]))}), while the training loss fell smoothly: updates too large "
                           "to settle", {"eval_jumps": int(jumps.size)}, "lower", 0.5, LIKELY))
    noise = robust_std(np.diff(vals)) / math.sqrt(2)
    rise = last - best
    if ib < len(vals) - 2 and rise > t.overfit * abs(best) and rise > 2 * noise and train_fell:
        out.append(Finding("overfitting", [int(es[ib]), int(es[-1])], f"the eval loss {name!r} reached its best "
                           f"{best:.4g} at step {es[ib]} and rose to {last:.4g} ({rise / abs(best):+.0%}) while the "
                           "training loss kept falling: overfitting, not the lr — stop near step "
                           f"{es[ib]} (early stopping) or regularise (more data, augmentation, weight decay, dropout)",
                           {"eval_best": best, "eval_best_step": int(es[ib]), "eval_last": last}, "keep", 1.0,
                           DIRECT))
    return out


def _flat(y: np.ndarray, s: np.ndarray, f: Features, t: Thresholds) -> Finding | None:
    """Flat from the start (and not at chance): the lr may be far too low, far too high, or the model cannot learn."""
    if f.drop >= 0.03 or f.start - f.final > 5 * f.se(max(3, f.n // 10)):
        return None
    return Finding("plateau", [int(s[0]), int(s[-1])], f"the loss is flat from the start: {f.start:.4g} -> "
                   f"{f.final:.4g} ({abs(f.drop):.1%} {'lower' if f.drop >= 0 else 'higher'}); a far too low lr, a "
                   "far too high one (the weights already blown to a constant) and a model that cannot learn (a "
                   "frozen layer, detached loss, wrong labels) all look like this", {"drop": f.drop}, "keep", 1.0,
                   CANNOT_TELL, ["run `lrkit find` on the model: the range test shows which of these it is"])


def _crawl(y: np.ndarray, s: np.ndarray, f: Features, t: Thresholds, sched: Schedule, c: Curve) -> Finding | None:
    """At a constant lr, the loss is still falling at an undiminished pace at the end: raise (at most 3x)."""
    if f.n < 24:
        return None
    third = f.n // 3
    scheduler = str(c.meta.get("config", {}).get("scheduler", "")).lower()
    if sched.known:
        lr = c.lrs[np.isfinite(c.values)][third: f.n] if c.lrs is not None else np.empty(0)
        lr = lr[np.isfinite(lr)]
        if not lr.size or lr.min() < 0.9 * lr.max() or lr.max() < 0.9 * sched.peak:
            return None  # warmup still rising, or a decay: the pace follows the schedule, not the lr's level
    elif scheduler not in ("constant", "none", "constant_with_warmup"):
        return None  # no lr logged: a slowing or steady descent may be the schedule
    head = max(1, f.n // 20)
    l0 = float(np.median(y[head:head + max(3, f.n // 10)]))
    l1 = float(np.median(y[third:2 * third]))
    l2 = float(np.median(y[2 * third:]))
    mid_pace, late_pace = l0 - l1, l1 - l2
    z = late_pace / (f.se(third) * math.sqrt(2.0))
    if not (z >= t.crawl_z and mid_pace > 0 and late_pace >= t.crawl_pace * mid_pace):
        return None
    factor = 3.0 if f.drop < 0.1 and late_pace >= 0.9 * mid_pace else 2.0
    return Finding("too_slow", [int(s[third]), int(s[-1])], f"at a constant lr the "
                   f"loss is still falling at the end at {late_pace / mid_pace:.0%} of its pace in the middle of the "
                   f"run ({l1:.4g} -> {l2:.4g} over the last third, {z:.0f} standard errors of its batch noise): "
                   "steps that small mean the lr can go up", {"pace": late_pace / mid_pace, "z": z}, "raise",
                   factor, LIKELY)


def _shape_call(c: Curve, ys: np.ndarray, f: Features, t: Thresholds, sched: Schedule,
                notes: list[str]) -> tuple[Finding | None, dict[str, float]]:
    """The fitted shape model's direction for a run like those it was fitted on (raw per-step losses from the first
    steps, at most ``shape_max_steps`` steps, a constant or warmup+cosine lr), when its vote is confident."""
    from lrkit.doctor.direction import SIGNALS, load_models, predict, profile, sample_index, shape_features

    span = int(c.steps[-1] - c.steps[0]) if len(c) else 0
    gaps = np.diff(c.steps)
    fits = (f.n == len(c) and f.n >= 24 and not c.meta.get("window") and c.meta.get("unit", "step") in ("step", "row")
            and span <= t.shape_max_steps and int(c.steps[0]) <= max(10, 0.01 * span)
            and (gaps.size == 0 or float(np.median(gaps)) <= max(1.0, 0.005 * span)))
    if not fits:
        notes.append("the shape model was not asked: it reads raw per-step losses logged from the first steps of "
                     f"runs of at most {t.shape_max_steps} steps, like those it was fitted on")
        return None, {}
    idx = sample_index(f.n, t.shape_points)
    side = {k: (v[idx] if v is not None and v.shape == c.values.shape else None)
            for k in ("grad_norm", "update_ratio", "grad_alignment") for v in [c.extra.get(k)]}
    lrs = c.lrs[idx] if c.lrs is not None else None
    sf = shape_features(ys[idx], side["grad_norm"], lrs, side["update_ratio"], side["grad_alignment"])
    if sf is None:
        return None, {}
    prof = profile(ys[idx], side["grad_norm"], lrs, side["update_ratio"], side["grad_alignment"])
    probs, model = predict(sf, prof)
    voters = ("boosted trees and a sequence model" if prof is not None and load_models().get("seq_" + model) else
              "boosted trees")
    level = t.shape_confidence
    call = max(probs, key=probs.__getitem__)
    if "al_late" in sf:  # the gradient alignment, in words a user can check against the logged column
        notes.append(f"gradient alignment (cos of each step's gradient against the previous update; > 0: the last "
                     f"step still descends, < 0: it overshot) over the last third: mean {sf['al_late']:+.3f}, "
                     f"{sf['al_late_pos']:.0%} of the steps > 0")
    notes.append(f"shape model ({voters} on the {SIGNALS[model]}): lr too high {probs['too_high']:.0%}, good "
                 f"{probs['good']:.0%}, too low {probs['too_low']:.0%}"
                 + ("" if probs[call] >= level else f" (below {level:.0%}: no advice from it)"))
    shape = {**probs, "variant": model}
    if probs[call] < level or call == "good":
        return None, shape
    if call == "too_low" and sched.decays:
        share = _descent_at_peak(ys, c.lrs, sched.peak)
        if not share >= 0.5:
            # under a decaying lr the loss keeps falling to the end whatever the peak; when most of the descent came
            # only as the lr decayed, the run made little progress at its peak lr: no sign of too low a peak
            notes.append(f"the shape model's 'too low' is not taken: the logged lr decays and only {max(share, 0):.0%}"
                         " of the descent came while it was above half its peak (a too-low lr descends most there)")
            return None, shape
    odds = (f"{probs[call]:.0%} of the shape model's vote (from the {SIGNALS[model]}, fitted on lrkit's labelled runs "
            "of small models)")
    if call == "too_high":
        return Finding("oscillating", [int(c.steps[f.n // 2]), int(c.steps[-1])], f"the loss fell to a floor of batch "
                       f"noise (±{f.noise:.3g}) and sat there: the shape of runs whose lr was 2x or more too high; "
                       f"{odds}", dict(probs), "lower", 0.5, LIKELY), shape
    return Finding("too_slow", [int(c.steps[f.n // 2]), int(c.steps[-1])], f"the loss is still falling at the end "
                   f"({f.start:.4g} -> {f.final:.4g}, {f.drop:.0%} lower): the shape of runs whose lr was 2x or more "
                   f"too low; {odds}", dict(probs), "raise", 3.0, LIKELY), shape


def _descent_at_peak(ys: np.ndarray, lrs: np.ndarray | None, peak: float) -> float:
    """The share of the run's descent (median of its first 5% of losses minus median of its last 5%) made by the end
    of the steps at an lr of at least half the peak (median of the last tenth of those steps); NaN when unknown."""
    if lrs is None or lrs.shape != ys.shape or not peak > 0:
        return math.nan
    hi = np.flatnonzero(np.isfinite(lrs) & (lrs >= 0.5 * peak))
    n = len(ys)
    if hi.size < 10 or n < 40:
        return math.nan
    k = max(2, n // 20)
    start, end = float(np.median(ys[:k])), float(np.median(ys[-k:]))
    seg = ys[hi[0]:hi[-1] + 1]
    at_peak_end = float(np.median(seg[-max(2, len(seg) // 10):]))
    total = start - end
    return (start - at_peak_end) / total if total > 0 else math.nan


def _update_ratio_finding(c: Curve, t: Thresholds, findings: list[Finding], shape: dict) -> Finding | None:
    """The update-to-weight ratio against fixed bounds, where the shape model has not read it."""
    ur = c.extra.get("update_ratio")
    if shape or ur is None or ur.shape != c.values.shape or not np.isfinite(ur).any():
        return None
    if any(x.action in ("lower", "raise") for x in findings):
        return None
    med = float(np.nanmedian(ur[len(ur) // 2:]))
    steps = [int(c.steps[len(ur) // 2]), int(c.steps[-1])]
    if med > t.update_ratio_high:
        return Finding("oscillating", steps, f"the update-to-weight ratio is {med:.2g} over the second half (rule of "
                       "thumb: about 1e-3): each step moves the weights a lot", {"update_ratio": med}, "lower", 0.5,
                       LIKELY)
    if med < t.update_ratio_low:
        return Finding("too_slow", steps, f"the update-to-weight ratio is {med:.2g} over the second half (rule of "
                       "thumb: about 1e-3): the weights barely move", {"update_ratio": med}, "raise", 3.0, LIKELY)
    return None


def recommend(findings: list[Finding], sched: Schedule, c: Curve) -> Recommendation:
    """The lr recommendation: the most severe finding that changes the lr decides, else the most severe one that
    keeps it (a recovered spike says keep, an eval loss that oscillates says lower: lower); the others add their
    advice."""
    decider = next((x for x in findings if x.action in ("lower", "raise")), None) or \
        next((x for x in findings if x.action is not None), None)
    advice: list[str] = []
    for x in findings:
        for a in x.advice:
            if a not in advice:
                advice.append(a)
    if decider is None or decider.action == "keep":
        reason = decider.evidence if decider is not None and decider.kind != "healthy" else (
            "the loss fell and levelled off without divergence, a collapse, large spikes or an erratic eval loss")
        certainty = decider.certainty if decider is not None else CANNOT_TELL
        check = ""
        if decider is None or decider.kind in ("healthy", "spiking", "overfitting", "plateau"):
            certainty = CANNOT_TELL if decider is None or decider.kind in ("healthy", "plateau") else certainty
            if decider is None or decider.kind != "plateau":
                reason += ("; one healthy-looking curve cannot tell whether the lr is right or 2-4x off")
                check = CHEAP_CHECK
        if sched.known and not sched.decays and sched.end_ratio > 0.5 and decider is not None and \
                decider.kind == "healthy":
            advice.append("add decay (cosine or linear to ~10% of the peak) to settle late in training")
        return Recommendation("keep", 1.0, reason, advice, certainty, check)
    peak = f"; the peak lr {sched.peak:.3g} -> about {decider.factor * sched.peak:.3g}" if sched.known else ""
    check = CHEAP_CHECK if decider.certainty == LIKELY else ""
    return Recommendation(decider.action, decider.factor, decider.evidence + peak, advice, decider.certainty, check)
