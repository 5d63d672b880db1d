"""The generation engine on tiny random models and on toy models whose probabilities are set by hand."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch
import torch.nn as nn

from goushi.checkpoint import load_run
from goushi.config import preset_config
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.generation.utf8 import INVALID, advance
from goushi.model import KVCache
from goushi.run_record import RunRecord, SftRecord
from goushi.tokenizer import SPECIAL_TOKENS, Tokenizer

PROMPTS = ["今天我终于", "床前明月光，疑是地上霜。举头望明月", "", "好"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads
    wait for each other (10x slower); restore the setting for other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def engine(request, make_run) -> Engine:
    return Engine.load(make_run("char", request.param), device="cpu")


@pytest.fixture(scope="module")
def bpe_engine(make_run) -> Engine:
    return Engine.load(make_run("bpe"), device="cpu")


class Utf8Reference:
    """The engine's UTF-8 rule restated token by token: a token may follow only if its bytes can
    continue the character in progress (generated text never contains an invalid byte sequence)."""

    def __init__(self, token_bytes: list[bytes]):
        self.token_bytes, self.state = token_bytes, 0

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        bad = [i for i, b in enumerate(self.token_bytes) if advance(self.state, b) == INVALID]
        return logits.index_fill(0, torch.tensor(bad, dtype=torch.long), float("-inf")) if bad else logits

    def push(self, t: int) -> None:
        self.state = advance(self.state, self.token_bytes[t])


def reference_greedy(model, ids: list[int], n: int, eot: int, token_bytes: list[bytes],
                     banned: list[int] = ()) -> tuple[list[int], list[list[float]]]:
    """Greedy decoding by recomputing the whole sequence at every step: no cache, no padding.
    Returns the tokens and the top-5 probabilities of every step. (Within the context the window never
    slides, so this is reference_sliding's policy with nothing to slide.)"""
    return reference_sliding(model, ids, n, eot, model.config.context_length, token_bytes, banned)


def top_probs(g) -> list[list[float]]:
    return [[p for _, p, _ in step] for step in g.steps]


def same_probs(a: list[list[float]], b: list[list[float]]) -> bool:
    """Equal up to float noise; a random model's probabilities are ~1/vocab, so compare relatively."""
    return len(a) == len(b) and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-7)


# ---- greedy, cache, batches ------------------------------------------------------------------------
def test_greedy_equals_top_k_1_equals_one_beam_equals_temperature_0(engine):
    base = dict(max_new_tokens=24)
    greedy = engine.generate(PROMPTS, SampleConfig(strategy="greedy", **base))
    variants = [
        SampleConfig(strategy="sample", temperature=0.0, **base),
        SampleConfig(strategy="sample", top_k=1, temperature=1.3, seed=5, **base),
        SampleConfig(strategy="beam", num_beams=1, **base),
    ]
    for cfg in variants:
        assert [g.token_ids for g in engine.generate(PROMPTS, cfg)] == [g.token_ids for g in greedy], cfg
        assert [g.text for g in engine.generate(PROMPTS, cfg)] == [g.text for g in greedy]


def test_kv_cache_decoding_equals_full_recomputation(engine):
    for prompt in PROMPTS:
        g = engine.generate(prompt, SampleConfig(strategy="greedy", max_new_tokens=30, top_n=5))[0]
        ids = [engine.tokenizer.eot_id, *engine.tokenizer.encode(prompt)]
        tokens, tops = reference_greedy(engine.model, ids, 30, engine.tokenizer.eot_id, token_bytes_of(engine),
                                        banned_of(engine))
        assert g.token_ids == tokens
        assert same_probs(top_probs(g), tops)  # the same distributions, not just the same argmax
        if "\ufffd" not in (full := engine.tokenizer.decode(g.token_ids)):  # random bytes may be invalid UTF-8
            assert g.text == full


def test_batch_of_different_lengths_equals_each_prompt_alone(engine, monkeypatch):
    # alone in a batch, as a server runs it: a lone call's single-row kernels may differ in the last bits
    monkeypatch.setattr(engine, "batch_invariant", True)
    cfg = SampleConfig(strategy="greedy", max_new_tokens=20, top_n=5)
    batch = engine.generate(PROMPTS, cfg)
    assert [g.prompt for g in batch] == PROMPTS
    for prompt, g in zip(PROMPTS, batch, strict=True):
        alone = engine.generate(prompt, cfg)[0]
        assert (g.token_ids, g.text, g.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason)
        assert same_probs(top_probs(g), top_probs(alone))


