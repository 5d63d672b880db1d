"""The `goushi` command. Thin: each subcommand lives in its own module and calls the library.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=<callable(args) -> int | None>` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from goushi.errors import USER_ERRORS

# Order is the order of `goushi --help`.
SUBCOMMAND_MODULES = ("data", "tokenizer", "train", "sample", "eval", "ui", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goushi",
        description="Goushi GPT (狗屎GPT): train your own small Chinese GPT from your own text.",
    )
    from goushi import __version__

    parser.add_argument("--version", action="version", version=f"goushi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"goushi.cli.{name}").register(sub)
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
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
