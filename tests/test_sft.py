"""Chat fine-tuning: rows and their loss mask, packing, bad rows, LoRA, exact resume, a tiny model that learns
to answer, the CLI (`goushi sft`, `--show-mask`) and what the chat run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from goushi import lora, rundir
from goushi.chat import CHATML
from goushi.checkpoint import load_run
from goushi.cli import main
from goushi.config import preset_config
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.model import GPT
from goushi.sft import SftOptions, read_chat_file, run_sft, sft_train_config
from goushi.sft.data import ChatData, fit_context, pack
from goushi.sft.run import load_chat_file
from goushi.tokenizer import Tokenizer
from goushi.train import IGNORE_INDEX, BatchSource, train
from run_files import read_config
from test_train import cfg_for, losses, make_data_dir, quiet, random_docs

PAIRS = [("讲个笑话", "今天我终于吃到了烤鸭"), ("写一条好评", "服务很好下次还来！"), ("写一条差评", "味道一般。")]
CTX = 96


def write_rows(path: Path, rows: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A briefly pre-trained tiny run whose tokenizer knows every character of PAIRS and the role names."""
    root = tmp_path_factory.mktemp("sft_base")
    extra = "".join(p + a for p, a in PAIRS) + "userassistantsystem\n你是段子手"
    docs = random_docs(200, 3)
    data = make_data_dir(root / "data", docs[:180], docs[180:], extra_chars=extra)
    run = root / "base"
    train(cfg_for(data, run, max_steps=20, eval_every=0, sample_tokens=0, model=dict(n_layer=2, n_head=2, n_embd=32,
                                                                                      context_length=CTX)),
          progress=False, log=quiet)
    return run


@pytest.fixture(scope="module")
def tok(base_run) -> Tokenizer:
    return Tokenizer.from_file(base_run)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    rows = [{"prompt": p, "response": a, "source": f"set{i % 2}"} for _ in range(30) for i, (p, a) in enumerate(PAIRS)]
    return write_rows(tmp_path_factory.mktemp("sft_data") / "pairs.jsonl", rows)


def sft_cfg(base: Path, out: Path, **kw):
    settings = dict(batch_size=8, eval_every=5, eval_batches=2, log_every=1, sample_tokens=0)
    settings.update(kw)
    return sft_train_config(str(base), str(out), settings)


