"""`build_dataset`: sources.toml -> DATA_DIR (token shards, tokenizer, meta, data card, provenance index).

Three streaming passes over one cleaned copy of the corpus kept on disk, so memory holds at most one
chunk of documents, the tokenizer's bounded training state, one piece of the provenance index while
its suffix array is sorted (goushi.data.textindex.PIECE_BYTES), and per document only hashes and
counters: ~20 bytes for the split, ~200 for de-duplication while reading (freed before the tokenizer
is trained), 12 for the provenance index. A 100 M-character corpus (1.2 M documents) stays under 1 GB.

0. plan every file (format, and how a text file is cut into documents: goushi.data.readers) and
   refuse a corpus of fewer than 2 documents, which cannot hold out a validation split;
1. read, clean and de-duplicate every source into a JSON-lines file (hidden, beside the output);
   remember a hash and a length per document; refuse what is left if it is 1 document, warn if the
   validation split is tiny. Only then is the temporary output folder made and the file moved into it;
2. train the tokenizer on the training documents;
3. tokenise in chunks (`encode_batch` runs on every core) and write train.bin, val.bin, val.jsonl
   and the provenance index.

Each pass shows a progress bar with an ETA on a terminal (tqdm on stderr; silent when stderr is not
a terminal, or with `progress=False`): input bytes while planning and reading, documents while training
the tokenizer and encoding, text bytes while sorting the index.

The split is by document and depends only on the seed and the documents' text: the validation set
is the `val_fraction` of documents with the smallest seeded hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from goushi.data import layout
from goushi.data.clean import REASONS, Cleaner, CleanOptions
from goushi.data.readers import FilePlan, count_docs, plan_source, read_source
from goushi.data.sources import SPLITS, Source, load_manifest
from goushi.data.textindex import TextIndexWriter
from goushi.errors import GoushiError
from goushi.fsutil import atomic_dir
from goushi.tokenizer import BPE_PRES, DEFAULT_BPE_PRE, DEFAULT_MAX_SAMPLE_CHARS, KINDS, Tokenizer

META_VERSION = 1
CHUNK_DOCS = 2048
_CORPUS = ".corpus.jsonl"
# Below this many validation characters a build warns: the smallest preset (tiny) evaluates 128-token windows
# and `goushi train` refuses a validation split shorter than one window plus 2 tokens; 300 characters stay
# above that for a char tokenizer and for BPE up to ~2.3 characters per token.
MIN_VAL_CHARS = 300
# The char vocabulary of a big corpus, when nobody says: poetry-full has 12,823 distinct characters; the 6,000 most
# frequent cover all but ~0.5 % of its text (the rest is spelled in bytes), and the tiny model's softmax over 6,000
# instead of 12,823 trains 1.55x the tokens per second (bench/quality_budget.py, docs/recipe.md "Big corpora").
BIG_CHAR_VOCAB = 6000


@dataclass
class BuildOptions:
    tokenizer: str = "char"
    vocab_size: int = 4096  # bpe only
    bpe_pre: str = DEFAULT_BPE_PRE  # bpe only: its pre-tokenizer, one of BPE_PRES (goushi.tokenizer)
    min_frequency: int | None = None  # char: 1, bpe: 2
    # char only: cap on the whole vocabulary; None: BIG_CHAR_VOCAB on a corpus of layout.BIG_CORPUS_CHARS or more,
    # else every character; 0: every character
    max_vocab: int | None = None
    val_fraction: float = 0.05
    seed: int = 1337
    encoding: str | None = None  # overrides every source's encoding
    max_sample_chars: int = DEFAULT_MAX_SAMPLE_CHARS  # bpe training sample
    provenance: bool = True
    clean: CleanOptions = field(default_factory=CleanOptions)
    tokenizer_from: str = ""  # an existing tokenizer.json (or a run/data directory holding one) instead of training
    # with tokenizer_from (char): append up to this many of this text's characters that it spells in bytes
    extend_vocab: int = 0
    split_docs: str | None = None  # auto|blank|line|file: how every text file is cut into documents (None: manifest)

    def validate(self) -> BuildOptions:
        if self.tokenizer_from:
            kind = Tokenizer.from_file(self.tokenizer_from).kind  # refuse a bad path before any work
            if self.extend_vocab and kind != "char":
                raise GoushiError(f"--extend-vocab {self.extend_vocab}: {self.tokenizer_from} holds a {kind} "
                                  "tokenizer; only a char one grows by characters")
        if self.extend_vocab < 0 or (self.extend_vocab and not self.tokenizer_from):
            raise GoushiError(f"--extend-vocab {self.extend_vocab}: a number of characters >= 0, with "
                              "--tokenizer-from BASE (it grows the base's char tokenizer)")
        if self.tokenizer not in KINDS:
            raise GoushiError(f"--tokenizer {self.tokenizer!r}: choose one of {', '.join(KINDS)}")
        if self.bpe_pre not in BPE_PRES:
            raise GoushiError(f"--bpe-pre {self.bpe_pre!r}: choose one of {', '.join(BPE_PRES)}")
        if self.max_vocab is not None and self.tokenizer != "char" and not self.tokenizer_from:
            raise GoushiError(f"--max-vocab {self.max_vocab}: only for --tokenizer char (bpe is sized by --vocab-size)")
        if not (isinstance(self.val_fraction, int | float) and 0.0 <= self.val_fraction < 1.0):
            raise GoushiError(f"--val-fraction {self.val_fraction}: must be in [0, 1), e.g. 0.05")
        if self.split_docs is not None and self.split_docs not in SPLITS:
            raise GoushiError(f"--split-docs {self.split_docs!r}: choose one of {', '.join(SPLITS)}")
        if self.max_sample_chars < 1000:
            raise GoushiError(f"max_sample_chars={self.max_sample_chars}: too small to train a tokenizer on")
        self.clean.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_key(seed: int, text: str) -> int:
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode("ascii")[:64] or b"0")
    return int.from_bytes(h.digest(), "little")


def _choose_val(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of validation documents: the `fraction` with the smallest keys (ties by position)."""
    n = len(keys)
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return mask
    k = min(n - 1, max(1, round(n * fraction)))
    order = np.lexsort((np.arange(n), keys))
    mask[order[:k]] = True
    return mask


