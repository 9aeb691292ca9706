"""The ``lrkit`` command: a thin layer over the Python API.

Each subcommand lives in its own module ``lrkit.cli.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; a user mistake (:class:`lrkit.LrkitError`) becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lrkit.errors import LrkitError

# subcommand name -> module that implements it
COMMANDS = {
    "find": "lrkit.cli.find",
    "schedule": "lrkit.cli.schedule",
    "diagnose": "lrkit.cli.diagnose",
    "sweep": "lrkit.cli.sweep",
    "search": "lrkit.cli.search",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="lrkit", description="The learning-rate toolkit.")
    parser.add_argument("--version", action="version", version=f"lrkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMANDS.values():
        mod = importlib.import_module(modname)
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def _version() -> str:
    from lrkit import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrkit`` command; returns the exit status."""
    # the command only writes figures to files: a non-interactive backend, unless the user chose one
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except LrkitError as e:
        print(f"lrkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lrkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `lrkit diagnose run.csv --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
