"""Build throughput of `goushi data build`: MB of input text per second, and characters per second of each stage
(read and clean, tokenizer training, encoding and writing the shards).

    python bench/data_build.py                       # ../shared/data/{poetry,copypasta,reviews} if present
    python bench/data_build.py --sources my/sources.toml --tokenizer bpe
    python bench/data_build.py PATH [PATH ...]       # files or folders, one source each

Writes into a temporary folder and removes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from goushi.data.build import BuildOptions, build_dataset
from goushi.data.sources import Source, load_manifest, write_manifest
from goushi.precision import describe_cpu

DEFAULT_DIRS = ("poetry", "copypasta", "reviews")


def default_paths() -> list[Path]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return [shared / d for d in DEFAULT_DIRS if (shared / d).is_dir()]


def manifest_for(paths: list[Path], where: Path) -> Path:
    srcs = []
    for p in paths:
        # One source per file, so the data card credits each file; reviews are one per line.
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".jsonl", ".md")) if p.is_dir() else [p]
        for f in files:
            srcs.append(Source(id=f"{p.name}-{f.stem}" if p.is_dir() else f.stem, path=str(f.resolve()),
                               separator="line" if p.name == "reviews" else "blank", license="see SOURCES.md",
                               field=["prompt", "response"] if f.suffix == ".jsonl" else "text"))
    m = where / "sources.toml"
    write_manifest(m, srcs)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="files or folders (default: ../shared/data/{poetry,copypasta,reviews})")
    ap.add_argument("--sources", help="an existing sources.toml instead of PATHS")
    ap.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--no-provenance", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="run this many times and report the best")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="goushi-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.sources:
            manifest = Path(args.sources)
        else:
            paths = args.paths or default_paths()
            if not paths:
                print("no corpus: pass PATHS or --sources (../shared/data not found)", file=sys.stderr)
                return 2
            manifest = manifest_for(paths, tmp_path)
        n_bytes = sum(f.stat().st_size for s in load_manifest(manifest) for f in s.files())
        opts = BuildOptions(tokenizer=args.tokenizer, vocab_size=args.vocab_size, provenance=not args.no_provenance)
        best = None
        for i in range(args.repeat):
            t = time.perf_counter()
            meta = build_dataset(manifest, tmp_path / f"out{i}", options=opts)
            dt = time.perf_counter() - t
            timing = json.loads((tmp_path / f"out{i}" / "report.json").read_text(encoding="utf-8"))["timing_s"]
            best = min(best or (dt, timing), (dt, timing), key=lambda x: x[0])
        dt, timing = best
        print(f"CPU: {describe_cpu()}")
        print(f"corpus: {n_bytes / 1e6:.2f} MB in {len(meta['sources'])} sources; "
              f"{meta['train_docs'] + meta['val_docs']:,} documents kept; tokenizer {meta['tokenizer_kind']} "
              f"({meta['vocab_size']:,}); {meta['train_tokens'] + meta['val_tokens']:,} tokens")
        print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
        chars = meta["train_chars"] + meta["val_chars"]
        rates = {"read_clean": chars, "tokenizer": meta["train_chars"], "tokenize_write": chars}
        print("characters/s: " + ", ".join(f"{k} {n / timing[k]:,.0f}" for k, n in rates.items() if timing.get(k))
              + f" (tokenizer training reads the {meta['train_chars']:,} training characters, the others all "
              f"{chars:,} cleaned characters)")
        print(f"build: {dt:.2f} s, {n_bytes / 1e6 / dt:.2f} MB/s, {chars / dt:,.0f} characters/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
