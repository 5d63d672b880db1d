"""Clean documents and drop the ones a model should not see twice, keeping a per-source account.

Normalisation is NFC plus a narrow fold, not NFKC. NFKC rewrites full-width Chinese punctuation
to ASCII (，→, ！→! ？→? ：→: （）→()) while leaving 。、《》 alone, so a sentence ends up with two
punctuation styles and the model learns both. NFC only merges canonically equal forms (including
the CJK compatibility ideographs), and the fold then maps full-width Latin letters and digits
(ＡＢＣ１２３) and exotic spaces to ASCII, which is what they mean in running Chinese text.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from goushi.errors import GoushiError

NORMALIZATIONS = ("nfc", "nfkc", "none")

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_LINE_ENDS = re.compile(r"\r\n|[\r\v\f\x85\u2028\u2029]")
# Zero-width and bidi control characters; U+200D (ZWJ) is handled apart because emoji need it.
_ZERO_WIDTH = re.compile(r"[\u00ad\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_EMOJI = "\u2600-\u27bf\ufe0f\U0001f000-\U0001faff"
_STRAY_ZWJ = re.compile(rf"(?<![{_EMOJI}])\u200d|\u200d(?![{_EMOJI}])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f]")
_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
                    for c in range(r[0], r[1] + 1)}
_FULLWIDTH_RE = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")
_SPACES = re.compile(r"[\t \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_CHARS = re.compile(r"[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass
class CleanOptions:
    normalize: str = "nfc"
    t2s: bool = False  # traditional -> simplified for every source (a source can also ask with `t2s = true`)
    min_chars: int = 2
    max_chars: int = 0  # 0 = no limit
    dedup: bool = True  # exact duplicates (after cleaning)
    near_dup_threshold: float = 0.85  # estimated Jaccard similarity of character 5-grams; 0 = off
    collapse_spaces: bool = True  # runs of spaces -> one, lines stripped, at most one blank line in a row

    def validate(self) -> CleanOptions:
        if self.normalize not in NORMALIZATIONS:
            raise GoushiError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
        if self.min_chars < 0:
            raise GoushiError(f"--min-chars {self.min_chars}: must be >= 0")
        if self.max_chars < 0 or (self.max_chars and self.max_chars < self.min_chars):
            raise GoushiError(f"--max-chars {self.max_chars}: must be 0 (no limit) or >= --min-chars {self.min_chars}")
        if not 0.0 <= self.near_dup_threshold <= 1.0:
            raise GoushiError(f"--near-dup-threshold {self.near_dup_threshold}: must be in [0, 1] (0 turns it off)")
        return self


def t2s_converter() -> Callable[[str], str]:
    """OpenCC traditional -> simplified; a clear error when the optional extra is missing."""
    try:
        from opencc import OpenCC
    except ImportError:
        raise GoushiError("traditional -> simplified conversion needs OpenCC: pip install 'goushi[opencc]' "
                          "(or drop --t2s / `t2s = true`)") from None
    return OpenCC("t2s").convert


def clean_text(text: str, opts: CleanOptions, changes: Counter[str] | None = None,
               t2s: Callable[[str], str] | None = None) -> str:
    """One document, cleaned. `changes` counts which kinds of repair were needed."""
    ch = changes if changes is not None else Counter()
    if "\x1b" in text:
        text, n = _ANSI.subn("", text)
        ch["ansi_escapes"] += bool(n)
    text = _LINE_ENDS.sub("\n", text)
    text, n = _ZERO_WIDTH.subn("", text)
    if "\u200d" in text:
        text, m = _STRAY_ZWJ.subn("", text)
        n += m
    ch["zero_width"] += bool(n)
    text, n = _CONTROL.subn("", text)
    ch["control_chars"] += bool(n)
    if opts.normalize != "none":
        form = "NFKC" if opts.normalize == "nfkc" else "NFC"
        if not unicodedata.is_normalized(form, text):
            text = unicodedata.normalize(form, text)
            ch["normalized"] += 1
        if opts.normalize == "nfc" and _FULLWIDTH_RE.search(text):
            text = text.translate(_FULLWIDTH_ALNUM)
            ch["fullwidth_alnum"] += 1
    if t2s is not None:
        converted = t2s(text)
        ch["t2s"] += converted != text
        text = converted
    if opts.collapse_spaces:
        text = _SPACES.sub(" ", text)
        if " \n" in text or "\n " in text:
            text = "\n".join(line.strip(" ") for line in text.split("\n"))
        text = _MANY_NEWLINES.sub("\n\n", text)
    else:
        text = _SPACE_CHARS.sub(lambda m: "\t" if m.group() == "\t" else " ", text)
    return text.strip()


def text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads any 64-bit keys evenly over the low bits that pick a slot."""
    x = keys.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class KeyTable:
    """A set of 64-bit keys, each with an optional int32 value, in two numpy arrays (open addressing).

    About 20 bytes a key (at most 60 % full), where a Python set of ints spends ~70 and a dict of
    tuples ~200: the de-duplication state of a 100 M-character corpus is its largest per-document
    memory. Used a batch at a time, because per-key numpy calls cost more than the work. Key 0 marks an
    empty slot, so a key of 0 is stored as 1 (a 2**-64 event for a hash).
    """

    MAX_LOAD = 0.6

    def __init__(self, expected: int = 0, *, values: bool = False) -> None:
        cap = 1 << 10
        while cap * self.MAX_LOAD < expected:
            cap <<= 1
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._vals = np.zeros(cap, dtype=np.int32) if values else None
        self._used = 0

    def __len__(self) -> int:
        return self._used

    @staticmethod
    def _clean(keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        return np.where(keys == 0, np.uint64(1), keys)

    def _probe(self, keys: np.ndarray) -> np.ndarray:
        """Per key, the slot holding it or the empty slot where its probe sequence ends."""
        table, mask = self._keys, len(self._keys) - 1
        pos = (_mix(keys) & np.uint64(mask)).astype(np.int64)
        out = np.empty(len(keys), dtype=np.int64)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            k = table[p]
            done = (k == 0) | (k == keys[todo])
            out[todo[done]] = p[done]
            todo = todo[~done]
            pos[todo] = (pos[todo] + 1) & mask
        return out

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Each key's value, -1 where the key is absent (a table without values answers 0 for present keys)."""
        keys = self._clean(keys)
        slots = self._probe(keys)
        found = self._keys[slots] == keys
        vals = self._vals[slots] if self._vals is not None else np.zeros(len(keys), dtype=np.int32)
        return np.where(found, vals, -1)

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Insert the keys not yet present (for a key repeated in the batch, its first occurrence's value);
        returns, per key, whether it was there before: in the table or earlier in this batch."""
        keys = self._clean(keys)
        seen = np.ones(len(keys), dtype=bool)
        if not len(keys):
            return seen
        _, first = np.unique(keys, return_index=True)
        first.sort()
        new = first[self._keys[self._probe(keys[first])] != keys[first]]
        seen[new] = False
        self._reserve(len(new))
        self._place(keys[new], None if values is None else np.asarray(values, dtype=np.int32)[new])
        return seen

    def _place(self, keys: np.ndarray, vals: np.ndarray | None) -> None:
        """Store distinct keys known to be absent; where several want one empty slot, one wins per round."""
        while len(keys):
            slots = self._probe(keys)
            _, win = np.unique(slots, return_index=True)
            self._keys[slots[win]] = keys[win]
            if self._vals is not None and vals is not None:
                self._vals[slots[win]] = vals[win]
            self._used += len(win)
            lose = np.ones(len(keys), dtype=bool)
            lose[win] = False
            keys = keys[lose]
            vals = vals[lose] if vals is not None else None

    def _reserve(self, more: int) -> None:
        if self._used + more <= len(self._keys) * self.MAX_LOAD:
            return
        cap = len(self._keys)
        while cap * self.MAX_LOAD < self._used + more:
            cap <<= 1
        full = self._keys != 0
        keys = self._keys[full]
        vals = self._vals[full] if self._vals is not None else None
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._vals = np.zeros(cap, dtype=np.int32) if vals is not None else None
        self._used = 0
        self._place(keys, vals)


class _Signatures:
    """The kept documents' MinHash signatures in order, in a temporary file when given a folder: they are only
    read back for the rare candidate pairs, so they need not take 256 bytes of memory per document."""

    def __init__(self, width: int, spill_dir: str | os.PathLike | None = None) -> None:
        self._row = width * 4
        self._width = width
        self._n = 0
        # Anonymous (unlinked at once), so an interrupted build leaves nothing behind.
        self._file = tempfile.TemporaryFile(prefix=".goushi-minhash.", dir=spill_dir, buffering=0) \
            if spill_dir is not None else None
        self._mem = bytearray()

    def append(self, sigs: np.ndarray) -> None:
        data = np.ascontiguousarray(sigs, dtype=np.uint32).tobytes()
        if self._file is not None:
            self._file.write(data)
        else:
            self._mem += data
        self._n += len(sigs)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._file is not None:
            data = os.pread(self._file.fileno(), self._row, i * self._row)
            return np.frombuffer(data, dtype=np.uint32)
        return np.frombuffer(self._mem, dtype=np.uint32, count=self._width, offset=i * self._row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._mem = bytearray()


class NearDuplicates:
    """MinHash over character n-grams with LSH banding, streaming.

    Memory is about 150 bytes per kept document (its band keys in a KeyTable), whatever its length;
    signatures go to a temporary file in `spill_dir` when one is given (else memory, 256 bytes each).
    A document is a near-duplicate when the estimated Jaccard similarity of its n-gram set with an
    earlier document is at least `threshold`; the earlier one (manifest order) is kept.
    """

    _PRIME = np.uint64(1099511628211)

    def __init__(self, threshold: float = 0.85, num_perm: int = 64, ngram: int = 5, seed: int = 0, *,
                 expected_docs: int = 0, spill_dir: str | os.PathLike | None = None) -> None:
        self.threshold, self.ngram = threshold, ngram
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        # Bands x rows whose S-curve midpoint (1/b)^(1/r) sits just under the threshold, so a true
        # near-duplicate is almost always a candidate; candidates are then checked on the full signature.
        best = min(((b, num_perm // b) for b in range(1, num_perm + 1)),
                   key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - (threshold - 0.05)), -br[0]))
        self.bands, self.rows = best
        # A band's rows hash to one 64-bit key, salted per band so equal rows in two bands differ. Two
        # different bands colliding only adds a candidate, which the full-signature check then rejects.
        self._salt = np.random.default_rng(seed + 1).integers(1, 2**63, size=self.bands, dtype=np.uint64)
        self._buckets = KeyTable(expected_docs * self.bands, values=True)  # band key -> first kept doc with it
        self._sigs = _Signatures(num_perm, spill_dir)
        self._n = 0

    def signatures(self, texts: list[str]) -> np.ndarray:
        """MinHash signatures (len(texts), num_perm) of texts with at least `ngram` characters, in one go.

        Batched because per-document numpy calls cost more than the hashing itself on short texts.
        """
        cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        lens = np.array([len(t) for t in texts], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        k = self.ngram
        m = len(cps) - k + 1
        h = np.zeros(max(m, 0), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                h = h * self._PRIME + cps[j:j + m]
            # keep only n-grams that lie inside one document
            counts = lens - k + 1
            idx = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
            h = h[idx]
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
            sig = np.empty((len(texts), len(self._a)), dtype=np.uint32)
            block = 16384  # n-grams per step: the (permutations x n-grams) uint64 matrix stays near 8 MB
            lo = 0
            while lo < len(texts):
                hi = lo
                while hi < len(texts) and (offsets[hi] - offsets[lo] < block or hi == lo):
                    hi += 1
                a, b = offsets[lo], (offsets[hi] if hi < len(texts) else len(h))
                # Permutations as rows: reduceat along the contiguous axis is ~3x faster than down the columns.
                mixed = self._a[:, None] * h[None, a:b] + self._b[:, None]
                sig[lo:hi] = (np.minimum.reduceat(mixed, offsets[lo:hi] - a, axis=1).T >> np.uint64(32)).astype(np.uint32)
                lo = hi
        return sig

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(len(sigs), bands) 64-bit keys, one per band of rows."""
        rows = sigs[:, :self.bands * self.rows].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        h = np.broadcast_to(self._salt, (len(sigs), self.bands)).copy()
        with np.errstate(over="ignore"):
            for r in range(self.rows):
                h = _mix(h * self._PRIME + rows[:, :, r])
        return h

    def duplicates(self, texts: list[str]) -> list[bool]:
        """Per text, in order: does it nearly repeat an earlier document (before this batch, or earlier in it)?
        Texts that do not are remembered. Texts shorter than `ngram` are never near-duplicates (too short to
        have n-grams; exact de-duplication covers them)."""
        out = [False] * len(texts)
        rows = [i for i, t in enumerate(texts) if len(t) >= self.ngram]
        if not rows:
            return out
        sigs = self.signatures([texts[i] for i in rows])
        keys = self.band_keys(sigs)
        owners_arr = self._buckets.get(keys.ravel()).reshape(keys.shape)
        # Most documents share no band key with any earlier one: they are kept without a look. Only rows
        # with a key in the table or in an earlier row of this batch need the one-by-one check below.
        _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
        inverse = inverse.reshape(keys.shape)
        earlier = (first // self.bands)[inverse] < np.arange(len(rows))[:, None]
        shared = (np.bincount(inverse.ravel(), minlength=len(first))[inverse] > 1).tolist()
        check = ((owners_arr >= 0) | earlier).any(axis=1).tolist()
        owners, key_list = owners_arr.tolist(), keys.tolist()
        local: dict[int, int] = {}  # band key shared in this batch -> first document kept with it
        kept: list[int] = []  # rows kept in this batch; document number self._n + position
        for r, i in enumerate(rows):
            if check[r]:
                sig = sigs[r]
                candidates = set()
                for o, k in zip(owners[r], key_list[r], strict=True):
                    c = o if o >= 0 else local.get(k, -1)
                    if c >= 0:
                        candidates.add(c)
                if any(float(np.mean(self._sig(c, sigs, kept) == sig)) >= self.threshold for c in candidates):
                    out[i] = True
                    continue
            doc = self._n + len(kept)
            kept.append(r)
            for o, k, sh in zip(owners[r], key_list[r], shared[r], strict=True):
                if sh and o < 0:
                    local.setdefault(k, doc)
        if kept:
            nums = np.repeat(np.arange(self._n, self._n + len(kept), dtype=np.int32), self.bands)
            self._buckets.add(keys[kept].ravel(), nums)
            self._sigs.append(sigs[kept])
            self._n += len(kept)
        return out

    def _sig(self, doc: int, batch: np.ndarray, kept: list[int]) -> np.ndarray:
        return batch[kept[doc - self._n]] if doc >= self._n else self._sigs[doc]

    def seen(self, text: str) -> bool:
        """True if `text` nearly repeats an earlier document; otherwise remember it and return False."""
        return self.duplicates([text])[0]

    def close(self) -> None:
        """Free the state (and the signatures' file); nothing can be checked afterwards."""
        self._sigs.close()
        self._buckets = KeyTable(0, values=True)


@dataclass
class SourceReport:
    docs_in: int = 0
    chars_in: int = 0
    docs_kept: int = 0
    chars_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first dropped document per reason, shortened

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dropped"], d["changed"] = dict(self.dropped), {k: v for k, v in self.changed.items() if v}
        return d


REASONS = {
    "empty": "nothing left after cleaning",
    "too_short": "shorter than --min-chars",
    "too_long": "longer than --max-chars",
    "exact_duplicate": "same text as an earlier document",
    "near_duplicate": "nearly the same text as an earlier document",
}


class Cleaner:
    """Cleans and de-duplicates documents source by source, across the whole corpus.

    De-duplication keeps hashes, not text: a 64-bit key per distinct document (exact) and a MinHash
    band key per band (near), in KeyTables sized for `expected_docs` up front so they need not grow
    (growing briefly holds the old and the new table). `spill_dir` takes the near-duplicate signatures
    out of memory. `close()` frees all of it once the last source is read; the reports stay.
    """

    BATCH = 1024  # documents checked together: the tables and signatures work a batch at a time

    def __init__(self, opts: CleanOptions | None = None, *, seed: int = 0, expected_docs: int = 0,
                 spill_dir: str | os.PathLike | None = None) -> None:
        self.opts = (opts or CleanOptions()).validate()
        self.reports: dict[str, SourceReport] = {}
        self._exact = KeyTable(expected_docs) if self.opts.dedup else None
        self._near = NearDuplicates(self.opts.near_dup_threshold, seed=seed, expected_docs=expected_docs,
                                    spill_dir=spill_dir) if self.opts.near_dup_threshold > 0 else None
        self._t2s: Callable[[str], str] | None = None
        self._closed = False

    def clean(self, source_id: str, docs: Iterable[str], *, t2s: bool = False) -> Iterator[str]:
        if self._closed:
            raise GoushiError("Cleaner: clean() after close(); make a new Cleaner")
        rep = self.reports.setdefault(source_id, SourceReport())
        conv = None
        if t2s or self.opts.t2s:
            if self._t2s is None:
                self._t2s = t2s_converter()
            conv = self._t2s
        o = self.opts
        pending: list[str] = []  # passed the cheap checks; waiting for the batched duplicate checks

        def drop(reason: str, text: str) -> None:
            rep.dropped[reason] += 1
            if reason not in rep.examples and text:
                rep.examples[reason] = text[:80] + ("…" if len(text) > 80 else "")

        def settle() -> Iterator[str]:
            # Exact first, in order: a document repeating an earlier one (earlier in this batch included) goes,
            # and every other document's key is remembered, even if it then goes as a near-duplicate.
            if self._exact is not None:
                exact = self._exact.add(np.array([text_key(t) for t in pending], dtype=np.uint64)).tolist()
            else:
                exact = [False] * len(pending)
            unique = [t for t, dup in zip(pending, exact, strict=True) if not dup]
            near = iter(self._near.duplicates(unique) if self._near is not None else [False] * len(unique))
            for text, dup in zip(pending, exact, strict=True):
                if dup:
                    drop("exact_duplicate", text)
                elif next(near):
                    drop("near_duplicate", text)
                else:
                    rep.docs_kept += 1
                    rep.chars_kept += len(text)
                    yield text
            pending.clear()

        for raw in docs:
            rep.docs_in += 1
            rep.chars_in += len(raw)
            text = clean_text(raw, o, rep.changed, conv)
            reason = None
            if not text:
                reason = "empty"
            elif len(text) < o.min_chars:
                reason = "too_short"
            elif o.max_chars and len(text) > o.max_chars:
                reason = "too_long"
            if reason:
                drop(reason, text)
                continue
            pending.append(text)
            if len(pending) >= self.BATCH:
                yield from settle()
        if pending:
            yield from settle()

    def close(self) -> None:
        """Free the de-duplication state (the reports stay); call once every source has been read."""
        self._closed = True
        self._exact = None
        if self._near is not None:
            self._near.close()
            self._near = None

    def report(self) -> dict:
        return {"options": asdict(self.opts), "reasons": REASONS,
                "sources": {k: v.to_dict() for k, v in self.reports.items()}}


__all__ = ["CleanOptions", "Cleaner", "KeyTable", "NearDuplicates", "SourceReport", "clean_text", "t2s_converter", "REASONS"]