# ---- sampling ---------------------------------------------------------------------------------------
def test_seeded_sampling_repeats_exactly_and_samples_use_seed_plus_k(engine, monkeypatch):
    monkeypatch.setattr(engine, "batch_invariant", True)  # sample k of 3 against a lone call: the same kernels
    cfg = SampleConfig(temperature=1.0, top_p=0.95, max_new_tokens=25, num_samples=3, seed=123)
    a = engine.generate(PROMPTS[:2], cfg)
    b = engine.generate(PROMPTS[:2], cfg)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.seed for g in a] == [123, 124, 125] * 2
    assert len({tuple(g.token_ids) for g in a[:3]}) > 1  # three samples of one prompt differ
    one = engine.generate(PROMPTS[0], dataclasses.replace(cfg, num_samples=1, seed=124))[0]
    assert one.token_ids == a[1].token_ids
    unseeded = engine.generate(PROMPTS[0], dataclasses.replace(cfg, seed=None, num_samples=1))[0]
    assert unseeded.seed is not None
    again = engine.generate(PROMPTS[0], dataclasses.replace(cfg, seed=unseeded.seed, num_samples=1))[0]
    assert again.token_ids == unseeded.token_ids


def test_sampling_respects_filters(engine):
    cfg = SampleConfig(temperature=1.0, top_k=3, max_new_tokens=20, seed=0, top_n=5)
    for g in engine.generate(PROMPTS[:2], cfg):
        for step, tok in zip(g.steps, g.token_ids, strict=False):
            probs = [p for _, p, _ in step]
            assert probs == sorted(probs, reverse=True)
            assert probs[3:] == [0.0, 0.0] and abs(sum(probs) - 1) < 1e-5  # only 3 survived top-k
            assert tok in [i for _, _, i in step[:3]]


def test_concurrent_requests_do_not_disturb_each_other(engine):
    cfgs = [SampleConfig(temperature=1.0, max_new_tokens=30, seed=s) for s in range(4)]
    expected = [engine.generate(PROMPTS[0], c)[0].token_ids for c in cfgs]
    got: dict[int, list[int]] = {}

    def work(i: int) -> None:
        got[i] = engine.generate(PROMPTS[0], cfgs[i])[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(4)] == expected


def test_no_repeat_ngram_and_repetition_penalty(engine):
    g = engine.generate("好好好", SampleConfig(strategy="greedy", max_new_tokens=30, no_repeat_ngram_size=2))[0]
    seq = [engine.tokenizer.eot_id, *engine.tokenizer.encode("好好好"), *g.token_ids]
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams[2:]) == len(set(bigrams[2:]))  # the prompt's own repeat is the user's
    assert len(set(bigrams[:3]) & set(bigrams[3:])) == 0
    g1 = engine.generate("今天", SampleConfig(strategy="greedy", max_new_tokens=20, no_repeat_ngram_size=1))[0]
    prompt_ids = {engine.tokenizer.eot_id, *engine.tokenizer.encode("今天")}
    assert len(set(g1.token_ids)) == len(g1.token_ids) and not prompt_ids & set(g1.token_ids)
    plain = engine.generate("今天", SampleConfig(strategy="greedy", max_new_tokens=20))[0]
    pen = engine.generate("今天", SampleConfig(strategy="greedy", max_new_tokens=20, repetition_penalty=5.0))[0]
    assert len(set(pen.token_ids)) >= len(set(plain.token_ids))


# ---- streaming and text -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["char", "bpe"])
def test_stream_concatenates_to_generated_text(which, engine, bpe_engine):
    eng = engine if which == "char" else bpe_engine
    for cfg in (SampleConfig(temperature=1.0, max_new_tokens=40, seed=7, stop=["。"]),
                SampleConfig(strategy="greedy", max_new_tokens=40, top_n=3),
                SampleConfig(strategy="beam", num_beams=3, max_new_tokens=10)):
        for prompt in ("今天我终于", "龘靐齉 emoji 😀"):
            events = list(eng.stream(prompt, cfg))
            g = eng.generate(prompt, cfg)[0]
            assert "".join(e.delta for e in events) == g.text
            assert events[-1].finish_reason == g.finish_reason
            assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
            if cfg.strategy != "beam":
                assert [e.token_id for e in events if e.finish_reason != "eos"] == g.token_ids
                assert [e.top for e in events] == (g.steps or [None] * len(events))


