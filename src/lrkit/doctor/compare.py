"""Several runs of one lr sweep: the comparison decides, and each run's verdict agrees with the ranking.

A sweep is the one thing that shows directly whether an lr was too high or too low: the same model trained at
several lrs. :func:`diagnose_runs` diagnoses each run (:func:`lrkit.diagnose`), ranks them by the eval loss where
every run logged one (its best value: what early stopping keeps), else by the final training loss at the step all
runs reached, and then advises each run relative to the best: runs as good as the best within the noise keep their
lr, a worse run with a higher lr lowers it to the best's, a worse run with a lower lr raises it to the best's (the
factor is the ratio of the two lrs: direct evidence). A run that diverged ranks last. Where a run's lr is unknown, or
equals the best's (another setting differs), its own diagnosis stands and the ranking is noted.

Each run's lr is the peak of its logged lr, else a setting found beside the metrics (a config record, MLflow params),
else one written in its file or run name (``lr_3e-4``, ``UNet_lr1e_3``), and the diagnosis says which.

:func:`sweep_siblings` finds the other runs of the sweep a log belongs to, where the sweep is laid out on disk the
usual way: files or folders whose names differ only by the lr written in them (``train_lr1e-3.log`` beside
``train_lr3e-4.log``; ``runs/lr_0.01/train.log`` beside ``runs/lr_0.001/train.log``). ``lrkit.diagnose(path)`` and
``lrkit diagnose FILE`` compare a log with them (``siblings=False`` / ``--alone``: the log alone) and say so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit.curve import Curve, step_noise
from lrkit.doctor.checks import DIRECT, Diagnosis, Recommendation, diagnose
from lrkit.errors import LrkitError

TIE = 0.02  # runs within this relative distance of the best score are as good as the best (beyond the noise)


@dataclass
class SweepDiagnosis:
    """The diagnoses of several runs (in the order given), their ranking (best first) and what it rests on."""

    runs: list[Diagnosis]
    names: list[str]
    ranking: list[int]  # indices into ``runs``, best first
    scores: list[float]  # each run's score (lower is better; inf: diverged or unscored)
    lrs: list[float | None]  # each run's lr (None: unknown)
    lr_sources: list[str]
    basis: str  # what was compared, in words
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> int:
        return self.ranking[0]

    def to_dict(self) -> dict[str, Any]:
        best_lr = self.lrs[self.best]
        runs = []
        for i, d in enumerate(self.runs):
            lr = self.lrs[i]
            runs.append({**d.to_dict(), "name": self.names[i], "lr": lr, "lr_from": self.lr_sources[i],
                         "score": self.scores[i] if math.isfinite(self.scores[i]) else None,
                         "lr_vs_best": lr / best_lr if lr and best_lr else None})
        return {"runs": runs, "ranking": [self.names[i] for i in self.ranking], "best": self.names[self.best],
                "basis": self.basis, "notes": list(self.notes)}

    def __str__(self) -> str:
        lines = [f"ranking ({self.basis}; best first):"]
        best_score = self.scores[self.best]
        for k, i in enumerate(self.ranking, 1):
            lr = self.lrs[i]
            sc = self.scores[i]
            vs = f" ({sc / best_score:.3g}x the best)" if k > 1 and math.isfinite(sc) and best_score > 0 else ""
            r = self.runs[i].recommendation
            act = {"keep": "keep", "lower": f"lower x{r.factor:.2g}", "raise": f"raise x{r.factor:.2g}"}[r.action]
            lr_words = f", lr {lr:.3g}" if lr is not None else ""
            score = f"{sc:.4g}" if math.isfinite(sc) else "diverged"
            lines.append(f"  {k}. {self.names[i]}: {score}{vs}{lr_words} -> {act}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def run_lr(d: Diagnosis) -> tuple[float | None, str]:
    """A run's lr and where it was read: the logged lr's peak, a setting beside the metrics, or its name."""
    c = d.curve
    if c is None:
        return None, ""
    if d.schedule is not None and d.schedule.known:
        return d.schedule.peak, f"the logged lr ({c.meta.get('lr_column') or 'lr'})"
    cfg = c.meta.get("config") or {}
    if cfg.get("lr"):
        return float(cfg["lr"]), str(cfg.get("lr_from", "the run's settings"))
    if c.meta.get("name_lr"):
        return float(c.meta["name_lr"]), "its name"
    return None, ""


def _eval_best(d: Diagnosis) -> tuple[float, float]:
    """The best eval loss of a run (the lowest 3-evaluation mean) and its standard error (nan, nan: none)."""
    c = d.curve
    if c is None:
        return math.nan, math.nan
    for k, v in c.extra.items():
        if k.startswith("eval:") and v.ndim == 2:
            vals = v[1][np.isfinite(v[1])]
            if vals.size >= 2:
                w = min(3, vals.size) if vals.size >= 5 else 1
                sm = np.convolve(vals, np.ones(w) / w, mode="valid")
                late = vals[vals.size // 2:]
                noise = step_noise(late) if late.size >= 3 else 0.0
                return float(np.min(sm)), noise / math.sqrt(w)
    return math.nan, math.nan


def _final_at(d: Diagnosis, step: float) -> tuple[float, float]:
    """A run's final training loss at ``step`` (the median of its last 10% of points up to there) and its standard
    error."""
    c = d.curve
    if c is None:
        return math.nan, math.nan
    ok = np.isfinite(c.values) & (c.steps <= step)
    y = c.values[ok]
    if y.size < 3:
        return math.nan, math.nan
    tail = y[-max(3, y.size // 10):]
    return float(np.median(tail)), 1.2533 * step_noise(y) / math.sqrt(tail.size)


def _diverged(d: Diagnosis) -> bool:
    return any(f.kind in ("diverging", "stuck") and f.certainty == DIRECT for f in d.findings)


def compare(diagnoses: Sequence[Diagnosis], names: Sequence[str] | None = None) -> SweepDiagnosis:
    """Rank diagnosed runs of one sweep and rewrite each run's advice relative to the best (see the module doc)."""
    runs = list(diagnoses)
    if not runs:
        raise LrkitError("compare needs at least one diagnosed run")
    names = list(names) if names is not None else [str(i) for i in range(len(runs))]
    lrs, sources = zip(*(run_lr(d) for d in runs))
    lrs, sources = list(lrs), list(sources)
    notes: list[str] = []
    evals = [_eval_best(d) for d in runs]
    if len(runs) > 1 and all(math.isfinite(e[0]) for e in evals):
        scores, errors = [e[0] for e in evals], [e[1] for e in evals]
        basis = "best eval loss of each run"
    else:
        ends = [float(d.curve.steps[np.isfinite(d.curve.values)][-1]) if d.curve is not None and
                np.isfinite(d.curve.values).any() else math.nan for d in runs]
        common = min((e for e, d in zip(ends, runs) if math.isfinite(e) and not _diverged(d)), default=math.nan)
        finals = [_final_at(d, common) for d in runs]
        scores, errors = [e[0] for e in finals], [e[1] for e in finals]
        basis = "final training loss at the step every run reached" if math.isfinite(common) else "final training loss"
        if math.isfinite(common) and max(ends) > 1.2 * common:
            notes.append(f"runs differ in length: compared at step {common:g}, the end of the shortest")
    scores = [math.inf if _diverged(d) or not math.isfinite(s) else s for d, s in zip(runs, scores)]
    ranking = sorted(range(len(runs)), key=lambda i: (scores[i], i))
    result = SweepDiagnosis(runs, names, ranking, scores, lrs, sources, basis, notes)
    if len(runs) < 2:
        return result
    b = ranking[0]
    best, best_lr = scores[b], lrs[b]
    if not math.isfinite(best):
        notes.append("every run diverged: each run's own diagnosis stands")
        return result
    known = sorted({lr for lr in lrs if lr is not None})
    for i, d in enumerate(runs):
        lr = lrs[i]
        gap = (scores[i] - best) / abs(best) if math.isfinite(scores[i]) and best else math.inf
        rank_words = f"ranked {ranking.index(i) + 1} of {len(runs)} by {basis}"
        if i == b:
            edge = ""
            if lr is not None and len(known) > 1 and lr == known[-1]:
                edge = "; it is the highest lr tried: a higher one may be better still (try up to 3x)"
            elif lr is not None and len(known) > 1 and lr == known[0]:
                edge = "; it is the lowest lr tried: a lower one may be better still"
            own = d.recommendation
            keep_own = own.action == "lower" and own.certainty == DIRECT
            if not keep_own:
                d.recommendation = Recommendation("keep", 1.0, f"the best run of the sweep ({rank_words}, "
                                                  f"{scores[i]:.4g}){edge}", list(own.advice), DIRECT)
            continue
        if lr is None or best_lr is None or lr == best_lr:
            why = "its lr is unknown" if lr is None or best_lr is None else "it has the best run's lr"
            d.notes.append(f"{rank_words} ({scores[i]:.4g} vs {best:.4g} for {names[b]}); {why}, so its own "
                           "diagnosis stands")
            continue
        margin = max(TIE, 2 * math.hypot(errors[i], errors[b]) / abs(best)) if best else TIE
        if gap <= margin:
            own = d.recommendation
            if own.action == ("lower" if best_lr < lr else "raise"):
                # within the noise of the comparison, but the run's own evidence points toward the best run's lr:
                # the two agree, and the run's own advice stands
                d.notes.append(f"{rank_words} ({scores[i]:.4g} vs {best:.4g} at lr {best_lr:.3g}): within the "
                               f"noise of the comparison; its own finding points the same way as the sweep's best")
                continue
            d.recommendation = Recommendation("keep", 1.0, f"as good as the best run within the noise "
                                              f"({scores[i]:.4g} vs {best:.4g} at lr {best_lr:.3g}; {rank_words})",
                                              list(d.recommendation.advice), DIRECT)
            continue
        factor = best_lr / lr
        worse = f"{scores[i]:.4g} vs {best:.4g}" if math.isfinite(scores[i]) else "it diverged"
        d.recommendation = Recommendation("lower" if factor < 1 else "raise", factor,
                                          f"the sweep's best run ({names[b]}) has lr {best_lr:.3g}, "
                                          f"{'lower' if factor < 1 else 'higher'} than this run's {lr:.3g}, and "
                                          f"ends better ({worse}; {rank_words})", list(d.recommendation.advice),
                                          DIRECT)
    return result


