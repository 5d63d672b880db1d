"""The compiled single-row decode step (goushi.generation.compiled): the same logits as GPT.decode_one to float
noise at every position, for every block layout; kept only when it measures faster; an Engine with
compile_decode decodes a lone row with it, and falls back to the eager step, saying why, when it is dropped."""

from __future__ import annotations

import pytest
import torch

from goushi.config import preset_config
from goushi.engine import Engine, SampleConfig
from goushi.generation import compiled as compiled_module
from goushi.generation.compiled import CompiledStep, supported
from goushi.model import GPT, KVCache
from goushi.tokenizer import Tokenizer

LAYOUTS = [
    ("gpt2", {}),
    ("llama", {"n_kv_head": 2}),  # rotary positions, RMSNorm, SwiGLU, grouped-query attention
    ("llama", {"qk_norm": True, "pos_encoding": "sinusoidal"}),
]


def small_gpt(family: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = preset_config("tiny", family, vocab_size=300, n_layer=2, n_embd=64, n_head=4, context_length=24, **kw)
    return GPT(cfg).eval()


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("family,kw", LAYOUTS)
def test_the_compiled_step_gives_decode_ones_logits_at_every_position(family, kw, monkeypatch):
    model = small_gpt(family, **kw)
    T = model.config.context_length
    monkeypatch.setattr(CompiledStep, "_time", lambda self, fn, steps: 1.0 if fn is self else 2.0)  # keep it
    with torch.inference_mode():
        model.prepare_for_inference()
        step, note = CompiledStep.build(model)  # the first options that pass its own check on this machine
        assert step is not None, note
        eager, comp = (KVCache(model.config, 1, T, "cpu", torch.float32) for _ in range(2))
        for pos in range(T):  # the whole window: the mask hides what is not written yet
            token = (pos * 37 + 5) % 300
            want, got = model.decode_one(token, eager, pos), step(token, comp, pos)
            assert got.shape == want.shape == (1, 300)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert comp.length == T
        torch.testing.assert_close(comp.kv[0], eager.kv[0], rtol=1e-5, atol=1e-5)  # it wrote the same keys/values
        with pytest.raises(ValueError, match="cache of 24 positions"):
            step(1, KVCache(model.config, 1, 8, "cpu", torch.float32), 0)


def test_models_it_cannot_run_are_refused_without_compiling(monkeypatch):
    monkeypatch.setattr(compiled_module.torch, "compile", lambda *a, **k: pytest.fail("compiled anyway"))
    training = small_gpt("gpt2").train()
    assert not supported(training)
    step, note = CompiledStep.build(training)
    assert step is None and "not this model" in note


@pytest.mark.slow
def test_an_engine_decodes_a_lone_row_with_it_and_drops_it_when_slower(monkeypatch):
    model = small_gpt("llama")
    tok = Tokenizer.train_char(["今天天气很好，我们去公园散步吧。春眠不觉晓，处处闻啼鸟。"])
    eager = Engine(small_gpt("llama"), tok)
    cfg = SampleConfig(strategy="greedy", max_new_tokens=30, min_new_tokens=30)
    want = eager.generate("今天", cfg)[0]

    calls = []
    original = CompiledStep.__call__

    def counting(self, token, cache, pos):
        calls.append(pos)
        return original(self, token, cache, pos)

    monkeypatch.setattr(CompiledStep, "__call__", counting)
    monkeypatch.setattr(CompiledStep, "_time", lambda self, fn, steps: 1.0 if fn is self else 2.0)  # "faster"
    fast = Engine(model, tok, compile_decode=True)
    fast.compiled_step()  # compiled, checked against the eager step and (stubbed) raced
    calls.clear()
    monkeypatch.setattr(model, "decode_one", lambda *a: pytest.fail("an eager step ran"))
    got = fast.generate("今天", cfg)[0]  # 2 + 30 tokens in a 24-token context: the window slides on the way
    assert fast.compile_note.startswith("compiled decode: on")
    assert len(calls) >= 25 and max(calls) == 23  # the row's steps, up to the context's last position
    # greedy on a random model: the same tokens unless two logits tie to float noise; compare the logits instead
    assert got.token_ids[:10] == want.token_ids[:10]

    monkeypatch.setattr(CompiledStep, "_time", lambda self, fn, steps: 2.0 if fn is self else 1.0)  # "slower"
    slow = Engine(small_gpt("llama"), tok, compile_decode=True)
    slow.compiled_step()
    calls.clear()
    assert slow.generate("今天", cfg)[0].token_ids == want.token_ids
    assert slow.compile_note.startswith("compiled decode: not used") and "0.50x" in slow.compile_note
    assert calls == []  # dropped: the row decoded eagerly (the race's timings are stubbed here)


def test_a_failed_compile_falls_back_to_the_eager_step(monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("no C++ compiler found\nmore")

    monkeypatch.setattr(compiled_module.torch, "compile", broken)
    step, note = CompiledStep.build(small_gpt("gpt2"))
    assert step is None and note == "compiled decode: not used (compiling failed: RuntimeError: no C++ compiler found)"


@pytest.mark.slow
def test_goushi_sample_compile_decode_says_whether_it_compiled(make_run, capsys, monkeypatch):
    from goushi.cli import main

    monkeypatch.setattr(CompiledStep, "_time", lambda self, fn, steps: 1.0 if fn is self else 2.0)
    run = make_run("char")
    args = ["sample", str(run), "--prompt", "今天", "--strategy", "greedy", "--max-new-tokens", "8", "--device", "cpu"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--compile-decode"]) == 0
    out, err = capsys.readouterr()
    assert "compiled decode: on (2.00x the eager step's speed here)" in err.splitlines()
    assert out[:4] == plain[:4]  # greedy: the same start (a random model's later tokens may tie to float noise)


def test_a_candidate_whose_logits_differ_is_passed_over(monkeypatch):
    """The check that caught NaN logits from cpp_wrapper + freezing under ATEN_CPU_CAPABILITY=avx2: a candidate
    is trusted only if it gives the eager step's logits; then the next set of options is tried."""
    made = []

    def check(self):
        made.append(self.options)
        return "its logits were not finite at position 0" if self.options.get("freezing") else ""

    monkeypatch.setattr(compiled_module.torch, "compile", lambda fn, **_kw: fn)  # no real compile needed here
    monkeypatch.setattr(CompiledStep, "_check", check)
    monkeypatch.setattr(CompiledStep, "_time", lambda self, fn, steps: 1.0 if fn is self else 2.0)
    step, note = CompiledStep.build(small_gpt("gpt2"))
    assert made == list(compiled_module.OPTION_SETS) and step.options == {"cpp_wrapper": True}
    assert note.startswith("compiled decode: on")
    monkeypatch.setattr(CompiledStep, "_check", lambda self: "its logits were not finite at position 0")
    step, note = CompiledStep.build(small_gpt("gpt2"))
    assert step is None and note == "compiled decode: not used (its logits were not finite at position 0)"


def test_the_check_compares_with_the_eager_step():
    """_check passes the uncompiled step function (the same arithmetic) and fails one whose logits are off."""
    model = small_gpt("llama")
    with torch.inference_mode():
        model.prepare_for_inference()
        step = CompiledStep.__new__(CompiledStep)
        step.model, step.context, step.options = model, model.config.context_length, {}
        step._fn = compiled_module._step_fn(model)
        assert step._check() == ""
        bad = CompiledStep.__new__(CompiledStep)
        bad.model, bad.context, bad.options = model, model.config.context_length, {}
        bad._fn = lambda token, pos, kvs: step._fn(token, pos, kvs) * 1.01 + 1.0
        assert bad._check().startswith("its logits differed from the eager step's by")