def _repeats(weight: float, key: int) -> int:
    """How many times a training document goes into train.bin: floor(weight), plus one with the fractional odds."""
    whole = math.floor(weight)
    frac = weight - whole
    return whole + (1 if frac and ((key >> 11) / float(1 << 53)) < frac else 0)


def _iter_corpus(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield d["s"], d["t"]


def build_dataset(sources: str | Path, out: str | Path, *, force: bool = False, options: BuildOptions | None = None,
                  log: Callable[[str], None] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Build DATA_DIR `out` from the manifest `sources`; returns meta.json's content.

    Refuses an existing `out` unless `force`; the old folder stays intact until the new one is complete.
    A corpus too small to hold out a validation split is refused before anything is written.
    `progress`: progress bars on stderr; None (the default) shows them only when stderr is a terminal.
    """
    opts = (options or BuildOptions()).validate()
    user_log = log or (lambda _msg: None)

    def say(msg: str) -> None:
        with tqdm.external_write_mode():  # lift any progress bar off the terminal while the line is printed
            user_log(msg)

    manifest = Path(sources)
    if manifest.is_dir():
        manifest = manifest / layout.SOURCES
    srcs = load_manifest(manifest)
    if not srcs:
        raise GoushiError(f"{manifest}: lists no sources; add one with `goushi data add PATH --id ID`")
    for s in srcs:
        s.files()  # every path must exist before any work is done
    out = Path(out)
    if out.resolve() == manifest.parent.resolve() or manifest.parent.resolve().is_relative_to(out.resolve()):
        raise GoushiError(f"--out {out}: would replace the folder holding the sources; choose another --out")
    if out.exists() and not force:
        raise GoushiError(f"{out}: already exists; choose another --out or pass --force to replace it")
    t0 = time.perf_counter()
    total_bytes = sum(f.stat().st_size for s in srcs for f in s.files())
    with _bar(progress, total_bytes, "scanning", "B") as bar:
        plans = {s.id: plan_source(s, opts.encoding, opts.split_docs, on_file=lambda p: bar.update(p.stat().st_size))
                 for s in srcs}
    _check_enough_documents(manifest, srcs, plans, opts)
    warnings: list[str] = []
    if opts.val_fraction == 0:
        warnings.append("--val-fraction 0: no validation split, so `goushi train` will refuse this data directory "
                        "(fine for other uses); build with --val-fraction 0.05 to train on it")
        say(f"warning: {warnings[-1]}")
    with _scratch_file(out, _CORPUS) as corpus:
        expected = sum(p.expected_docs() or 0 for ps in plans.values() for p in ps)
        # The near-duplicate signatures go to an anonymous file beside the output: disk, not memory.
        cleaner = Cleaner(opts.clean, seed=opts.seed, expected_docs=expected, spill_dir=out.parent)
        keys = array("Q")
        lengths = array("Q")
        bytes_in = 0
        with open(corpus, "w", encoding="utf-8") as f, _bar(progress, total_bytes, "reading", "B") as bar:
            reading = _ReadProgress(bar)
            for si, src in enumerate(srcs):

                def raw_docs(src: Source = src) -> Iterator[str]:
                    nonlocal bytes_in
                    last = None
                    for path, doc in read_source(src, plans=plans[src.id]):
                        if path != last:
                            size = path.stat().st_size
                            bytes_in += size
                            reading.next_file(size)
                            last = path
                        reading.doc(doc)
                        yield doc
                    reading.next_file(0)

                for text in cleaner.clean(src.id, raw_docs(), t2s=src.t2s):
                    f.write(json.dumps({"s": si, "t": text}, ensure_ascii=False) + "\n")
                    keys.append(_split_key(opts.seed, text))
                    lengths.append(len(text))
                say(f"read {src.id}: {cleaner.reports[src.id].docs_kept} documents kept{_split_summary(plans[src.id])}")
        cleaner.close()  # the de-duplication tables are the largest per-document state: gone before the next pass
        n_docs = len(keys)
        if n_docs < 2:
            read = sum(r.docs_in for r in cleaner.reports.values())
            dropped: Counter[str] = Counter()
            for r in cleaner.reports.values():
                dropped.update(r.dropped)
            why = ", ".join(f"{k} {v}" for k, v in dropped.items()) or "no documents in the files"
            if n_docs == 0:
                raise GoushiError(f"{manifest}: corpus is empty after cleaning ({read} documents read; dropped: {why}); "
                                  "check the sources' paths and formats, or lower --min-chars")
            if opts.val_fraction > 0:
                raise GoushiError(f"{manifest}: only 1 document is left after cleaning ({read} read; dropped: {why}), "
                                  "so the validation split would be empty; add text (or lower --min-chars, or pass "
                                  "--no-dedup if the repeats are wanted)")
        key_arr = np.frombuffer(keys, dtype=np.uint64)
        is_val = _choose_val(key_arr, opts.val_fraction)
        if opts.val_fraction > 0:
            val_chars = int(np.frombuffer(lengths, dtype=np.uint64)[is_val].sum())
            if val_chars < MIN_VAL_CHARS:
                warnings.append(_tiny_val_message(val_chars, int(is_val.sum()), n_docs, opts.val_fraction))
                say(f"warning: {warnings[-1]}")
        t1 = time.perf_counter()
        # Nothing has been written to `out` so far: the checks above refuse a corpus before any output exists.
        with atomic_dir(out, force=force) as tmp:
            os.replace(corpus, tmp / _CORPUS)
            corpus_in = tmp / _CORPUS

            def train_texts() -> Iterator[str]:
                with _bar(progress, n_docs, "tokenizer", "doc") as bar:
                    for i, (_, text) in enumerate(_iter_corpus(corpus_in)):
                        if not i & 255:
                            bar.update(min(256, n_docs - i))
                        if not is_val[i]:
                            yield text

            if opts.tokenizer_from:
                tok = Tokenizer.from_file(opts.tokenizer_from)
                if opts.extend_vocab:
                    tok = _extended(tok, train_texts(), opts, say)
            elif opts.tokenizer == "char":
                if opts.max_vocab is None:
                    train_chars = int(np.frombuffer(lengths, dtype=np.uint64)[~is_val].sum())
                    if train_chars >= layout.BIG_CORPUS_CHARS:
                        opts.max_vocab = BIG_CHAR_VOCAB
                        say(f"char vocabulary capped at {BIG_CHAR_VOCAB:,} for a corpus of {train_chars:,} "
                            "characters (rarer ones are spelled in bytes; --max-vocab 0 keeps every character)")
                tok = Tokenizer.train_char(train_texts(), min_frequency=opts.min_frequency or 1,
                                           max_vocab=opts.max_vocab or None)
            else:
                tok = Tokenizer.train_bpe(train_texts(), vocab_size=opts.vocab_size, pre=opts.bpe_pre,
                                          min_frequency=opts.min_frequency or 2, max_sample_chars=opts.max_sample_chars)
            (tmp / layout.TOKENIZER).write_text(tok.hf.to_str(pretty=True), encoding="utf-8")
            say(f"tokenizer: {tok.kind}{f' (pre-tokenizer {tok.pre})' if tok.pre else ''}, {tok.vocab_size} tokens"
                + (f" (from {opts.tokenizer_from})" if opts.tokenizer_from else ""))
            t2 = time.perf_counter()
            stats = _write_shards(tmp, corpus_in, srcs, tok, is_val, key_arr, opts, progress)
            corpus_in.unlink()
            t3 = time.perf_counter()
            meta = _meta(srcs, tok, stats, opts, manifest, plans)
            report = cleaner.report()
            report["files"] = {sid: [str(p.path) for p in ps] for sid, ps in plans.items()}
            report["doc_split"] = {sid: [p.to_dict() for p in ps] for sid, ps in plans.items()}
            report["warnings"] = warnings
            report["timing_s"] = {"read_clean": round(t1 - t0, 3), "tokenizer": round(t2 - t1, 3),
                                  "tokenize_write": round(t3 - t2, 3), "total": round(time.perf_counter() - t0, 3)}
            report["bytes_in"] = bytes_in
            # Plain writes: the whole folder is already swapped in atomically by atomic_dir.
            (tmp / layout.META).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (tmp / layout.BUILD_REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (tmp / layout.DATA_CARD).write_text(data_card(meta, report, srcs), encoding="utf-8")
            shutil.copyfile(manifest, tmp / layout.SOURCES)
    say(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return meta


@contextlib.contextmanager
def _scratch_file(out: Path, name: str) -> Iterator[Path]:
    """A hidden temporary file beside `out` (same filesystem, so it can be renamed into the output folder),
    removed on the way out unless it was moved."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f"{name}.tmp", dir=out.parent)
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _bar(enabled: bool | None, total: int, desc: str, unit: str) -> tqdm:
    """A progress bar with an ETA on stderr; `enabled=None` shows it only on a terminal (tqdm's own test)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                disable=None if enabled is None else not enabled, leave=False, dynamic_ncols=True, mininterval=0.5,
                smoothing=0.05)


class _ReadProgress:
    """Input bytes read, for the bar: inside a file estimated from the documents' UTF-8 size (the readers do
    not say where they are), set to the file's real size when the next file starts."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.size = self.est = 0
        self._pending = 0

    def next_file(self, size: int) -> None:
        self.bar.update(self.size - self.est + self._pending)
        self.size, self.est, self._pending = size, 0, 0

    def doc(self, text: str) -> None:
        step = min(len(text.encode("utf-8", "surrogatepass")) + 1, self.size - self.est)
        self.est += step
        self._pending += step
        if self._pending > 1 << 20:  # tqdm.update costs more than a document's worth of reading
            self.bar.update(self._pending)
            self._pending = 0


def _check_enough_documents(manifest: Path, srcs: list[Source], plans: dict[str, list[FilePlan]],
                            opts: BuildOptions) -> None:
    """Refuse, before anything is written, a corpus whose files hold fewer than 2 documents: one document
    cannot be split into training and validation text. Counts stop at 2, so this reads little."""
    total = 0
    seen: list[tuple[FilePlan, int]] = []
    for src in srcs:
        for plan in plans[src.id]:
            n = count_docs(plan, src, 2 - total)
            seen.append((plan, n))
            total += n
            if total >= 2:
                return
    if total == 0:
        names = ", ".join(str(p.path) for p, _ in seen[:3]) + (" ..." if len(seen) > 3 else "")
        raise GoushiError(f"{manifest}: no text in the sources' files ({names}); check the files and the sources' "
                          "`format`, `field` and `column`")
    if opts.val_fraction == 0:
        return
    plan = next(p for p, n in seen if n)
    raise GoushiError(f"{manifest}: the corpus is 1 document ({plan.path}: {plan.describe()}), so the validation "
                      f"split would be empty; {_more_documents_hint(plan)}")


def _more_documents_hint(plan: FilePlan) -> str:
    if plan.format == "txt" and (plan.lines or 0) > 1:
        return f"pass --split-docs line to make each of its {plan.lines:,} lines a document, or add more text"
    if plan.format in ("srt", "vtt", "ass"):
        return "add more subtitle files, or pass --split-docs line to make each cue a document"
    if plan.format == "txt":
        return "it holds a single line of text: add more text"
    return "it holds a single record: add more text"


def _tiny_val_message(val_chars: int, val_docs: int, n_docs: int, fraction: float) -> str:
    return (f"the validation split is tiny: {val_chars:,} characters in {val_docs:,} of {n_docs:,} documents "
            f"(--val-fraction {fraction:g}); `goushi train` refuses a validation split shorter than its context + 2 "
            "tokens (130 for the tiny preset) and a short one gives a noisy validation loss: raise --val-fraction, "
            "add text, split files into more documents (--split-docs line), or train with a smaller --context")


def _split_summary(plans: list[FilePlan]) -> str:
    """ ' (2 files one document per paragraph, 1 file one per line)' for the build log."""
    if not plans:
        return ""
    kinds = Counter(_split_kind(p) for p in plans)
    return " (" + ", ".join(f"{n} file{'s' * (n != 1)} {k}" for k, n in kinds.items()) + ")"


def _split_kind(plan: FilePlan) -> str:
    if plan.format == "txt":
        by = " (auto)" if plan.chosen_by == "auto" else ""
        return {"line": "one document per line", "blank": "one document per paragraph",
                "file": "one document per file"}.get(plan.separator or "", f"split at {plan.separator!r}") + by
    if plan.format in ("srt", "vtt", "ass"):
        return "subtitles, one document per cue" if plan.separator == "line" else "subtitles, one document per file"
    return f"{plan.format} records"


def _write_shards(tmp: Path, corpus: Path, srcs: list[Source], tok: Tokenizer, is_val: np.ndarray,
                  keys: np.ndarray, opts: BuildOptions, progress: bool | None = None) -> dict[str, Any]:
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    per = {s.id: dict(train_docs=0, val_docs=0, chars=0, train_chars=0, val_chars=0, tokens=0, train_tokens=0,
                      val_tokens=0, repeats=0) for s in srcs}
    totals = dict(train_tokens=0, val_tokens=0, train_docs=0, val_docs=0, train_chars=0, val_chars=0,
                  text_tokens=0, text_chars=0, unk_val=0, unk_train=0, val_text_tokens=0)
    fallback = np.array(tok.fallback_mask(), dtype=bool)
    # With another run's tokenizer: how much of this text it knows (counted per distinct character, so memory is
    # bounded by the alphabet, not the corpus).
    chars: Counter[str] | None = Counter() if opts.tokenizer_from else None
    index = None
    if opts.provenance:
        index = TextIndexWriter(tmp)
    try:
        with open(tmp / layout.TRAIN_BIN, "wb") as ftrain, open(tmp / layout.VAL_BIN, "wb") as fval, \
                open(tmp / layout.VAL_JSONL, "w", encoding="utf-8") as fjson, \
                _bar(progress, len(is_val), "encoding", "doc") as bar:
            batch: list[tuple[int, int, str]] = []

            def flush() -> None:
                encoded = tok.encode_batch([t for _, _, t in batch])
                for (i, si, text), ids in zip(batch, encoded, strict=True):
                    src = srcs[si]
                    arr = np.asarray(ids + [tok.eot_id], dtype=dtype)
                    n_unk = int(fallback[arr[:-1]].sum()) if len(ids) else 0
                    p = per[src.id]
                    p["chars"] += len(text)
                    if chars is not None:
                        chars.update(text)
                    p["tokens"] += len(ids)
                    totals["text_tokens"] += len(ids)
                    totals["text_chars"] += len(text)
                    if is_val[i]:
                        fval.write(arr.tobytes())
                        fjson.write(json.dumps({"text": text, "source": src.id}, ensure_ascii=False) + "\n")
                        p["val_docs"] += 1
                        p["val_chars"] += len(text)
                        p["val_tokens"] += len(arr)
                        totals["val_docs"] += 1
                        totals["val_chars"] += len(text)
                        totals["val_tokens"] += len(arr)
                        totals["unk_val"] += n_unk
                        totals["val_text_tokens"] += len(ids)
                        continue
                    totals["unk_train"] += n_unk
                    p["train_docs"] += 1
                    p["train_chars"] += len(text)
                    totals["train_docs"] += 1
                    totals["train_chars"] += len(text)
                    reps = _repeats(src.weight, int(keys[i]))
                    if reps:
                        data = arr.tobytes()
                        for _ in range(reps):
                            ftrain.write(data)
                        p["train_tokens"] += reps * len(arr)
                        p["repeats"] += reps
                        totals["train_tokens"] += reps * len(arr)
                        if index is not None:
                            index.add(text, src.id)
                bar.update(len(batch))
                batch.clear()

            for i, (si, text) in enumerate(_iter_corpus(corpus)):
                batch.append((i, si, text))
                if len(batch) >= CHUNK_DOCS:
                    flush()
            if batch:
                flush()
        if index is not None:
            with _bar(progress, index.bytes, "provenance index", "B") as bar:
                index.close({s.id: s.credit() for s in srcs}, progress=bar.update)
    except BaseException:
        if index is not None:
            index.abort()
        raise
    if totals["train_tokens"] == 0:
        raise GoushiError("no training tokens: every training document has weight 0 or the corpus is all validation; "
                          "raise a source's weight or lower --val-fraction")
    out = {"dtype": np.dtype(dtype).name, "per": per, "totals": totals}
    if chars is not None:
        out["coverage"] = tokenizer_coverage(tok, chars)
    return out


def _extended(tok: Tokenizer, texts: Iterator[str], opts: BuildOptions, say: Callable[[str], None]) -> Tokenizer:
    """`tok` with the commonest characters of the training text it spells in bytes (seen at least --min-frequency
    times, default 2: a character seen once cannot be learned), up to opts.extend_vocab of them."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    before = tokenizer_coverage(tok, counts)
    fallback = tok.fallback_mask()
    floor = opts.min_frequency or 2
    missing = [c for c, n in counts.most_common() if n >= floor and any(fallback[i] for i in tok.encode(c))]
    grown = tok.extend_chars(missing[: opts.extend_vocab])
    after = tokenizer_coverage(grown, counts)
    added = grown.vocab_size - tok.vocab_size
    say(f"tokenizer from {opts.tokenizer_from} extended by {added:,} characters (of {len(missing):,} it spells in "
        f"bytes seen {floor}+ times; the commonest: {''.join(missing[:20])}): it covered {before['char_coverage']:.2%} "
        f"of the training text's characters, now {after['char_coverage']:.2%}")
    return grown


def coverage_line(meta: dict[str, Any]) -> str:
    """The data card's and the build log's sentence about a tokenizer taken from elsewhere (--tokenizer-from)."""
    c = meta["tokenizer_coverage"]
    rest = f"; the commonest it lacks, spelled in bytes: {c['unknown_top']}" if c["unknown_top"] else ""
    if c["unknown_top"] and not meta["options"].get("extend_vocab") and meta.get("tokenizer_kind") == "char":
        rest += " (--extend-vocab N adds them as characters of their own; docs/recipe.md measured it)"
    grown = " (extended by this text's characters, --extend-vocab)" if meta["options"].get("extend_vocab") else ""
    return (f"the tokenizer from {meta['options']['tokenizer_from']}{grown} covers {c['char_coverage']:.2%} of this text's "
            f"characters ({c['distinct_chars'] - c['distinct_unknown']:,} of {c['distinct_chars']:,} distinct){rest}")


def tokenizer_coverage(tok: Tokenizer, chars: Counter[str]) -> dict[str, Any]:
    """How much of a text (its character counts) a tokenizer made on other text knows: the share of characters
    it writes without falling back to bytes, and the commonest ones it does not know (spelled in bytes: nothing is
    lost, but the model learns them from scratch)."""
    fallback = tok.fallback_mask()
    unknown = Counter({c: n for c, n in chars.items() if any(fallback[i] for i in tok.encode(c))})
    total = sum(chars.values()) or 1
    return {"char_coverage": round(1 - sum(unknown.values()) / total, 6), "distinct_chars": len(chars),
            "distinct_unknown": len(unknown), "unknown_top": "".join(c for c, _ in unknown.most_common(20))}


def _meta(srcs: list[Source], tok: Tokenizer, stats: dict[str, Any], opts: BuildOptions, manifest: Path,
          plans: dict[str, list[FilePlan]]) -> dict[str, Any]:
    t, per = stats["totals"], stats["per"]
    all_chars = sum(p["chars"] for p in per.values()) or 1
    sources = {}
    for s in srcs:
        p = per[s.id]
        c = s.credit()
        sources[s.id] = {"docs": p["train_docs"] + p["val_docs"], "chars": p["chars"], "tokens": p["tokens"],
                         "share": round(p["chars"] / all_chars, 6), "license": c["license"], "author": c["author"],
                         "url": c["url"], "note": c["note"], "weight": s.weight, "train_docs": p["train_docs"],
                         "val_docs": p["val_docs"], "train_tokens": p["train_tokens"], "val_tokens": p["val_tokens"],
                         # how many of its files were cut which way (per file: report.json "doc_split")
                         "doc_split": dict(Counter(_split_kind(fp) for fp in plans[s.id]))}
    unk_tokens, unk_on = (t["unk_val"], t["val_text_tokens"]) if t["val_text_tokens"] else (t["unk_train"], t["text_tokens"])
    return {
        "version": META_VERSION,
        "dtype": stats["dtype"],
        "vocab_size": tok.vocab_size,
        "tokenizer_hash": tok.hash(),
        "tokenizer_kind": tok.kind,
        "eot_id": tok.eot_id,
        "train_tokens": t["train_tokens"],
        "val_tokens": t["val_tokens"],
        "train_docs": t["train_docs"],
        "val_docs": t["val_docs"],
        "train_chars": t["train_chars"],
        "val_chars": t["val_chars"],
        "chars_per_token": round(t["text_chars"] / max(1, t["text_tokens"]), 4),
        # Byte-fallback (or <|unk|>) tokens per token on the validation text: how much of unseen text
        # the vocabulary does not know.
        "unk_rate": round(unk_tokens / max(1, unk_on), 6),
        "unk_rate_measured_on": "val" if t["val_text_tokens"] else "train",
        "sources": sources,
        "options": {**opts.to_dict(), "manifest": str(manifest)},
        **({"tokenizer_coverage": stats["coverage"]} if "coverage" in stats else {}),
    }


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ") if v not in (None, "") else "—"


DOC_SPLIT_LISTED = 20  # files listed one by one per source in the data card; more are summarised


def _documents_section(doc_split: dict[str, list[dict[str, Any]]]) -> list[str]:
    """How each file was cut into documents (documents counted as read, before cleaning)."""
    if not doc_split:
        return []
    lines = ["## Documents", "", "How each file was cut into documents (counted before cleaning; a text file's "
             "split is chosen per file unless `separator` or `--split-docs` forces it).", ""]
    for sid, files in doc_split.items():
        for d in files[:DOC_SPLIT_LISTED]:
            plan = FilePlan(Path(d["path"]), d["format"], d["separator"], d["chosen_by"], d["reason"], d["encoding"],
                            d.get("lines"), d.get("paragraphs"), d.get("docs"))
            enc = f", {d['encoding']}" if d["encoding"] not in ("utf-8", "utf-8-sig") else ""
            docs = f"{d['docs']:,} documents" if d.get("docs") is not None else "not read"
            lines.append(f"- **{_cell(sid)}** `{_cell(Path(d['path']).name)}`: {docs}{enc}, {plan.describe()}")
        rest = files[DOC_SPLIT_LISTED:]
        if rest:
            kinds = Counter(f"{d['format']} {d['separator'] or ''}".strip() for d in rest)
            lines.append(f"- **{_cell(sid)}**: {len(rest):,} more files ("
                         + ", ".join(f"{n:,} {k}" for k, n in kinds.items()) + "; details in `report.json`)")
    return lines + [""]


def data_card(meta: dict[str, Any], report: dict[str, Any], srcs: list[Source]) -> str:
    """DATA_CARD.md: what the data is, where every source came from, under which licence, and what was dropped."""
    o = meta["options"]
    lines = [
        "# Data card",
        "",
        f"Built by `goushi data build` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{o['manifest']}`.",
        "",
        "## Summary",
        "",
        f"- documents: {meta['train_docs']:,} train, {meta['val_docs']:,} validation (split by document, seed {o['seed']}, "
        f"validation fraction {o['val_fraction']})",
        f"- characters: {meta['train_chars']:,} train, {meta['val_chars']:,} validation",
        f"- tokens: {meta['train_tokens']:,} train, {meta['val_tokens']:,} validation ({meta['dtype']}, "
        "each document followed by `<|endoftext|>`)",
        f"- tokenizer: {meta['tokenizer_kind']}, {meta['vocab_size']:,} tokens, {meta['chars_per_token']} characters per token, "
        f"{meta['unk_rate']:.4%} of {meta['unk_rate_measured_on']} tokens spell characters outside the vocabulary in "
        f"bytes (byte fallback: nothing is lost); sha256 `{meta['tokenizer_hash'][:16]}…`",
        "",
    ]
    if meta.get("tokenizer_coverage"):
        lines[-1:-1] = [f"- {coverage_line(meta)}"]
    if report.get("warnings"):
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += [
        "## Sources",
        "",
        "| id | author | url | licence | documents | characters | share |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for sid, s in meta["sources"].items():
        lines.append(f"| {_cell(sid)} | {_cell(s['author'])} | {_cell(s['url'])} | {_cell(s['license'])} | "
                     f"{s['docs']:,} | {s['chars']:,} | {s['share']:.1%} |")
    lines.append("")
    weighted = [(sid, s) for sid, s in meta["sources"].items() if s["weight"] != 1.0]
    if weighted:
        lines += ["Weighted sources (training documents repeated or subsampled): "
                  + ", ".join(f"{sid} ×{s['weight']:g} → {s['train_tokens']:,} training tokens" for sid, s in weighted), ""]
    notes = [(s.id, s.note.strip()) for s in srcs if s.note.strip()]
    if notes:
        lines += ["Notes:", ""] + [f"- **{sid}**: {n}" for sid, n in notes] + [""]
    lines += _documents_section(report.get("doc_split", {}))
    licences: dict[str, list[str]] = {}
    for sid, s in meta["sources"].items():
        licences.setdefault(s["license"], []).append(sid)
    lines += ["## Licences", ""]
    lines += [f"- {lic}: {', '.join(ids)}" for lic, ids in sorted(licences.items())]
    if "unknown" in licences:
        lines += ["", f"**Warning:** no licence is recorded for {', '.join(licences['unknown'])}. Find out under which "
                  "terms that text may be used before you publish a model trained on it."]
    lines += ["", "Each licence applies to its source's text; check its terms (attribution, share-alike, "
              "non-commercial) before publishing a model or generated text.", "",
              "## Cleaning", "",
              f"Options: {', '.join(f'{k}={v}' for k, v in report['options'].items())}.", "",
              "| source | read | kept | " + " | ".join(r.replace("_", " ") for r in REASONS) + " |",
              "|---|---:|---:|" + "---:|" * len(REASONS)]
    for sid, r in report["sources"].items():
        lines.append(f"| {_cell(sid)} | {r['docs_in']:,} | {r['docs_kept']:,} | "
                     + " | ".join(f"{r['dropped'].get(k, 0):,}" for k in REASONS) + " |")
    lines += ["", "Reasons: " + "; ".join(f"{k.replace('_', ' ')} = {v}" for k, v in REASONS.items()) + ".",
              "Details, with an example per reason, are in `report.json`.", ""]
    return "\n".join(lines)


__all__ = ["BuildOptions", "build_dataset", "data_card", "coverage_line", "tokenizer_coverage"]
