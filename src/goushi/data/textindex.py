"""Verbatim-copy index over the training text: which spans of a new text occur word for word in it?

Layout of the index directory (`DATA_DIR/provenance/`):

- `corpus.bin`   the training documents as UTF-8, each followed by one NUL byte. Cleaned text never
                 contains NUL (it is stripped on the way in), so no match can cross a document boundary.
- `sa.npy`       suffix array of `corpus.bin` (pydivsufsort), int32 while the corpus is under 2 GiB,
                 int64 beyond; memory-mapped on load, so a 1 GB corpus costs page cache, not RAM.
- `docs.npy`     byte offset where each document starts (int64, ascending).
- `doc_src.npy`  index into `index.json["source_ids"]` per document (int32).
- `index.json`   version, sizes, dtype and the source table (author, url, license per source id).

Why bytes and not code points: libdivsufsort sorts bytes; sorting code points would mean sorting a
4x larger byte view. UTF-8 is self-synchronising (lead bytes and continuation bytes never coincide),
so a pattern that starts and ends on whole characters can only match at whole characters in the
corpus; all offsets reported to callers are character offsets into the query.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import tempfile
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from goushi.data import layout
from goushi.errors import GoushiError
from goushi.fsutil import fsync_dir

INDEX_VERSION = 1
SEP = b"\x00"
INDEX_DIRNAME = layout.PROVENANCE
_FILES = ("corpus.bin", "sa.npy", "docs.npy", "doc_src.npy", layout.PROVENANCE_INDEX)
_BANNED = re.compile("[\x00\ud800-\udfff]")
_QUERY_PIECES = re.compile("[^\x00\ud800-\udfff]+")
# When a span occurs many times, the earliest document among this many occurrences names the source.
_OCCURRENCE_SCAN = 1024


@dataclass(frozen=True)
class Span:
    """A stretch of the query, `text[start:end]`, found verbatim in the training data."""

    start: int  # character offsets into the query
    end: int
    text: str
    source_id: str
    author: str
    url: str
    license: str
    doc_index: int  # which training document (in build order) holds the reported occurrence
    count: int  # how many times the span occurs in the training data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TextIndexWriter:
    """Stream training documents to disk, then build the suffix array on `close`.

    `TextIndexWriter(data_dir)` writes `data_dir/provenance/`; nothing appears there until `close`
    succeeds (the index is built in a temporary directory and renamed into place).
    """

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{INDEX_DIRNAME}.", suffix=".tmp", dir=self.data_dir))
        self._corpus = open(self._tmp / "corpus.bin", "wb")  # noqa: SIM115 - closed in close()/abort()
        self._offset = 0
        # array('q') keeps 8 bytes per document instead of a Python int object each.
        self._doc_starts = array("q")
        self._doc_src = array("i")
        self._source_ids: list[str] = []
        self._source_pos: dict[str, int] = {}
        self._done = False

    def add(self, text: str, source_id: str) -> None:
        """Append one training document (as it goes into train.bin) from source `source_id`."""
        if self._done:
            raise GoushiError("TextIndexWriter: add() after close(); build a new writer")
        if not isinstance(text, str):
            raise GoushiError(f"TextIndexWriter.add: text must be str, got {type(text).__name__}")
        # NUL is the separator; a lone surrogate cannot be UTF-8: neither may enter the corpus.
        data = _BANNED.sub("", text).encode("utf-8")
        if source_id not in self._source_pos:
            self._source_pos[source_id] = len(self._source_ids)
            self._source_ids.append(str(source_id))
        self._doc_starts.append(self._offset)
        self._doc_src.append(self._source_pos[source_id])
        self._corpus.write(data)
        self._corpus.write(SEP)
        self._offset += len(data) + 1

    def close(self, sources: dict[str, dict[str, Any]] | None = None) -> Path:
        """Build the suffix array and move the index into `data_dir/provenance/`; returns that path.

        `sources` maps source id -> {"author", "url", "license", ...}; a source added without an entry
        is recorded with licence "unknown" so the model card can warn about it.
        """
        if self._done:
            raise GoushiError("TextIndexWriter: close() called twice")
        try:
            self._corpus.close()
            n = self._offset
            sa_dtype = _build_suffix_array(self._tmp / "corpus.bin", self._tmp / "sa.npy", n)
            np.save(self._tmp / "docs.npy", np.frombuffer(self._doc_starts, dtype=np.int64))
            np.save(self._tmp / "doc_src.npy", np.frombuffer(self._doc_src, dtype=np.int32))
            table = {}
            for sid in self._source_ids:
                info = dict((sources or {}).get(sid) or {})
                table[sid] = {
                    "author": str(info.get("author") or ""),
                    "url": str(info.get("url") or ""),
                    "license": str(info.get("license") or "unknown"),
                    **{k: v for k, v in info.items() if k not in ("author", "url", "license")},
                }
            meta = {
                "version": INDEX_VERSION,
                "encoding": "utf-8",
                "separator": "\\u0000",
                "bytes": n,
                "docs": len(self._doc_starts),
                "sa_dtype": sa_dtype,
                "source_ids": self._source_ids,
                "sources": table,
            }
            (self._tmp / layout.PROVENANCE_INDEX).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
                                                             encoding="utf-8")
            for name in _FILES:
                with open(self._tmp / name, "rb+") as f:
                    os.fsync(f.fileno())
            out = self.data_dir / INDEX_DIRNAME
            if out.exists():
                old = self.data_dir / f".{INDEX_DIRNAME}.old.{os.getpid()}"
                os.replace(out, old)
                os.replace(self._tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self._tmp, out)
            fsync_dir(self.data_dir)
            return out
        finally:
            self._done = True
            self.abort()

    def abort(self) -> None:
        """Drop a half-written index (also safe after close)."""
        self._done = True
        if not self._corpus.closed:
            self._corpus.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TextIndexWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On success the caller must call close(sources); leaving the block without it is an abort.
        self.abort()


def _build_suffix_array(corpus_path: Path, out_path: Path, n: int) -> str:
    from pydivsufsort import divsufsort

    if n == 0:
        sa = np.zeros(0, dtype=np.int32)
    else:
        # mode "c" (copy-on-write) because ctypes refuses read-only buffers; nothing is written.
        data = np.memmap(corpus_path, dtype=np.uint8, mode="c", shape=(n,))
        sa = divsufsort(data)  # int32 below 2**31 bytes, int64 above (pydivsufsort decides)
        del data
    np.save(out_path, sa)
    return str(np.asarray(sa).dtype)


def index_dir(path: str | Path) -> Path:
    """The index directory `path` names: itself when it holds an index, its `provenance/` when it is a DATA_DIR
    with one (else `path` itself, for the caller to report as missing)."""
    p = Path(path)
    if not (p / layout.PROVENANCE_INDEX).exists() and (p / INDEX_DIRNAME / layout.PROVENANCE_INDEX).exists():
        return p / INDEX_DIRNAME
    return p


class TextIndex:
    """A loaded (memory-mapped) index; `find_copied_spans` is the query."""

    def __init__(self, path: Path, meta: dict[str, Any], corpus: mmap.mmap | bytes, sa: np.ndarray,
                 doc_starts: np.ndarray, doc_src: np.ndarray):
        self.path = path
        self.meta = meta
        self._corpus = corpus
        self._sa = np.asarray(sa)  # a plain ndarray view of the memmap: np.memmap.__getitem__ is slow
        # Indexing a memoryview yields Python ints at a fraction of numpy's per-scalar cost; the binary
        # search touches one entry per step, so this is the hot path.
        self._sa_mv = memoryview(self._sa) if len(sa) else memoryview(b"")
        self._n = len(sa)
        self._doc_starts = doc_starts
        self._doc_src = doc_src
        self.source_ids: list[str] = list(meta["source_ids"])
        self.sources: dict[str, dict[str, Any]] = meta["sources"]

    @classmethod
    def load(cls, path: str | Path) -> TextIndex:
        """Open an index directory, or the `provenance/` index inside a DATA_DIR."""
        p = index_dir(path)
        missing = [name for name in _FILES if not (p / name).exists()]
        if missing:
            raise GoushiError(
                f"{p}: no provenance index ({', '.join(missing)} missing); rebuild the data with `goushi data build`"
            )
        toc = p / layout.PROVENANCE_INDEX
        try:
            meta = json.loads(toc.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GoushiError(f"{toc}: not valid JSON ({e}); rebuild with `goushi data build`") from None
        if meta.get("version") != INDEX_VERSION:
            raise GoushiError(
                f"{toc}: version={meta.get('version')!r}, this goushi reads {INDEX_VERSION}; rebuild the data"
            )
        size = (p / "corpus.bin").stat().st_size
        if size != meta.get("bytes"):
            raise GoushiError(f"{p / 'corpus.bin'}: {size} bytes but {toc.name} says {meta.get('bytes')}; rebuild the data")
        if size:
            with open(p / "corpus.bin", "rb") as f:
                corpus: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            corpus = b""
        sa = np.load(p / "sa.npy", mmap_mode="r") if size else np.zeros(0, dtype=np.int32)
        if len(sa) != size:
            raise GoushiError(f"{p / 'sa.npy'}: {len(sa)} entries for a {size}-byte corpus; rebuild the data")
        return cls(p, meta, corpus, sa, np.load(p / "docs.npy"), np.load(p / "doc_src.npy"))

    def __len__(self) -> int:
        return self._n

    # ---- suffix-array search ------------------------------------------------------------
    def _range(self, pat: bytes, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
        """Suffix-array interval [lo, hi) of suffixes starting with `pat`, searched inside [lo, hi)."""
        corpus, sa, m = self._corpus, self._sa_mv, len(pat)
        hi = self._n if hi is None else hi
        a, b = lo, hi
        while a < b:  # first suffix whose m-byte prefix is >= pat
            mid = (a + b) >> 1
            s = sa[mid]
            if corpus[s:s + m] < pat:
                a = mid + 1
            else:
                b = mid
        first = a
        # Most queries of novel text stop here: no suffix starts with pat, so skip the second search.
        if first == hi or corpus[sa[first]:sa[first] + m] != pat:
            return first, first
        b = hi
        while a < b:  # first suffix whose m-byte prefix is > pat
            mid = (a + b) >> 1
            s = sa[mid]
            if corpus[s:s + m] <= pat:
                a = mid + 1
            else:
                b = mid
        return first, a

    def count(self, text: str) -> int:
        """How many times `text` occurs verbatim in the training data."""
        if not text or "\x00" in text:
            return 0
        lo, hi = self._range(text.encode("utf-8"))
        return hi - lo

    def find_copied_spans(self, text: str, min_chars: int = 8) -> list[Span]:
        """Every maximal span of >= `min_chars` characters of `text` that occurs verbatim in the training data.

        Maximal: not contained in a longer such span. Spans may overlap when two different training
        passages each cover part of the same stretch. Offsets are character offsets into `text`.
        """
        if min_chars < 1:
            raise GoushiError(f"--min-chars {min_chars}: must be at least 1")
        spans: list[Span] = []
        if not self._n or not text:
            return spans
        # NUL and lone surrogates (undecodable bytes smuggled in by a terminal as U+DC80..) never occur in
        # the index, so they split the query into independent pieces.
        for m in _QUERY_PIECES.finditer(text):
            spans.extend(self._spans_in(m.group(), m.start(), min_chars))
        return spans

    def _spans_in(self, text: str, base: int, k: int) -> list[Span]:
        m = len(text)
        if m < k:
            return []
        raw = text.encode("utf-8")
        # off[i] = byte offset of character i in `raw` (UTF-8 length from the code point, vectorised).
        cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        nbytes = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
        off = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(nbytes, out=off[1:])
        off = off.tolist()  # plain ints: slicing bytes with numpy scalars is slower

        def occurs(i: int, j: int, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
            return self._range(raw[off[i]:off[j]], lo, hi)

        out: list[Span] = []
        i = 0
        prev_end = 0  # end of the last reported span: a new maximal span must end after it
        while i + k <= m:
            lo, hi = occurs(i, i + k)
            if lo == hi:
                i += 1
                continue
            # Longest match from i: gallop, then bisect, each search inside the interval already found.
            good, good_lo, good_hi = i + k, lo, hi
            step = 1
            while good < m:
                j = min(m, good + step)
                lo2, hi2 = occurs(i, j, good_lo, good_hi)
                if lo2 == hi2:
                    bad = j
                    break
                good, good_lo, good_hi = j, lo2, hi2
                step *= 2
            else:
                bad = m + 1
            while bad - good > 1:
                j = (good + bad) >> 1
                lo2, hi2 = occurs(i, j, good_lo, good_hi)
                if lo2 == hi2:
                    bad = j
                else:
                    good, good_lo, good_hi = j, lo2, hi2
            end = good
            if end > prev_end:
                out.append(self._span(text, base, i, end, good_lo, good_hi))
                prev_end = end
            if end >= m:
                break
            # The next maximal span starts at the first j > i where text[j:end+1] occurs (that set of j is
            # an up-set, so bisect it) — this skips the inside of a long copied passage in O(log) searches.
            a, b = i + 1, end + 1  # b = end + 1 stands for "none": the empty text[end+1:end+1] always occurs
            while a < b:
                j = (a + b) >> 1
                lo2, hi2 = occurs(j, end + 1)
                if lo2 < hi2:
                    b = j
                else:
                    a = j + 1
            # Starts before `a` cannot end after `end`, so they only give spans inside the one just reported.
            # If text[a:end+1] is shorter than k, starts in [a, end+1-k] do not exist, so `a` is still next.
            i = a
        return out

    def _span(self, text: str, base: int, i: int, j: int, lo: int, hi: int) -> Span:
        pos = int(np.min(self._sa[lo:min(hi, lo + _OCCURRENCE_SCAN)]))
        doc = int(np.searchsorted(self._doc_starts, pos, side="right") - 1)
        sid = self.source_ids[int(self._doc_src[doc])]
        info = self.sources.get(sid, {})
        return Span(
            start=base + i, end=base + j, text=text[i:j], source_id=sid, author=str(info.get("author", "")),
            url=str(info.get("url", "")), license=str(info.get("license", "unknown")), doc_index=doc, count=hi - lo,
        )


def copied_char_mask(length: int, spans: list[Span]) -> np.ndarray:
    """Boolean mask over `length` characters: True where some span covers the character."""
    mask = np.zeros(length, dtype=bool)
    for s in spans:
        mask[s.start:s.end] = True
    return mask


__all__ = ["Span", "TextIndex", "TextIndexWriter", "copied_char_mask", "index_dir", "INDEX_DIRNAME"]
