"""Tokenizers: char-level with byte fallback, or byte-level BPE. Both are one `tokenizer.json`.

Both kinds are plain Hugging Face `tokenizers` objects, so `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` load them with the same ids:

- char: a BPE model with *no merges*. Its vocabulary is the special tokens, the 256 byte tokens
  `<0x00>`..`<0xFF>` and the characters seen in training. A character outside the vocabulary is
  spelled as its UTF-8 bytes (byte fallback), so no text is ever lost and `<|unk|>` is never produced.
- bpe: byte-level BPE behind one of two pre-tokenizers (`BPE_PRES`), which the tokenizer.json records
  by its `pre_tokenizer` itself (`Tokenizer.pre` recognises it):
  - "deepseek-v3": llama.cpp's built-in pre-tokenizer of that name (`tokenizer.ggml.pre`), reproduced
    exactly: digits in runs of at most 3, then runs of CJK (U+4E00-U+9FA5 and kana) apart from everything
    else, then a GPT-4-like split of the rest. A GGUF export splits prompts exactly as we do. The default.
  - "han2": Han in runs of at most 2 characters ("the two-character rule"), GPT-4 style for the rest,
    because GPT-style regexes treat a whole Chinese clause as one "word" and a small vocabulary might
    spend itself on memorised clauses. llama.cpp has no such pre-tokenizer, so its GGUF is approximate.
  docs/recipe.md compares the two in bits per character: a tie at 4,096 tokens (7.213 against 7.224),
  so the default is the one that exports exactly. A tokenizer.json from before the choice existed is han2.
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
BPE_PRES = ("deepseek-v3", "han2")
DEFAULT_BPE_PRE = "deepseek-v3"  # tied with han2 in bits per character (docs/recipe.md) and exports exactly
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


# llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM (src/llama-vocab.cpp), applied one after another to each piece
# the previous one left, as a Sequence of isolating Splits does; none has a custom implementation in llama.cpp
# (unicode_regex_split_custom), so all three run through its general regex path. Its \r and \n are literal
# CR/LF there, which means the same in a character class. CJK here is U+4E00-U+9FA5 (一-龥) and the kana blocks.
_DEEPSEEK_V3 = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)


def bpe_pre_tokenizer(pre: str, cjk_run: int = 2) -> pre_tokenizers.PreTokenizer:
    """The BPE pre-tokenizer called `pre` (one of BPE_PRES): isolating regex splits, then GPT-2's byte mapping
    without its regex (as llama.cpp's byte-level BPE does). `cjk_run` is han2's run length; other than 2 it
    makes a pre-tokenizer no name stands for."""
    if pre == "deepseek-v3":
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _DEEPSEEK_V3]
    elif pre == "han2":
        if cjk_run < 1:
            raise GoushiError(f"cjk_run={cjk_run}: must be at least 1")
        splits = [pre_tokenizers.Split(Regex(bpe_split_pattern(cjk_run)), behavior="isolated")]
    else:
        raise GoushiError(f"--bpe-pre {pre!r}: choose one of {', '.join(BPE_PRES)}")
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _pre_spec(pre_tokenizer: pre_tokenizers.PreTokenizer) -> dict:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizer
    return json.loads(hf.to_str())["pre_tokenizer"]


_PRE_SPECS: dict[str, dict] = {}


def detect_bpe_pre(spec: dict) -> str | None:
    """Which of BPE_PRES a tokenizer.json's `pre_tokenizer` is, exactly (regexes, order, flags), else None."""
    if not _PRE_SPECS:
        _PRE_SPECS.update({name: _pre_spec(bpe_pre_tokenizer(name)) for name in BPE_PRES})
    return next((name for name, want in _PRE_SPECS.items() if spec == want), None)


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
        # BPE only: which named pre-tokenizer (BPE_PRES) the file holds, None for any other
        self.pre = detect_bpe_pre(json.loads(hf.to_str()).get("pre_tokenizer")) if self.kind == "bpe" else None
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
                  pre: str = DEFAULT_BPE_PRE, cjk_run: int = 2) -> Tokenizer:
        """Byte-level BPE behind the pre-tokenizer `pre` (BPE_PRES) on a bounded sample of `texts` (at most
        `max_sample_chars` characters)."""
        floor = len(SPECIAL_TOKENS) + 256
        if vocab_size <= floor:
            raise GoushiError(f"--vocab-size {vocab_size}: must be more than {floor} "
                              f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
        pre_tokenizer = bpe_pre_tokenizer(pre, cjk_run)  # refuses a bad name before reading any text
        sample = _sample_texts(texts, max_sample_chars)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizer
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=_BYTE_LEVEL_CHARS, show_progress=False,
        )
        hf.train_from_iterator(sample, trainer=trainer, length=len(sample))
        return cls(hf, "bpe")

    def extend_chars(self, chars: Iterable[str]) -> Tokenizer:
        """This char tokenizer with `chars` (ones it spells in bytes now) appended as new ids; every old id keeps
        its piece, so a model trained on it keeps its meaning and only grows rows for the new ones."""
        if self.kind != "char":
            raise GoushiError(f"only a char tokenizer can be extended by characters, not a {self.kind} one")
        spec = json.loads(self.hf.to_str())
        vocab = spec["model"]["vocab"]
        for c in chars:
            if len(c) != 1:
                raise GoushiError(f"extend_chars: {c!r} is not a single character")
            if c not in vocab:
                vocab[c] = len(vocab)
        return Tokenizer(HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False)), "char")

    def extends(self, base: Tokenizer) -> bool:
        """Is this `base` with pieces appended (Tokenizer.extend_chars): the same ids for all of base's pieces,
        and the same splitting and decoding?"""
        if self.hash() == base.hash():
            return True
        if (self.kind, base.kind) != ("char", "char") or self.vocab_size <= base.vocab_size:
            return False
        mine, theirs = json.loads(self.hf.to_str()), json.loads(base.hf.to_str())
        ours = mine["model"].pop("vocab")
        base_vocab = theirs["model"].pop("vocab")
        return mine == theirs and all(ours.get(p) == i for p, i in base_vocab.items())

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
        pre = f", pre={self.pre!r}" if self.kind == "bpe" else ""
        return f"Tokenizer(kind={self.kind!r}{pre}, vocab_size={self.vocab_size})"

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


__all__ = ["SPECIAL_TOKENS", "KINDS", "BPE_PRES", "DEFAULT_BPE_PRE", "Tokenizer", "bpe_pre_tokenizer",
           "bpe_split_pattern", "detect_bpe_pre"]
