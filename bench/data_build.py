"""Time and peak memory of `goushi data build` as a user runs it, on a real corpus and on a 100 M-character one.

    python bench/data_build.py                       # ../shared/data/poetry-full, then a 100 M-character corpus
    python bench/data_build.py --only poetry-full    # or --only 100m
    python bench/data_build.py --chars 200000000     # the made corpus at another size
    python bench/data_build.py --sources my/sources.toml --tokenizer bpe
    python bench/data_build.py PATH [PATH ...]       # files or folders, one source per file

Every build runs as its own `goushi data build` process, so its peak RSS (from wait4, the kernel's
high-water mark) is that of the command a user types, not of this script; the command is printed
beside every figure. RSS is also sampled every 50 ms and attributed to the stage the build's log says
it is in (reading, tokenizer training, encoding and the provenance index), for where the peak comes from.

The 100 M-character corpus is made from poetry-full, deterministically: copy r of every poem swaps
each Han character for another of about the same frequency (a different permutation per copy), so
the copies are distinct documents (neither exact nor near duplicates: every 5-gram changes) with the
same lengths, layout and character statistics. It is written to a temporary folder (or --work DIR,
reused when it is already there) and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from goushi.data.sources import Source, load_manifest, write_manifest
from goushi.precision import describe_cpu

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
POETRY_FULL = SHARED / "poetry-full"
MADE_CHARS = 100_000_000


def manifest_for(paths: list[Path], where: Path) -> Path:
    srcs = []
    for p in paths:
        # One source per file, so the data card credits each file; reviews are one per line.
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".jsonl", ".md") and f.name != "SOURCES.md") \
            if p.is_dir() else [p]
        for f in files:
            srcs.append(Source(id=f"{p.name}-{f.stem}" if p.is_dir() else f.stem, path=str(f.resolve()),
                               separator="line" if p.name == "reviews" else "blank", license="see SOURCES.md",
                               field=["prompt", "response"] if f.suffix == ".jsonl" else "text"))
    m = where / "sources.toml"
    write_manifest(m, srcs)
    return m


def _is_han(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FFFF


def make_corpus(src: Path, dest: Path, chars: int) -> tuple[int, bool]:
    """Write about `chars` characters of poetry-full's poems, copied with per-copy character swaps, to `dest`
    (one file per copy and original file, poems separated by blank lines); returns (characters written,
    whether an earlier run had already made it)."""
    files = sorted(f for f in src.glob("*.txt"))
    stamp = dest / ".made.json"
    want = {"from": str(src.resolve()), "chars": chars, "files": [f.name for f in files], "version": 1}
    if stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")).get("want") == want:
        return json.loads(stamp.read_text(encoding="utf-8"))["written"], True
    dest.mkdir(parents=True, exist_ok=True)
    freq: Counter[str] = Counter()
    total_src = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                freq.update(c for c in line if _is_han(c))
                total_src += len(line)
    copies = max(2, -(-chars // max(1, total_src)))
    ranked = sorted(freq, key=lambda c: (-freq[c], c))
    group = copies  # copy r moves each character r places along its group of `copies` similarly frequent ones
    written = 0
    for r in range(copies):
        table = {}
        if r:
            for i, c in enumerate(ranked):
                g0 = (i // group) * group
                if g0 + group <= len(ranked):
                    table[ord(c)] = ranked[g0 + (i - g0 + r) % group]
        for f in files:
            if written >= chars:
                break
            out = dest / f"c{r}-{f.stem}.txt"
            with open(f, encoding="utf-8") as fin, open(out, "w", encoding="utf-8") as fout:
                for line in fin:
                    fout.write(line.translate(table) if table else line)
                    written += len(line)
                    if written >= chars and not line.strip():  # stop at a poem boundary
                        break
    stamp.write_text(json.dumps({"want": want, "written": written}) + "\n", encoding="utf-8")
    return written, False


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_build(cmd: list[str], n_sources: int) -> dict:
    """Run one build; wall time, peak RSS (wait4) and sampled peak RSS per stage of its log."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    stage = ["read"]
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            r = _rss(proc.pid)
            peaks[stage[0]] = max(peaks.get(stage[0], 0), r)
            done.wait(0.05)

    err: list[str] = []
    threading.Thread(target=sample, daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    log = []
    reads = 0
    for line in proc.stdout:
        log.append(line.rstrip("\n"))
        if line.startswith("read "):
            reads += 1
            if reads == n_sources:
                stage[0] = "tokenizer"
        elif line.startswith("tokenizer:"):
            stage[0] = "encode+index"
        elif line.startswith("wrote "):
            stage[0] = "finish"
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    dt = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"build failed ({proc.returncode}): {shlex.join(cmd)}\n" + "".join(err[-20:]))
    return {"seconds": dt, "peak_rss": usage.ru_maxrss * 1024, "stage_peaks": peaks, "log": log}