def test_empty_and_unseen_prompts_work(engine, bpe_engine):
    for eng in (engine, bpe_engine):
        for prompt in ("", "龘靐齉爩 🇨🇳 ñ", "<|endoftext|>"):
            g = eng.generate(prompt, SampleConfig(max_new_tokens=5, seed=1, min_new_tokens=5))[0]
            assert len(g.token_ids) == 5 and g.finish_reason == "length"
    ids = engine.tokenize("今天龘")
    assert [p for _, p in ids][:2] == ["今", "天"] and len(ids) == 5  # 龘: 3 byte-fallback tokens
    assert ids[2][1] == "<0xE9>"


# ---- context window ---------------------------------------------------------------------------------
def banned_of(engine) -> list[int]:
    return engine.vocab.banned.tolist() if engine.vocab.banned is not None else []


def token_bytes_of(engine) -> list[bytes]:
    tok = engine.tokenizer
    return [SPECIAL_TOKENS[i].encode() if i < len(SPECIAL_TOKENS) else tok.token_bytes(i) for i in range(tok.vocab_size)]


def reference_sliding(model, ids: list[int], n: int, eot: int, window: int, token_bytes: list[bytes],
                      banned: list[int] = ()) -> list[int]:
    """The documented policy without a cache: when the visible part outgrows the context, keep the
    last `window` tokens and go on from there. `banned`: ids never chosen (special tokens not trained on)."""
    ctx = model.config.context_length
    seq = list(ids)
    start = 0 if len(seq) <= ctx else len(seq) - window
    out, tops = [], []
    utf8 = Utf8Reference(token_bytes)
    with torch.no_grad():
        for _ in range(n):
            if len(seq) - start > ctx:
                start = len(seq) - window
            logits, _ = model(torch.tensor([seq[start:]]))
            last = utf8.masked(logits[0, -1, : len(token_bytes)])
            if banned:
                last = last.index_fill(0, torch.tensor(list(banned)), float("-inf"))
            tops.append(last.softmax(-1).topk(5).values.tolist())
            t = int(last.argmax())
            if t == eot:
                break
            utf8.push(t)
            out.append(t)
            seq.append(t)
    return out, tops


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_context_overflow_slides_the_window_and_says_so(make_run, family):
    from goushi.generation.runner import slide_window

    eng = Engine.load(make_run("char", family, context_length=16), device="cpu")
    long_prompt = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"  # 25 characters > 16
    ids = [0, *eng.tokenizer.encode(long_prompt)]
    for prompt, prompt_ids in ((long_prompt, ids), ("今天", [0, *eng.tokenizer.encode("今天")])):
        g = eng.generate(prompt, SampleConfig(strategy="greedy", max_new_tokens=40, top_n=5))[0]
        tokens, tops = reference_sliding(eng.model, prompt_ids, 40, 0, slide_window(16), token_bytes_of(eng),
                                         banned_of(eng))
        assert g.token_ids == tokens and same_probs(top_probs(g), tops)
        assert g.truncated_prompt == (len(prompt_ids) + len(g.token_ids) > 17)
    g = eng.generate(long_prompt, SampleConfig(max_new_tokens=50, min_new_tokens=50, seed=0))[0]
    assert len(g.token_ids) == 50 and g.truncated_prompt
    events = list(eng.stream(long_prompt, SampleConfig(max_new_tokens=5, seed=0)))
    assert all(e.truncated_prompt for e in events)
    assert len(eng.attention(long_prompt)[0]) == 16


# ---- stop strings on a scripted model ------------------------------------------------------------------
class ScriptedLM(nn.Module):
    """Says `script` (token ids) word for word: the logits at position p point at script[p]."""

    def __init__(self, script: list[int], vocab_size: int, context_length: int = 64):
        super().__init__()
        self.config = preset_config("tiny", vocab_size=vocab_size, n_layer=1, n_head=1, n_embd=8,
                                    context_length=context_length)
        self.wte = nn.Embedding(vocab_size, 8)
        table = torch.full((context_length, vocab_size), -10.0)
        for p, t in enumerate(script):
            table[p, t] = 10.0
        self.table = table

    def new_kv_cache(self, batch, max_len=None, dtype=None):
        return KVCache(self.config, batch, max_len or self.config.context_length, "cpu", torch.float32)

    def forward(self, idx, targets=None, *, kv_cache=None, pos=0, position_ids=None, key_padding_mask=None,
                last_only=False):
        B, T = idx.shape
        if kv_cache is not None:
            kv_cache.length = pos + T
        if position_ids is None:
            position_ids = torch.arange(pos, pos + T).expand(B, T)
        logits = self.table[position_ids]
        return (logits[:, -1:] if last_only else logits), None


