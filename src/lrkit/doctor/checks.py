"""The checks: a :class:`~lrkit.curve.Curve` -> :class:`Diagnosis` (findings with evidence, and a recommendation).

Every check reads a handful of robust statistics of the curve (:func:`features`); the thresholds live in
:class:`Thresholds` and were tuned on the tuning half of ``benchmarks/doctor`` (real curves over lr grids),
never on its held-out half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit.curve import Curve, ema, robust_std, spikes, trend
from lrkit.errors import LrkitError

MAX_POINTS = 20_000  # longer curves are averaged into this many bins before the checks (a 10M-row log stays fast)
KINDS = ("diverging", "spiking", "oscillating", "too_slow", "plateau", "healthy")


@dataclass
class Thresholds:
    """Every threshold of the doctor (defaults tuned on the benchmark's tuning set)."""

    early_blowup: float = 1.5  # smoothed loss above this x its initial value in the first 30%: lr too high
    rise: float = 0.2  # final level climbed back this fraction of (initial - best): diverging
    noise: float = 1.2  # robust noise of the last half over (initial - best): oscillating
    slow_drop: float = 0.2  # relative drop below this ...
    slow_decel: float = 0.3  # ... or the end slope still above this fraction of the start slope ...
    flat_drop: float = 0.03  # relative drop below this: flat (plateau from the start)
    instant_share: float = 0.9  # this share of the descent (from the first logged value) made by the head ...
    instant_drop: float = 0.15  # ... of a descent at least this fraction of the first value: lr too high
    progress_z: float = 2.0  # a crawl's progress since early on stands this many standard errors out of the noise
    spike_z: float = 6.0  # robust z-score of a spike
    spike_persistence: int = 3  # consecutive outliers (in logged points) that make a spike
    # update/weight ratio bounds for the rules alone (the shape model reads the ratio itself when it is logged): the
    # rule of thumb "about 1e-3" is for large nets; at the grid's best lr lrkit's labelled runs had 10^-2.9..10^-1.3
    update_ratio_high: float = 0.5  # the second half's median above this: lr too high
    update_ratio_low: float = 1e-4  # below this: lr too low
    # a blow-up or climb-back while the update ratios (x the steps between logged points) summed to less than this,
    # i.e. the weights moved by under 5%, is batch noise, not the lr (on the labelled runs: too-low runs 0.0001-0.03,
    # every other blow-up 0.1 or more)
    still_weights: float = 0.05
    shape_confidence: float = 0.65  # the shape model overrules the trend rules when its vote is at least this ...
    shape_confidence_loss_only: float = 0.5  # ... or this when it reads the loss alone (leave-one-task-out picks)
    blowup_confidence: float = 0.7  # the vote that overrules an early blow-up the run recovered from (ended lower)
    shape_points: int = 300  # longer curves are read at this many evenly spaced points by the shape model (0: all)

    def __post_init__(self) -> None:
        """Settings of the shape model that are out of their range: a clear error (for diagnose and the Monitor)."""
        if not (isinstance(self.shape_points, int) and self.shape_points >= 0):
            raise LrkitError(f"shape_points must be a whole number >= 0 (0: read every point), got "
                             f"{self.shape_points!r}")
        if not self.still_weights >= 0:
            raise LrkitError(f"still_weights is a summed update/weight ratio: give a number >= 0 (0: never read a "
                             f"rise as batch noise), got {self.still_weights!r}")
        for name in ("shape_confidence", "shape_confidence_loss_only", "blowup_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LrkitError(f"{name} is a share of the shape model's vote: give a number in [0, 1], "
                                 f"got {getattr(self, name)!r}")


@dataclass
class Finding:
    """One thing the doctor saw: its kind, the steps that show it, and the evidence in words (plus numbers)."""

    kind: str
    steps: list[int]
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [int(s) for s in self.steps], "evidence": self.evidence,
                "data": _jsonable(self.data)}


@dataclass
class Recommendation:
    """What to do with the lr: ``action`` raise/lower/keep, ``factor`` (multiply the lr by it), why, and extras
    such as "add warmup" or "add decay"."""

    action: str
    factor: float
    reason: str
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "factor": float(self.factor), "reason": self.reason, "advice": list(self.advice)}


