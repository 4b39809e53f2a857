"""The ``dartscc-fast`` command line.

Each subcommand lives in the module of its concept and registers itself through
a ``register(subparsers)`` function that adds its parser and sets ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from dartscc_fast._extension import BUILD_INFO
from dartscc_fast.cli.allocator import keep_freed_memory, tuning_enabled

# Modules that add subcommands, in the order `--help` lists them.
_COMMAND_MODULES: List[str] = [
    "dartscc_fast.cli.latency",
    "dartscc_fast.cli.search",
    "dartscc_fast.cli.derive",
    "dartscc_fast.cli.evaluate",
    "dartscc_fast.cli.report",
    "dartscc_fast.cli.demo",
    "dartscc_fast.cli.reproduce",
    "dartscc_fast.cli.prune",
    "dartscc_fast.cli.selftest",
]

# Commands that train: they keep freed memory in the process (see dartscc_fast/cli/allocator.py).
_TRAINING_COMMANDS = {"search", "evaluate", "demo", "reproduce", "prune", "profile", "report", "derive"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dartscc-fast",
        description="Hardware-aware differentiable architecture search: one search, an architecture "
                    "for every complexity vector S = (pool, identity, conv).")
    parser.add_argument("--version", action="store_true", help="print the version and build and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print("dartscc_fast", BUILD_INFO)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in _TRAINING_COMMANDS:
        if tuning_enabled():
            keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"dartscc-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
