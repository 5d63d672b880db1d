"""Tokenizers: char-level with byte fallback, or byte-level BPE. Both are one `tokenizer.json`.

Both kinds are plain Hugging Face `tokenizers` objects, so `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` load them with the same ids:

- char: a BPE model with *no merges*. Its vocabulary is the special tokens, the 256 byte tokens
  `<0x00>`..`<0xFF>` and the characters seen in training. A character outside the vocabulary is
  spelled as its UTF-8 bytes (byte fallback), so no text is ever lost and `<|unk|>` is never produced.
- bpe: byte-level BPE whose pre-tokenizer cuts Chinese into short runs of characters, because
  GPT-style regexes treat a whole Chinese clause as one "word" and a small vocabulary then spends
  itself on memorised clauses.
"""

from __future__ import annotations

import codecs
import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from goushi.errors import GoushiError
from goushi.fsutil import atomic_write_text

SPECIAL_TOKENS = ["<|endoftext|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>"]
EOT, UNK = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
KINDS = ("char", "bpe")
DEFAULT_MAX_SAMPLE_CHARS = 20_000_000  # ~60 MB of UTF-8: BPE training memory stays far below a GB

# Every character is its own piece; `[\s\S]` because `.` would skip newlines.
_CHAR_SPLIT = r"[\s\S]"


def bpe_split_pattern(cjk_run: int = 2) -> str:
    """Pre-tokenizer regex for BPE: Han in runs of at most `cjk_run`, GPT-4 style for the rest."""
    letters = r"[\p{L}\p{M}&&[^\p{Han}]]"
    not_word = r"[^\r\n\p{L}\p{N}]"
    return "|".join([
        rf"\p{{Han}}{{1,{cjk_run}}}",
        r"'(?i:[sdmt]|ll|ve|re)",
        rf"{not_word}?+{letters}+",
        r"\p{N}{1,3}",
        # punctuation and symbols: Chinese punctuation is never glued to Han, only to other punctuation
        r" ?[^\s\p{L}\p{N}]++[\r\n]*",
        r"\s*[\r\n]",
        r"\s+(?!\S)",
        r"\s+",
    ])


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start:err.end]), err.end


codecs.register_error("goushi_hexbytes", _hex_bytes)

# GPT-2's reversible byte <-> printable character table (what ByteLevel writes into the vocabulary).
_BYTE_LEVEL_CHARS = pre_tokenizers.ByteLevel.alphabet()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _sample_texts(texts: Iterable[str], max_chars: int) -> list[str]:
    """A deterministic, roughly uniform sample of documents totalling at most `max_chars` characters.

    Keeps the documents with the smallest content hashes (a bottom-k sample by size), so memory
    never exceeds the budget plus one document and the sample is spread over the whole corpus, not
    just its first source.
    """
    heap: list[tuple[int, int, str]] = []  # (-key, seq, text): max-heap on key
    total = 0
    for seq, text in enumerate(texts):
        if not text:
            continue
        text = text[:max_chars]
        key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
        if total + len(text) > max_chars and heap and -heap[0][0] < key:
            continue
        heapq.heappush(heap, (-key, seq, text))
        total += len(text)
        while total > max_chars and heap:
            total -= len(heapq.heappop(heap)[2])
    return [t for _, _, t in sorted(heap, key=lambda x: x[1])]


