import re

import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from goushi.errors import GoushiError
from goushi.tokenizer import (
    _UNICODE_TO_BYTE,
    BPE_PRES,
    SPECIAL_TOKENS,
    Tokenizer,
    _sample_texts,
    bpe_pre_tokenizer,
    bpe_split_pattern,
)

TRAIN = [
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "今天疯狂星期四，V我50！我们去吃肯德基吧。",
    "This is English text with digits 12345 and  double spaces.",
    "好评！物流很快，东西不错，下次还来。",
] * 30

# Every kind of text a prompt may contain, most of it never seen in training.
UNSEEN = [
    "床前明月光",
    "龘靐齉爩 鱻麤",  # rare characters never seen in training
    "emoji 😀🎉👨‍👩‍👧 and flags 🇨🇳",
    "Mixed English, 中文 and digits 0123456789 ３.１４",
    "全角标点：，。！？「」『』（）【】《》……——、；",
    "line one\nline two\r\n\n\nafter blank lines",
    "runs   of    spaces\t\ttabs   ",
    "   leading and trailing   ",
    "",
    " ",
    "\n",
    "<0xE4> looks like a byte token",
    "<|endoftext|> and <|im_start|>user",
    "Ω≈ç√∫ ∑ ñ é ü ß",
    "\u200b\u00a0\ufeff zero-width and nbsp",
]


@pytest.fixture(scope="module", params=["char", "bpe-han2", "bpe-deepseek-v3"])
def tok(request, tmp_path_factory):
    if request.param == "char":
        t = Tokenizer.train_char(TRAIN)
    else:
        t = Tokenizer.train_bpe(TRAIN, vocab_size=500, pre=request.param.split("-", 1)[1])
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    t.save(path)
    return Tokenizer.from_file(path), path


@pytest.mark.parametrize("text", UNSEEN)
def test_exact_round_trip(tok, text):
    t, _ = tok
    ids = t.encode(text)
    assert t.decode(ids) == text
    if "<|" not in text:
        assert b"".join(t.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_special_token_ids_fixed(tok):
    t, _ = tok
    assert [t.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(7))
    assert t.eot_id == 0
    assert t.token_bytes(0) == b""


def test_loads_in_tokenizers_and_transformers_with_same_ids(tok):
    t, path = tok
    raw = tokenizers.Tokenizer.from_file(str(path))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in UNSEEN:
        ids = t.encode(text)
        assert raw.encode(text).ids == ids
        assert fast.encode(text, add_special_tokens=False) == ids
        assert fast.decode(ids) == text
    assert fast.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(7))
    assert len(fast) == t.vocab_size


def test_encode_batch_matches_encode(tok):
    t, _ = tok
    assert t.encode_batch(UNSEEN) == [t.encode(x) for x in UNSEEN]


def test_hash_stable_across_save_and_load(tok, tmp_path):
    t, _ = tok
    t.save(tmp_path / "again.json")
    assert Tokenizer.from_file(tmp_path / "again.json").hash() == t.hash()
    assert re.fullmatch(r"[0-9a-f]{64}", t.hash())


def test_kind_detected_from_file(tok):
    t, path = tok
    assert Tokenizer.from_file(path).kind == t.kind
    assert Tokenizer.from_file(path.parent).kind == t.kind  # a directory holding tokenizer.json
    assert Tokenizer.from_file(path).pre == t.pre  # which named BPE pre-tokenizer: read from the file itself
    assert (t.pre in BPE_PRES) if t.kind == "bpe" else t.pre is None


