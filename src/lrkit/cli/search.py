"""``lrkit search``: the stepwise lr search (start small, multiply by a factor until worse, refine) on the sweep
engine's Optuna study; rerunning the same command resumes it."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lrkit.errors import LrkitError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``search`` on the dispatcher's subparsers."""
    p = sub.add_parser(
        "search", help="stepwise lr search: raise the lr by a factor until the score gets worse, then refine",
        description="Train briefly at --start, multiply the lr by --factor until the score is clearly worse than "
                    "the best (a second seed when the difference is within noise), refine between the best lr and "
                    "its neighbours, and choose. Every trial is stored in an Optuna study: rerun the same command "
                    "to resume an interrupted search.")
    p.add_argument("target", metavar="MODULE:FUNCTION",
                   help="train_fn(lr, trial): trains a short budget, calls trial.report(loss, step), returns the "
                        "final score (lower is better unless --maximize)")
    p.add_argument("--start", type=float, default=1e-6, help="first (smallest) lr (default 1e-6)")
    p.add_argument("--factor", type=float, default=3.0, help="lr multiplier per step (default 3)")
    p.add_argument("--budget-epochs", type=float, default=None,
                   help="passed to train_fn as budget_epochs=B (default: not passed)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a .db file, sqlite:///x.db, postgresql://..., a .log journal file "
                        "(default: lrkit-sweep.db here)")
    p.add_argument("--study-name", default=None, help="study name (default: MODULE.FUNCTION)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--lookahead", type=int, default=None,
                   help="lrs of the ascent evaluated at once (default: --workers)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="relative excess over the best score that stops the ascent (default 0.05)")
    p.add_argument("--noise", type=float, default=None,
                   help="the score's standard deviation between seeds (default: estimated from extra seeds)")
    p.add_argument("--max-seeds", type=int, default=3, help="most seeds per lr when deciding (default 3)")
    p.add_argument("--resolution", type=float, default=1.5,
                   help="refine until neighbouring lrs differ by at most this factor (default 1.5)")
    p.add_argument("--max-lr", type=float, default=10.0, help="largest lr tried (default 10)")
    p.add_argument("--max-trials", type=int, default=40, help="most trials in all (default 40)")
    p.add_argument("--choose", choices=["best", "below_edge"], default="best",
                   help="best: lowest score; below_edge: largest lr within the margin of the best (default best)")
    p.add_argument("--maximize", action="store_true", help="higher scores are better (e.g. an accuracy)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; extra seeds count up)")
    p.add_argument("--retry-failed", action="store_true", help="rerun trials that failed in an earlier run")
    p.add_argument("--no-doctor", action="store_true", help="do not attach the doctor's verdicts")
    p.add_argument("-o", "--output", default="stepwise.json", help="result JSON (default stepwise.json)")
    p.add_argument("--plot", default="stepwise.png", help="figure path (default stepwise.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write a figure")
    return p


def run(args: argparse.Namespace) -> int:
    """Check everything, run the search, then print the table and write the JSON and the figure."""
    from lrkit.stepwise import check_stepwise_args, stepwise_search
    from lrkit.sweep import load_callable

    direction = "maximize" if args.maximize else "minimize"
    check_stepwise_args(args.start, args.factor, margin=args.margin, noise=args.noise, max_lr=args.max_lr,
                        resolution=args.resolution, max_seeds=args.max_seeds, max_trials=args.max_trials,
                        lookahead=args.lookahead if args.lookahead is not None else max(args.workers, 1),
                        choose=args.choose, direction=direction)
    if args.workers < 1:
        raise LrkitError(f"--workers must be >= 1, got {args.workers}")
    for path in [args.output] + ([] if args.no_plot else [args.plot]):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise LrkitError(f"output folder {folder!r} does not exist; create it or choose another path")
    train_fn = load_callable(args.target)
    result = stepwise_search(
        train_fn, args.start, args.factor, budget_epochs=args.budget_epochs, storage=args.storage,
        study_name=args.study_name, n_workers=args.workers, lookahead=args.lookahead, margin=args.margin,
        noise=args.noise, max_seeds=args.max_seeds, resolution=args.resolution, max_lr=args.max_lr,
        max_trials=args.max_trials, choose=args.choose, direction=direction, seed=args.seed,
        retry_failed=args.retry_failed, diagnose=not args.no_doctor)
    print(result)
    result.save(args.output)
    if not args.no_plot:
        result.plot(args.plot)
    print(f"wrote {args.output}" + ("" if args.no_plot else f" and {args.plot}")
          + f" (study {result.study_name!r} in {result.storage}; rerun to resume)")
    return 0