@dataclass
class Diagnosis:
    """The doctor's verdict on one curve: findings (most severe first), a recommendation, the metric used."""

    metric: str
    findings: list[Finding]
    recommendation: Recommendation
    curve: Curve | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """The kind of the most severe finding ("healthy" when nothing is wrong)."""
        return self.findings[0].kind if self.findings else "healthy"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``recommendation``, ``findings``, ``metric`` (plus ``verdict``, ``notes``, ``stats``)."""
        d = {"recommendation": self.recommendation.to_dict(), "findings": [f.to_dict() for f in self.findings],
             "metric": self.metric, "verdict": self.verdict, "notes": list(self.notes), "stats": _jsonable(self.stats)}
        if self.curve is not None and self.curve.meta.get("source"):
            d["source"] = self.curve.meta["source"]
        return d

    def __str__(self) -> str:
        r = self.recommendation
        head = {"raise": f"raise the lr about {r.factor:.3g}x", "lower": f"lower the lr about {1 / r.factor:.3g}x "
                f"(multiply by {r.factor:.3g})", "keep": "keep the lr"}[r.action]
        lines = [f"verdict: {self.verdict} — {head}", f"  why: {r.reason}"]
        lines += [f"  also: {a}" for a in r.advice]
        lines += [f"  [{f.kind}] {f.evidence}" for f in self.findings if f.kind != "healthy"]
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
    extra.update({k: v for k, v in curve.extra.items() if k not in extra and k not in curve.extra or
                  (v.ndim != 1 or v.shape != curve.values.shape)})
    return Curve(steps, values, lrs, name=curve.name, extra=extra, meta=dict(curve.meta)), notes


# ------------------------------------------------------------------------------------------------------ features
def initial_level(head: Any) -> float:
    """A run's starting loss from its first values: their median (robust to one lucky or bad batch), or the first value
    alone when the median is over twice it (the loss blew up within them)."""
    med = float(np.median(head))
    return float(head[0]) if med > 2 * abs(head[0]) else med


def features(curve: Curve) -> dict[str, float]:
    """The robust statistics the checks read (all dimensionless where possible)."""
    y = curve.values
    n = len(y)
    finite = np.isfinite(y)
    nan_idx = int(np.argmax(~finite)) if not finite.all() else -1
    yf = y[:nan_idx] if nan_idx >= 0 else y
    f: dict[str, float] = {"n": float(n), "nan_index": float(nan_idx)}
    if len(yf) < 8:
        return f
    m = len(yf)
    k = max(3, m // 50)
    init = initial_level(yf[:k])
    window = max(5.0, m / 30)
    sm = ema(yf, 1.0 - 1.0 / window)
    tail = yf[-max(3, m // 10):]
    final = float(np.median(tail))
    best = float(np.min(sm[m // 10:])) if m >= 20 else float(np.min(sm))
    span = max(init - best, 1e-12 * max(abs(init), 1.0))
    # early blow-up: a short running median (robust to one bad batch) over the first 30%
    early = yf[: max(5, int(0.3 * m))]
    med5 = np.median(np.lib.stride_tricks.sliding_window_view(early, min(5, len(early))), axis=1)
    resid = yf[m // 2:] - sm[m // 2:]
    noise = robust_std(resid)
    tr = trend(sm, part=1 / 3)
    w = max(3, m // 10)
    mid = float(np.median(yf[2 * m // 3 - w: 2 * m // 3])) if 2 * m // 3 - w >= 0 else float("nan")
    noise_abs = max(noise, 1e-12 * max(abs(final), 1.0))
    total = init - final
    half_level = float(np.median(yf[m // 2 - w // 2: m // 2 + w // 2 + 1]))
    late = (half_level - final) / total if total > 0 else float("nan")  # share of the progress made in 2nd half
    if total > 0:
        below = np.nonzero(sm <= init - 0.5 * total)[0]
        half = float(below[0]) / m if below.size else 1.0
        below = np.nonzero(sm <= init - 0.9 * total)[0]
        ninety = float(below[0]) / m if below.size else 1.0
    else:
        half = ninety = float("nan")
    first = float(yf[0])
    f["first_drop"] = (first - final) / abs(first) if first else float("nan")
    f["instant"] = (first - init) / (first - final) if first > final else 0.0  # share of descent in the head
    f.update(init=init, final=final, best=best, span=span, half_time=half, ninety_time=ninety, late=late,
             early_peak=float(np.max(med5)) / init if init > 0 else float("nan"),
             rise=(final - best) / span, noise=noise / span, noise_level=noise / max(abs(final), 1e-12),
             drop=(init - final) / abs(init) if init else float("nan"),
             relative_drop=tr.relative_drop, deceleration=tr.deceleration,
             start_slope=tr.start_slope, end_slope=tr.end_slope, noise_abs=noise,
             progress=(mid - final) / noise_abs)
    # progress since early on (median of 10-30% of the run against the last 30%) in standard errors of the batch
    # noise (from first differences: robust to the trend): a crawl stands out, a run stalled on a floor does not
    step_noise = max(robust_std(np.diff(yf)) / math.sqrt(2.0), 1e-12 * max(abs(final), 1.0))
    a, b = yf[m // 10: max(3 * m // 10, m // 10 + 3)], yf[-max(3, 3 * m // 10):]
    se = 1.2533 * step_noise * math.sqrt(1.0 / len(a) + 1.0 / len(b))
    f["progress_z"] = (float(np.median(a)) - float(np.median(b))) / se
    moved = _movement(curve, m)
    if moved is not None:  # how far the weights had moved (summed update ratio): by the early peak, after the best
        f["moved_to_peak"] = float(moved[min(int(np.argmax(med5)) + 4, m - 1)])
        ib = m // 10 + int(np.argmin(sm[m // 10:])) if m >= 20 else int(np.argmin(sm))
        f["moved_after_best"] = float(moved[-1] - moved[ib])
        f["moved"] = float(moved[-1])
    return f


def _movement(curve: Curve, m: int) -> np.ndarray | None:
    """The cumulative relative weight movement up to each of the first ``m`` points: the update-to-weight ratio times
    the steps it stands for (a log every k steps, or bins of k steps, records one ratio per k updates); None without a
    logged ratio."""
    ur = curve.extra.get("update_ratio")
    if ur is None or ur.shape != curve.values.shape or np.isfinite(ur[:m]).sum() < max(8, m // 2):
        return None
    gap = np.diff(curve.steps[: m + 1].astype(np.float64), append=np.nan)[:m]
    gap[~np.isfinite(gap)] = np.nanmedian(gap) if np.isfinite(gap).any() else 1.0
    return np.cumsum(np.where(np.isfinite(ur[:m]) & (ur[:m] > 0), ur[:m], 0.0) * np.maximum(gap, 1.0))


# -------------------------------------------------------------------------------------------------------- checks
def diagnose(curve: Curve, thresholds: Thresholds | None = None, use_shape: bool = True,
             **overrides: float) -> Diagnosis:
    """Diagnose one loss curve: findings (most severe first) and a recommendation for the lr.

    ``thresholds`` (or keyword overrides of :class:`Thresholds` fields) tune the checks; ``use_shape=False`` leaves
    out the fitted shape model (:mod:`lrkit.doctor.direction`) and judges by the threshold rules alone."""
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
    f = features(c)
    steps = c.steps
    findings: list[Finding] = []
    window = c.meta.get("window")
    if window:
        notes.append(f"each point is a mean over {window} steps, so one bad batch is diluted and a spike that "
                     "shows in one point lasted or was large")

    # ----- non-finite loss
    if f["nan_index"] >= 0:
        i = int(f["nan_index"])
        findings.append(Finding("diverging", [int(steps[i])], f"the loss became {c.values[i]} at step {steps[i]} "
                                f"(last finite value {c.values[i - 1]:.4g} at step {steps[i - 1]})" if i else
                                f"the loss is {c.values[i]} from the first step", {"nan_step": int(steps[i])}))
    valid = int(f["nan_index"]) if f["nan_index"] >= 0 else len(c)
    ys, ss = c.values[:valid], steps[:valid]

    # ----- spikes: loss (and grad norm) persistently far above its recent robust baseline
    persistence = t.spike_persistence if not window else 1
    loss_spikes = spikes(ys, ss, z=t.spike_z, persistence=persistence) if valid >= 16 else []
    gn = c.extra.get("grad_norm")
    gn_spikes = []
    if gn is not None and gn.shape == c.values.shape and np.isfinite(gn[:valid]).sum() >= 16:
        g = gn[:valid]
        ok = np.isfinite(g) & (g > 0)
        gn_spikes = spikes(g[ok], ss[ok], z=t.spike_z, persistence=persistence, log=True)
    if loss_spikes:
        findings.append(_spike_finding(loss_spikes, gn_spikes, c, ss))

    verdicts = classify(f, t)
    if "init" in f and f["early_peak"] > t.early_blowup and "early_blowup" not in verdicts:
        notes.append(f"the loss rose to {f['early_peak']:.3g}x its initial value early on, but the weights had moved "
                     f"only {f['moved_to_peak']:.1%} (summed update/weight ratio) by then: batch noise, not the lr")
    if "init" in f:
        init, final, best = f["init"], f["final"], f["best"]
        # ----- diverging: early blow-up, or the level climbed back up / ended above the start
        if "early_blowup" in verdicts:
            i0 = int(np.argmax(ys[: max(5, int(0.3 * valid))]))
            findings.append(Finding("diverging", [int(ss[i0])], f"early blow-up: the loss reached "
                                    f"{f['early_peak']:.3g}x its initial value {init:.4g} by step {ss[i0]}",
                                    {"early_peak_ratio": f["early_peak"], "initial": init}))
        elif "rise" in verdicts:
            sm = ema(ys, 1 - 1 / max(5.0, valid / 30))
            near_best = np.nonzero(sm <= best + 0.1 * (final - best))[0]  # the climb begins after the last of these
            ib = int(near_best[-1]) if near_best.size else int(np.argmin(sm))
            findings.append(Finding("diverging", [int(ss[ib]), int(ss[-1])], f"the loss went down to {best:.4g} "
                                    f"and from step {ss[ib]} climbed back to {final:.4g}: {f['rise']:.0%} of the "
                                    "progress lost", {"rise": f["rise"], "best": best, "final": final}))
        elif "ended_higher" in verdicts:
            findings.append(Finding("diverging", [int(ss[0]), int(ss[-1])], f"the loss ended higher ({final:.4g}) "
                                    f"than it started ({init:.4g})", {"drop": f["drop"]}))
        if "stalled" in verdicts:
            findings.append(Finding("oscillating", [int(ss[valid // 10]), int(ss[-1])], f"the loss fell from "
                                    f"{ys[0]:.4g} early, then stalled: from 10-30% of the run to its last 30% it "
                                    f"moved {f['progress_z']:.1f} standard errors of its batch noise "
                                    f"(±{f['noise_abs']:.3g}), no progress a crawl would show; a floor of noise that "
                                    "a lower lr gets under", {"progress_z": f["progress_z"], "first": float(ys[0]),
                                                              "stalled": True}))
        if "instant" in verdicts:
            k = max(3, valid // 50)
            findings.append(Finding("oscillating", [int(ss[0]), int(ss[k]), int(ss[-1])], f"the loss fell from "
                                    f"{ys[0]:.4g} to {init:.4g} within the first {k} logged points "
                                    f"({f['instant']:.0%} of its whole descent to {final:.4g}) and little after: an "
                                    "lr large enough to finish the descent in a few steps, then bounce on a floor "
                                    "that a lower lr gets under", {"instant": f["instant"], "first": float(ys[0])}))
        # ----- oscillating: large noise around the trend relative to the progress made
        if "oscillating" in verdicts:
            findings.append(Finding("oscillating", [int(ss[valid // 2]), int(ss[-1])], f"over the second half the "
                                    f"loss swings by ±{f['noise_abs']:.3g} around its trend, {f['noise']:.2f}x the "
                                    f"total progress ({init - best:.3g})", {"noise_ratio": f["noise"]}))
        # ----- too slow / plateau
        if "plateau" in verdicts:
            findings.append(Finding("plateau", [int(ss[0]), int(ss[-1])], f"the loss is flat from the start: "
                                    f"{init:.4g} -> {final:.4g} ({abs(f['drop']):.1%} "
                                    f"{'lower' if f['drop'] >= 0 else 'higher'})",
                                    {"drop": f["drop"]}))
        elif "too_slow" in verdicts:
            late = f"; {f['late']:.0%} of the progress came in the second half" if f["late"] == f["late"] else ""
            findings.append(Finding("too_slow", [int(ss[0]), int(ss[-1])], f"the loss fell only {f['drop']:.0%} "
                                    f"({init:.4g} -> {final:.4g}) and is still falling at "
                                    f"{f['deceleration']:.0%} of its initial rate in the last third{late}",
                                    {"drop": f["drop"], "deceleration": f["deceleration"], "late": f["late"]}))
    if use_shape:
        _shape_call(c, ys, ss, valid, f, findings, notes, t)
    if f.get("shape_model", 0.0) < 2.0:  # unless the shape model has read the update ratio already
        _update_ratio_findings(c, t, findings)
    if not findings:
        findings.append(Finding("healthy", [], "the loss fell and levelled off without spikes, divergence or "
                                "large oscillation", {}))
    findings.sort(key=lambda x: KINDS.index(x.kind))
    rec = recommend(findings, f, c, valid)
    return Diagnosis(metric, findings, rec, curve=c, notes=notes, stats=f)


def classify(f: dict[str, float], t: Thresholds) -> set[str]:
    """Which trend checks fire on the :func:`features` ``f`` (a pure, cheap function: the benchmark tunes it)."""
    out: set[str] = set()
    if "init" not in f:
        return out
    # progress that stands out of the batch-to-batch noise (else "rise" and "noise" ratios are noise over noise)
    progress = f["init"] - f["best"] > 0.05 * abs(f["init"])
    clear = progress and f["init"] - f["best"] > 3 * f["noise_abs"]
    def still(key: str) -> bool:  # the weights barely moved over that stretch: what the loss did there is noise
        return f.get(key, math.inf) < t.still_weights

    if f["early_peak"] > t.early_blowup and not still("moved_to_peak"):
        out.add("early_blowup")
    elif clear and f["rise"] > t.rise and not still("moved_after_best"):
        out.add("rise")
    elif f["drop"] < -0.01 and f["final"] - f["init"] > 2 * f["noise_abs"] and not still("moved"):
        out.add("ended_higher")
    diverging = bool(out) or f["nan_index"] >= 0
    if not diverging and f["instant"] >= t.instant_share and f["first_drop"] >= t.instant_drop:
        out.add("instant")
    if progress and f["noise"] > t.noise and not diverging and "instant" not in out:
        out.add("oscillating")
    if not diverging and "oscillating" not in out and "instant" not in out:
        if f["drop"] < t.flat_drop:
            out.add("plateau")
        elif f["drop"] < t.slow_drop or f["deceleration"] > t.slow_decel:
            if f["progress_z"] >= t.progress_z:
                out.add("too_slow")
            elif f["first_drop"] >= t.instant_drop:
                out.add("stalled")  # it fell from its first value, then made no progress that beats the noise
            else:
                out.add("plateau")
    return out


def _shape_call(c: Curve, ys: np.ndarray, ss: np.ndarray, valid: int, f: dict[str, float],
                findings: list[Finding], notes: list[str], t: Thresholds) -> None:
    """Let the fitted shape model (:mod:`lrkit.doctor.direction`) settle the direction of a run that neither diverged
    nor spiked, when its vote is confident: it replaces the threshold rules' oscillating / too_slow / plateau findings
    by one that agrees with it.

    Applies to finite runs; a logged lr schedule enters by its shape (warmup and decay; the model was fitted on
    constant and warmup+cosine runs)."""
    from lrkit.doctor.direction import (
        SIGNALS,
        load_models,
        predict,
        predict_ratio,
        profile,
        sample_index,
        shape_features,
    )

    # an early blow-up the run recovered from (it ended below its start) is also the shape of RMSprop/Adam's first
    # steps at a good lr: the model, which reads the early peak, may overrule it when very sure the lr is not too high
    blowup = [x for x in findings if x.kind == "diverging" and "early_peak_ratio" in x.data]
    hard = [x for x in findings if x.kind in ("diverging", "spiking") and x not in blowup or "instant" in x.data]
    if valid < len(c) or "init" not in f or hard or (blowup and not f["final"] < f["init"]):
        return
    idx = sample_index(valid, t.shape_points)  # a long run is read like the runs the model was fitted on
    side = {k: (v[idx] if v is not None and v.shape == c.values.shape else None)
            for k in ("grad_norm", "update_ratio", "grad_alignment") for v in [c.extra.get(k)]}
    lrs = c.lrs[idx] if c.lrs is not None else None
    sf = shape_features(ys[idx], side["grad_norm"], lrs, side["update_ratio"], side["grad_alignment"])
    if sf is None:
        return
    prof = profile(ys[idx], side["grad_norm"], lrs, side["update_ratio"], side["grad_alignment"])
    probs, model = predict(sf, prof)
    voters = "boosted trees and a sequence model" if prof is not None and load_models().get("seq_" + model) else \
        "boosted trees"
    f["lr_over_best"] = predict_ratio(sf)  # how far off runs of this shape were: the factor to recommend
    call = max(probs, key=probs.__getitem__)
    f.update({f"p_{k}": v for k, v in probs.items()})
    # which variant voted: 5 loss + grad norm + update ratio + alignment, 4 the same without the grad norm, 3 loss +
    # grad norm + update ratio, 2 loss + update ratio, 1 loss + grad norm, 0 loss
    f["shape_model"] = {"with_al": 5.0, "loss_ur_al": 4.0, "with_ur": 3.0, "loss_ur": 2.0, "with_gn": 1.0}.get(model, 0.0)
    level = t.shape_confidence if model != "loss_only" else t.shape_confidence_loss_only
    if "al_late" in sf:  # the gradient alignment, in words a user can check against the logged column
        f["alignment_late"], f["alignment_late_positive"] = sf["al_late"], sf["al_late_pos"]
        notes.append(f"gradient alignment (cos of each step's gradient against the previous update; > 0: the last "
                     f"step still descends, < 0: it overshot) over the last third: mean {sf['al_late']:+.3f}, "
                     f"{sf['al_late_pos']:.0%} of the steps > 0")
    notes.append(f"shape model ({voters} on the {SIGNALS[model]}): lr too high "
                 f"{probs['too_high']:.0%}, good {probs['good']:.0%}, too low {probs['too_low']:.0%}"
                 + ("" if probs[call] >= level else f" (below {level:.0%}: the trend rules decide)"))
    if probs[call] < level:
        return  # not sure enough: the trend rules decide
    if blowup:
        if call == "too_high" or probs[call] < t.blowup_confidence:
            return  # the blow-up stands: lower
        findings.remove(blowup[0])
        f["recovered_blowup"] = 1.0
        notes.append(f"{blowup[0].evidence}, but the run recovered and ended at {f['final']:.4g}, below its start; the "
                     f"shape model calls the lr {'good' if call == 'good' else 'too low'} ({probs[call]:.0%}), so this "
                     "is not read as divergence")
    # it may reverse the rules' direction: on the labelled runs the rules' "oscillating" (noise large against the
    # progress) fires on many crawls, and blocking the model's "raise" there cost 4 points on too-low runs
    soft = ("oscillating", "too_slow", "plateau")
    rule_kinds = [x.kind for x in findings if x.kind in soft]
    keep = {"too_high": ("oscillating",), "too_low": ("too_slow", "plateau"), "good": ()}[call]
    findings[:] = [x for x in findings if x.kind not in soft or x.kind in keep]
    odds = f"{probs[call]:.0%} of the fitted model's vote (from the {SIGNALS[model]}, fitted on lrkit's labelled real runs)"
    init, final = f["init"], f["final"]
    if call == "too_high" and not any(x.kind == "oscillating" for x in findings):
        t90 = f.get("ninety_time", float("nan"))
        i90 = min(int(t90 * valid), valid - 1) if t90 == t90 else 0
        findings.append(Finding("oscillating", [int(ss[i90]), int(ss[-1])], f"the loss made 90% of its descent "
                                f"({init:.4g} -> {final:.4g}) by step {ss[i90]} ({t90:.0%} of the run) and then sat "
                                f"on a floor of batch noise (±{f['noise_abs']:.3g}, {f['noise_level']:.1%} of the "
                                f"level): the shape of a run whose lr is about 4x or more too high; {odds}",
                                {"ninety_time": t90, "noise_level": f["noise_level"], **probs}))
    elif call == "too_low" and not any(x.kind in ("too_slow", "plateau") for x in findings):
        late = f.get("late", float("nan"))
        findings.append(Finding("too_slow", [int(ss[valid // 2]), int(ss[-1])], f"the loss is still falling at the "
                                f"end ({init:.4g} -> {final:.4g}, {f['drop']:.0%} lower"
                                + (f"; {late:.0%} of that came in the second half" if 0 <= late <= 1 else "")
                                + f"): the shape of a run whose lr is about 10x too low; {odds}",
                                {"drop": f["drop"], "late": late, **probs}))
    elif call == "good" and rule_kinds:
        notes.append(f"the threshold rules saw {', '.join(rule_kinds)}, but the shape model calls this lr good "
                     f"({odds}): keep")
    for x in findings:
        if x.kind in soft and x.kind in keep:
            x.data.update(probs)


def _spike_finding(loss_spikes: list, gn_spikes: list, c: Curve, ss: np.ndarray) -> Finding:
    parts = []
    for sp in loss_spikes[:5]:
        back = f"recovered by step {sp.end}" if sp.recovered else "did not recover"
        parts.append(f"step {sp.start} (peak {sp.peak_value:.4g} = {sp.ratio:.2f}x the baseline "
                     f"{sp.baseline:.4g} at step {sp.peak}, {back})")
    more = f" and {len(loss_spikes) - 5} more" if len(loss_spikes) > 5 else ""
    ev = f"{len(loss_spikes)} loss spike(s): " + "; ".join(parts) + more
    gn_starts = {s.start for s in gn_spikes}
    with_gn = [s for s in loss_spikes if any(abs(s.start - g) <= 3 for g in gn_starts)]
    if with_gn:
        ev += f"; the gradient norm spiked with {len(with_gn)} of them"
    data: dict[str, Any] = {"spikes": [{"start": s.start, "peak": s.peak, "end": s.end, "ratio": s.ratio}
                                       for s in loss_spikes]}
    if c.lrs is not None and np.isfinite(c.lrs).any():
        lrs = c.lrs
        peak_i = int(np.nanargmax(lrs))
        peak_step = int(c.steps[peak_i])
        first = loss_spikes[0].start
        rising = peak_i > 0 and lrs[0] < 0.5 * lrs[peak_i]
        if rising and abs(first - peak_step) <= max(0.1 * (c.steps[-1] - c.steps[0]), 3):
            ev += (f"; the first spike began at step {first}, when warmup brought the lr to its peak "
                   f"{lrs[peak_i]:.3g} (step {peak_step})")
            data["near_lr_peak"] = True
        data["lr_at_first_spike"] = float(np.interp(first, c.steps, lrs))
    return Finding("spiking", [s.start for s in loss_spikes], ev, data)


def _update_ratio_findings(c: Curve, t: Thresholds, findings: list[Finding]) -> None:
    ur = c.extra.get("update_ratio")
    if ur is None or ur.shape != c.values.shape or not np.isfinite(ur).any():
        return
    med = float(np.nanmedian(ur[len(ur) // 2:]))
    if med > t.update_ratio_high and not any(f.kind == "diverging" for f in findings):
        findings.append(Finding("oscillating", [int(c.steps[len(ur) // 2]), int(c.steps[-1])],
                                f"the update-to-weight ratio is {med:.2g} (rule of thumb: about 1e-3): "
                                "each step moves the weights a lot", {"update_ratio": med}))
    elif med < t.update_ratio_low and not any(f.kind in ("too_slow", "plateau") for f in findings):
        findings.append(Finding("too_slow", [int(c.steps[len(ur) // 2]), int(c.steps[-1])],
                                f"the update-to-weight ratio is {med:.2g} (rule of thumb: about 1e-3): the "
                                "weights barely move", {"update_ratio": med}))


def _factor(f: dict[str, float], default: float, lower: bool) -> tuple[float, str]:
    """The lr multiplier: the inverse of the shape model's lr / best-lr estimate when it has one that points the
    same way (clipped to 1/30..0.7 to lower, 1.5..30 to raise), else ``default``; with the words saying so."""
    r = f.get("lr_over_best")
    if r is None or not math.isfinite(r) or (r <= 1.0 if lower else r >= 1.0):
        return default, ""
    factor = float(np.clip(1.0 / r, 1 / 30, 0.7) if lower else np.clip(1.0 / r, 1.5, 30.0))
    return factor, (f" (runs of this shape in lrkit's labelled set had about {r:.2g}x their best lr; multiply by "
                    f"{factor:.2g})")


def recommend(findings: list[Finding], f: dict[str, float], c: Curve, valid: int) -> Recommendation:
    """The lr recommendation for a set of findings (the most severe decides)."""
    kinds = {x.kind for x in findings}
    advice: list[str] = []
    if f.get("recovered_blowup"):
        advice.append("add a warmup (a few hundred steps): the loss blew up early before it recovered")
    lr_known = c.lrs is not None and np.isfinite(c.lrs).any()
    warm = lr_known and c.lrs[0] < 0.5 * np.nanmax(c.lrs)
    if "diverging" in kinds:
        d = next(x for x in findings if x.kind == "diverging")
        severe = f["nan_index"] >= 0 or f.get("early_peak", 1.0) > 10 or f.get("drop", 0.0) < -0.5
        factor = 0.1 if severe else 0.3
        early = f["nan_index"] >= 0 and f["nan_index"] < 0.3 * f["n"] or f.get("early_peak", 1.0) > 2.0
        if early and not warm:
            advice.append("add a warmup (a few hundred steps) so the first updates are small")
        return Recommendation("lower", factor, f"the run diverged: {d.evidence}", advice)
    if "spiking" in kinds:
        sp = next(x for x in findings if x.kind == "spiking")
        if sp.data.get("near_lr_peak"):
            advice.append("lengthen the warmup or lower the peak lr: spikes start where warmup ends")
        advice.append("clip gradients (e.g. max norm 1.0)")
        return Recommendation("lower", 0.5, f"the loss spikes: {sp.evidence}", advice)
    if "oscillating" in kinds:
        o = next(x for x in findings if x.kind == "oscillating")
        if not lr_known or np.nanmin(c.lrs) > 0.5 * np.nanmax(c.lrs):
            advice.append("add decay (cosine or linear to ~10% of the peak) to settle the noise late in training")
        factor, how = _factor(f, 0.3, lower=True)
        return Recommendation("lower", factor, f"the loss oscillates: {o.evidence}{how}", advice)
    if "plateau" in kinds:
        p = next(x for x in findings if x.kind == "plateau")
        factor, how = _factor(f, 10.0, lower=False)
        return Recommendation("raise", factor, f"nothing is happening: {p.evidence}{how}", advice)
    if "too_slow" in kinds:
        s = next(x for x in findings if x.kind == "too_slow")
        factor, how = _factor(f, 10.0 if f.get("drop", 0.0) < 0.1 else 3.0, lower=False)
        return Recommendation("raise", factor, f"training crawls: {s.evidence}{how}", advice)
    if lr_known and np.nanmin(c.lrs[valid // 2: valid]) > 0.5 * np.nanmax(c.lrs[:valid]):
        advice.append("add decay (cosine or linear) to settle late in training")
    return Recommendation("keep", 1.0, "the loss fell quickly and levelled off, without divergence, spikes or "
                          "large oscillation", advice)
