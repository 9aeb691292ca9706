"""``lrkit sweep``: a short training at each candidate lr, as trials of an Optuna study (see :func:`lrkit.sweep`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lrkit.errors import LrkitError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``sweep`` on the dispatcher's subparsers."""
    p = sub.add_parser(
        "sweep", help="sweep the lr: one short training per lr, as trials of an Optuna study",
        description="Run MODULE:FUNCTION(lr, trial) at each lr (the function trains briefly, calls "
                    "trial.report(loss, step) and returns the final score); one progress line per finished trial, "
                    "then the table, a JSON file and a figure. Trials live in an Optuna storage: rerunning the "
                    "same command resumes; the same command on several machines with --storage postgresql://... "
                    "shares the work.")
    p.add_argument("target", metavar="MODULE:FUNCTION", help="the training function train(lr, trial) -> score")
    p.add_argument("--lrs", default=None,
                   help="lo:hi:n (n log-spaced lrs, default 1e-4:1e-1:7) or a comma-separated list")
    p.add_argument("--around-suggestion", metavar="FILE.json|MODULE:FUNCTION", default=None,
                   help="sweep --decades around the range test's pick: a result saved by `lrkit find`, or a "
                        "function returning a Trainer or (model, optimizer, criterion, train_loader) to test now")
    p.add_argument("--decades", type=float, default=1.0, help="span of --around-suggestion (default 1 decade)")
    p.add_argument("--num", type=int, default=7, help="number of lrs with --around-suggestion (default 7)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each lr runs once per seed (default 0)")
    p.add_argument("--sampler", default="grid", help="grid (default), random, tpe, qmc, gp or cmaes")
    p.add_argument("--n-trials", type=int, default=None, help="trials drawn by a sampler (default: number of lrs)")
    p.add_argument("--pruner", default="none", help="none (default), median, percentile, hyperband")
    add_common(p, output="sweep.json", plot="sweep.png")
    return p


def add_common(p: argparse.ArgumentParser, output: str, plot: str) -> None:
    """The options ``sweep`` and ``search`` share, spelled the same."""
    p.add_argument("--storage", default=None,
                   help="a .db file (SQLite), postgresql://user:pw@host/db, or a .jsonl Optuna journal file "
                        "(default: lrkit-sweep.db here)")
    p.add_argument("--study-name", default=None,
                   help="study name (default: COMMAND:MODULE.FUNCTION); the same name resumes the same study")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="the most seconds one trial may take; a trial past it fails as timed out (default: none)")
    p.add_argument("--maximize", action="store_true", help="a higher score is better (e.g. an accuracy)")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun trials that failed in an earlier run (on a journal file, also trials left running "
                        "by a worker that is gone: use it there only when no other worker runs)")
    p.add_argument("-o", "--output", default=output, help=f"result JSON (default {output})")
    p.add_argument("--plot", default=plot, help=f"figure (default {plot})")
    p.add_argument("--no-plot", action="store_true", help="do not write a figure")
    p.add_argument("--no-doctor", action="store_true", help="do not attach the doctor's verdict to each trial")
    p.add_argument("--quiet", action="store_true", help="no progress line per finished trial")


def check_common(args: argparse.Namespace) -> list[str]:
    """Check the shared options before any work; the output paths to write."""
    if args.workers < 1:
        raise LrkitError(f"--workers must be >= 1, got {args.workers}")
    paths = [args.output] + ([] if args.no_plot else [args.plot])
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise LrkitError(f"output folder {folder!r} of {path!r} does not exist; create it or choose another path")
    return paths


def write_outputs(result: Any, args: argparse.Namespace) -> None:
    """Write the JSON and (unless --no-plot) the figure, and say where the study is."""
    result.save(args.output)
    if not args.no_plot:
        result.plot(args.plot)
    print(f"wrote {args.output}" + ("" if args.no_plot else f" and {args.plot}")
          + f" (study {result.study_name!r} in {result.storage}; rerun to resume)")


def _around(spec: str, decades: float, num: int) -> list[float]:
    from lrkit._util import load_callable
    from lrkit.finder import FinderResult, range_test
    from lrkit.search import lrs_around

    if spec.endswith(".json") or os.path.exists(spec):
        return lrs_around(FinderResult.load(spec), decades, num)
    built = load_callable(spec)()
    if all(callable(getattr(built, m, None)) for m in ("step", "snapshot", "restore")):
        result = range_test(built, progress=False)
    elif isinstance(built, (tuple, list)) and len(built) in (4, 5):
        from lrkit.integrations.torch import find_lr

        result = find_lr(*built[:4], progress=False)
    else:
        raise LrkitError(f"{spec} returned {type(built).__name__}; for --around-suggestion it must return a Trainer "
                         "(step/snapshot/restore) or (model, optimizer, criterion, train_loader)")
    print(f"range test: {result.suggestion.lr and f'{result.suggestion.lr:.3g}'} ({result.suggestion.reason})")
    return lrs_around(result, decades, num)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print the table, write the JSON and the figure; exit 1 when no lr completed on every seed."""
    from lrkit._util import load_callable
    from lrkit.search import parse_lrs, sweep
    from lrkit.search._engine import interrupt_on_sigterm

    if args.around_suggestion and args.lrs:
        raise LrkitError("give either --lrs or --around-suggestion, not both")
    check_common(args)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise LrkitError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    lrs = parse_lrs(args.lrs or "1e-4:1e-1:7") if not args.around_suggestion else None
    train_fn = load_callable(args.target)
    if lrs is None:
        lrs = _around(args.around_suggestion, args.decades, args.num)
    with interrupt_on_sigterm():
        result = sweep(train_fn, lrs, seeds=seeds, storage=args.storage, study_name=args.study_name,
                       n_workers=args.workers, sampler=args.sampler, n_trials=args.n_trials, pruner=args.pruner,
                       direction="maximize" if args.maximize else "minimize", retry_failed=args.retry_failed,
                       timeout_s=args.timeout, progress=not args.quiet, diagnose=not args.no_doctor)
    print(result.table())
    write_outputs(result, args)
    return 0 if result.best_lr is not None else 1