class Tokenizer:
    """A trained tokenizer; see docs/architecture.md for the contract."""

    def __init__(self, hf: HFTokenizer, kind: str | None = None, *, source: str = "tokenizer") -> None:
        self.hf = hf
        self.kind = kind or _detect_kind(hf, source)
        for i, tok in enumerate(SPECIAL_TOKENS):
            if hf.token_to_id(tok) != i:
                raise GoushiError(f"{source}: special token {tok} should have id {i}; "
                                  "retrain it with `goushi tokenizer train` or `goushi data build`")
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.eot_id = 0
        self._token_bytes: list[bytes] | None = None
        self._fallback: list[bool] | None = None

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise GoushiError(f"{p}: tokenizer file not found; build one with `goushi data build` or `goushi tokenizer train`")
        try:
            hf = HFTokenizer.from_str(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, Exception) as e:  # tokenizers raises plain Exception
            raise GoushiError(f"{p}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from None
        return cls(hf, source=str(p))

    @classmethod
    def train_char(cls, texts: Iterable[str], *, min_frequency: int = 1, max_vocab: int | None = None) -> Tokenizer:
        """Characters seen at least `min_frequency` times, most frequent first, capped at `max_vocab` ids in total."""
        if min_frequency < 1:
            raise GoushiError(f"--min-frequency {min_frequency}: must be at least 1")
        fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
        if max_vocab is not None and max_vocab <= fixed:
            raise GoushiError(f"--max-vocab {max_vocab}: must be more than {fixed} "
                              f"({len(SPECIAL_TOKENS)} special tokens + 256 byte tokens)")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        chars = sorted((c for c, n in counts.items() if n >= min_frequency), key=lambda c: (-counts[c], c))
        if max_vocab is not None:
            chars = chars[: max_vocab - fixed]
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS + chars)}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, byte_fallback=True))
        hf.add_special_tokens(SPECIAL_TOKENS)
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_SPLIT), behavior="isolated")
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        return cls(hf, "char")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], *, vocab_size: int = 8192,
                  max_sample_chars: int = DEFAULT_MAX_SAMPLE_CHARS, min_frequency: int = 2,
                  cjk_run: int = 2) -> Tokenizer:
        """Byte-level BPE on a bounded sample of `texts` (at most `max_sample_chars` characters)."""
        floor = len(SPECIAL_TOKENS) + 256
        if vocab_size <= floor:
            raise GoushiError(f"--vocab-size {vocab_size}: must be more than {floor} "
                              f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
        if cjk_run < 1:
            raise GoushiError(f"cjk_run={cjk_run}: must be at least 1")
        sample = _sample_texts(texts, max_sample_chars)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(bpe_split_pattern(cjk_run)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=_BYTE_LEVEL_CHARS, show_progress=False,
        )
        hf.train_from_iterator(sample, trainer=trainer, length=len(sample))
        return cls(hf, "bpe")

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.hf.to_str(pretty=True))

    # ---- use ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in: dropping them would break the exact round trip of text that contains them.
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, piece: str) -> int | None:
        return self.hf.token_to_id(piece)

    def token_bytes(self, i: int) -> bytes:
        if self._token_bytes is None:
            self._token_bytes = [self._bytes_of(self.hf.id_to_token(j)) for j in range(self.vocab_size)]
        return self._token_bytes[i]

    def id_to_piece(self, i: int) -> str:
        tok = self.hf.id_to_token(i)
        if tok is None:
            raise GoushiError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        if i < len(SPECIAL_TOKENS) or (self.kind == "char" and tok in _BYTE_INDEX):
            return tok
        return self.token_bytes(i).decode("utf-8", errors="goushi_hexbytes")

    def hash(self) -> str:
        canonical = json.dumps(json.loads(self.hf.to_str()), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def fallback_mask(self) -> list[bool]:
        """Per id: does this token stand for less than a whole character (a byte-fallback piece) or `<|unk|>`?

        Char-level: the 256 byte tokens. BPE: tokens whose bytes are not valid UTF-8 on their own,
        which is how byte-level BPE spells characters its vocabulary does not hold.
        """
        if self._fallback is None:
            mask = [False] * self.vocab_size
            mask[1] = True
            for i in range(len(SPECIAL_TOKENS), self.vocab_size):
                if self.kind == "char":
                    mask[i] = i < len(SPECIAL_TOKENS) + 256
                else:
                    try:
                        self.token_bytes(i).decode("utf-8")
                    except UnicodeDecodeError:
                        mask[i] = True
            self._fallback = mask
        return self._fallback

    def unknown_count(self, ids: Iterable[int]) -> int:
        """How many of `ids` are byte-fallback pieces or `<|unk|>`: text the vocabulary did not know."""
        mask = self.fallback_mask()
        return sum(1 for i in ids if mask[i])

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # ---- internals -----------------------------------------------------------------------------
    def _bytes_of(self, tok: str | None) -> bytes:
        if tok is None or tok in SPECIAL_TOKENS:
            return b""
        if self.kind == "char":
            if tok in _BYTE_INDEX:
                return bytes([_BYTE_INDEX[tok]])
            return tok.encode("utf-8")
        return bytes(_UNICODE_TO_BYTE[c] for c in tok)


_BYTE_INDEX = {tok: b for b, tok in enumerate(BYTE_TOKENS)}


def _detect_kind(hf: HFTokenizer, source: str) -> str:
    spec = json.loads(hf.to_str())
    dec = spec.get("decoder") or {}
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and dec.get("type") == "ByteLevel":
        return "bpe"
    if model.get("type") == "BPE" and model.get("byte_fallback") and not model.get("merges"):
        return "char"
    raise GoushiError(f"{source}: not a goushi tokenizer (expected a char-level or byte-level BPE tokenizer.json); "
                      "train one with `goushi tokenizer train`")


__all__ = ["SPECIAL_TOKENS", "KINDS", "Tokenizer", "bpe_split_pattern"]
