"""Clean documents and drop the ones a model should not see twice, keeping a per-source account.

Normalisation is NFC plus a narrow fold, not NFKC. NFKC rewrites full-width Chinese punctuation
to ASCII (，→, ！→! ？→? ：→: （）→()) while leaving 。、《》 alone, so a sentence ends up with two
punctuation styles and the model learns both. NFC only merges canonically equal forms (including
the CJK compatibility ideographs), and the fold then maps full-width Latin letters and digits
(ＡＢＣ１２３) and exotic spaces to ASCII, which is what they mean in running Chinese text.
"""

from __future__ import annotations

import hashlib
import re
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


class NearDuplicates:
    """MinHash over character n-grams with LSH banding, streaming.

    Memory is about 1 KB per kept document (its signature and band keys), whatever its length.
    A document is a near-duplicate when the estimated Jaccard similarity of its n-gram set with an
    earlier document is at least `threshold`; the earlier one (manifest order) is kept.
    """

    _PRIME = np.uint64(1099511628211)

    def __init__(self, threshold: float = 0.85, num_perm: int = 64, ngram: int = 5, seed: int = 0) -> None:
        self.threshold, self.ngram = threshold, ngram
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        # Bands x rows whose S-curve midpoint (1/b)^(1/r) sits just under the threshold, so a true
        # near-duplicate is almost always a candidate; candidates are then checked on the full signature.
        best = min(((b, num_perm // b) for b in range(1, num_perm + 1)),
                   key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - (threshold - 0.05)), -br[0]))
        self.bands, self.rows = best
        self._buckets: dict[tuple[int, bytes], int] = {}
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
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
            block = 16384  # n-grams per step: the (n-grams x permutations) uint64 matrix stays near 8 MB
            lo = 0
            while lo < len(texts):
                hi = lo
                while hi < len(texts) and (offsets[hi] - offsets[lo] < block or hi == lo):
                    hi += 1
                a, b = offsets[lo], (offsets[hi] if hi < len(texts) else len(h))
                mixed = h[a:b, None] * self._a[None, :] + self._b[None, :]
                sig[lo:hi] = (np.minimum.reduceat(mixed, offsets[lo:hi] - a, axis=0) >> np.uint64(32)).astype(np.uint32)
                lo = hi
        return sig

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def seen(self, text: str, sig: np.ndarray | None = None) -> bool:
        """True if `text` nearly repeats an earlier document; otherwise remember it and return False."""
        if len(text) < self.ngram:
            return False  # too short to have n-grams; exact de-duplication covers it
        if sig is None:
            sig = self.signature(text)
        keys = [(b, sig[b * self.rows:(b + 1) * self.rows].tobytes()) for b in range(self.bands)]
        candidates = {self._buckets[k] for k in keys if k in self._buckets}
        for c in candidates:
            if float(np.mean(self._sigs[c] == sig)) >= self.threshold:
                return True
        if self._n == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[self._n] = sig
        for k in keys:
            self._buckets.setdefault(k, self._n)
        self._n += 1
        return False


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
    """Cleans and de-duplicates documents source by source, across the whole corpus."""

    def __init__(self, opts: CleanOptions | None = None, *, seed: int = 0) -> None:
        self.opts = (opts or CleanOptions()).validate()
        self.reports: dict[str, SourceReport] = {}
        self._exact: set[int] = set()
        self._near = NearDuplicates(self.opts.near_dup_threshold, seed=seed) if self.opts.near_dup_threshold > 0 else None
        self._t2s: Callable[[str], str] | None = None

    def clean(self, source_id: str, docs: Iterable[str], *, t2s: bool = False) -> Iterator[str]:
        rep = self.reports.setdefault(source_id, SourceReport())
        conv = None
        if t2s or self.opts.t2s:
            if self._t2s is None:
                self._t2s = t2s_converter()
            conv = self._t2s
        o = self.opts
        pending: list[str] = []  # passed the cheap checks; waiting for batched near-duplicate signatures

        def drop(reason: str, text: str) -> None:
            rep.dropped[reason] += 1
            if reason not in rep.examples and text:
                rep.examples[reason] = text[:80] + ("…" if len(text) > 80 else "")

        def settle() -> Iterator[str]:
            near = self._near
            long_ = [t for t in pending if near is not None and len(t) >= near.ngram]
            sigs = iter(near.signatures(long_)) if near is not None and long_ else iter(())
            for text in pending:
                if near is not None and len(text) >= near.ngram and near.seen(text, next(sigs)):
                    drop("near_duplicate", text)
                    continue
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
            elif o.dedup:
                key = text_key(text)
                if key in self._exact:
                    reason = "exact_duplicate"
                else:
                    self._exact.add(key)
            if reason:
                drop(reason, text)
                continue
            pending.append(text)
            if len(pending) >= 512:
                yield from settle()
        yield from settle()

    def report(self) -> dict:
        return {"options": asdict(self.opts), "reasons": REASONS,
                "sources": {k: v.to_dict() for k, v in self.reports.items()}}


__all__ = ["CleanOptions", "Cleaner", "NearDuplicates", "SourceReport", "clean_text", "t2s_converter", "REASONS"]
