"""``lrkit search``: the stepwise lr search (start small, multiply by a factor until worse, refine) on the sweep
engine's Optuna study; rerunning the same command resumes it."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``search`` on the dispatcher's subparsers."""
    from lrkit.cli.sweep import add_common

    p = sub.add_parser(
        "search", help="stepwise lr search: raise the lr by a factor until the score gets worse, then refine",
        description="Train briefly at --start, multiply the lr by --factor until the score is clearly worse than "
                    "the best (more seeds when the difference is within noise), refine between the best lr and "
                    "its neighbours, and choose, comparing lrs on the same seeds. One progress line per finished "
                    "trial, then the table, a JSON file and a figure. Every trial is stored in an Optuna study: "
                    "rerun the same command to resume an interrupted search.")
    p.add_argument("target", metavar="MODULE:FUNCTION",
                   help="train_fn(lr, trial): trains a short budget, calls trial.report(loss, step), returns the "
                        "final score (lower is better unless --maximize)")
    p.add_argument("--start", type=float, default=1e-6, help="first (smallest) lr (default 1e-6)")
    p.add_argument("--factor", type=float, default=3.0, help="lr multiplier per step (default 3)")
    p.add_argument("--budget-epochs", type=float, default=None,
                   help="passed to train_fn as budget_epochs=B (default: not passed)")
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
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; extra seeds count up)")
    add_common(p, output="stepwise.json", plot="stepwise.png")
    return p


def run(args: argparse.Namespace) -> int:
    """Check everything, run the search, then print the table and write the JSON and the figure."""
    from lrkit._util import load_callable
    from lrkit.cli.sweep import check_common, write_outputs
    from lrkit.search import check_stepwise_args, stepwise_search
    from lrkit.search._engine import interrupt_on_sigterm

    direction = "maximize" if args.maximize else "minimize"
    check_stepwise_args(args.start, args.factor, margin=args.margin, noise=args.noise, max_lr=args.max_lr,
                        resolution=args.resolution, max_seeds=args.max_seeds, max_trials=args.max_trials,
                        lookahead=args.lookahead if args.lookahead is not None else max(args.workers, 1),
                        choose=args.choose, direction=direction)
    check_common(args)
    train_fn = load_callable(args.target)
    with interrupt_on_sigterm():
        result = stepwise_search(
            train_fn, args.start, args.factor, budget_epochs=args.budget_epochs, storage=args.storage,
            study_name=args.study_name, n_workers=args.workers, lookahead=args.lookahead, margin=args.margin,
            noise=args.noise, max_seeds=args.max_seeds, resolution=args.resolution, max_lr=args.max_lr,
            max_trials=args.max_trials, choose=args.choose, direction=direction, seed=args.seed,
            retry_failed=args.retry_failed, timeout_s=args.timeout, progress=not args.quiet,
            diagnose=not args.no_doctor)
    print(result)
    write_outputs(result, args)
    return 0
