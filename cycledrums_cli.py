"""`cycledrums`: one command, one subcommand per job.

Each package registers its own subcommands (pipelines/cli.py, train/cli.py, infer/cli.py,
cluster/cli.py; the demo, which drives them all, in cycledrums_demo.py).  Argument parsing
imports nothing heavy, so `--help` is instant; a subcommand imports torch / Ray only when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from cluster.errors import JobFailure, UserError

# (module, in the order the pipeline runs)
SUBCOMMAND_MODULES = ("pipelines.cli", "train.cli", "infer.cli", "cluster.cli", "cycledrums_demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cycledrums",
        description="CycleDRUMS on Ray: drums for bass lines with a CycleGAN on mel-spectrograms. "
        "Run `cycledrums SUBCOMMAND --help` for the inputs, outputs and defaults of each job.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of an error (default: message only)")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # that part of the system is not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, filter_stderr: bool = False) -> int:
    """Run one command.  `filter_stderr` (the installed `cycledrums` command, not tests calling
    main in-process) also drops Ray's native-log noise from fd 2 unless -v
    (cluster.console.filter_native_stderr)."""
    args = build_parser().parse_args(argv)
    if filter_stderr and not args.verbose:
        from cluster.console import filter_native_stderr

        filter_native_stderr()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError) as err:  # a missing input file is the user's to fix
        if args.verbose:
            traceback.print_exc()
        print(f"cycledrums {args.command}: error: {err}", file=sys.stderr)
        return 2
    except JobFailure as err:
        if args.verbose:
            traceback.print_exc()
        print(f"cycledrums {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cycledrums {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def run() -> None:
    """The `cycledrums` command."""
    sys.exit(main(filter_stderr=True))


if __name__ == "__main__":
    run()
