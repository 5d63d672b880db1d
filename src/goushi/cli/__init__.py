"""The `goushi` command. Thin: each subcommand lives in its own module and calls the library.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=<callable(args) -> int | None>` as the parser default.
"""

from __future__ import annotations

import argparse
import difflib
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


def _innermost(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, str]:
    """The (sub)parser the words of `argv` name, and its command line (`goushi data build`)."""
    words = [parser.prog]
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and word in subs[0].choices:
            parser = subs[0].choices[word]
            words.append(word)
    return parser, " ".join(words)


def unknown_arguments(parser: argparse.ArgumentParser, argv: list[str], extra: list[str]) -> str:
    """One line for arguments no parser takes: the first of them, the nearest option when one is close (a
    typo), and where the options are listed."""
    inner, command = _innermost(parser, argv)
    word = extra[0]
    if not word.startswith("-"):
        return f"{command}: unexpected argument {word!r}; `{command} --help` lists what it takes"
    options = [o for a in inner._actions for o in a.option_strings if o.startswith("--")]
    near = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"{command}: unknown option {word}; {hint}`{command} --help` lists its options"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse's own exit (SystemExit 2), with a line that says what to type instead
        parser.exit(2, f"error: {unknown_arguments(parser, argv, extra)}\n")
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
