"""``lrkit schedule SPEC``: plot a schedule and print its key points (peak, final, where phases change)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lrkit.errors import LrkitError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``schedule`` on the dispatcher's subparsers."""
    p = sub.add_parser(
        "schedule", help="plot a learning-rate schedule from a text spec and print its key points",
        description='Example: lrkit schedule "warmup(500) >> cosine(3e-4, 10000, final=3e-5)" -o schedule.png')
    p.add_argument("spec", help="schedule spec, e.g. \"warmup(500) >> cosine(3e-4, 10000)\"")
    p.add_argument("--steps", type=_steps, default=None,
                   help="optimiser steps to show, e.g. 10000 or 1e6 (default: the schedule's length; required if it "
                        "never ends)")
    p.add_argument("-o", "--output", default=None, help="figure path (e.g. schedule.png); none: print only")
    p.add_argument("--log", action="store_true", help="log-scale lr axis")
    p.add_argument("--json", action="store_true", help="print the key points and spec as JSON")
    return p


#: up to this many steps every one is read for the key points; beyond, this many evenly spaced ones and every
#: phase start (a plot draws a few thousand)
EXACT_STEPS = 10**6


def _steps(text: str) -> int:
    """A step count written as an integer or in e-notation (``1e6``); argparse reports a ValueError as one line."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of steps: {text!r}") from None
    if not (value.is_integer() and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a whole number of steps >= 1, got {text!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    """Parse, summarise, optionally plot; a bad spec raises LrkitError (one line) before any file is written."""
    from lrkit.schedules import SpecError, parse

    try:
        schedule = parse(args.spec)
    except SpecError as e:
        raise LrkitError(e.one_line()) from None
    kp = schedule.key_points(args.steps, sample=EXACT_STEPS)
    if args.output:
        from lrkit.plot import plot_schedule

        plot_schedule(schedule, kp["steps"], args.output, log=args.log, key_points=kp)
    if args.json:
        print(json.dumps({"spec": str(schedule), **kp}))
        return 0
    print(f"schedule: {schedule}")
    print(f"steps:    0..{kp['steps'] - 1}")
    print(f"first:    {kp['first']:.6g}")
    print(f"peak:     {kp['peak']:.6g} at step {kp['peak_step']}")
    print(f"final:    {kp['final']:.6g} at step {kp['steps'] - 1}")
    print(f"min:      {kp['min']:.6g}")
    if kp["sampled"]:
        print(f"          (read at {kp['sampled']} of the {kp['steps']} steps: every phase start and evenly spaced "
              "ones)")
    for t, label in kp["phases"]:
        print(f"phase:    step {t}: {label}  (lr {schedule(t):.6g})")
    if args.output:
        print(f"plot:     {args.output}")
    return 0
