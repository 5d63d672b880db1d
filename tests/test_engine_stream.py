"""Engine.stream over several prompts and samples equals Engine.generate row by row; token counts for usage."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
import torch

import goushi.engine
from goushi.chat import ChatTemplate
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.tokenizer import Tokenizer
from test_engine import scripted_engine

PROMPTS = ["今天我终于", "", "龘靐 😀"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_engine.py: tiny models on a busy 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=["char", "bpe"])
def engine(request, make_run) -> Engine:
    return Engine.load(make_run(request.param), device="cpu")


def by_row(events) -> dict[int, list]:
    rows = defaultdict(list)
    for ev in events:
        rows[ev.index].append(ev)
    return dict(rows)


CONFIGS = {
    "greedy": SampleConfig(strategy="greedy", max_new_tokens=16, num_samples=2, top_n=3),
    "sample": SampleConfig(temperature=1.0, top_p=0.95, max_new_tokens=16, num_samples=3, seed=11, stop=["。"]),
    "beam": SampleConfig(strategy="beam", num_beams=3, num_samples=2, max_new_tokens=8),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stream_of_many_rows_equals_generate(engine, name):
    cfg = CONFIGS[name]
    gens = engine.generate(PROMPTS, cfg)
    rows = by_row(engine.stream(PROMPTS, cfg))
    n = cfg.num_samples
    assert len(gens) == len(PROMPTS) * n and sorted(rows) == list(range(len(gens)))
    for i, g in enumerate(gens):
        events = rows[i]
        assert g.prompt == PROMPTS[i // n]  # prompt-major: row = prompt_index * num_samples + k
        assert "".join(e.delta for e in events) == g.text
        assert [e.finish_reason for e in events] == [None] * (len(events) - 1) + [g.finish_reason]
        assert [e.result for e in events] == [None] * (len(events) - 1) + [g]
        assert {e.seed for e in events} == {g.seed}
        assert {e.prompt_tokens for e in events} == {g.prompt_tokens} == {engine.count_prompt_tokens(g.prompt)}
        if name == "beam":
            assert len(events) == 1 and g.seed is None
        else:
            assert [e.token_id for e in events if e.finish_reason != "eos"] == g.token_ids
            assert len(events) == g.completion_tokens  # one event per generated token, <|endoftext|> included
    if name == "sample":
        assert [g.seed for g in gens] == [11, 12, 13] * len(PROMPTS)
    else:
        assert all(g.seed is None for g in gens)


def test_stream_sample_k_equals_one_sample_with_seed_plus_k(engine, monkeypatch):
    monkeypatch.setattr(engine, "batch_invariant", True)  # sample k of 3 against a lone call: the same kernels
    cfg = SampleConfig(temperature=1.0, max_new_tokens=12, num_samples=3, seed=40)
    rows = by_row(engine.stream("今天", cfg))
    for k in range(3):
        alone = engine.generate("今天", dataclasses.replace(cfg, num_samples=1, seed=40 + k))[0]
        assert "".join(e.delta for e in rows[k]) == alone.text and rows[k][-1].result.token_ids == alone.token_ids
    unseeded = list(engine.stream("今天", dataclasses.replace(cfg, seed=None)))
    seeds = sorted({e.seed for e in unseeded})
    assert len(seeds) == 3 and seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]


def test_at_most_max_batch_rows_run_at_once_and_the_rest_join_as_rows_finish(engine, monkeypatch):
    cfg = SampleConfig(temperature=1.0, max_new_tokens=10, num_samples=2, seed=3)
    whole = engine.generate(PROMPTS, cfg)
    monkeypatch.setattr(goushi.engine, "MAX_BATCH_ROWS", 4)
    events = list(engine.stream(PROMPTS, cfg))
    running, most = set(), 0
    for e in events:  # a row runs from its first event to its last
        running.add(e.index)
        most = max(most, len(running))
        if e.result is not None:
            running.discard(e.index)
    assert most == 4 and events[0].index == 0 and set(running) == set()
    assert min(i for i, e in enumerate(events) if e.index == 4) > min(i for i, e in enumerate(events) if e.result)
    rows = by_row(events)
    assert ["".join(e.delta for e in rows[i]) for i in range(6)] == [g.text for g in whole]
    again = engine.generate(PROMPTS, cfg)  # generate takes the same turns
    assert [(g.text, g.token_ids, g.seed) for g in again] == [(g.text, g.token_ids, g.seed) for g in whole]


def test_options_are_checked_when_stream_is_called(engine):
    with pytest.raises(GoushiError, match="--top-p"):
        engine.stream(PROMPTS, SampleConfig(top_p=1.5))
    with pytest.raises(GoushiError, match="prompts"):
        engine.stream([], SampleConfig())
    with pytest.raises(GoushiError, match="prompts"):
        engine.stream(["ok", 3], SampleConfig())


def test_closing_a_stream_early_is_clean(engine):
    events = engine.stream(PROMPTS, SampleConfig(max_new_tokens=50, num_samples=2, seed=1))
    first = next(events)
    assert first.index == 0
    events.close()
    assert list(events) == []


# ---- token counts ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def char_tokenizer(make_run) -> Tokenizer:
    return Tokenizer.from_file(make_run("char") / "tokenizer.json")


def test_prompt_and_completion_tokens_on_a_scripted_model(char_tokenizer):
    tok = char_tokenizer
    eng, ids = scripted_engine(tok, "今天很好。明天")
    greedy = SampleConfig(strategy="greedy", max_new_tokens=40)
    g = eng.generate("", greedy)[0]
    assert (g.finish_reason, g.prompt_tokens, g.token_ids) == ("eos", 1, ids)  # <|endoftext|> alone
    assert g.completion_tokens == len(ids) + 1  # the <|endoftext|> it ended with was generated too
    g = eng.generate("", dataclasses.replace(greedy, max_new_tokens=3))[0]
    assert (g.finish_reason, g.completion_tokens) == ("length", 3)
    g = eng.generate("", dataclasses.replace(greedy, stop=["很"]))[0]
    assert (g.text, g.finish_reason, g.completion_tokens) == ("今天", "stop", 3)  # 很 was generated, then cut
    # (early_stopping off: with it, two hopeless hypotheses that end at once would end the search)
    b = eng.generate("", SampleConfig(strategy="beam", num_beams=2, max_new_tokens=40, early_stopping=False))[0]
    assert (b.prompt_tokens, b.completion_tokens) == (1, len(ids) + 1)


def test_prompt_tokens_count_the_leading_endoftext_and_ignore_the_context_window(make_run):
    eng = Engine.load(make_run("char", context_length=16), device="cpu")
    long_prompt = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert eng.count_prompt_tokens("") == 1
    assert eng.count_prompt_tokens("今天") == 1 + len(eng.tokenizer.encode("今天")) == 3
    assert eng.count_prompt_tokens(long_prompt) == 25 > eng.context_length == 16  # 24 characters + 1
    g = eng.generate([long_prompt, "今天"], SampleConfig(strategy="greedy", max_new_tokens=3))
    assert [x.prompt_tokens for x in g] == [25, 3] and g[0].truncated_prompt
    assert Engine.load(make_run("bpe"), device="cpu").count_prompt_tokens("今天") == 1 + len(
        Tokenizer.from_file(make_run("bpe") / "tokenizer.json").encode("今天"))


def test_an_engine_built_in_memory_has_no_run_info(make_run):
    loaded = Engine.load(make_run("char"), device="cpu")
    eng = Engine(loaded.model, loaded.tokenizer)
    assert eng.record is None and not eng.is_chat and eng.chat_template == ChatTemplate()
    assert eng.run_dir is None and eng.context_length == loaded.config.context_length
    assert loaded.record.model.context_length == loaded.context_length  # config.json, kept on the engine
