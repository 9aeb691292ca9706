"""``lrkit diagnose FILE...``: read training logs, say what is wrong with the lr, write annotated plots.

Plots go next to each input (``run.csv`` -> ``run.diagnosis.png``; a folder ``runs/a`` -> ``runs/a.diagnosis.png``),
or to the current folder when that place is not writable; ``-o PATH`` names the file (one input) or a folder
(several inputs); ``--no-plot`` writes none. ``--json`` prints the diagnosis (a list and a ranking for several).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from lrkit.errors import LrkitError

SEVERITY = {"diverging": 0, "spiking": 1, "oscillating": 2, "plateau": 3, "too_slow": 3, "healthy": 4}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diagnose", help="diagnose the learning rate from training logs",
        description="Read training logs (CSV, JSON lines, TensorBoard event file or folder, Lightning metrics.csv, "
                    "Hugging Face trainer_state.json, MLflow run folder), say what is wrong with the lr "
                    "(diverging, spiking, oscillating, too slow, healthy) and how to change it; several runs are "
                    "ranked.")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files or folders")
    p.add_argument("--metric", help="the loss column/tag to use (default: picked automatically)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON (for CI)")
    p.add_argument("--running-mean", action="store_true",
                   help="the loss is a running mean restarting each epoch (Keras batch logs): unroll it first")
    p.add_argument("-o", "--output", help="plot file (one input) or folder (several inputs); "
                                          "default: next to each input")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    return p


def _default_plot_path(src: str) -> str:
    base = os.path.normpath(src)
    stem = base if os.path.isdir(base) else os.path.splitext(base)[0]
    path = f"{stem}.diagnosis.png"
    folder = os.path.dirname(path) or "."
    return path if os.access(folder, os.W_OK) else os.path.basename(path)


def _plot_path(args: argparse.Namespace, src: str, many: bool) -> str | None:
    if args.no_plot:
        return None
    if args.output is None:
        return _default_plot_path(src)
    if not many:
        return args.output
    os.makedirs(args.output, exist_ok=True)
    name = os.path.basename(os.path.normpath(src))
    return os.path.join(args.output, f"{os.path.splitext(name)[0] if not os.path.isdir(src) else name}"
                                     ".diagnosis.png")


def _run_lr(d: Any) -> float | None:
    lrs = d.curve.lrs if d.curve is not None else None
    if lrs is None or not np.isfinite(lrs).any():
        return None
    return float(np.nanmax(lrs))  # the peak lr: what a user sets


def _final(d: Any) -> float:
    v = d.stats.get("final", math.nan)
    return math.inf if d.verdict == "diverging" or not math.isfinite(v) else v


def _ratio(lr: float | None, best_lr: float | None) -> float | None:
    """This run's lr over the best run's (None when either is unknown)."""
    return lr / best_lr if lr is not None and best_lr else None


def rank(diagnoses: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Order runs best first: runs that did not diverge, then by final smoothed loss (lower is better)."""
    return sorted(diagnoses, key=lambda sd: (sd[1].verdict == "diverging", _final(sd[1]),
                                             SEVERITY.get(sd[1].verdict, 9)))


def run(args: argparse.Namespace) -> int:
    from lrkit.doctor import diagnose

    many = len(args.files) > 1
    done: list[tuple[str, Any]] = []
    failed = 0
    for src in args.files:
        try:
            d = diagnose(src, metric=args.metric, running_mean=args.running_mean)
        except LrkitError as e:
            if not many:
                raise
            print(f"lrkit diagnose: error: {e}", file=sys.stderr)
            failed += 1
            continue
        plot = _plot_path(args, src, many)
        if plot:
            d.plot(plot)
            d.plot_path = plot
        done.append((src, d))
    if args.json:
        out: Any
        if not many:
            out = done[0][1].to_dict()
            if getattr(done[0][1], "plot_path", None):
                out["plot"] = done[0][1].plot_path
        else:
            ranked = rank(done)
            best_lr = _run_lr(ranked[0][1]) if ranked else None
            out = {"runs": [{**d.to_dict(), "source": s, "lr": _run_lr(d), "plot": getattr(d, "plot_path", None),
                             "lr_vs_best": _ratio(_run_lr(d), best_lr)} for s, d in done],
                   "ranking": [s for s, _ in ranked], "best": ranked[0][0] if ranked else None}
        print(json.dumps(out, indent=2, allow_nan=False, default=str))
    else:
        for src, d in done:
            meta = d.curve.meta if d.curve is not None else {}
            cols = "".join(f", {what} column {meta[k]!r}" for k, what in (
                ("lr_column", "lr"), ("grad_norm_column", "grad norm"), ("update_ratio_column", "update ratio"),
                ("grad_alignment_column", "gradient alignment"))
                if meta.get(k))
            print(f"{src}  ({meta.get('format', '?')}, metric {d.metric!r}, {len(d.curve)} points{cols})")
            print(str(d))
            if getattr(d, "plot_path", None):
                print(f"  plot: {d.plot_path}")
            print()
        if many and done:
            ranked = rank(done)
            best_lr = _run_lr(ranked[0][1])
            print("ranking (best first: no divergence, then lowest final smoothed loss):")
            best_final = _final(ranked[0][1])
            for k, (src, d) in enumerate(ranked, 1):
                lr = _run_lr(d)
                fin = _final(d)
                vs = (f" ({fin / best_final:.2f}x the best)" if k > 1 and math.isfinite(fin) and best_final > 0
                      else "")
                r = _ratio(lr, best_lr)
                print(f"  {k}. {src}: final {d.stats.get('final', float('nan')):.4g}{vs}, {d.verdict}"
                      + (f", lr {lr:.3g}" if lr is not None else "")
                      + (f" ({r:.3g}x the best run's: {'lower' if r > 1 else 'raise'} it)" if r and r != 1 else ""))
            best_src, best = ranked[0]
            lr = _run_lr(best)
            print(f"best: {best_src}" + (f" (lr {lr:.3g})" if lr is not None else "")
                  + (f"; its own verdict: {best.recommendation.action} the lr" if best.verdict != "healthy" else ""))
    if failed:
        return 2
    return 0
