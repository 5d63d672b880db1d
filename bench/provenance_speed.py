"""How fast is the verbatim-copy index? Build one over ~10 MB of Chinese text and time queries.

    .venv/bin/python bench/provenance_speed.py [--data ../shared/data] [--mb 10] [--queries 200]

Prints build time, index size on disk and query latency (median / p95 / max) for 300-character
queries of three kinds: novel text (shuffled characters), text with one planted 40-character copy,
and a whole 300-character passage copied from the corpus.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from goushi.data.textindex import TextIndex, TextIndexWriter


def read_docs(root: Path, limit_bytes: int) -> list[tuple[str, str]]:
    docs, total = [], 0
    files = sorted(p for p in root.rglob("*.txt") if "LICENSES" not in p.parts)
    if not files:
        sys.exit(f"{root}: no .txt files; pass --data DIR")
    while total < limit_bytes:  # cycle through the files again if they hold less than asked
        for p in files:
            for para in p.read_text(encoding="utf-8").split("\n\n"):
                para = para.strip()
                if para:
                    docs.append((para, p.stem))
                    total += len(para.encode("utf-8")) + 1
                if total >= limit_bytes:
                    return docs
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--query-chars", type=int, default=300)
    args = ap.parse_args()

    docs = read_docs(Path(args.data), int(args.mb * 1e6))
    tmp = Path(tempfile.mkdtemp(prefix="goushi-prov-bench-"))
    try:
        t0 = time.perf_counter()
        w = TextIndexWriter(tmp)
        for text, sid in docs:
            w.add(text, sid)
        out = w.close({sid: {"license": "see SOURCES.md"} for _, sid in docs})
        build = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.iterdir())
        t0 = time.perf_counter()
        idx = TextIndex.load(tmp)
        load = time.perf_counter() - t0
        print(f"corpus: {len(docs)} docs, {idx.meta['bytes'] / 1e6:.1f} MB UTF-8, suffix array {idx.meta['sa_dtype']}")
        print(f"build: {build:.2f} s   load: {load * 1e3:.1f} ms   index on disk: {size / 1e6:.1f} MB")

        rng = random.Random(0)
        chars = [c for text, _ in docs[:2000] for c in text]
        big = [t for t, _ in docs if len(t) >= args.query_chars]
        n = args.query_chars

        def novel() -> str:
            return "".join(rng.choice(chars) for _ in range(n))

        def planted() -> str:
            src = rng.choice([t for t, _ in docs[:5000] if len(t) >= 40] or [t for t, _ in docs])
            piece = src[:40]
            base = novel()
            at = rng.randrange(n - len(piece))
            return base[:at] + piece + base[at + len(piece):]

        def copied() -> str:
            return rng.choice(big)[:n] if big else novel()

        for name, make in (("novel", novel), ("planted 40-char copy", planted), ("whole copied passage", copied)):
            times, found = [], 0
            for _ in range(args.queries):
                q = make()
                t0 = time.perf_counter()
                spans = idx.find_copied_spans(q, 8)
                times.append(time.perf_counter() - t0)
                found += bool(spans)
            times.sort()
            print(
                f"query {name:<22} {n} chars: median {statistics.median(times) * 1e3:.2f} ms, "
                f"p95 {times[int(0.95 * len(times)) - 1] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms, "
                f"queries with a span {found}/{args.queries}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
