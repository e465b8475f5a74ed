"""``samforge`` entry point: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import os
import sys

from samforge.cli import annotate
from samforge.cli import evaluate, export, finetune, lora, predict, quickstart, segment_everything, synth, track, train
from samforge.cli import engine, weights
from samforge.cli.common import describe_os_error
from samforge.utils.distributed import RankFailed

SUBCOMMANDS = (predict, segment_everything, synth, train, finetune, lora, evaluate, quickstart, export, annotate, track,
               weights, engine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samforge", description="Segment Anything, end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    _add_debug_flag(parser)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on the top level and on every subcommand (``samforge --debug predict`` = ``samforge predict
    --debug``): errors show their traceback instead of a one-line message; so does ``SAMFORGE_DEBUG=1``."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error instead of a one-line message (also SAMFORGE_DEBUG=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug_flag(child)


def debugging(args: argparse.Namespace) -> bool:
    """True with ``--debug`` or ``SAMFORGE_DEBUG`` set to anything but empty, 0, false or no."""
    env = os.environ.get("SAMFORGE_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, IndexError, RankFailed) as e:
        if debugging(args):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"samforge {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a file-system refusal on a named path (read-only, full, a file in the way, ...)
        if debugging(args) or not e.filename:
            raise
        print(f"samforge {args.command}: error: {e.filename}: expected a writable folder or a readable file, "
              f"{describe_os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