def scripted_engine(tok: Tokenizer, text: str) -> tuple[Engine, list[int]]:
    ids = tok.encode(text)
    # position 0 is the leading <|endoftext|>; the logits there choose the first generated token
    return Engine(ScriptedLM([*ids, tok.eot_id], tok.vocab_size), tok), ids


@pytest.fixture(scope="module")
def tokenizers(make_run):
    return {k: Tokenizer.from_file(make_run(k) / "tokenizer.json") for k in ("char", "bpe")}


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_scripted_text_streams_whole_characters_only(tokenizers, kind):
    tok = tokenizers[kind]
    text = "天气很好。龘靐齉爩鱻麤 😀 end"  # unseen characters: byte tokens that split characters
    eng, ids = scripted_engine(tok, text)
    assert any(tok.token_bytes(i) and not _is_utf8(tok.token_bytes(i)) for i in ids)  # really splits
    events = list(eng.stream("", SampleConfig(strategy="greedy", max_new_tokens=60)))
    assert "".join(e.delta for e in events) == text
    assert all("\ufffd" not in e.delta for e in events)
    assert "" in [e.delta for e in events]  # some bytes were held back
    assert events[-1].finish_reason == "eos"
    assert eng.generate("", SampleConfig(strategy="greedy", max_new_tokens=60))[0].text == text


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_stop_strings_cut_correctly(tokenizers, kind):
    tok = tokenizers[kind]
    eng, ids = scripted_engine(tok, "今天很好。\n明天也好。\n后天")
    cfg = SampleConfig(strategy="greedy", max_new_tokens=60, stop=["。\n"])
    g = eng.generate("", cfg)[0]
    assert (g.text, g.finish_reason) == ("今天很好", "stop")
    assert "".join(e.delta for e in eng.stream("", cfg)) == "今天很好"
    g = eng.generate("", dataclasses.replace(cfg, stop=["后天", "也"]))[0]
    assert g.text == "今天很好。\n明天"
    g = eng.generate("", dataclasses.replace(cfg, stop=["不会出现"]))[0]
    assert (g.text, g.finish_reason) == ("今天很好。\n明天也好。\n后天", "eos")
    g = eng.generate("", dataclasses.replace(cfg, max_new_tokens=3))[0]
    assert g.finish_reason == "length" and len(g.token_ids) == 3


