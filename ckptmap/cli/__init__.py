"""The `ckptmap` command line: trees, solve, convert, verify, bench.

Each subcommand lives in its own module (`ckptmap/cli/<name>.py`) exposing `add_parser(subparsers)` and
`run(args) -> int`. A CkptmapError is printed as one line and exits 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ckptmap.errors import CkptmapError
from ckptmap.pipeline.heap import keep_freed_memory

COMMANDS = ("trees", "solve", "convert", "verify", "check", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptmap", description="Find, prove and apply checkpoint mappings.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ckptmap.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ckptmap.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if argv is None and sys.argv[1:2] == ["convert"]:  # the process is this conversion (not a caller's main([...]))
        keep_freed_memory()  # before any thread takes an arena of its own
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CkptmapError as e:
        print(f"ckptmap {args.command}: error: {e.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ckptmap ... | head`: the reader left early; not an error, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