# ---- rows and the mask ---------------------------------------------------------------------------------
def test_targets_are_exactly_the_answer_and_its_end_token(tmp_path, base_run, tok):
    f = write_rows(tmp_path / "one.jsonl", [{"system": "你是段子手", "prompt": "讲个笑话", "response": "今天我终于吃到了烤鸭"}] * 2)
    chat = read_chat_file(f, tok, CHATML, CTX)
    row = chat.rows[0]
    trained = [i for i, m in zip(row.ids, row.mask, strict=True) if m]
    assert tok.decode(trained[:-1]) == "今天我终于吃到了烤鸭" and trained[-1] == tok.token_to_id("<|im_end|>")
    first = row.mask.index(True)
    assert tok.decode(row.ids[:first]).endswith("<|im_start|>assistant\n")  # the boundary token is not trained
    assert not any(row.mask[first + len(trained):])  # nothing after the end token
    # In a batch, every loss-bearing target is the next input and exactly the trained ids.
    src = ChatData(chat, tok, CHATML, context=CTX, val_fraction=0.5, seed=0)
    x, y = src.train_batch(1, CTX, torch.Generator())
    ys = y[0][y[0] != IGNORE_INDEX].tolist()
    assert ys == trained
    pos = (y[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert all(x[0, p + 1] == y[0, p] for p in pos[:-1])


def test_multi_turn_rows_train_every_answer(tmp_path, tok):
    msgs = [{"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "今天我终于"},
            {"role": "user", "content": "写一条好评"}, {"role": "assistant", "content": "服务很好"}]
    f = write_rows(tmp_path / "mt.jsonl", [{"messages": msgs, "extra": 1}])
    (row,) = read_chat_file(f, tok, CHATML, CTX).rows
    runs, current = [], []
    for i, m in zip(row.ids, row.mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs.append(current) if current else None
    end = tok.token_to_id("<|im_end|>")
    assert [tok.decode(r[:-1]) for r in runs] == ["今天我终于", "服务很好"] and all(r[-1] == end for r in runs)


def test_bad_rows_are_named_with_their_line_and_skipped(tmp_path, tok):
    f = write_rows(tmp_path / "bad.jsonl", [
        {"prompt": "讲个笑话", "response": "今天我终于"},
        "{not json",
        {"messages": [{"role": "user", "content": "讲个笑话"}]},
        {"messages": [{"role": "assistant", "content": "你好"}, {"role": "user", "content": "讲个笑话"}]},
        {"prompt": "讲个笑话", "response": "   "},
        [1, 2],
        {"prompt": "讲个笑话", "response": "今" * 200},
        {"text": "no chat here"},
        {"messages": [{"role": "user", "content": "讲个笑话"}, {"role": "assistant", "content": "你好"},
                      {"role": "user", "content": "再讲一个"}]},
    ])
    chat = read_chat_file(f, tok, CHATML, CTX)
    assert [r.line for r in chat.rows] == [1]
    why = "\n".join(chat.problems)
    assert len(chat.problems) == 8
    for line, text in ((2, "not valid JSON"), (3, "no assistant turn"), (4, "roles out of order"),
                       (5, "content is empty"), (6, "expected a JSON object"), (7, "longer than the context"),
                       (8, "no \"messages\""), (9, "ends with a user message")):
        problem = next(p for p in chat.problems if f"bad.jsonl:{line}: " in p)
        assert text in problem, (line, why)
    with pytest.raises(GoushiError, match=r"bad.jsonl:2: not valid JSON.*--strict"):
        read_chat_file(f, tok, CHATML, CTX, strict=True)


def test_a_long_prompt_is_cut_from_the_left_and_the_answer_kept(tok):
    ids = [0] + list(range(10, 90)) + [5, 6, 7]
    mask = [False] * 81 + [True, True, True]
    cut_ids, cut_mask, cut = fit_context(ids, mask, 32, tok.eot_id)
    assert cut and len(cut_ids) == 33 and cut_ids[0] == tok.eot_id and cut_ids[-3:] == [5, 6, 7]
    assert cut_mask[-3:] == [True] * 3 and sum(cut_mask) == 3
    assert fit_context(ids[:20], mask[:20], 32, tok.eot_id)[2] is False


def test_packing_keeps_rows_whole_and_resumes_in_place(tmp_path, tok, pairs_file):
    chat = read_chat_file(pairs_file, tok, CHATML, CTX)
    lengths = [len(r.ids) for r in chat.rows]
    seqs = pack(chat.rows, list(range(len(chat.rows))), CTX + 1)
    assert sorted(i for s in seqs for i in s) == list(range(len(chat.rows)))
    assert all(sum(lengths[i] for i in s) <= CTX + 1 for s in seqs) and len(seqs) < len(chat.rows)
    src = ChatData(chat, tok, CHATML, context=CTX, val_fraction=0.1, seed=0)
    assert isinstance(src, BatchSource)
    for _ in range(3):
        src.train_batch(4, CTX, torch.Generator())
    state = src.state_dict()
    nxt = [src.train_batch(4, CTX, torch.Generator()) for _ in range(5)]  # crosses into the next epoch
    assert src.state_dict()["epoch"] >= 1 or src.sequences_per_epoch() > 32
    again = ChatData(chat, tok, CHATML, context=CTX, val_fraction=0.1, seed=0)
    again.load_state_dict(state)
    for a, b in zip(nxt, (again.train_batch(4, CTX, torch.Generator()) for _ in range(5)), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = nxt[0]
    assert (x[y == IGNORE_INDEX].numel() > 0) and src.count_tokens(y) == int((y != IGNORE_INDEX).sum())


def test_files_without_anything_to_learn_are_refused(tmp_path, tok):
    f = write_rows(tmp_path / "none.jsonl", ["{oops", {"messages": []}])
    with pytest.raises(GoushiError, match="0 usable row"):
        ChatData(read_chat_file(f, tok, CHATML, CTX), tok, CHATML, context=CTX, val_fraction=0.1, seed=0)
    with pytest.raises(GoushiError, match="file not found"):
        read_chat_file(tmp_path / "missing.jsonl", tok, CHATML, CTX)


# ---- LoRA ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_trains_few_parameters_and_merges_to_the_same_logits(family):
    torch.manual_seed(0)
    cfg = preset_config("tiny", family, vocab_size=300, n_layer=2, n_head=4, n_embd=64, context_length=32)
    model = GPT(cfg).eval()
    x = torch.randint(0, 300, (2, 16))
    before, _ = model(x)
    wrapped = lora.apply_lora(model, rank=4, alpha=8.0)
    assert wrapped == 2 * (4 + (3 if family == "llama" else 2))
    after_init, _ = model(x)
    assert torch.equal(before, after_init)  # B starts at zero: adapters change nothing yet
    assert lora.trainable_parameters(model) < 0.1 * sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.05)
    with_adapters, _ = model(x)
    plain = GPT(cfg).eval()
    sd = lora.plain_state_dict(model)
    plain.load_state_dict(sd, strict=True)
    merged, _ = plain(x)
    assert not torch.allclose(with_adapters, before, atol=1e-4)
    torch.testing.assert_close(merged, with_adapters, atol=1e-5, rtol=1e-5)


# ---- fine-tuning end to end --------------------------------------------------------------------------------
def test_sft_teaches_a_tiny_model_to_answer(tmp_path, base_run, pairs_file):
    out = tmp_path / "chat"
    s = run_sft(SftOptions(base=str(base_run), data=str(pairs_file), epochs=30, credit={"license": "CC0"}),
                sft_cfg(base_run, out, lr=3e-3, min_lr=3e-4, eval_every=0, warmup=5), progress=False, log=quiet)
    assert s["final_val_loss"] < 0.5
    engine = Engine.load(out, device="cpu")
    assert engine.is_chat
    greedy = SampleConfig(strategy="greedy", max_new_tokens=30)
    for prompt, answer in PAIRS:
        got = engine.chat([{"role": "user", "content": prompt}], greedy)[0]
        assert got.text == answer and got.finish_reason == "stop"
    info = read_config(out)
    assert info["chat_template"] == CHATML.to_dict() and info["sft"]["rows"] == 90
    assert info["base"]["run_dir"] == str(base_run.resolve())
    card = (out / rundir.MODEL_CARD).read_text(encoding="utf-8")
    assert "set0" in card and "CC0" in card and "Started from another model" in card


@pytest.mark.parametrize("rank", [0, 4])
def test_sft_resumes_exactly_and_saves_a_plain_run(tmp_path, base_run, pairs_file, rank):
    opts = SftOptions(base=str(base_run), data=str(pairs_file))
    whole = tmp_path / "whole"
    s = run_sft(opts, sft_cfg(base_run, whole, max_steps=8, lora_rank=rank), progress=False, log=quiet)
    if rank:
        assert s["trainable_parameters"] < 0.2 * s["parameters"]
    run = load_run(whole)  # strict load into a plain GPT: any adapters were merged
    assert not lora.has_lora(run.model)
    part = tmp_path / "part"
    stop = {"at": 4}

    def interrupt(step, _loss):
        if step == stop["at"]:
            raise KeyboardInterrupt

    s1 = train(sft_cfg(base_run, part, max_steps=8, lora_rank=rank), source=_source(opts), on_step=interrupt,
               progress=False, log=quiet)
    assert s1["stop_reason"] == "interrupted"
    cfg = sft_cfg(base_run, part, max_steps=8, lora_rank=rank)
    cfg.resume = True
    train(cfg, source=_source(opts), progress=False, log=quiet)
    assert losses(part) == pytest.approx(losses(whole), abs=1e-6)
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _source(opts: SftOptions) -> ChatData:
    chat, base, template = load_chat_file(opts, quiet)
    return ChatData(chat, base.tokenizer, template, context=CTX, val_fraction=opts.val_fraction, seed=1337,
                    base_data_dir=base.record.data.dir)


def test_cli_trains_and_resumes_a_chat_run(tmp_path, base_run, pairs_file, capsys):
    common = ["--data", str(pairs_file), "--batch-size", "8", "--eval-every", "3", "--sample-tokens", "0", "--no-progress"]
    part = tmp_path / "part"
    assert main(["sft", str(base_run), *common, "--max-steps", "3", "--out", str(part)]) == 0
    assert "goushi chat" in capsys.readouterr().out
    state = torch.load(part / rundir.STATE, weights_only=True)
    assert state["step"] == 3 and state["source"] == {"epoch": 0, "cursor": 24}  # 3 steps x 8 packed sequences
    assert main(["sft", "--out", str(part), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    assert [r["step"] for r in rundir.read_metrics(part) if "val_loss" in r] == [0, 3, 6]
    assert Engine.load(part, device="cpu").is_chat


def test_cli_show_mask_and_errors(tmp_path, base_run, pairs_file, capsys):
    assert main(["sft", "--show-mask", str(pairs_file), "--row", "2", "--base", str(base_run)]) == 0
    out = capsys.readouterr().out
    trained = [ln for ln in out.splitlines() if ln.rstrip().endswith("✓")]
    assert len(trained) == len("服务很好下次还来！") + 1 and "<|im_end|>" in trained[-1]
    assert "写" in out and "tokens trained" in out
    for argv, msg in (
        (["sft", "--show-mask", str(pairs_file), "--base", str(base_run)], "--row"),
        (["sft", "--show-mask", str(pairs_file), "--row", "999", "--base", str(base_run)], "no row on line 999"),
        (["sft", str(base_run), "--out", str(tmp_path / "x")], "--data"),
        (["sft", str(tmp_path), "--data", str(pairs_file), "--out", str(tmp_path / "x")], "not a run directory"),
        (["sft", str(base_run), "--data", str(pairs_file), "--out", str(tmp_path / "x"), "--epochs", "0"], "--epochs"),
        (["sft", "--out", str(base_run), "--resume"], "not a chat fine-tuning run"),
        (["sft", str(base_run), "--data", str(pairs_file), "--out", str(tmp_path / "x"), "--lora-rank", "999"],
         "larger than"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)
