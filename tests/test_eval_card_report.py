"""Model card (sources, licence warnings, evaluation), HTML report, and `goushi eval` on a real run directory."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from goushi.checkpoint import save_weights
from goushi.config import param_counts, preset_config
from goushi.data.textindex import TextIndexWriter
from goushi.errors import GoushiError
from goushi.eval.report import markdown_to_html, write_report
from goushi.model import GPT
from goushi.model_card import license_class, refresh_model_card, write_model_card
from goushi.rundir import read_metrics
from goushi.rundir import save_eval as save_eval_results
from goushi.tokenizer import Tokenizer
from run_files import write_config

DOCS = ["疯狂星期四，谁请我吃肯德基？v我50。", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]
META = {
    "tokenizer_kind": "char", "train_tokens": 1234, "val_tokens": 56,
    "sources": {
        "kfc": {"docs": 10, "chars": 600, "share": 0.6, "license": "MIT", "author": "网友", "url": "https://e.org/kfc"},
        "hitokoto": {"docs": 5, "chars": 300, "share": 0.3, "license": "AGPL-3.0", "author": "", "url": "https://hitokoto.cn"},
        "tuwei": {"docs": 2, "chars": 100, "share": 0.1, "license": "", "author": "", "url": ""},
    },
}
SUMMARY = {"steps": 120, "tokens": 61440, "seconds": 75.2, "device": "cpu", "hardware": "2 CPU cores (x86_64), torch 2.13.0",
           "final_val_loss": 5.1, "final_val_bpc": 7.4}


def cfg():
    return preset_config("tiny", vocab_size=300, n_layer=2, n_head=2, n_embd=32, context_length=16)


@pytest.mark.parametrize("lic,kind", [
    ("MIT", "permissive"), ("CC0-1.0", "permissive"), ("CC-BY-4.0", "permissive"), ("ODC-By", "permissive"),
    ("AGPL-3.0", "copyleft"), ("GPL-2.0-or-later", "copyleft"), ("CC-BY-SA-4.0", "copyleft"),
    ("LGPL-3.0", "weak-copyleft"), ("CC BY-NC 4.0", "non-commercial"), ("CC-BY-ND-4.0", "no-derivatives"),
    ("", "unknown"), ("unknown", "unknown"), ("Anti-996", "other"),
])
def test_license_classes(lic, kind):
    assert license_class(lic) == kind


def test_model_card_lists_every_source_and_warns(tmp_path):
    path = write_model_card(tmp_path, model_config=cfg(), train_summary=SUMMARY, data_meta=META)
    card = path.read_text(encoding="utf-8")
    for sid, s in META["sources"].items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {sid} |"))
        assert f"{s['share']:.1%}" in row and (s["license"] or "unknown") in row
    warnings = card.split("## Licence warnings")[1].split("##")[0]
    assert "`hitokoto`" in warnings and "copyleft" in warnings and "network" in warnings
    assert "`tuwei`" in warnings and "unknown licence" in warnings
    assert "`kfc`" not in warnings
    assert f"{param_counts(cfg())['total']:,}" in card
    assert "| final val bits/char | 7.4 |" in card and "1m 15s" in card and "CPU cores" in card
    assert "imitates the **style**" in card and "Not evaluated yet" in card
    json.loads((tmp_path / "model_card.json").read_text(encoding="utf-8"))


def test_permissive_only_card_has_no_warnings_and_no_meta_card_says_so(tmp_path):
    meta = {"sources": {"poems": {"share": 1.0, "license": "MIT"}}}
    card = write_model_card(tmp_path, model_config=cfg().to_dict(), train_summary={}, data_meta=meta).read_text("utf-8")
    assert "None: every source is under a permissive licence" in card
    card = write_model_card(tmp_path, model_config=cfg(), train_summary={}, data_meta={}).read_text("utf-8")
    assert "No data sources recorded" in card


def test_eval_results_reach_the_card(tmp_path):
    write_model_card(tmp_path, model_config=cfg(), train_summary=SUMMARY, data_meta=META)
    save_eval_results(tmp_path, "text", {"overall": {"bpc": 6.25, "bpb": 2.1, "loss": 4.3, "ppl": 73.7, "tokens": 90,
                                                     "chars": 88}, "files": {"/x/held.txt": {"bpc": 6.25}},
                                         "uniform_loss": math.log(300)})
    save_eval_results(tmp_path, "generate", {"metrics": {"distinct_1": 0.5, "memorisation_rate": float("nan")}})
    ev = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert ev["generate"]["metrics"]["memorisation_rate"] is None  # NaN is not JSON
    card = refresh_model_card(tmp_path).read_text(encoding="utf-8")
    assert "| held.txt | 6.2500 |" in card and "| distinct 1 | 0.5000 |" in card
    assert "| tuwei |" in card  # the rebuild kept the sources


def test_markdown_renderer_escapes_and_builds_tables():
    html = markdown_to_html("# T\n\n| a | b \\| c |\n|---|---|\n| <x> | **y** |\n\n- `z`\n- w\n\npara\nline")
    assert "<h2>T</h2>" in html and "<th>b | c</th>" in html and "<td>&lt;x&gt;</td>" in html
    assert "<strong>y</strong>" in html and "<li><code>z</code></li>" in html and "<p>para line</p>" in html


def test_report_embeds_curves_samples_and_card(tmp_path):
    write_model_card(tmp_path, model_config=cfg(), train_summary=SUMMARY, data_meta=META)
    rows = [{"step": s, "loss": 6 - s / 10, "lr": 1e-3} for s in range(10)] + [{"step": 9, "val_loss": 5.2, "val_bpc": 7.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + '\n{"step": 10, "lo', encoding="utf-8")
    assert len(read_metrics(tmp_path)) == 11  # a line cut off by a crash is skipped
    span = {"start": 3, "end": 7, "text": "明月光，", "source_id": "tang", "author": "李白", "url": "", "license": "MIT",
            "doc_index": 0, "count": 1}
    save_eval_results(tmp_path, "generate", {"metrics": {"distinct_1": 0.9},
                                             "samples": [{"prompt": "床前", "text": "<i>明月光，哈", "copied": [span]}]})
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page and "http" not in page.split("<body>")[1].split("Model card")[0]
    assert '<span class="prompt">床前</span>&lt;i&gt;<mark class="copied" title="copied from tang · 李白 · MIT' in page
    assert "hitokoto" in page and "AGPL-3.0" in page
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A run directory as `goushi train` leaves it, with a data dir (val.jsonl + provenance) recorded."""
    data = tmp_path / "data"
    w = TextIndexWriter(data)
    w.add(DOCS[0], "kfc")
    w.close({"kfc": META["sources"]["kfc"]})
    (data / "val.jsonl").write_text(json.dumps({"text": DOCS[1], "source": "kfc"}, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    tok = Tokenizer.train_char(DOCS)
    tok.save(run / "tokenizer.json")
    torch.manual_seed(0)
    mc = preset_config("tiny", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, context_length=16)
    save_weights(run / "model.safetensors", GPT(mc))
    write_config(run, {"model": mc.to_dict(), "train": {}, "data": {"dir": str(data), "meta": META}})
    write_model_card(run, model_config=mc, train_summary=SUMMARY, data_meta=META)
    return run


def run_cli(argv: list[str]) -> int:
    from goushi.cli import eval as cli_eval

    parser = argparse.ArgumentParser(prog="goushi")
    cli_eval.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_json_saves_results_and_updates_the_card(run_dir, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text(DOCS[1] + "\n\n" + DOCS[0] * 3, encoding="utf-8")  # the second document is longer than 16 tokens
    assert run_cli(["eval", str(run_dir), "--text", str(held), "--json", "--context-stride", "4", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    r = out["files"][str(held)]
    assert set(r) >= {"loss", "ppl", "bpc", "bpb", "tokens", "chars"}
    assert r["chars"] == len(DOCS[1]) + 3 * len(DOCS[0]) and out["overall"]["tokens"] == r["tokens"]
    assert out["stride"] == 4 and 0 < r["bpc"] < 20
    saved = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert saved["text"]["overall"]["bpc"] == pytest.approx(out["overall"]["bpc"])
    assert f"| held.txt | {r['bpc']:.4f} |" in (run_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    # Without --text the data's val.jsonl is scored.
    assert run_cli(["eval", str(run_dir), "--device", "cpu"]) == 0
    assert "val.jsonl" in capsys.readouterr().out


def test_cli_eval_refuses_what_it_cannot_do(run_dir, tmp_path):
    with pytest.raises(GoushiError, match="--generate needs --prompts"):
        run_cli(["eval", str(run_dir), "--generate"])
    with pytest.raises(GoushiError, match="not a run directory|no such run directory"):
        run_cli(["eval", str(tmp_path / "nope"), "--text", "x.txt"])
    with pytest.raises(GoushiError, match="x.txt: file not found"):
        run_cli(["eval", str(run_dir), "--text", str(tmp_path / "x.txt"), "--device", "cpu"])


def test_cli_report_without_samples(run_dir, capsys):
    assert run_cli(["report", str(run_dir), "--samples", "0"]) == 0
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>Model card: run</h2>" in page and "No samples" in page
