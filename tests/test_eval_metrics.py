"""Text scoring (bpc, sliding windows) and generation metrics, on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from goushi.config import preset_config
from goushi.errors import GoushiError
from goushi.eval.metrics import (
    distinct_n,
    evaluate_files,
    generation_metrics,
    read_documents,
    repeated_ngram_rate,
    score_documents,
    window_plan,
)
from goushi.model import GPT
from goushi.tokenizer import Tokenizer

DOCS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_char(DOCS)


def tiny_gpt(vocab: int, context: int, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = preset_config("tiny", vocab_size=vocab, context_length=context, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def test_uniform_model_bpc_is_log2_vocab_per_token_in_characters(tok):
    # Untied head with zero weights: every position predicts uniformly over the model's vocabulary.
    model = tiny_gpt(tok.vocab_size + 5, 16, tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    # "鹅" is not in the vocabulary: byte fallback makes it 3 tokens, so tokens != characters here.
    docs = ["床前明月光鹅", "举头望明月，低头思故乡。鹅鹅鹅"]
    tokens = sum(len(tok.encode(d)) for d in docs)
    chars = sum(len(d) for d in docs)
    assert tokens > chars
    r = score_documents(model, tok, docs, context_length=16, stride=5).to_dict()
    V = model.config.vocab_size
    assert r["tokens"] == tokens and r["chars"] == chars
    assert r["loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert r["ppl"] == pytest.approx(V, rel=1e-5)
    assert r["bpc"] == pytest.approx(math.log2(V) * tokens / chars, rel=1e-6)
    assert r["bpb"] == pytest.approx(math.log2(V) * tokens / sum(len(d.encode()) for d in docs), rel=1e-6)


@torch.no_grad()
def full_nats(model: GPT, tok: Tokenizer, doc: str) -> float:
    """Reference: one forward over <|endoftext|> + the whole document."""
    seq = torch.tensor([[tok.eot_id, *tok.encode(doc)]])
    logits, _ = model(seq[:, :-1])
    return float(F.cross_entropy(logits[0].float(), seq[0, 1:], reduction="sum"))


@pytest.mark.parametrize("stride", [1, 3, 32])
def test_sliding_window_equals_full_scoring_when_the_document_fits(tok, stride):
    model = tiny_gpt(tok.vocab_size, 32, seed=1)
    doc = DOCS[0]
    assert len(tok.encode(doc)) < 32
    s = score_documents(model, tok, [doc], context_length=32, stride=stride)
    assert s.nats == pytest.approx(full_nats(model, tok, doc), rel=1e-5)


@torch.no_grad()
def test_long_document_every_token_once_with_the_most_context(tok):
    model = tiny_gpt(tok.vocab_size, 8, seed=2, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    doc = DOCS[0] + DOCS[1]
    ids = [tok.eot_id, *tok.encode(doc)]
    # Reference for stride 1: token t predicted from the (up to) 8 tokens before it, one forward each.
    ref = 0.0
    for t in range(1, len(ids)):
        ctx = torch.tensor([ids[max(0, t - 8):t]])
        logits, _ = model(ctx)
        ref += float(F.cross_entropy(logits[0, -1:].float(), torch.tensor([ids[t]])))
    s = score_documents(model, tok, [doc], context_length=8, stride=1)
    assert s.tokens == len(ids) - 1
    assert s.nats == pytest.approx(ref, rel=1e-5)
    # A larger stride scores the same tokens with less context: a different, still finite, total.
    s4 = score_documents(model, tok, [doc], context_length=8, stride=4)
    assert s4.tokens == s.tokens and math.isfinite(s4.nats) and s4.nats != pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n,context,stride", [(1, 4, 1), (5, 8, 3), (37, 8, 3), (37, 8, 8), (64, 16, 16), (9, 4, 4)])
def test_window_plan_scores_each_target_once(n, context, stride):
    scored = []
    for a, b, first in window_plan(n, context, stride):
        assert 0 <= a < b <= n and b - a <= context and a + 1 <= first <= b
        assert all(t - a >= min(t, context - stride + 1) for t in range(first, b + 1))
        scored += range(first, b + 1)
    assert scored == list(range(1, n + 1))
    assert window_plan(0, context, stride) == []


def test_window_plan_refuses_bad_stride():
    with pytest.raises(GoushiError, match="--context-stride 9"):
        window_plan(10, 8, 9)
    with pytest.raises(GoushiError, match="--context-stride 0"):
        window_plan(10, 8, 0)


def test_read_documents_splits_and_formats(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("第一段\n还是第一段\n\n第二段\r\n\r\n\n第三段\n", encoding="utf-8")
    assert read_documents(f) == ["第一段\n还是第一段", "第二段", "第三段"]
    assert read_documents(f, "line") == ["第一段", "还是第一段", "第二段", "第三段"]
    assert len(read_documents(f, "none")) == 1
    j = tmp_path / "v.jsonl"
    j.write_text('{"text": "甲", "source": "s"}\n\n{"text": "乙"}\n', encoding="utf-8")
    assert read_documents(j) == ["甲", "乙"]
    j.write_text('{"text": "甲"}\n{"prompt": "乙"}\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"v\.jsonl:2: needs a string field"):
        read_documents(j)
    g = tmp_path / "gbk.txt"
    g.write_bytes("中文".encode("gbk"))
    with pytest.raises(GoushiError, match="not UTF-8.*iconv"):
        read_documents(g)
    with pytest.raises(GoushiError, match="file not found"):
        read_documents(tmp_path / "nope.txt")


def test_evaluate_files_per_file_and_overall(tmp_path, tok):
    model = tiny_gpt(tok.vocab_size, 16, seed=3)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(DOCS[0], encoding="utf-8")
    b.write_text(DOCS[1] + "\n\n" + DOCS[0], encoding="utf-8")
    res = evaluate_files(model, tok, [a, b], context_length=16)
    fa, fb, o = res["files"][str(a)], res["files"][str(b)], res["overall"]
    assert o["tokens"] == fa["tokens"] + fb["tokens"] and o["chars"] == fa["chars"] + fb["chars"]
    assert o["loss"] == pytest.approx((fa["loss"] * fa["tokens"] + fb["loss"] * fb["tokens"]) / o["tokens"])
    assert fb["docs"] == 2 and res["stride"] == 8 and res["uniform_loss"] == pytest.approx(math.log(tok.vocab_size))
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(GoushiError, match="e.txt: no text"):
        evaluate_files(model, tok, [empty], context_length=16)


def test_distinct_n_and_repetition_by_hand():
    assert distinct_n(["aaaa"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["aaaa"], 2) == pytest.approx(1 / 3)
    # 1-grams: a b a b a b c d -> {a, b, c, d} of 8; 2-grams: ab ba ab | ab bc cd -> {ab, ba, bc, cd} of 6
    assert distinct_n(["abab", "abcd"], 1) == pytest.approx(4 / 8)
    assert distinct_n(["abab", "abcd"], 2) == pytest.approx(4 / 6)
    assert distinct_n(["我爱你", "你爱我"], 2) == 1.0
    assert distinct_n([], 1) == 0.0 and distinct_n(["a"], 2) == 0.0
    # "哈哈哈哈哈" has 4 bigrams, 3 repeat the first; "abcd" has none of its 3 repeated.
    assert repeated_ngram_rate(["哈哈哈哈哈", "abcd"], 2) == pytest.approx(3 / 7)
    assert repeated_ngram_rate(["一二三四五六"], 4) == 0.0


def test_generation_metrics_with_memorisation(tmp_path):
    from goushi.data.textindex import TextIndex, TextIndexWriter

    w = TextIndexWriter(tmp_path)
    w.add(DOCS[0], "tang")
    w.close({"tang": {"license": "public domain"}})
    idx = TextIndex.load(tmp_path)
    texts = ["我想说床前明月光，疑是地", "全新的句子"]  # 9 of 17 characters copied
    m = generation_metrics(texts, index=idx, min_chars=8)
    assert m["memorisation_rate"] == pytest.approx(9 / 17)
    assert m["mean_chars"] == pytest.approx(17 / 2) and m["samples"] == 2
    assert "memorisation_rate" not in generation_metrics(texts)
