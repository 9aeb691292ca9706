"""Every matplotlib figure of lrkit. matplotlib is imported when a plot is made; lrkit never picks its backend (a
notebook keeps its inline one; without a display matplotlib falls back to Agg; the ``lrkit`` command, which only
writes files, asks for Agg itself)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrkit._files import atomic_write
from lrkit.curve import kept_points
from lrkit.schedules._base import sample_steps

#: the most points a schedule's curve is drawn with: a figure shows a few thousand at most
PLOT_POINTS = 4000


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a figure atomically (see :func:`lrkit._files.atomic_write`), in the format its extension names (PNG
    without one)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"), binary=True)


def plot_finder(result: Any, path: str | os.PathLike | None = None, ax: Any = None,
                rules: Sequence[str] = (), skip_start: int = 0, skip_end: int = 0) -> Any:
    """Loss against lr (log x axis; linear for a linear ramp): raw points, the curve the rule judged (the robust
    fit of the raw losses, or the smoothed loss), the suggestion and its interval, the confirmation runs; extra
    ``rules`` marked too (applied with the same skips). ``skip_start``/``skip_end`` leave out that many recorded
    points at either end of the curves. Saves to ``path`` when given; returns the Axes. ``result`` is a
    :class:`~lrkit.finder.FinderResult` (what it judged comes from its ``robust_fit()``)."""
    plt = _pyplot()
    lrs = np.asarray(result.lrs)
    keep = kept_points(len(lrs), skip_start, skip_end)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    losses = np.asarray(result.losses)
    shown = [losses[keep]]
    if result.val_losses is not None:
        idx = np.asarray(result.val_steps, dtype=np.int64)
        idx_kept = keep[idx]
        ax.plot(lrs[keep], losses[keep], ".", color="0.75", ms=3, label="training loss")
        ax.plot(lrs[idx][idx_kept], np.asarray(result.val_losses)[idx_kept], "-o", ms=3, color="C0",
                label="validation loss")
        shown.append(np.asarray(result.val_losses)[idx_kept])
    else:
        ax.plot(lrs[keep], losses[keep], ".", color="0.6", ms=3, label="loss")
        ax.plot(lrs[keep], np.asarray(result.smoothed_losses)[keep], "-", color="C0", lw=1, alpha=0.6,
                label="smoothed loss (EMA)")
        fit = result.robust_fit()
        if fit is not None:
            fit_lrs = 10**fit.log_lrs
            in_view = (fit_lrs >= lrs[keep].min()) & (fit_lrs <= lrs[keep].max()) if keep.any() else fit_lrs < 0
            ax.plot(fit_lrs[in_view], fit.fitted[in_view], "-", color="C1", lw=2,
                    label="robust fit (what the rule judges)")
            if fit.lr_diverge is not None:
                ax.axvline(fit.lr_diverge, color="C3", ls=":", lw=1.5, label=f"loss turns up at {fit.lr_diverge:.3g}")
            shown.append(fit.fitted[in_view])
    ax.set_xscale("linear" if result.config.get("mode") == "linear" else "log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    y = np.concatenate([v[np.isfinite(v)] for v in shown])
    if y.size:  # keep the divergence tail from squashing the informative part of the curve
        lo = float(y.min())
        first = np.asarray(shown[-1])
        first = first[np.isfinite(first)]
        top = max(float(first[: max(len(first) // 3, 1)].max()) if first.size else lo, lo + 1e-12)
        pad = 0.08 * (top - lo)
        ax.set_ylim(lo - pad, top + 3 * pad)
    s = result.suggestion
    if s.lr is not None:
        if s.interval:
            ax.axvspan(s.interval[0], s.interval[1], color="C2", alpha=0.15, label="good interval")
        ax.axvline(s.lr, color="C2", lw=2, label=f"suggested lr {s.lr:.3g} ({s.rule})")
    for c in getattr(result, "confirmations", []) or []:
        ax.plot([c["lr"]], [ax.get_ylim()[0]], "^", color="C4", ms=8, clip_on=False)
        ax.annotate(f"{c['score']:.3g}", (c["lr"], ax.get_ylim()[0]), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=7, color="C4")
    if getattr(result, "confirmations", None):
        ax.plot([], [], "^", color="C4", label="confirmation runs (their final loss)")
    for k, rule in enumerate(rules):
        other = result.suggest(rule, skip_start=skip_start, skip_end=skip_end)
        if other.lr is not None:
            ax.axvline(other.lr, color=f"C{5 + k}", ls="--", lw=1, label=f"{rule}: {other.lr:.3g}")
    ax.set_title(f"LR range test — {result.stop_reason.split(':')[0]}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="both", alpha=0.25)
    if own and path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return ax


def plot_sweep(result: Any, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
    """Every trial's reported curve of an lr sweep on one figure, coloured by lr (log colour scale): failed trials
    dashed with an x where they stopped, pruned ones dotted, the best lr thick. Saves to ``path``; returns the Axes."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    trials = [t for t in result.trials if len(t.values)]
    lrs = [t.lr for t in result.trials if t.lr > 0] or [1e-3]
    norm = LogNorm(vmin=min(lrs), vmax=max(lrs) * (1.0001 if min(lrs) == max(lrs) else 1.0))
    cmap = plt.get_cmap("viridis")
    best = result.best_lr
    finite_all: list[float] = []
    for t in sorted(trials, key=lambda t: t.lr):
        values = np.asarray(t.values, dtype=float)
        ok = np.isfinite(values)
        finite_all.extend(values[ok])
        style = {"failed": "--", "pruned": ":"}.get(t.state, "-")
        ax.plot(np.asarray(t.steps)[ok], values[ok], style, color=cmap(norm(t.lr)),
                lw=2.5 if best is not None and t.lr == best else 1.2)
        if t.state == "failed" and ok.any():
            ax.plot(np.asarray(t.steps)[ok][-1], values[ok][-1], "x", color=cmap(norm(t.lr)), ms=8)
    if finite_all:  # a diverged trial must not squash the others: cap at 3x the largest starting value
        first = [float(np.asarray(t.values)[0]) for t in trials if np.isfinite(np.asarray(t.values)[0])]
        lo, hi = min(finite_all), max(finite_all)
        cap = 3.0 * max(first) if first else hi
        if hi > cap > lo:
            ax.set_ylim(top=cap)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    ax.figure.colorbar(sm, ax=ax, label="learning rate")
    ax.set_xlabel("step")
    ax.set_ylabel("reported value")
    title = f"lr sweep: {len(result.trials)} trials"
    if best is not None:
        title += f", best lr {best:.3g}"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25)
    if own and path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return ax


