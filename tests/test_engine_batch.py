"""Continuous batching (goushi.generation.batch, goushi.generation.slots): rows of many requests decoded together,
joining and leaving at token boundaries, give every request exactly what Engine.generate gives it alone, for every
strategy and option the API offers; the samples of a prompt share one prefill; finished rows free their slots.

Texts and token ids are compared exactly. The model's scores are compared bit for bit where this machine's kernels
give a row the same floats whatever runs beside it (goushi.generation.slots.row_invariant, true on the CPUs we
measured on one thread), else within float noise. "Alone" is alone in a batch as the server runs it: the reference
engines are batch_invariant, so a lone call does not take the single-row kernels (goushi.generation.solo), whose
floats may differ in the last bits; the solo path's own tests at the end compare what is robust about it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from goushi import engine as engine_module
from goushi.config import preset_config
from goushi.engine import Engine, SampleConfig
from goushi.generation import slots as slots_module
from goushi.generation.batch import DecodeBatch
from goushi.generation.slots import MIN_ROWS, Slots, row_invariant
from goushi.generation.solo import Solo
from goushi.model import GPT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The batch decodes on one intra-op thread, as the server does (on more, BLAS splits a matmul by its rows)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def engine(request, make_run) -> Engine:
    return Engine.load(make_run("char", request.param), device="cpu", batch_invariant=True)


@pytest.fixture(scope="module")
def bpe_engine(make_run) -> Engine:
    return Engine.load(make_run("bpe"), device="cpu", batch_invariant=True)


# Every option the API passes on, one request each (with the prompt it continues); seeds differ so texts differ.
REQUESTS = [
    ("今天我终于", SampleConfig(strategy="greedy", max_new_tokens=12)),
    ("床前", SampleConfig(temperature=0.0, max_new_tokens=9, top_n=3)),
    ("今天", SampleConfig(temperature=1.0, max_new_tokens=20, seed=11)),
    ("", SampleConfig(temperature=0.7, top_p=0.9, max_new_tokens=15, seed=12, num_samples=3)),
    ("好评！", SampleConfig(temperature=1.3, top_k=5, max_new_tokens=18, seed=13)),
    ("春眠不觉晓，", SampleConfig(temperature=1.0, min_p=0.1, max_new_tokens=10, seed=14)),
    ("我们去吃", SampleConfig(temperature=1.0, repetition_penalty=1.5, max_new_tokens=25, seed=15)),
    ("下次还来", SampleConfig(temperature=1.0, no_repeat_ngram_size=2, max_new_tokens=25, seed=16)),
    ("说实话，", SampleConfig(temperature=1.0, min_new_tokens=14, max_new_tokens=16, seed=17)),
    ("今天", SampleConfig(temperature=1.0, stop=["。", "不"], max_new_tokens=40, seed=18, top_n=2)),
    ("明月", SampleConfig(temperature=0.9, top_p=0.95, top_k=20, repetition_penalty=1.2, no_repeat_ngram_size=3,
                        min_new_tokens=2, max_new_tokens=30, seed=19, num_samples=2, stop=["，"])),
]


def key(g) -> tuple:
    return g.text, g.token_ids, g.finish_reason, g.truncated_prompt, g.seed, g.prompt_tokens


def same_numbers(got, want, exact: bool) -> bool:
    """Scores and top-N probabilities: bit for bit when the kernels are row-invariant, else within float noise."""
    if exact:
        return got.score == want.score and got.steps == want.steps
    if not math.isclose(got.score, want.score, rel_tol=1e-5, abs_tol=1e-5) or len(got.steps) != len(want.steps):
        return False
    return all([i for _, _, i in a] == [i for _, _, i in b] and all(math.isclose(p, q, abs_tol=1e-6) for (_, p, _), (
        _, q, _) in zip(a, b, strict=True)) for a, b in zip(got.steps, want.steps, strict=True))


def run_batch(engine: Engine, requests, size: int, join_every: int = 0) -> dict[int, list]:
    """Decode `requests` (prompt, cfg) in one DecodeBatch of `size` slots, request r joining after r * join_every
    steps; returns each request's finished Generations by row index, checking the batch's invariants on the way."""
    batch = DecodeBatch(engine.model, size, engine.vocab.eot_id)
    results: dict[int, dict[int, object]] = {r: {} for r in range(len(requests))}
    pending = list(enumerate(requests))
    step = 0
    with torch.inference_mode():
        while pending or batch.busy:
            while pending and pending[0][0] * join_every <= step:
                r, (prompt, cfg) = pending.pop(0)
                c, specs, vocab = engine.request(prompt, cfg)
                batch.add(r, specs, c, vocab)
            batch.admit()
            assert len(batch.running) <= size and set(batch.running) <= set(range(size))
            for owner, ev in batch.step():
                if ev.result is not None:
                    results[owner][ev.index] = ev.result
            step += 1
    return {r: [got[i] for i in sorted(got)] for r, got in results.items()}


@pytest.mark.parametrize("size, join_every", [(4, 0), (16, 3), (MIN_ROWS, 1)])
def test_every_request_gets_the_same_text_batched_as_alone(engine, size, join_every):
    exact = row_invariant(engine.model)
    batched = run_batch(engine, REQUESTS, size, join_every)
    for r, (prompt, cfg) in enumerate(REQUESTS):
        alone = engine.generate(prompt, cfg)
        assert [key(g) for g in batched[r]] == [key(g) for g in alone], (r, cfg)
        assert all(same_numbers(g, a, exact) for g, a in zip(batched[r], alone, strict=True)), r


def test_chat_and_plain_requests_share_a_batch(make_run):
    run = make_run("char")
    engine = Engine.load(run, device="cpu", batch_invariant=True)
    chat = [{"role": "user", "content": "讲个笑话"}]
    cfg = SampleConfig(temperature=1.0, max_new_tokens=20, seed=3, num_samples=2)
    batch = DecodeBatch(engine.model, 4, engine.vocab.eot_id)
    got: dict[str, dict[int, object]] = {"chat": {}, "plain": {}}
    with torch.inference_mode():
        for owner, request in (("chat", engine.chat_request(chat, cfg)), ("plain", engine.request("今天", cfg))):
            c, specs, vocab = request
            batch.add(owner, specs, c, vocab)
        while batch.busy:
            batch.admit()
            for owner, ev in batch.step():
                if ev.result is not None:
                    got[owner][ev.index] = ev.result
    assert [key(g) for g in got["chat"].values()] == [key(g) for g in engine.chat(chat, cfg)]
    assert [key(g) for g in got["plain"].values()] == [key(g) for g in engine.generate("今天", cfg)]


def test_byte_tokens_keep_utf8_valid_batched_as_alone(bpe_engine):
    requests = [(p, SampleConfig(temperature=1.5, max_new_tokens=24, seed=s)) for s, p in enumerate(["今天", "床前明月", ""])]
    batched = run_batch(bpe_engine, requests, 4, join_every=2)
    for r, (prompt, cfg) in enumerate(requests):
        assert [key(g) for g in batched[r]] == [key(g) for g in bpe_engine.generate(prompt, cfg)]
        assert "\ufffd" not in batched[r][0].text


def test_rows_outgrowing_the_context_window_slide_as_alone(engine):
    ctx = engine.context_length
    long_prompt = "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 4  # longer than the window
    requests = [(long_prompt, SampleConfig(temperature=1.0, min_new_tokens=ctx + 10, max_new_tokens=ctx + 10, seed=5)),
                ("今天", SampleConfig(temperature=1.0, min_new_tokens=ctx + 30, max_new_tokens=ctx + 30, seed=6)),
                ("好", SampleConfig(strategy="greedy", max_new_tokens=8))]
    exact = row_invariant(engine.model)
    batched = run_batch(engine, requests, 4, join_every=5)
    for r, (prompt, cfg) in enumerate(requests):
        alone = engine.generate(prompt, cfg)
        assert [key(g) for g in batched[r]] == [key(g) for g in alone], r
        # the scores too: a slid row's cache must stay whole while the others step (texts alone may not show it)
        assert same_numbers(batched[r][0], alone[0], exact), r
    assert batched[0][0].truncated_prompt and batched[1][0].truncated_prompt and not batched[2][0].truncated_prompt


def test_the_samples_of_a_prompt_share_one_prefill(engine, monkeypatch):
    calls = []
    prefill = Slots.prefill
    monkeypatch.setattr(slots_module.Slots, "prefill",
                        lambda self, ids, *a: calls.append(len(ids)) or prefill(self, ids, *a))
    cfg = SampleConfig(temperature=1.0, max_new_tokens=10, seed=40, num_samples=5)
    many = engine.generate(["今天我终于", "床前"], cfg)
    assert len(calls) == 2  # one per prompt, not per sample
    monkeypatch.undo()
    for k in range(5):  # sample k equals a request of its own with seed + k
        one = dataclasses.replace(cfg, seed=40 + k, num_samples=1)
        assert key(many[k]) == key(engine.generate("今天我终于", one)[0])
        assert key(many[5 + k]) == key(engine.generate("床前", one)[0])


def test_rows_leave_as_they_finish_and_the_next_take_their_slots(engine):
    lengths = [3, 9, 5, 2, 7, 4]
    batch = DecodeBatch(engine.model, MIN_ROWS, engine.vocab.eot_id)
    with torch.inference_mode():
        for r, n in enumerate(lengths):
            c, specs, vocab = engine.request("今天", SampleConfig(temperature=1.0, min_new_tokens=n, max_new_tokens=n,
                                                                seed=r))
            batch.add(r, specs, c, vocab)
        finished, steps = [], 0
        while batch.busy:
            batch.admit()
            assert len(batch.running) == min(MIN_ROWS, len(lengths) - len(finished))  # a freed slot is taken at once
            finished += [owner for owner, ev in batch.step() if ev.result is not None]
            steps += 1
    assert sorted(finished) == list(range(len(lengths)))
    assert steps < sum(lengths)  # two at a time, not one after the other
    assert finished.index(2) < finished.index(1)  # a row that joined later left before a longer one


def test_a_dropped_request_leaves_at_once_and_the_others_go_on(engine):
    cfg = SampleConfig(temperature=1.0, max_new_tokens=30, min_new_tokens=30, seed=9)
    batch = DecodeBatch(engine.model, 4, engine.vocab.eot_id)
    gone, kept = object(), object()
    text = {}
    with torch.inference_mode():
        for owner, n in ((gone, 3), (kept, 1)):
            c, specs, vocab = engine.request("今天", dataclasses.replace(cfg, num_samples=n))
            batch.add(owner, specs, c, vocab)
        for step in range(40):
            if step == 5:
                batch.drop(gone)
                assert all(r.owner is kept for r in batch.running.values()) and len(batch.running) == 1
            if not batch.busy:
                break
            batch.admit()
            for owner, ev in batch.step():
                assert step < 5 or owner is kept
                if owner is kept:
                    text[ev.index] = text.get(ev.index, "") + ev.delta
    assert text == {0: engine.generate("今天", cfg)[0].text}


def test_beam_search_is_not_batched(engine):
    batch = DecodeBatch(engine.model, 4, engine.vocab.eot_id)
    c, specs, vocab = engine.request("今天", SampleConfig(strategy="beam", num_beams=2, max_new_tokens=4))
    with pytest.raises(ValueError, match="beam search runs one request at a time"):
        batch.add(None, specs, c, vocab)


def test_logits_are_the_same_bits_alone_and_among_others_where_the_kernels_allow(engine):
    """What the texts rest on, checked directly: a row's logits at every step of a decode, alone (with its blank
    partner) and in a batch of 9 rows of other lengths, joined in another slot."""
    model = engine.model
    gen = torch.Generator().manual_seed(1)
    V = engine.vocab.size
    seq = torch.randint(0, V, (engine.context_length,), generator=gen).tolist()
    with torch.inference_mode():
        alone = Slots(model, MIN_ROWS, 0)
        alone.place(0, alone.prefill(seq[:4]))
        many = Slots(model, 9, 0)
        for s in range(9):
            many.place(s, many.prefill(torch.randint(0, V, (2 + 5 * s,), generator=gen).tolist()))
        many.place(6, many.prefill(seq[:4]))
        for t in range(4, 20):
            want = alone.step({0: seq[t]})[0]
            others = {s: int(torch.randint(0, V, (1,), generator=gen)) for s in range(9) if s != 6}
            got = many.step({**others, 6: seq[t]})[6]
            if row_invariant(model):
                assert torch.equal(got, want), t
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_admission_prefills_a_bounded_number_of_prompt_tokens_per_step(engine):
    """Newcomers join a few prompts a step, so the running rows never wait long between two tokens."""
    batch = DecodeBatch(engine.model, 8, engine.vocab.eot_id, prefill_budget=10)
    with torch.inference_mode():
        for r in range(4):  # 7 tokens each with the leading <|endoftext|>
            c, specs, vocab = engine.request("床前明月光，", SampleConfig(strategy="greedy", max_new_tokens=5))
            batch.add(r, specs, c, vocab)
        joined = []
        while batch.waiting:
            joined.append(batch.admit())
            batch.step()
    assert joined == [2, 2]  # 7 < 10 lets a second prompt in, 14 stops the step's admissions
    one = DecodeBatch(engine.model, 4, engine.vocab.eot_id, prefill_budget=1)
    with torch.inference_mode():
        c, specs, vocab = engine.request(["床前明月光，疑是地上霜。举头望明月"], SampleConfig(strategy="greedy", max_new_tokens=2))
        one.add(0, specs, c, vocab)
        assert one.admit() == 1  # one prompt always goes in, however long


# ---- the single-row path (goushi.generation.solo): a lone Engine call's faster kernels ----------------------------
# Its floats are not the batch's bit for bit (other kernels: SDPA, one-row matmuls, F.linear head), so nothing here
# compares a solo text with a batched one where float noise could decide: logits within tolerance, and texts only
# where both sides chose from the same floats or ran the same kernels.


def forced_logits(backend, seq: list[int], start: int) -> tuple[torch.Tensor, int]:
    """Slot 0's next-token logits after seq[:start], seq[:start + 1], ... seq, teacher-forced through a Solo or a
    Slots backend exactly as DecodeBatch drives it (a full row is prefilled again over its window), and how many
    times the window slid."""
    pre = backend.prefill(seq[:start], len(seq) - start)
    backend.place(0, pre)
    out, slides = [pre.logits], 0
    for t in range(start, len(seq)):
        if backend.full(0):
            pre = backend.prefill(seq[: t + 1], len(seq) - t - 1)
            backend.place(0, pre)
            out.append(pre.logits)
            slides += 1
        else:
            out.append(backend.step({0: seq[t]})[0])
    return torch.stack(out), slides


@pytest.mark.parametrize("start", [5, 70])  # 70 > context 64: the prompt itself is cut to the window
def test_solo_logits_equal_the_slots_within_float_noise_through_a_slide(engine, start):
    ctx = engine.context_length
    seq = torch.randint(0, engine.vocab.size, (start + 2 * ctx,), generator=torch.Generator().manual_seed(start))
    seq = seq.tolist()
    with torch.inference_mode():
        got, slides = forced_logits(Solo(engine.model, 0), seq, start)
        want, slots_slides = forced_logits(Slots(engine.model, MIN_ROWS, 0), seq, start)
    assert got.shape == want.shape == (len(seq) - start + 1, engine.config.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert slides == slots_slides >= 2


def lockstep(engine: Engine, prompt: str, cfg: SampleConfig) -> list:
    """Each row of a request decoded solo and in slots side by side. At every step the solo row's logits must be
    within float noise of the slots row's; then it chooses from the slots row's floats, so everything after the
    model (penalties, filters, seeds, stops, UTF-8 guard, top-N, slides) must give exactly the same events."""
    c, specs, vocab = engine.request(prompt, cfg)
    results = []
    with torch.inference_mode():
        for spec in specs:
            solo, slots = (DecodeBatch(engine.model, n, engine.vocab.eot_id) for n in (1, MIN_ROWS))
            assert isinstance(solo.slots, Solo) and isinstance(slots.slots, Slots)
            for b in (solo, slots):
                b.add(None, [spec], c, vocab)
            while solo.busy or slots.busy:
                solo.admit(), slots.admit()
                a, b = solo.running[0], slots.running[0]
                torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
                a.logits = b.logits
                got, want = solo.step(), slots.step()
                assert got == want
            results.append(want[-1][1].result)
    return results


def test_every_request_works_solo(engine):
    ctx = engine.context_length
    slides = ("春眠不觉晓，" * 12, SampleConfig(temperature=1.0, min_new_tokens=ctx + 10, max_new_tokens=ctx + 10,
                                               seed=21))
    for prompt, cfg in [*REQUESTS, slides]:
        got = lockstep(engine, prompt, cfg)
        assert len(got) == cfg.num_samples and all(g.token_ids or g.finish_reason == "eos" for g in got)
    assert got[0].truncated_prompt


def test_the_samples_of_a_prompt_decode_one_after_another_in_a_solo_batch(engine):
    """A DecodeBatch of size 1 takes a request's rows in turn, all from the prompt's one prefill: each row as its
    own lone call gives it (both solo: the same kernels, so exactly)."""
    solo = Engine(engine.model, engine.tokenizer, record=engine.record)  # a lone call runs solo
    ctx = engine.context_length
    requests = [("今天", SampleConfig(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=30, num_samples=3,
                                    stop=["。"])),
                ("床前", SampleConfig(temperature=1.0, min_new_tokens=ctx, max_new_tokens=ctx, seed=40, num_samples=2))]
    got = run_batch(solo, requests, 1)  # the second request's rows slide, then the next one starts from the prefill
    for r, (prompt, cfg) in enumerate(requests):
        want = [solo.generate(prompt, dataclasses.replace(cfg, num_samples=1, seed=cfg.seed + k))[0]
                for k in range(cfg.num_samples)]
        assert [key(g) for g in got[r]] == [key(g) for g in want], r
        assert [g.score for g in got[r]] == [g.score for g in want], r
    assert all(g.truncated_prompt for g in got[1])


def test_an_engine_decodes_one_row_solo_and_several_in_slots(engine, monkeypatch):
    made = []

    class Spy(DecodeBatch):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(type(self.slots))

    monkeypatch.setattr(engine_module, "DecodeBatch", Spy)
    cfg = SampleConfig(temperature=1.0, max_new_tokens=3, seed=1)
    monkeypatch.setattr(engine, "batch_invariant", False)
    engine.generate("今天", cfg)
    list(engine.stream("今天", cfg))
    engine.chat([{"role": "user", "content": "讲个笑话"}], cfg)
    assert made == [Solo] * 3
    made.clear()
    engine.generate("今天", dataclasses.replace(cfg, num_samples=2))
    engine.generate(["今天", "床前"], cfg)
    monkeypatch.setattr(engine, "batch_invariant", True)
    engine.generate("今天", cfg)
    assert made == [Slots] * 3
    with pytest.raises(ValueError, match="at least 1 row"):
        DecodeBatch(engine.model, 0, 0)


@pytest.mark.parametrize("family, shape", [
    ("gpt2", {}), ("gpt2", {"pos_encoding": "sinusoidal", "mlp": "relu2", "bias": False, "norm": "rmsnorm"}),
    ("llama", {}), ("llama", {"n_kv_head": 4}), ("llama", {"n_kv_head": 1, "qk_norm": True})])
def test_decode_one_is_forward_for_one_token_of_one_row(family, shape):
    """GPT.decode_one, the solo step: forward's operations on forward's shapes, for every block layout (learned,
    sinusoidal and rotary positions, grouped-query attention, q/k norms)."""
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", family, vocab_size=300, context_length=48, n_layer=2, **shape)).eval()
    ids = torch.randint(0, 300, (1, 48))
    with torch.inference_mode():
        model.prepare_for_inference()
        a, b = model.new_kv_cache(1, 48), model.new_kv_cache(1, 48)
        model(ids[:, :7], kv_cache=a, pos=0)
        model(ids[:, :7], kv_cache=b, pos=0)
        for t in range(7, 48):
            want = model(ids[:, t: t + 1], kv_cache=a, pos=t, last_only=True)[0][:, -1]
            got = model.decode_one(int(ids[0, t]), b, t)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert b.length == 48
        with pytest.raises(ValueError, match="longer than context_length"):
            model.decode_one(1, b, 48)


def test_a_solo_row_told_too_few_new_tokens_grows_its_cache(engine):
    ids = [engine.vocab.eot_id, 5, 6, 7]
    with torch.inference_mode():
        small, whole = Solo(engine.model, 0), Solo(engine.model, 0)
        small.place(0, small.prefill(ids, new_tokens=1))
        whole.place(0, whole.prefill(ids))
        assert small.cache.max_len == len(ids) + 1 and whole.cache.max_len == engine.context_length
        for t in range(10):
            torch.testing.assert_close(small.step({0: 8 + t}), whole.step({0: 8 + t}), rtol=0, atol=1e-6)
        assert small.cache.max_len == engine.context_length