def goushi_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("goushi")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from goushi.cli import main; sys.exit(main())"]


def bench_one(name: str, manifest: Path, out: Path, extra: list[str]) -> None:
    srcs = load_manifest(manifest)
    n_bytes = sum(f.stat().st_size for s in srcs for f in s.files())
    cmd = goushi_cmd() + ["data", "build", "--sources", str(manifest), "--out", str(out), *extra]
    r = run_build(cmd, len(srcs))
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    chars = meta["train_chars"] + meta["val_chars"]
    print(f"\n== {name}: {n_bytes / 1e6:,.1f} MB in {len(srcs)} sources; {meta['train_docs'] + meta['val_docs']:,} "
          f"documents kept, {chars:,} characters; tokenizer {meta['tokenizer_kind']} ({meta['vocab_size']:,}); "
          f"{meta['train_tokens'] + meta['val_tokens']:,} tokens")
    print(f"command: {shlex.join(cmd)}")
    print(f"CPU: {describe_cpu()}")
    print(f"time: {r['seconds']:.1f} s ({n_bytes / 1e6 / r['seconds']:.2f} MB/s, {chars / r['seconds']:,.0f} characters/s)")
    print(f"peak RSS: {r['peak_rss'] / 1e9:.2f} GB")
    print("peak RSS by stage (sampled every 50 ms): "
          + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in r["stage_peaks"].items()))
    print("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing_s"].items()))
    prov = out / "provenance" / "index.json"
    if prov.exists():
        idx = json.loads(prov.read_text(encoding="utf-8"))
        print(f"provenance index: {idx['bytes'] / 1e6:,.1f} MB of text in {len(idx.get('pieces', [0]))} piece(s)")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="files or folders (default: poetry-full and the made corpus)")
    ap.add_argument("--sources", help="an existing sources.toml instead of PATHS")
    ap.add_argument("--only", choices=("poetry-full", "100m"), help="run one of the two default corpora")
    ap.add_argument("--chars", type=int, default=MADE_CHARS, help=f"size of the made corpus (default {MADE_CHARS:,})")
    ap.add_argument("--work", type=Path, help="where to make (and keep, for reuse) the made corpus (default: a "
                    "temporary folder)")
    ap.add_argument("--poetry-full", type=Path, default=POETRY_FULL, help=f"poetry-full folder (default {POETRY_FULL})")
    ap.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--no-provenance", action="store_true")
    args = ap.parse_args(argv)
    extra = ["--tokenizer", args.tokenizer] + (["--vocab-size", str(args.vocab_size)] if args.tokenizer == "bpe" else [])
    extra += ["--no-provenance"] if args.no_provenance else []
    print(f"CPU: {describe_cpu()}")
    with tempfile.TemporaryDirectory(prefix="goushi-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.sources or args.paths:
            manifest = Path(args.sources) if args.sources else manifest_for(args.paths, tmp_path)
            bench_one(str(manifest), manifest, tmp_path / "out", extra)
            return 0
        pf = args.poetry_full
        if not pf.is_dir():
            print(f"no corpus: {pf} not found; pass PATHS or --sources", file=sys.stderr)
            return 2
        if args.only in (None, "poetry-full"):
            (tmp_path / "pf").mkdir()
            bench_one("poetry-full", manifest_for([pf], tmp_path / "pf"), tmp_path / "pf" / "out", extra)
        if args.only in (None, "100m"):
            work = args.work or tmp_path / "made"
            t = time.perf_counter()
            made = work / f"poetry-{args.chars // 1_000_000}m"
            n, reused = make_corpus(pf, made, args.chars)
            print(f"\n{'reused' if reused else 'made'} {n:,} characters from poetry-full "
                  f"({made}, {time.perf_counter() - t:.1f} s)")
            (tmp_path / "m").mkdir()
            manifest = manifest_for([work / f"poetry-{args.chars // 1_000_000}m"], tmp_path / "m")
            bench_one(f"{n / 1e6:.0f} M characters made from poetry-full", manifest, tmp_path / "m" / "out", extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
