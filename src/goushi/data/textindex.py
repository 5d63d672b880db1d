"""Verbatim-copy index over the training text: which spans of a new text occur word for word in it?

Layout of the index directory (`DATA_DIR/provenance/`), version 2:

- `corpus.bin`     the training documents as UTF-8, each followed by one NUL byte. Cleaned text never
                   contains NUL (it is stripped on the way in), so no match can cross a document boundary.
- `sa-NNNNN.npy`   one suffix array (pydivsufsort) per *piece*: a run of whole documents of at most
                   `piece_bytes` bytes of corpus.bin (a longer document is a piece alone). Entries are
                   offsets from the piece's start, int32 (int64 only for a single document over 2 GiB).
                   Pieces bound the memory of the build: sorting all of a 300 MB corpus at once needs
                   ~1.5 GB (4 bytes per byte plus the text), a 128 MiB piece ~0.65 GB, whatever the corpus.
                   Memory-mapped on load, so a 1 GB corpus costs page cache, not RAM.
- `docs.npy`       byte offset in corpus.bin where each document starts (int64, ascending).
- `doc_src.npy`    index into `index.json["source_ids"]` per document (int32).
- `index.json`     version, sizes, the pieces (file, start byte, bytes, first document, dtype) and the
                   source table (author, url, license per source id).

A query searches every piece and adds up what they find. Because pieces never split a document and
no match crosses a NUL, the spans, their counts and (for spans occurring at most 1024 times) their
earliest document are exactly those of one suffix array over the whole corpus. Version 1 (one
`sa.npy` over all of corpus.bin) is read as one piece starting at byte 0.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from goushi.data import layout
from goushi.errors import GoushiError
from goushi.fsutil import fsync_dir

INDEX_VERSION = 2
READS_VERSIONS = (1, 2)
SEP = b"\x00"
INDEX_DIRNAME = layout.PROVENANCE
# Bytes of corpus per suffix array: building one holds the piece and 4 bytes per byte of it (~0.65 GB here).
PIECE_BYTES = 128 << 20
_COMMON = ("corpus.bin", "docs.npy", "doc_src.npy", layout.PROVENANCE_INDEX)
_V1_SA = "sa.npy"
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
    """Stream training documents to disk, then build the suffix arrays on `close`.

    `TextIndexWriter(data_dir)` writes `data_dir/provenance/`; nothing appears there until `close`
    succeeds (the index is built in a temporary directory and renamed into place). `piece_bytes`
    bounds the bytes of text per suffix array (and so the build's memory); tests pass a tiny one.
    """

    def __init__(self, data_dir: str | Path, *, piece_bytes: int | None = None):
        piece_bytes = PIECE_BYTES if piece_bytes is None else piece_bytes  # read at call time: tests shrink it
        if not isinstance(piece_bytes, int) or piece_bytes < 1:
            raise GoushiError(f"TextIndexWriter: piece_bytes={piece_bytes!r}, must be a positive number of bytes")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{INDEX_DIRNAME}.", suffix=".tmp", dir=self.data_dir))
        self._corpus = open(self._tmp / "corpus.bin", "wb")  # noqa: SIM115 - closed in close()/abort()
        self._offset = 0
        self._piece_bytes = piece_bytes
        # array('q') keeps 8 bytes per document instead of a Python int object each.
        self._doc_starts = array("q")
        self._doc_src = array("i")
        self._piece_starts = array("q")  # byte offset where each piece starts
        self._piece_docs = array("q")  # its first document
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
        size = len(data) + 1
        # A new piece when this document would overflow the current one; documents are never split.
        if not self._piece_starts or (self._offset > self._piece_starts[-1]
                                      and self._offset - self._piece_starts[-1] + size > self._piece_bytes):
            self._piece_starts.append(self._offset)
            self._piece_docs.append(len(self._doc_starts))
        self._doc_starts.append(self._offset)
        self._doc_src.append(self._source_pos[source_id])
        self._corpus.write(data)
        self._corpus.write(SEP)
        self._offset += size

    @property
    def bytes(self) -> int:
        """Bytes of text (with separators) added so far: what `close` will sort."""
        return self._offset

    def close(self, sources: dict[str, dict[str, Any]] | None = None, *,
              progress: Callable[[int], None] | None = None) -> Path:
        """Build the suffix arrays and move the index into `data_dir/provenance/`; returns that path.

        `sources` maps source id -> {"author", "url", "license", ...}; a source added without an entry
        is recorded with licence "unknown" so the model card can warn about it. `progress(n)` is called
        with each piece's bytes once its suffix array is written.
        """
        if self._done:
            raise GoushiError("TextIndexWriter: close() called twice")
        try:
            self._corpus.close()
            n = self._offset
            bounds = [*self._piece_starts, n]
            pieces = []
            for k in range(len(self._piece_starts)):
                start, size = bounds[k], bounds[k + 1] - bounds[k]
                name = f"sa-{k:05d}.npy"
                dtype = _build_suffix_array(self._tmp / "corpus.bin", self._tmp / name, start, size)
                pieces.append({"file": name, "start": start, "bytes": size, "first_doc": self._piece_docs[k],
                               "sa_dtype": dtype})
                if progress is not None:
                    progress(size)
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
                "piece_bytes": self._piece_bytes,
                "pieces": pieces,
                "source_ids": self._source_ids,
                "sources": table,
            }
            (self._tmp / layout.PROVENANCE_INDEX).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
                                                             encoding="utf-8")
            for name in [*_COMMON, *(p["file"] for p in pieces)]:
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


def _build_suffix_array(corpus_path: Path, out_path: Path, start: int, size: int) -> str:
    """Suffix array of corpus bytes [start, start + size), offsets relative to `start`; returns its dtype."""
    from pydivsufsort import divsufsort

    # mode "c" (copy-on-write) because ctypes refuses read-only buffers; nothing is written. Only this
    # piece is mapped, so the resident text is bounded by the piece size too.
    data = np.memmap(corpus_path, dtype=np.uint8, mode="c", offset=start, shape=(size,))
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


@dataclass(frozen=True)
class _Piece:
    """One suffix array over corpus bytes [start, start + n); its entries are offsets from `start`."""

    start: int
    sa: np.ndarray  # a plain ndarray view of the memmap: np.memmap.__getitem__ is slow
    # Indexing a memoryview yields Python ints at a fraction of numpy's per-scalar cost; the binary
    # search touches one entry per step, so this is the hot path.
    mv: memoryview
    n: int


def _pieces_of(p: Path, meta: dict[str, Any], size: int) -> list[tuple[str, int, int]]:
    """(file, start byte, bytes) of each suffix array the index `p` lists, checked to tile the corpus."""
    toc = p / layout.PROVENANCE_INDEX
    if meta.get("version") == 1:
        return [(_V1_SA, 0, size)]  # one array over the whole corpus (also when it is empty)
    specs = meta.get("pieces")
    if not isinstance(specs, list):
        raise GoushiError(f"{toc}: pieces={specs!r} should be a list; rebuild the data with `goushi data build`")
    out, at = [], 0
    for i, spec in enumerate(specs):
        try:
            name, start, n = str(spec["file"]), int(spec["start"]), int(spec["bytes"])
        except (TypeError, KeyError, ValueError):
            raise GoushiError(f"{toc}: pieces[{i}]={spec!r} lacks file/start/bytes; rebuild the data") from None
        if start != at or n < 1 or Path(name).name != name:
            raise GoushiError(f"{toc}: pieces[{i}] starts at byte {start} with {n} bytes, expected byte {at}; "
                              "rebuild the data")
        out.append((name, start, n))
        at += n
    if at != size:
        raise GoushiError(f"{toc}: the pieces cover {at} bytes of a {size}-byte corpus.bin; rebuild the data")
    return out


class TextIndex:
    """A loaded (memory-mapped) index; `find_copied_spans` is the query."""

    def __init__(self, path: Path, meta: dict[str, Any], corpus: mmap.mmap | bytes,
                 pieces: list[tuple[int, np.ndarray]], doc_starts: np.ndarray, doc_src: np.ndarray):
        self.path = path
        self.meta = meta
        self._corpus = corpus
        self._pieces = []
        for start, sa in pieces:
            arr = np.asarray(sa)
            self._pieces.append(_Piece(int(start), arr, memoryview(arr) if len(arr) else memoryview(b""), len(arr)))
        self._n = sum(p.n for p in self._pieces)
        self._doc_starts = doc_starts
        self._doc_src = doc_src
        self.source_ids: list[str] = list(meta["source_ids"])
        self.sources: dict[str, dict[str, Any]] = meta["sources"]

    @classmethod
    def load(cls, path: str | Path) -> TextIndex:
        """Open an index directory, or the `provenance/` index inside a DATA_DIR (version 1 or 2)."""
        p = index_dir(path)
        missing = [name for name in _COMMON if not (p / name).exists()]
        if missing:
            raise GoushiError(
                f"{p}: no provenance index ({', '.join(missing)} missing); rebuild the data with `goushi data build`"
            )
        toc = p / layout.PROVENANCE_INDEX
        try:
            meta = json.loads(toc.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GoushiError(f"{toc}: not valid JSON ({e}); rebuild with `goushi data build`") from None
        if not isinstance(meta, dict) or meta.get("version") not in READS_VERSIONS:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise GoushiError(f"{toc}: version={version!r}, this goushi reads "
                              f"{' and '.join(map(str, READS_VERSIONS))}; rebuild the data with `goushi data build`")
        size = (p / "corpus.bin").stat().st_size
        if size != meta.get("bytes"):
            raise GoushiError(f"{p / 'corpus.bin'}: {size} bytes but {toc.name} says {meta.get('bytes')}; rebuild the data")
        specs = _pieces_of(p, meta, size)
        missing = [name for name, _, _ in specs if not (p / name).exists()]
        if missing:
            raise GoushiError(
                f"{p}: no provenance index ({', '.join(missing)} missing); rebuild the data with `goushi data build`"
            )
        if size:
            with open(p / "corpus.bin", "rb") as f:
                corpus: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            corpus = b""
        pieces = []
        for name, start, n in specs:
            sa = np.load(p / name, mmap_mode="r") if n else np.zeros(0, dtype=np.int32)
            if len(sa) != n:
                raise GoushiError(f"{p / name}: {len(sa)} entries for a {n}-byte piece of the corpus; rebuild the data")
            if n:
                pieces.append((start, sa))
        return cls(p, meta, corpus, pieces, np.load(p / "docs.npy"), np.load(p / "doc_src.npy"))

    def __len__(self) -> int:
        return self._n

    # ---- suffix-array search ------------------------------------------------------------
    def _range(self, piece: _Piece, pat: bytes, lo: int, hi: int) -> tuple[int, int]:
        """Interval [lo, hi) of `piece`'s suffix array whose suffixes start with `pat`, searched inside [lo, hi).

        A comparison may read past the piece's end into the next piece, but only after the NUL that ends
        its last document, and `pat` holds no NUL, so the order it sees is the piece's own.
        """
        corpus, sa, base, m = self._corpus, piece.mv, piece.start, len(pat)
        a, b = lo, hi
        while a < b:  # first suffix whose m-byte prefix is >= pat
            mid = (a + b) >> 1
            s = sa[mid] + base
            if corpus[s:s + m] < pat:
                a = mid + 1
            else:
                b = mid
        first = a
        # Most queries of novel text stop here: no suffix starts with pat, so skip the second search.
        if first == hi or corpus[sa[first] + base:sa[first] + base + m] != pat:
            return first, first
        b = hi
        while a < b:  # first suffix whose m-byte prefix is > pat
            mid = (a + b) >> 1
            s = sa[mid] + base
            if corpus[s:s + m] <= pat:
                a = mid + 1
            else:
                b = mid
        return first, a

    def _ranges(self, pat: bytes, within: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """Per piece, the interval of suffixes starting with `pat` (inside `within`'s intervals when given)."""
        out = []
        for k, piece in enumerate(self._pieces):
            lo, hi = (0, piece.n) if within is None else within[k]
            out.append(self._range(piece, pat, lo, hi) if lo < hi else (lo, lo))
        return out

    def _exists(self, pat: bytes) -> bool:
        """Does `pat` occur anywhere? Stops at the first piece that has it."""
        for piece in self._pieces:
            lo, hi = self._range(piece, pat, 0, piece.n)
            if lo < hi:
                return True
        return False

    def count(self, text: str) -> int:
        """How many times `text` occurs verbatim in the training data."""
        if not text or "\x00" in text:
            return 0
        return sum(hi - lo for lo, hi in self._ranges(text.encode("utf-8")))

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

        def occurs(i: int, j: int, within: list[tuple[int, int]] | None = None) -> list[tuple[int, int]] | None:
            """Each piece's interval for text[i:j], or None when it occurs in none of them."""
            r = self._ranges(raw[off[i]:off[j]], within)
            return r if any(lo < hi for lo, hi in r) else None

        out: list[Span] = []
        i = 0
        prev_end = 0  # end of the last reported span: a new maximal span must end after it
        while i + k <= m:
            found = occurs(i, i + k)
            if found is None:
                i += 1
                continue
            # Longest match from i: gallop, then bisect, each search inside the intervals already found.
            good, good_r = i + k, found
            step = 1
            while good < m:
                j = min(m, good + step)
                r = occurs(i, j, good_r)
                if r is None:
                    bad = j
                    break
                good, good_r = j, r
                step *= 2
            else:
                bad = m + 1
            while bad - good > 1:
                j = (good + bad) >> 1
                r = occurs(i, j, good_r)
                if r is None:
                    bad = j
                else:
                    good, good_r = j, r
            end = good
            if end > prev_end:
                out.append(self._span(text, base, i, end, good_r))
                prev_end = end
            if end >= m:
                break
            # The next maximal span starts at the first j > i where text[j:end+1] occurs (that set of j is
            # an up-set, so bisect it) — this skips the inside of a long copied passage in O(log) searches.
            a, b = i + 1, end + 1  # b = end + 1 stands for "none": the empty text[end+1:end+1] always occurs
            while a < b:
                j = (a + b) >> 1
                if self._exists(raw[off[j]:off[end + 1]]):
                    b = j
                else:
                    a = j + 1
            # Starts before `a` cannot end after `end`, so they only give spans inside the one just reported.
            # If text[a:end+1] is shorter than k, starts in [a, end+1-k] do not exist, so `a` is still next.
            i = a
        return out

    def _span(self, text: str, base: int, i: int, j: int, ranges: list[tuple[int, int]]) -> Span:
        # The earliest occurrence among the first _OCCURRENCE_SCAN of each piece: for a span occurring at most
        # that many times, the earliest of all, as one suffix array over the whole corpus would find it.
        pos, count = -1, 0
        for piece, (lo, hi) in zip(self._pieces, ranges, strict=True):
            if lo < hi:
                count += hi - lo
                p = int(np.min(piece.sa[lo:min(hi, lo + _OCCURRENCE_SCAN)])) + piece.start
                pos = p if pos < 0 else min(pos, p)
        doc = int(np.searchsorted(self._doc_starts, pos, side="right") - 1)
        sid = self.source_ids[int(self._doc_src[doc])]
        info = self.sources.get(sid, {})
        return Span(
            start=base + i, end=base + j, text=text[i:j], source_id=sid, author=str(info.get("author", "")),
            url=str(info.get("url", "")), license=str(info.get("license", "unknown")), doc_index=doc, count=count,
        )


def copied_char_mask(length: int, spans: list[Span]) -> np.ndarray:
    """Boolean mask over `length` characters: True where some span covers the character."""
    mask = np.zeros(length, dtype=bool)
    for s in spans:
        mask[s.start:s.end] = True
    return mask


__all__ = ["Span", "TextIndex", "TextIndexWriter", "copied_char_mask", "index_dir", "INDEX_DIRNAME"]