# ---- beam search on a toy model where greedy provably fails ----------------------------------------------
class BigramLM(ScriptedLM):
    """Next-token probabilities depend only on the last token, from a table set by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__([], table.size(0))
        self.bigram = table

    def forward(self, idx, targets=None, *, kv_cache=None, pos=0, position_ids=None, key_padding_mask=None,
                last_only=False):
        if kv_cache is not None:
            kv_cache.length = pos + idx.size(1)
        logits = self.bigram[idx]
        return (logits[:, -1:] if last_only else logits), None


def test_beam_search_finds_the_best_sequence_where_greedy_fails(tokenizers):
    tok = tokenizers["char"]
    A, B, C, D = (tok.token_to_id(c) for c in "今天明月")
    V, eot = tok.vocab_size, tok.eot_id
    probs = torch.full((V, V), 1e-9)
    probs[eot, A], probs[eot, B], probs[eot, 105] = 0.5, 0.4, 0.1  # greedy takes A ...
    probs[105, eot] = 1.0
    probs[A, :] = 1e-9
    for t in range(100, 105):  # ... after which nothing is likely: best 0.2
        probs[A, t] = 0.2
        probs[t, eot] = 1.0
    probs[B, C], probs[B, D] = 0.9, 0.1  # while B is followed by C with 0.9
    probs[C, eot], probs[D, eot] = 1.0, 1.0
    eng = Engine(BigramLM((probs / probs.sum(-1, keepdim=True)).log()), tok)

    greedy = eng.generate("", SampleConfig(strategy="greedy", max_new_tokens=5))[0]
    assert greedy.token_ids == [A, 100]  # p = 0.5 * 0.2 = 0.1
    beam = eng.generate("", SampleConfig(strategy="beam", num_beams=2, max_new_tokens=5, length_penalty=0.0,
                                         num_samples=2))
    assert beam[0].token_ids == [B, C] and beam[0].finish_reason == "eos"  # p = 0.4 * 0.9 = 0.36
    assert beam[0].score == pytest.approx(math.log(0.36), abs=1e-4)
    assert beam[1].score == pytest.approx(math.log(0.1), abs=1e-4)  # the runners-up all have p = 0.1
    assert beam[1].token_ids in [[A, t] for t in range(100, 105)] + [[105]]
    assert eng.generate("", SampleConfig(strategy="beam", num_beams=1, max_new_tokens=5))[0].token_ids == [A, 100]
    # each returned beam streams as one event, best first
    events = list(eng.stream("", SampleConfig(strategy="beam", num_beams=2, max_new_tokens=5, length_penalty=0.0,
                                              num_samples=2)))
    assert [(e.index, e.seed) for e in events] == [(0, None), (1, None)]
    assert [(e.delta, e.finish_reason) for e in events[:1]] == [(tok.decode([B, C]), "eos")]
    assert [e.result for e in events] == beam


# ---- inspection helpers ---------------------------------------------------------------------------------
def test_inspection_helpers(engine):
    top = engine.next_token_probs("今天我", top_n=5)
    assert len(top) == 5 and [p for _, p, _ in top] == sorted((p for _, p, _ in top), reverse=True)
    g = engine.generate("今天我", SampleConfig(strategy="greedy", max_new_tokens=1))[0]
    assert top[0][2] == (g.token_ids[0] if g.token_ids else engine.tokenizer.eot_id)
    pieces, attn = engine.attention("今天我")
    L, H = engine.config.n_layer, engine.config.n_head
    assert pieces == ["<|endoftext|>", "今", "天", "我"] and attn.shape == (L, H, 4, 4)
    assert torch.allclose(attn.sum(-1), torch.ones(L, H, 4), atol=1e-5)
    assert torch.all(attn.triu(1) == 0)  # causal
    with pytest.raises(GoushiError, match="top_n"):
        engine.next_token_probs("x", top_n=0)


def test_bad_calls_give_one_line_errors(engine, tmp_path):
    with pytest.raises(GoushiError, match="--top-p"):
        engine.generate("x", SampleConfig(top_p=1.5))
    with pytest.raises(GoushiError, match="--max-new-tokens 5000"):
        list(engine.stream("x", SampleConfig(max_new_tokens=5000)))
    with pytest.raises(GoushiError, match="--num-samples 5"):
        engine.stream("x", SampleConfig(strategy="beam", num_beams=4, num_samples=5))
    with pytest.raises(GoushiError, match="prompts"):
        engine.generate([], SampleConfig())
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(GoushiError, match="missing model.safetensors, tokenizer.json"):
        Engine.load(tmp_path)


def test_engine_load_matches_load_run(make_run):
    run = make_run("bpe")
    eng = Engine.load(run, device="cpu")
    ref = load_run(run)
    assert eng.run_dir == run and eng.device.type == "cpu" and eng.tokenizer.hash() == ref.tokenizer.hash()
    assert all(torch.equal(a, b) for a, b in zip(eng.model.state_dict().values(), ref.model.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_special_tokens_the_model_never_trained_on_are_never_generated(tokenizers, strategy):
    tok = tokenizers["bpe"]
    unk, user, im_end = (SPECIAL_TOKENS.index(t) for t in ("<|unk|>", "<|user|>", "<|im_end|>"))
    good = tok.encode("好")[0]
    lm = ScriptedLM([], tok.vocab_size)
    lm.table[0, [unk, user, im_end, good]] = torch.tensor([12.0, 11.0, 10.0, 9.0])  # a young model's noise on top
    lm.table[1, tok.eot_id] = 10.0
    cfg = SampleConfig(strategy=strategy, max_new_tokens=2, temperature=0.05, num_beams=2, seed=0)
    assert Engine(lm, tok).generate("", cfg)[0].token_ids == [good]
    # a chat fine-tuned run was trained on its markers; <|unk|> stays banned (unknown text is spelled as bytes)
    chat = Engine(lm, tok, record=RunRecord(model=lm.config, sft=SftRecord(data="chat.jsonl")))
    assert chat.generate("", cfg)[0].token_ids[0] == user