def test_a_file_from_before_named_pre_tokenizers_is_han2(tmp_path):
    """A tokenizer.json written before BPE_PRES existed (its pre-tokenizer built as goushi built it then) is
    recognised as han2, so it loads, encodes and exports exactly as before."""
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(bpe_split_pattern(2)), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.train_from_iterator(TRAIN, tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    old = Tokenizer.from_file(tmp_path)
    assert old.kind == "bpe" and old.pre == "han2"
    assert old.encode(TRAIN[0]) == hf.encode(TRAIN[0]).ids
    # another run length is no named pre-tokenizer (GGUF export then refuses without --approximate-tokenizer)
    assert Tokenizer.train_bpe(TRAIN, vocab_size=400, pre="han2", cjk_run=3).pre is None


def _split(pre: str, text: str) -> list[str]:
    return [bytes(_UNICODE_TO_BYTE[c] for c in piece).decode("utf-8")
            for piece, _ in bpe_pre_tokenizer(pre).pre_tokenize_str(text)]


@pytest.mark.parametrize("text, pieces", [
    # CJK runs stay whole and apart from Latin, digits (at most 3) and punctuation
    ("今天疯狂星期四，V我50！", ["今天疯狂星期四", "，", "V", "我", "50", "！"]),
    ("Hello, 世界 2024年12345", ["Hello", ",", " ", "世界", " ", "202", "4", "年", "123", "45"]),
    ("床前明月光，\n\n疑是地上霜。", ["床前明月光", "，\n\n", "疑是地上霜", "。"]),
    ("“你好”他说：OK吧", ["“", "你好", "”", "他说", "：", "OK", "吧"]),
])
def test_deepseek_v3_split(text, pieces):
    assert _split("deepseek-v3", text) == pieces


def test_han2_split_keeps_the_two_character_rule():
    assert _split("han2", "今天疯狂星期四，V我50！") == ["今天", "疯狂", "星期", "四", "，V", "我", "50", "！"]


def test_unknown_pre_tokenizer_is_refused_by_name():
    with pytest.raises(GoushiError, match=r"--bpe-pre 'gpt4': choose one of " + ", ".join(BPE_PRES)):
        Tokenizer.train_bpe(TRAIN, vocab_size=400, pre="gpt4")


def test_char_vocab_is_specials_bytes_then_chars_by_frequency():
    t = Tokenizer.train_char(["aaab", "b", "c"])
    assert t.vocab_size == 7 + 256 + 3
    assert t.id_to_piece(7) == "<0x00>" and t.id_to_piece(7 + 255) == "<0xFF>"
    assert [t.id_to_piece(i) for i in range(263, 266)] == ["a", "b", "c"]


def test_char_min_frequency_and_max_vocab():
    t = Tokenizer.train_char(["aaab", "b", "c"], min_frequency=2)
    assert t.token_to_id("c") is None and t.token_to_id("a") is not None
    assert t.decode(t.encode("cab")) == "cab"  # c falls back to its byte
    assert t.unknown_count(t.encode("cab")) == 1
    t = Tokenizer.train_char(["aaab", "b", "c"], max_vocab=264)
    assert t.vocab_size == 264 and t.token_to_id("a") == 263


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_frequency=0), "--min-frequency"),
    (dict(max_vocab=100), "--max-vocab"),
])
def test_char_bad_options(kwargs, match):
    with pytest.raises(GoushiError, match=match):
        Tokenizer.train_char(["abc"], **kwargs)


def test_bpe_bad_vocab_size():
    with pytest.raises(GoushiError, match="--vocab-size"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


def test_bpe_never_glues_whole_chinese_clauses(tmp_path):
    t = Tokenizer.train_bpe(["我今天真的非常开心，我今天真的非常开心。"] * 200, vocab_size=400, pre="han2", cjk_run=2)
    han = re.compile(r"[\u4e00-\u9fff]")
    longest = max(len(han.findall(t.id_to_piece(i))) for i in range(t.vocab_size))
    assert longest == 2
    pieces = [t.id_to_piece(i) for i in t.encode("我今天真的非常开心，")]
    assert "，" in pieces  # punctuation stays its own piece


def test_bpe_pieces_readable():
    t = Tokenizer.train_bpe(TRAIN, vocab_size=500, pre="han2")  # whose 500 tokens hold 明 and 月 whole
    pieces = [t.id_to_piece(i) for i in t.encode("明月 hello")]
    assert "".join(pieces) == "明月 hello"
    emoji_pieces = [t.id_to_piece(i) for i in t.encode("😀")]
    assert all(p.startswith("<0x") for p in emoji_pieces)


def test_sample_is_bounded_spread_and_deterministic():
    docs = [f"文档{i}" * 10 for i in range(1000)]  # 30..50 chars each
    s = _sample_texts(iter(docs), 4000)
    assert sum(map(len, s)) <= 4000 and len(s) >= 75
    idx = [docs.index(d) for d in s]
    assert min(idx) < 200 and max(idx) > 800  # not just the head of the corpus
    assert s == _sample_texts(iter(docs), 4000)
    assert _sample_texts(["x" * 100], 10) == ["x" * 10]


def test_from_file_errors(tmp_path):
    with pytest.raises(GoushiError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(GoushiError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(bad)
    other = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(GoushiError, match="other.json"):
        Tokenizer.from_file(tmp_path / "other.json")
