"""``samforge`` entry point: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from samforge.cli import annotate
from samforge.cli import evaluate, export, finetune, lora, predict, quickstart, segment_everything, synth, track, train

SUBCOMMANDS = (predict, segment_everything, synth, train, finetune, lora, evaluate, quickstart, export, annotate, track)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samforge", description="Segment Anything, end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, IndexError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"samforge {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
