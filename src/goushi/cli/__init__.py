"""The `goushi` command. Thin: each subcommand lives in its own module and calls the library.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=<callable(args) -> int | None>` as the parser default.
"""

from __future__ import annotations

import argparse
import os
import sys

import goushi
from goushi.cli import chat, data, demo, dpo, export, import_run, sample, serve, sft, tokenizer, train, ui
from goushi.cli import eval as evaluate
from goushi.errors import GoushiError

# Order is the order of `goushi --help`.
SUBCOMMANDS = (data, tokenizer, train, sft, dpo, sample, chat, evaluate, export, import_run, ui, serve, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goushi",
        description="Goushi GPT (狗屎GPT): train your own small Chinese GPT from your own text.",
    )
    parser.add_argument("--version", action="version", version=f"goushi {goushi.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except GoushiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