def plot_stepwise(result: Any, path: str | os.PathLike | None = None) -> Any:
    """A stepwise search on one figure: score against lr (every seed, the mean, the choice, the edge) and, when
    the trials have curves (sweep engine runs), every trial's curve via :func:`plot_sweep`. Returns the Figure."""
    from types import SimpleNamespace

    plt = _pyplot()
    records = [t.record for t in result.trials if t.record is not None and len(getattr(t.record, "values", ()))]
    fig, axes = plt.subplots(1, 2 if records else 1, figsize=(13 if records else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    ok = [t for t in result.trials if t.status == "ok"]
    bad = [t for t in result.trials if t.status != "ok"]
    ax.plot([t.lr for t in ok], [t.score for t in ok], "o", color="C0", ms=4, alpha=0.7, label="trial (seed)")
    rows = [r for r in result.by_lr() if np.isfinite(r["mean_score"])]
    ax.plot([r["lr"] for r in rows], [r["mean_score"] for r in rows], "-", color="C0", lw=1.5, label="mean")
    if bad:
        top = max([t.score for t in ok], default=1.0)
        ax.plot([t.lr for t in bad], [top] * len(bad), "x", color="C3", ms=8, label="failed / diverged")
    if result.edge_lr is not None:
        ax.axvline(result.edge_lr, color="C3", ls="--", lw=1, label=f"edge {result.edge_lr:.3g}")
    ax.axvline(result.lr, color="C2", lw=2, label=f"chosen {result.lr:.3g} ({result.rule})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("score")
    cost = f"{result.cost_trials} trials" + ("" if result.cost_steps is None else f", {result.cost_steps} steps")
    ax.set_title(f"stepwise lr search — {cost}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    if records:
        plot_sweep(SimpleNamespace(trials=records, best_lr=result.lr), ax=axes[0, 1])
    if path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return fig


def plot_schedule(schedule: Any, steps: int, path: str | os.PathLike | None = None, ax: Any = None,
                  log: bool = False, momentum: Any = None, key_points: dict[str, Any] | None = None) -> Any:
    """An lrkit schedule over steps ``0..steps-1``: the lr curve, its peak and phase starts marked (``log``: log y
    axis; ``momentum``: a companion schedule on a second axis). At most :data:`PLOT_POINTS` points are drawn (see
    :func:`lrkit.schedules.sample_steps`); ``key_points``: the schedule's ``key_points(steps)`` when already computed. Saves to
    ``path`` when given; returns the Axes."""
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4))
    kp = key_points if key_points is not None else schedule.key_points(steps)
    t = sample_steps(steps, [s for s, _ in kp["phases"]] + [kp["peak_step"]], PLOT_POINTS)
    lrs = schedule(t)
    ax.plot(t, lrs, "-", color="C0", lw=1.8, label="lr")
    ax.plot([kp["peak_step"]], [kp["peak"]], "o", color="C3", ms=5, label=f"peak {kp['peak']:.3g} @ {kp['peak_step']}")
    for k, (s, label) in enumerate(kp["phases"]):
        ax.axvline(s, color="0.6", ls=":", lw=1, label="phase change" if k == 0 else None)
        ax.annotate(label, (s, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right", color="0.4")
    if log:
        ax.set_yscale("log")
    if momentum is not None:
        ax2 = ax.twinx()
        ax2.plot(t, momentum(t), "--", color="C1", lw=1, label="momentum")
        ax2.set_ylabel("momentum")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    title = str(schedule)
    ax.set_title(title if len(title) <= 90 else title[:87] + "...", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.25)
    if own and path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return ax


def plot_diagnosis(diagnosis: Any, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
    """The run as a practitioner reads it: the raw loss (light) and its centred running median (dark, no lag on a
    fast descent), the eval loss (orange) where logged, the lr (green, right axis) where logged, a log loss axis when
    the loss spans a decade, and each finding marked where it happens; the verdict and the advice in the title.
    Saves to ``path`` (atomically) when given; returns the Axes."""
    from lrkit.curve import running_median

    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(9, 4.8))
    c = diagnosis.curve
    steps, y = np.asarray(c.steps), np.asarray(c.values, dtype=np.float64)
    finite = np.isfinite(y)
    ax.plot(steps[finite], y[finite], "-", color="#9ecae1", lw=0.7, label=f"{diagnosis.metric} (raw)")
    shown = [y[finite]]
    if finite.sum() >= 3:
        w = diagnosis.features.window if diagnosis.features is not None else max(3, int(finite.sum()) // 25)
        sm = running_median(y[finite], w)
        ax.plot(steps[finite], sm, "-", color="#08519c", lw=1.8, label=f"running median ({w} points)")
        shown = [sm, np.percentile(y[finite], [1, 99])]
    ev = next(((k[5:], v) for k, v in c.extra.items() if k.startswith("eval:") and v.ndim == 2), None)
    if ev is not None:
        ok = np.isfinite(ev[1][1])
        ax.plot(ev[1][0][ok], ev[1][1][ok], "o-", color="#e6550d", ms=3, lw=1.2, label=f"{ev[0]} (eval)")
        shown.append(ev[1][1][ok])
    vals = np.concatenate(shown) if shown else np.empty(0)
    if vals.size >= 2:  # the smoothed run and the eval loss in full; the raw loss's extremes (a blow-up) cut
        lo, hi = float(np.min(vals)), float(np.max(vals))
        if lo > 0 and hi / lo >= 10:
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.3, hi * 1.5)
        else:
            pad = 0.08 * (hi - lo + 1e-12)
            ax.set_ylim(lo - pad, hi + 3 * pad)
    colors = {"diverging": "#cb181d", "stuck": "#cb181d", "spiking": "#fd8d3c", "oscillating": "#756bb1",
              "overfitting": "#e6550d", "too_slow": "#31a354", "plateau": "#31a354", "numerics": "#636363"}
    for f in diagnosis.findings:
        col = colors.get(f.kind)
        if col is None or not f.steps:
            continue
        if f.kind == "spiking" and f.data.get("spikes"):
            for k, sp in enumerate(f.data["spikes"]):
                end = sp["end"] if sp["end"] is not None else steps[-1]
                ax.axvspan(sp["start"], max(end, sp["start"] + 1), color=col, alpha=0.25,
                           label="spike" if k == 0 else None)
        elif f.kind in ("diverging", "numerics") or len(f.steps) == 1:
            ax.axvline(f.steps[0], color=col, ls="--", lw=1.5, label=f"{f.kind.replace('_', ' ')} @ {f.steps[0]}")
        else:
            ax.axvspan(f.steps[0], f.steps[-1], color=col, alpha=0.08, label=f.kind.replace("_", " "))
    ax.set_xlabel("step" if c.meta.get("unit", "step") in ("step", "row") else str(c.meta.get("unit")))
    ax.set_ylabel(diagnosis.metric)
    handles, labels = ax.get_legend_handles_labels()
    if c.lrs is not None and np.isfinite(c.lrs).any():
        ax2 = ax.twinx()
        line = ax2.plot(steps, c.lrs, "-", color="#238b45", lw=1.2, alpha=0.8, label="lr")
        ax2.set_ylabel("learning rate", color="#238b45")
        ax2.tick_params(axis="y", colors="#238b45")
        handles, labels = handles + line, labels + ["lr"]
    r = diagnosis.recommendation
    what = {"raise": f"raise lr ~{r.factor:.3g}x", "lower": f"lower lr ~{1 / r.factor:.3g}x", "keep": "keep lr"}
    sure = "" if r.certainty == "direct" else f" ({r.certainty})"
    src = c.meta.get("source", "")
    ax.set_title(f"{diagnosis.verdict}: {what.get(r.action, r.action)}{sure}"
                 + (f" — {os.path.basename(os.path.normpath(src))}" if src else ""), fontsize=10)
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.grid(True, alpha=0.25)
    if own and path is not None:
        save_figure(fig, path)
        plt.close(fig)
    return ax
