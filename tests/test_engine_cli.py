"""`goushi sample` end to end on a tiny random run directory."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from goushi.cli import main
from goushi.cli.sample import SamplePrinter
from goushi.engine import Engine, Generation, SampleConfig, StreamEvent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_engine.py: tiny models on a busy 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(make_run):
    return make_run("bpe")


def test_sample_streams_the_same_text_as_the_engine(run, capsys):
    rc = main(["sample", str(run), "--prompt", "今天我终于", "--seed", "3", "--max-new-tokens", "12",
               "--top-p", "0.9", "--device", "cpu"])
    out, err = capsys.readouterr()
    g = Engine.load(run, device="cpu").generate("今天我终于", SampleConfig(seed=3, max_new_tokens=12, top_p=0.9))[0]
    assert rc == 0
    assert out == "今天我终于" + g.text + "\n"
    assert "seed 3" in err and "tokens" in err


@pytest.mark.parametrize("extra", [
    ["--strategy", "greedy"],
    ["--strategy", "beam", "--num-beams", "3", "--num-samples", "2", "--length-penalty", "0.5"],
    ["--temperature", "1.2", "--top-k", "5", "--min-p", "0.05", "--repetition-penalty", "1.3",
     "--no-repeat-ngram", "2", "--num-samples", "2", "--seed", "1", "--stop", "\\n", "--top-n", "3"],
])
def test_json_output_matches_engine(run, capsys, extra):
    rc = main(["sample", str(run), "--prompt", "床前", "--prompt", "", "--max-new-tokens", "8", "--json", *extra])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 2  # one JSON line per prompt
    first = json.loads(out[0])
    cfg = SampleConfig(**first["config"])  # the JSON records every setting, so the result can be reproduced
    assert cfg.stop in ([], ["\n"])
    expect = Engine.load(run, device="cpu").generate("床前", cfg)
    assert [g["text"] for g in first["generations"]] == [g.text for g in expect]
    assert [g["token_ids"] for g in first["generations"]] == [g.token_ids for g in expect]
    for g in first["generations"]:
        assert g["prompt"] == "床前" and g["finish_reason"] in ("length", "stop", "eos")
        assert len(g["steps"]) in (0, len(g["token_ids"]), len(g["token_ids"]) + 1)
    assert json.loads(out[1])["prompt"] == ""


def test_interactive_loop_ends_cleanly_on_eof(run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("今天\n床前明月光\n"))
    rc = main(["sample", str(run), "--interactive", "--strategy", "greedy", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.count("> ") == 3 and "今天" in out and "床前明月光" in out


@pytest.mark.parametrize("args,needle", [
    (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature"),
    (["--num-beams", "0", "--strategy", "beam"], "--num-beams"),
    (["--max-new-tokens", "100000"], "--max-new-tokens 100000: must be in [1, 4096]"),
    (["--top-k", "-2"], "--top-k"),
])
def test_bad_options_exit_2_with_one_line(run, capsys, args, needle):
    assert main(["sample", str(run), "--prompt", "x", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_not_a_run_directory_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model": {}}', encoding="utf-8")
    assert main(["sample", str(tmp_path), "--prompt", "x"]) == 2
    assert "missing model.safetensors, tokenizer.json" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_overflow_notice(make_run, capsys):
    run = make_run("char", context_length=16)
    assert main(["sample", str(run), "--prompt", "床前明月光，疑是地上霜。举头望明月", "--strategy", "greedy",
                 "--max-new-tokens", "20", "--min-new-tokens", "20"]) == 0
    assert "outgrew the model's context of 16 tokens" in capsys.readouterr().err


def one_stream(buf: io.StringIO) -> contextlib.ExitStack:
    """stdout and stderr into one buffer, to see headers, text and footers in the order a terminal shows them.
    (Inside the test: pytest's capturing puts its own sys.stdout back around fixtures.)"""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(buf))
    stack.enter_context(contextlib.redirect_stderr(buf))
    return stack


@pytest.mark.parametrize("extra", [["--seed", "5"], ["--strategy", "beam", "--num-beams", "3"]])
def test_several_samples_print_in_order_each_with_its_header_and_footer(run, extra):
    buf = io.StringIO()
    with one_stream(buf):
        rc = main(["sample", str(run), "--prompt", "今天我终于", "--num-samples", "3", "--max-new-tokens", "10",
                   "--device", "cpu", *extra])
    assert rc == 0
    out = buf.getvalue()
    beam = "beam" in extra
    cfg = SampleConfig(strategy="beam", num_beams=3, num_samples=3, max_new_tokens=10) if beam else \
        SampleConfig(seed=5, num_samples=3, max_new_tokens=10)
    gens = Engine.load(run, device="cpu").generate("今天我终于", cfg)
    at = 0
    for k, g in enumerate(gens):
        seed = "" if beam else f" (seed {5 + k})"
        block = f"--- sample {k + 1}/3{seed} ---\n今天我终于{g.text}\n[{len(g.token_ids)} tokens · "
        assert out.find(block, at) >= at, (block, out)
        at = out.find(block, at) + len(block)
        assert ("score" in out[at: out.index("]", at)]) == beam and (f"seed {5 + k}" in out[at:] or beam)


def _event(index: int, delta: str, finish: str | None = None) -> StreamEvent:
    result = Generation(prompt="p", text="", token_ids=[1], finish_reason=finish, seed=index) if finish else None
    return StreamEvent(delta, 1, finish_reason=finish, index=index, seed=index, result=result)


def test_the_first_sample_prints_live_and_later_ones_wait_their_turn():
    buf = io.StringIO()
    shown = SamplePrinter(None, "P", SampleConfig(num_samples=3))
    with one_stream(buf):
        shown.add(_event(0, "a"))
        shown.add(_event(1, "x"))
        shown.add(_event(2, "u", "eos"))
        assert buf.getvalue() == "--- sample 1/3 (seed 0) ---\nPa"  # rows 1 and 2 are held back
        shown.add(_event(1, "y", "length"))
        shown.add(_event(0, "b"))
        assert buf.getvalue().endswith("Pab")
        shown.add(_event(0, "c", "stop"))
    out = buf.getvalue()
    assert [line for line in out.splitlines() if not line.startswith("[")] == [
        "--- sample 1/3 (seed 0) ---", "Pabc", "--- sample 2/3 (seed 1) ---", "Pxy", "--- sample 3/3 (seed 2) ---", "Pu"]