def sweep_siblings(path: str | os.PathLike) -> list[str]:
    """The other runs of the lr sweep that ``path`` belongs to: entries beside it (or beside the folder holding it,
    with a file of the same name inside) whose names differ from its own only by the lr written in them, in lr
    order; empty when its name carries no lr or nothing matches."""
    from lrkit.doctor.readers import lr_tag

    path = os.path.normpath(os.fspath(path))
    for level in (0, 1):  # the entry's own name, then its folder's (runs/lr_0.01/train.log)
        entry = path if level == 0 else os.path.dirname(path)
        inner = "" if level == 0 else os.path.basename(path)
        name, parent = os.path.basename(entry), os.path.dirname(entry) or "."
        tag = lr_tag(name) if name else None
        if tag is None:
            continue
        lr, a, b = tag
        head, tail = name[:a].lower(), name[b:].lower()
        found = []
        try:
            entries = os.listdir(parent)
        except OSError:
            return []
        for other in entries:
            t = lr_tag(other)
            if other == name or t is None or t[0] == lr:
                continue
            if other[:t[1]].lower() != head or other[t[2]:].lower() != tail:
                continue
            full = os.path.join(parent, other, inner) if inner else os.path.join(parent, other)
            if os.path.exists(full) and os.path.isdir(full) == os.path.isdir(path):
                found.append((t[0], full))
        return [f for _, f in sorted(found)]
    return []


