"""``lrkit diagnose FILE...``: read training logs, say what is wrong with the lr, write annotated plots.

Every run in the inputs is diagnosed; several runs (several files, or one source holding several, such as an MLflow
experiment or a CSV with a column per run) are read as one lr sweep and compared (:func:`lrkit.diagnose_runs`): the
ranking decides each run's advice. Plots go next to each input (``run.csv`` -> ``run.diagnosis.png``; a folder
``runs/a`` -> ``runs/a.diagnosis.png``) when that folder is writable, else to the current folder; ``--plot PATH``
names the file (one run) or a folder (several); ``--no-plot`` writes none. ``--json`` prints the diagnosis (with
several runs: the runs, the ranking and the best).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lrkit.errors import LrkitError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diagnose", help="diagnose the learning rate from training logs",
        description="Read training logs (CSV, JSON lines or a JSON document, the text output of common trainers, "
                    "TensorBoard event files, Lightning metrics.csv, Hugging Face trainer_state.json, MLflow runs), "
                    "say what is wrong with the lr (diverging, stuck, spiking, oscillating, overfitting, too slow, "
                    "healthy) and how to change it, with the evidence; several runs are compared as one sweep.")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files or folders")
    p.add_argument("--metric", help="the loss column/tag to use (default: picked automatically)")
    p.add_argument("--run", help="one run of a source that holds several (an MLflow experiment, a CSV with a "
                                 "column per run)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON (for CI)")
    p.add_argument("--running-mean", action="store_true",
                   help="the loss is a running mean restarting each epoch (Keras batch logs): unroll it first")
    p.add_argument("--plot", "-o", "--output", dest="plot", metavar="PATH",
                   help="plot file (one run) or folder (several runs); default: next to each input")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--alone", action="store_true",
                   help="judge a single log by itself, not with the runs of its sweep found beside it (files or "
                        "folders whose names differ only by the lr in them)")
    return p


def _default_plot_path(src: str, run: str | None) -> str:
    base = os.path.normpath(src)
    stem = base if os.path.isdir(base) else os.path.splitext(base)[0]
    if run:
        stem = f"{stem}.{_safe(run)}"
    path = f"{stem}.diagnosis.png"
    folder = os.path.dirname(path) or "."
    return path if os.access(folder, os.W_OK) else os.path.basename(path)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in name)[:80]


def _plot_path(args: argparse.Namespace, src: str, run: str | None, many: bool) -> str | None:
    if args.no_plot:
        return None
    if args.plot is None:
        return _default_plot_path(src, run)
    if not many:
        return args.plot
    os.makedirs(args.plot, exist_ok=True)
    name = os.path.basename(os.path.normpath(src))
    stem = name if os.path.isdir(src) else os.path.splitext(name)[0]
    return os.path.join(args.plot, f"{stem}{'.' + _safe(run) if run else ''}.diagnosis.png")


def run(args: argparse.Namespace) -> int:
    from lrkit.doctor import read_runs
    from lrkit.doctor.checks import diagnose
    from lrkit.doctor.compare import compare

    if args.no_plot and args.plot:
        raise LrkitError("--plot and --no-plot contradict each other; give one")
    many_inputs = len(args.files) > 1
    curves: list[tuple[str, Any]] = []
    failed = 0
    for src in args.files:
        try:
            got = read_runs(src, metric=args.metric, running_mean=args.running_mean)
            if args.run is not None:
                got = [c for c in got if c.meta.get("run") == args.run]
                if not got:
                    raise LrkitError(f"{src}: no run {args.run!r}")
        except LrkitError as e:
            if not many_inputs:
                raise
            print(f"lrkit diagnose: error: {e}", file=sys.stderr)
            failed += 1
            continue
        curves += [(src, c) for c in got]
    diagnoses = []
    kept: list[tuple[str, Any]] = []
    if len(curves) == 1 and not many_inputs and not args.alone and args.run is None and not args.running_mean:
        from lrkit.doctor.compare import diagnose_with_siblings

        d = diagnose_with_siblings(curves[0][0], metric=args.metric)
        if d is not None:  # compared with the runs of its sweep beside it: their ranking decides
            diagnoses.append(d)
            kept.append(curves[0])
            curves = []
    for src, c in curves:
        try:
            diagnoses.append(diagnose(c))
            kept.append((src, c))
        except LrkitError as e:
            if len(curves) == 1:
                raise
            print(f"lrkit diagnose: error: {src}: {e}", file=sys.stderr)
            failed += 1
    if not diagnoses:
        return 2
    many = len(diagnoses) > 1
    names = [f"{src}:{c.meta['run']}" if c.meta.get("run") and len([1 for s, _ in kept if s == src]) > 1 else src
             for src, c in kept]
    sweep = compare(diagnoses, names) if many else None
    plots: list[str | None] = []
    for (src, c), d in zip(kept, diagnoses):
        path = _plot_path(args, src, c.meta.get("run") if len([1 for s, _ in kept if s == src]) > 1 else None, many)
        if path:
            d.plot(path)
        plots.append(path)
    if args.json:
        if sweep is None:
            out: Any = diagnoses[0].to_dict()
            if plots[0]:
                out["plot"] = plots[0]
        else:
            out = sweep.to_dict()
            for r, p in zip(out["runs"], plots):
                r["plot"] = p
        print(json.dumps(out, indent=2, allow_nan=False, default=str))
    else:
        for name, (_src, c), d, path in zip(names, kept, diagnoses, plots):
            meta = c.meta
            cols = "".join(f", {what} column {meta[k]!r}" for k, what in (
                ("lr_column", "lr"), ("eval_column", "eval loss"), ("grad_norm_column", "grad norm"),
                ("update_ratio_column", "update ratio"), ("grad_alignment_column", "gradient alignment"))
                if meta.get(k))
            print(f"{name}  ({meta.get('format', '?')}, metric {d.metric!r}, {len(c)} points{cols})")
            print(str(d))
            if path:
                print(f"  plot: {path}")
            print()
        if sweep is None and diagnoses[0].sweep is not None:
            print(str(diagnoses[0].sweep))
        if sweep is not None:
            print(str(sweep))
            b = sweep.best
            lr = sweep.lrs[b]
            print(f"best: {names[b]}" + (f" (lr {lr:.3g}, from {sweep.lr_sources[b]})" if lr is not None else ""))
    return 2 if failed else 0
