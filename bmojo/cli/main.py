"""The `bmojo` command (also `python -m bmojo`)."""
from __future__ import annotations

import argparse
import logging
import sys

from bmojo import __version__


def build_parser() -> argparse.ArgumentParser:
    from bmojo.cli import bench, compare, convert, data, demo, eval, export, generate, inspect, memory, train

    ap = argparse.ArgumentParser(prog="bmojo", description="B'MOJO sequence models with eidetic and fading memory, "
                                 "and the Transformer, Mamba and hybrid special cases, on equal terms.")
    ap.add_argument("--version", action="version", version=f"bmojo {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log backend choices and settings")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in (demo, compare, data, train, eval, generate, inspect, memory, bench, convert, export):
        cmd.add_parser(sub)
    _global_options_everywhere(ap)
    return ap


def _global_options_everywhere(ap: argparse.ArgumentParser) -> None:
    """-v and --threads also after the command (`bmojo train -v`), at every level of subcommands; given there,
    they win over the same option given before the command."""
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="log backend choices and settings")
                p.add_argument("--threads", type=int, default=argparse.SUPPRESS,
                               help="torch CPU threads (default: torch's choice)")
                _global_options_everywhere(p)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        ap.print_help()
        return 0
    import torch

    from bmojo.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if args.threads is not None and args.threads < 1:
        print(f"bmojo {args.command}: error: --threads {args.threads}: must be a positive integer", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from bmojo.config import ConfigError
    from bmojo.train.checkpoint import CheckpointError
    from bmojo.train.loop import TrainingDiverged, TrainingInterrupted

    try:
        return args.func(args) or 0
    except (ConfigError, CheckpointError) as e:
        print(f"bmojo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"bmojo {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:  # one line, no traceback; 130 is the shell's code for SIGINT
        detail = f": {e}" if isinstance(e, TrainingInterrupted) else ""
        print(f"\nbmojo {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