def diagnose_with_siblings(path: str | os.PathLike, metric: str | None = None, **kwargs: Any) -> Diagnosis | None:
    """The diagnosis of the log at ``path`` compared with the other runs of its sweep found beside it
    (:func:`sweep_siblings`), or None when there are none or none can be read. Its notes name the runs compared."""
    from lrkit.doctor.readers import read_log

    others = []
    for sib in sweep_siblings(path):
        try:
            others.append((sib, read_log(sib, metric=metric)))
        except LrkitError:
            continue  # another format, several runs, no loss: not comparable
    if not others:
        return None
    own = read_log(path, metric=metric)
    names = [os.fspath(path)] + [s for s, _ in others]
    sweep = compare([diagnose(c, **kwargs) for c in [own] + [c for _, c in others]], names)
    d = sweep.runs[0]
    lrs = ", ".join(f"{lr:.3g}" for lr in sweep.lrs[1:] if lr is not None)
    d.notes.append(f"compared with {len(others)} other run(s) of its sweep found beside it (lr {lrs}): "
                   + "; ".join(f"{i + 1}. {os.path.basename(os.path.normpath(sweep.names[k]))}" for i, k in
                               enumerate(sweep.ranking)) + " (ranked by " + sweep.basis + "; alone: siblings=False)")
    d.sweep = sweep
    return d


def diagnose_runs(runs: Sequence[Curve | str | os.PathLike], metric: str | None = None,
                  **kwargs: Any) -> SweepDiagnosis:
    """Diagnose several runs of one lr sweep together (curves, or log paths; a path holding several runs, such as
    an MLflow experiment, gives all of them): each run's diagnosis, the ranking, and advice that agrees with it.
    ``kwargs`` go to :func:`lrkit.diagnose` for every run."""
    from lrkit.doctor.readers import read_runs

    curves: list[Curve] = []
    names: list[str] = []
    for r in runs:
        if isinstance(r, Curve):
            curves.append(r)
            names.append(str(r.meta.get("run") or r.meta.get("source") or r.name))
        elif isinstance(r, (str, os.PathLike)):
            got = read_runs(r, metric=metric)
            curves += got
            names += [f"{os.fspath(r)}:{c.meta['run']}" if len(got) > 1 and c.meta.get("run") else os.fspath(r)
                      for c in got]
        else:
            raise LrkitError(f"diagnose_runs takes Curves or log paths, got {type(r).__name__}")
    return compare([diagnose(c, **kwargs) for c in curves], names)
