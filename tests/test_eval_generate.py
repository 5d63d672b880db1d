"""Generation metrics through the real Engine, and the memorisation rate on text known to be copied."""

from __future__ import annotations

import argparse
import json

import pytest

from goushi.data.textindex import TextIndex, TextIndexWriter
from goushi.engine import Engine, SampleConfig
from goushi.eval.metrics import evaluate_generation


def run_cli(argv: list[str]) -> int:
    from goushi.cli import eval as cli_eval

    parser = argparse.ArgumentParser(prog="goushi")
    cli_eval.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def greedy_run(make_run, tmp_path_factory):
    """A run whose 'training data' is exactly what it generates greedily, so every sample is a copy."""
    run = make_run()
    engine = Engine.load(run, device="cpu")
    cfg = SampleConfig(strategy="greedy", temperature=0.0, max_new_tokens=12, num_samples=1).validate()
    texts = [g.text for g in engine.generate(["今天", "春眠"], cfg)]
    assert all(len(t) >= 8 for t in texts)
    data = tmp_path_factory.mktemp("greedy_data")
    w = TextIndexWriter(data)
    for t in texts:
        w.add("前文" + t + "后文", "echo")
    w.close({"echo": {"license": "CC-BY-SA-4.0", "author": "the model"}})
    return run, engine, cfg, data, texts


def test_greedy_copies_are_fully_memorised(greedy_run):
    _, engine, cfg, data, texts = greedy_run
    res = evaluate_generation(engine, ["今天", "春眠"], cfg, index=TextIndex.load(data), min_chars=8)
    m = res["metrics"]
    assert m["memorisation_rate"] == pytest.approx(1.0)
    assert m["samples"] == 2 and m["prompts"] == 2 and m["mean_chars"] == pytest.approx(sum(map(len, texts)) / 2)
    s = res["samples"][0]
    assert s["prompt"] == "今天" and s["text"] == texts[0]
    assert s["copied"][0]["source_id"] == "echo" and s["copied"][0]["license"] == "CC-BY-SA-4.0"
    assert (s["copied"][0]["start"], s["copied"][0]["end"]) == (0, len(texts[0]))


def test_cli_generate_and_report_with_samples(greedy_run, tmp_path, capsys):
    run, _, _, data, _ = greedy_run
    run_copy = tmp_path / "run"
    run_copy.mkdir()
    for f in run.iterdir():
        (run_copy / f.name).write_bytes(f.read_bytes())
    prompts = tmp_path / "p.txt"
    prompts.write_text("今天\n\n春眠\n", encoding="utf-8")
    assert run_cli(["eval", str(run_copy), "--generate", "--prompts", str(prompts), "--samples", "2",
                    "--max-new-tokens", "4", "--data", str(data), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)["generate"]
    assert out["metrics"]["samples"] == 4 and 0 <= out["metrics"]["distinct_1"] <= 1
    assert "memorisation_rate" in out["metrics"]
    assert json.loads((run_copy / "eval.json").read_text(encoding="utf-8"))["generate"]["metrics"]["samples"] == 4
    assert "| distinct 2 |" in (run_copy / "MODEL_CARD.md").read_text(encoding="utf-8")
    # The report generates samples itself when eval.json has none.
    (run_copy / "eval.json").unlink()
    assert run_cli(["report", str(run_copy), "--prompts", str(prompts), "--samples", "2", "--data", str(data),
                    "--max-new-tokens", "4", "--device", "cpu"]) == 0
    page = (run_copy / "report.html").read_text(encoding="utf-8")
    assert page.count('<div class="sample">') == 2 and '<span class="prompt">春眠</span>' in page
