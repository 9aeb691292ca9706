"""``lrkit find``: run the LR range test on a built-in example or on the user's own ``module:function``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from lrkit._util import load_callable
from lrkit.errors import LrkitError
from lrkit.finder import FinderOptions, FinderResult, range_test


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``find`` on the dispatcher's subparsers."""
    p = sub.add_parser(
        "find", help="run the LR range test and suggest a learning rate",
        description="Ramp the lr over a few optimiser steps, watch the smoothed loss, stop at divergence, restore "
                    "the model, and suggest an lr with an interval and the reason.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("target", nargs="?", metavar="MODULE:FUNCTION",
                     help="a function returning (model, optimizer, criterion, train_loader[, val_loader]) "
                          "or a Stepper (an object with step(lr), snapshot(), restore(snap)[, evaluate()])")
    src.add_argument("--example", metavar="NAME", help="a built-in example task: digits, digits-cnn")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first lr of the ramp (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last lr of the ramp (default 10)")
    p.add_argument("--num-iter", type=int, default=100, help="optimiser steps in the ramp (default 100)")
    p.add_argument("--mode", choices=["exponential", "linear"], default="exponential", help="ramp shape")
    p.add_argument("--smooth", type=float, default=0.98, help="EMA factor of the smoothed loss (default 0.98)")
    p.add_argument("--diverge-factor", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this x the best (default 4)")
    p.add_argument("--val", action="store_true", help="judge the validation loss (needs a val_loader)")
    p.add_argument("--val-every", type=int, default=5, help="evaluate every k steps in --val mode (default 5)")
    p.add_argument("--accumulation-steps", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (fp16 adds a GradScaler)")
    p.add_argument("--snapshot", choices=["memory", "disk"], default="memory",
                   help="where the restore copy lives (default: CPU memory)")
    p.add_argument("--rule", default=None, help="suggestion rule by name (see lrkit.finder.rules())")
    p.add_argument("--no-confirm", action="store_true",
                   help="one ramp only: no extension and no short confirmation runs at the pick, /3 and /9")
    p.add_argument("--max-steps", type=int, default=200,
                   help="optimiser steps for ramp + confirmation runs in all (>= 1; default 200)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time budget in seconds: the ramp stops when it is spent, the confirmation runs share what "
                        "is left or are skipped (default: none)")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "wsd"], default=None,
                   help="also print a training recipe: peak lr, warmup and decay as a schedule spec")
    p.add_argument("--total-steps", type=int, default=1000,
                   help="optimiser steps of the training run the --schedule recipe is for (default 1000)")
    p.add_argument("-o", "--output", default="lr_find.json", help="result JSON (default lr_find.json)")
    p.add_argument("--plot", default="lr_find.png", help="figure path (default lr_find.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write a figure")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in example (default 0)")
    return p


def _load_target(spec: str) -> Any:
    """Import ``module:function`` (the current folder is importable) and call the function; an error the function
    raises becomes one line that names its type (the command's contract: one line on stderr, status 2)."""
    make = load_callable(spec)
    try:
        return make()
    except LrkitError:
        raise
    except Exception as e:
        raise LrkitError(f"{spec}() raised {type(e).__name__}: {e}") from e


def run(args: argparse.Namespace) -> int:
    """Run the range test, print the suggestion, write the JSON and the figure (only when the test succeeded)."""
    options = FinderOptions(
        start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter, mode=args.mode, smooth=args.smooth,
        diverge_factor=args.diverge_factor, rule=args.rule, progress=not args.no_progress,
        max_seconds=args.max_seconds, confirm=not args.no_confirm, max_steps=args.max_steps,
        val_every=args.val_every if args.val else None)
    if args.schedule and args.total_steps < 10:
        raise LrkitError(f"--total-steps must be >= 10 optimiser steps, got {args.total_steps}")
    for path in [args.output] + ([] if args.no_plot else [args.plot]):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise LrkitError(f"output folder {folder!r} does not exist; create it or choose another path")
    if args.example:
        from lrkit.examples import load_example

        built: Any = load_example(args.example, seed=args.seed)
    else:
        built = _load_target(args.target)
    if all(callable(getattr(built, m, None)) for m in ("step", "snapshot", "restore")):
        if args.val and not callable(getattr(built, "evaluate", None)):
            raise LrkitError("--val needs a Stepper with evaluate() (the validation loss)")
        result = range_test(built, options)
    else:
        result = _run_torch(built, args, options)
    recipe = None
    if args.schedule and result.suggestion.lr is not None:
        from lrkit.finder import recipe as make_recipe

        recipe = make_recipe(result, schedule=args.schedule, total_steps=args.total_steps)
    result.save(args.output)
    if not args.no_plot:
        result.plot(args.plot)
    print(result)
    if recipe is not None:
        print(f"recipe ({args.schedule}, {args.total_steps} steps): {recipe.spec}\n  {recipe.reason}")
    elif args.schedule:
        print(f"recipe ({args.schedule}): none, since there is no trustworthy suggestion")
    print(f"wrote {args.output}" + ("" if args.no_plot else f" and {args.plot}"))
    return 0


def _run_torch(built: Any, args: argparse.Namespace, options: FinderOptions) -> FinderResult:
    if not isinstance(built, (tuple, list)) or len(built) not in (4, 5):
        raise LrkitError(f"the target returned {type(built).__name__}; it must return (model, optimizer, "
                         "criterion, train_loader[, val_loader]) or a Stepper with step/snapshot/restore")
    import torch

    from lrkit.integrations.torch import find_lr

    model, optimizer, criterion, train_loader, *rest = built
    val_loader = rest[0] if rest and args.val else None
    if args.val and val_loader is None:
        raise LrkitError("--val needs a val_loader: return (model, optimizer, criterion, train_loader, val_loader)")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    scaler = None
    if args.amp == "fp16":
        device = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    return find_lr(model, optimizer, criterion, train_loader, val_loader=val_loader,
                   accumulation_steps=args.accumulation_steps, max_grad_norm=args.max_grad_norm, amp=amp,
                   scaler=scaler, snapshot=args.snapshot, options=options)
