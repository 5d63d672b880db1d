"""`goushi tokenizer train|encode|decode|stats`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from goushi.config import PRESETS, param_counts, preset_config
from goushi.data.readers import iter_text, read_file, read_source
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError
from goushi.tokenizer import BPE_PRES, DEFAULT_BPE_PRE, Tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train, inspect and try tokenizers",
                       description="Train a char-level or byte-level BPE tokenizer and look at what it does.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = tsub.add_parser("train", help="train a tokenizer on text files or a sources manifest",
                        description="Train tokenizer.json on raw documents (no cleaning; `goushi data build` "
                        "cleans first and trains one for you).")
    t.add_argument("inputs", nargs="*", help="text files (.txt/.md/.jsonl/.json/.csv, read like sources)")
    t.add_argument("--sources", help="read every source of this manifest instead of INPUTS")
    t.add_argument("--kind", choices=("char", "bpe"), default="bpe", help="tokenizer kind (default: bpe, as "
                   "`goushi data build`)")
    t.add_argument("--vocab-size", type=int, default=4096, help="bpe: vocabulary size (default: 4096)")
    t.add_argument("--bpe-pre", choices=BPE_PRES, default=DEFAULT_BPE_PRE, help="bpe: its pre-tokenizer (default: "
                   f"{DEFAULT_BPE_PRE}; see `goushi data build --help`)")
    t.add_argument("--min-frequency", type=int, help="char: fewest occurrences to keep a character (default 1); "
                   "bpe: for a merge (default 2)")
    t.add_argument("--max-vocab", type=int, help="char: cap on the whole vocabulary")
    t.add_argument("--encoding", help="text encoding of the inputs (default: utf-8)")
    t.add_argument("--out", required=True, help="where to write tokenizer.json")
    t.add_argument("--force", action="store_true", help="overwrite --out")
    t.set_defaults(func=run_train)

    e = tsub.add_parser("encode", help="text -> token ids")
    e.add_argument("text", nargs="?", help="text to encode (default: --file or standard input)")
    e.add_argument("--tokenizer", required=True, help="tokenizer.json, or a data/run folder holding one")
    e.add_argument("--file", help="encode this file's contents")
    e.add_argument("--pieces", action="store_true", help="print one `id<TAB>piece` line per token")
    e.set_defaults(func=run_encode)

    d = tsub.add_parser("decode", help="token ids -> text")
    d.add_argument("ids", nargs="*", help="token ids (default: read them from standard input)")
    d.add_argument("--tokenizer", required=True, help="tokenizer.json, or a data/run folder holding one")
    d.set_defaults(func=run_decode)

    s = tsub.add_parser("stats", help="vocabulary size, characters per token, unknown rate, embedding share per preset")
    s.add_argument("--tokenizer", required=True, help="tokenizer.json, or a data/run folder holding one")
    s.add_argument("--text", help="measure on this text")
    s.add_argument("--file", help="measure on this file (read like a source: .txt/.jsonl/...)")
    s.add_argument("--encoding", help="text encoding of --file (default: utf-8)")
    s.set_defaults(func=run_stats)


def _load(path: str) -> Tokenizer:
    return Tokenizer.from_file(path)


def _docs(paths: list[str], encoding: str | None) -> Iterator[str]:
    for p in paths:
        yield from read_file(Path(p), encoding=encoding or "utf-8")


def run_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise GoushiError(f"{out}: already exists; pass --force to overwrite it")
    if bool(args.inputs) == bool(args.sources):
        raise GoushiError("give either text files or --sources MANIFEST (one of the two)")
    if args.sources:
        srcs = load_manifest(args.sources)
        texts: Iterator[str] = (doc for s in srcs for _, doc in read_source(s, args.encoding))
    else:
        texts = _docs(args.inputs, args.encoding)
    if args.kind == "char":
        tok = Tokenizer.train_char(texts, min_frequency=args.min_frequency or 1, max_vocab=args.max_vocab)
    else:
        tok = Tokenizer.train_bpe(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency or 2,
                                  pre=args.bpe_pre)
    if tok.vocab_size <= 263 and tok.kind == "char":
        raise GoushiError("the inputs hold no text; nothing to train on")
    tok.save(out)
    print(f"wrote {out}: {tok.kind}{f' (pre-tokenizer {tok.pre})' if tok.pre else ''}, {tok.vocab_size:,} tokens")
    return 0


def _input_text(args: argparse.Namespace) -> str:
    if getattr(args, "file", None):
        return "".join(iter_text(Path(args.file), getattr(args, "encoding", None) or "utf-8"))
    if getattr(args, "text", None) is not None:
        return args.text
    return sys.stdin.read()


def run_encode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    ids = tok.encode(_input_text(args))
    if args.pieces:
        for i in ids:
            print(f"{i}\t{tok.id_to_piece(i)!r}")  # repr keeps newlines and spaces visible
    else:
        print(" ".join(map(str, ids)))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    raw = args.ids or sys.stdin.read().replace(",", " ").split()
    ids = []
    for x in raw:
        if not x.strip().isdigit():
            raise GoushiError(f"token id {x!r} is not a non-negative integer")
        i = int(x)
        if i >= tok.vocab_size:
            raise GoushiError(f"token id {i} is outside the vocabulary (size {tok.vocab_size})")
        ids.append(i)
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    print(f"tokenizer: {args.tokenizer}")
    print(f"kind: {tok.kind}")
    print(f"vocab size: {tok.vocab_size:,}")
    if args.text is not None or args.file:
        if args.file:
            texts = list(_docs([args.file], args.encoding))
        else:
            texts = [args.text]
        encoded = tok.encode_batch(texts)
        chars = sum(len(t) for t in texts)
        tokens = sum(len(e) for e in encoded)
        unk = sum(tok.unknown_count(e) for e in encoded)
        print(f"measured on: {chars:,} characters -> {tokens:,} tokens")
        print(f"characters per token: {chars / max(1, tokens):.3f}")
        print(f"unknown rate (byte-fallback/<|unk|> tokens per token): {unk / max(1, tokens):.3%}")
    print("embedding share of parameters (tied input/output embedding):")
    print(f"  {'preset':<8}{'family':<8}{'embedding':>14}{'total':>14}{'share':>8}")
    for preset in PRESETS:
        for family in ("gpt2", "llama"):
            counts = param_counts(preset_config(preset, family, vocab_size=tok.vocab_size))
            print(f"  {preset:<8}{family:<8}{counts['embedding']:>14,}{counts['total']:>14,}"
                  f"{counts['embedding'] / counts['total']:>8.1%}")
    return 0
