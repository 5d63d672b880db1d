"""Preference tuning (DPO): the loss against a hand computation, LoRA's reference (adapters off), preference rows in
TRL's formats and their masks, bad rows, a tiny chat run that learns a preference, exact resume, the CLI
(`goushi dpo`, `--show-mask`) and what the tuned run records."""

from __future__ import annotations

import copy
import json
import math
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
from goushi.model import GPT, IGNORE_INDEX
from goushi.run_record import RunRecord
from goushi.sft import SftOptions, run_sft, sft_train_config
from goushi.sft.dpo import DpoObjective, Reference, answer_logps
from goushi.sft.dpo_run import DpoOptions, dpo_train_config, load_pref_file, run_dpo
from goushi.sft.prefs import PrefData, read_pref_file
from goushi.tokenizer import Tokenizer
from goushi.train import train
from run_files import read_config
from test_sft import write_rows
from test_train import cfg_for, losses, make_data_dir, quiet, random_docs

GOOD, BAD = "服务很好下次还来！", "味道一般。"
ASK_GOOD, ASK_BAD = "写一条好评", "写一条差评"
CTX = 96


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A tiny pre-trained run, briefly chat fine-tuned on both requests (answering each with either review)."""
    root = tmp_path_factory.mktemp("dpo_chat")
    extra = GOOD + BAD + ASK_GOOD + ASK_BAD + "讲个笑话今天我终于userassistantsystem\n你是段子手"
    docs = random_docs(200, 3)
    data = make_data_dir(root / "data", docs[:180], docs[180:], extra_chars=extra)
    base = root / "base"
    train(cfg_for(data, base, max_steps=20, eval_every=0, sample_tokens=0,
                  model=dict(n_layer=2, n_head=2, n_embd=32, context_length=CTX)), progress=False, log=quiet)
    rows = [{"prompt": p, "response": a, "source": "chat-set"} for p in (ASK_GOOD, ASK_BAD) for a in (GOOD, BAD)]
    chat = write_rows(root / "chat.jsonl", rows * 10)
    out = root / "chat"
    run_sft(SftOptions(base=str(base), data=str(chat), credit={"license": "CC0"}),
            sft_train_config(str(base), str(out), dict(batch_size=8, max_steps=15, eval_every=0, sample_tokens=0,
                                                       lr=3e-3, min_lr=3e-4, warmup=3)), progress=False, log=quiet)
    return out


@pytest.fixture(scope="module")
def tok(chat_run) -> Tokenizer:
    return Tokenizer.from_file(chat_run)


@pytest.fixture(scope="module")
def prefs_file(tmp_path_factory) -> Path:
    # One request: the two-layer test model learns the preference in seconds (telling 好评 from 差评 apart and
    # answering each its own way takes it far longer).
    rows = [{"prompt": ASK_GOOD, "chosen": GOOD, "rejected": BAD, "source": "prefs-set"}] * 40
    return write_rows(tmp_path_factory.mktemp("dpo_data") / "prefs.jsonl", rows)


def dpo_cfg(base: Path, out: Path, **kw):
    settings = dict(batch_size=4, eval_every=5, eval_batches=2, log_every=1, sample_tokens=0)
    settings.update(kw)
    return dpo_train_config(str(base), str(out), settings)


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset_config("tiny", "gpt2", 40, n_layer=1, n_head=2, n_embd=16, context_length=16)).eval()


class CopyReference(Reference):
    """A reference that is another model in memory (for checking the arithmetic)."""

    def __init__(self, model: GPT):
        super().__init__("unused")
        self.copy = model

    def logits(self, model, x):
        with torch.no_grad():
            return self.copy(x)[0]


def preference(run_dir: Path) -> float:
    """log p(GOOD) - log p(BAD) answering ASK_GOOD, by the run's saved weights."""
    run = load_run(run_dir)
    x, y = PrefData(read_pref_file(write_rows(run_dir.parent / "one.jsonl", [
        {"prompt": ASK_GOOD, "chosen": GOOD, "rejected": BAD}] * 2), run.tokenizer, CHATML, CTX), run.tokenizer, CHATML,
        context=CTX, val_fraction=0.5, seed=0, beta=0.1, reference="").train_batch(1, CTX, torch.Generator())
    with torch.no_grad():
        good, bad = answer_logps(run.model(x)[0], y).tolist()
    return good - bad


# ---- the loss -----------------------------------------------------------------------------------------
def test_loss_and_metrics_match_a_hand_computation():
    policy, ref = tiny_gpt(0), tiny_gpt(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (4, 10), generator=g)  # rows: chosen 0, rejected 0, chosen 1, rejected 1
    y = torch.full((4, 10), IGNORE_INDEX)
    spans = [(3, 7), (4, 10), (2, 5), (6, 9)]  # each row's answer targets, of different lengths
    for r, (a, b) in enumerate(spans):
        y[r, a:b] = torch.randint(0, 40, (b - a,), generator=g)
    beta = 0.3

    def by_hand(model: GPT) -> list[float]:
        logits = model(x)[0].double()
        out = []
        for r, (a, b) in enumerate(spans):
            total = 0.0
            for t in range(a, b):
                row = [float(v) for v in logits[r, t]]
                top = max(row)
                log_z = top + math.log(sum(math.exp(v - top) for v in row))
                total += row[int(y[r, t])] - log_z
            out.append(total)
        return out

    with torch.no_grad():
        pol, rf = by_hand(policy), by_hand(ref)
    assert answer_logps(policy(x)[0], y).tolist() == pytest.approx(pol, abs=1e-4)
    rewards = [beta * (p - q) for p, q in zip(pol, rf, strict=True)]
    margins = [rewards[0] - rewards[1], rewards[2] - rewards[3]]
    want = sum(math.log1p(math.exp(-m)) for m in margins) / 2  # -log sigmoid(m)
    objective = DpoObjective(beta, CopyReference(ref))
    loss = objective.loss(policy, policy, x, y)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    loss.backward()  # gradients reach the policy only
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    assert all(p.grad is None for p in ref.parameters())

    sums = objective.eval_sums(policy, iter([(x, y)]), torch.no_grad, torch.device("cpu"))
    rec = objective.eval_record(sums)
    assert rec["val_loss"] == pytest.approx(want, abs=1e-5)
    assert rec["val_reward_margin"] == pytest.approx(sum(margins) / 2, abs=1e-5)
    assert rec["val_reward_chosen"] == pytest.approx((rewards[0] + rewards[2]) / 2, abs=1e-5)
    assert rec["val_pref_accuracy"] == sum(m > 0 for m in margins) / 2
    with torch.no_grad():  # KL(policy || reference) summed over the vocabulary, averaged over answer positions
        lp, lr = policy(x)[0].double().log_softmax(-1), ref(x)[0].double().log_softmax(-1)
        kl = [float((lp[r, t].exp() * (lp[r, t] - lr[r, t])).sum()) for r, (a, b) in enumerate(spans) for t in range(a, b)]
    assert rec["val_kl"] == pytest.approx(sum(kl) / len(kl), abs=1e-5)


def test_rpo_adds_the_chosen_answers_mean_token_nll():
    """RPO (TRL's rpo_alpha): the DPO loss plus alpha times the mean next-token loss of the chosen answers' tokens
    (even rows), and val_loss is that sum, so the best step is the one training aims at."""
    policy, ref = tiny_gpt(0), tiny_gpt(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 40, (4, 10), generator=g)
    y = torch.full((4, 10), IGNORE_INDEX)
    for r, (a, b) in enumerate([(3, 7), (4, 10), (2, 5), (6, 9)]):  # chosen rows have 4 and 3 answer tokens
        y[r, a:b] = torch.randint(0, 40, (b - a,), generator=g)
    plain, rpo = DpoObjective(0.1, CopyReference(ref)), DpoObjective(0.1, CopyReference(ref), rpo_alpha=0.5)
    with torch.no_grad():
        chosen = answer_logps(policy(x)[0], y)[0::2].sum().item()
        dpo = plain.loss(policy, policy, x, y).item()
        assert rpo.loss(policy, policy, x, y).item() == pytest.approx(dpo + 0.5 * -chosen / 7, abs=1e-5)
    rec = rpo.eval_record(rpo.eval_sums(policy, iter([(x, y)]), torch.no_grad, torch.device("cpu")))
    assert rec["val_dpo_loss"] == pytest.approx(dpo, abs=1e-5)
    assert rec["val_nll_chosen"] == pytest.approx(-chosen / 7, abs=1e-5)
    assert rec["val_loss"] == pytest.approx(dpo + 0.5 * -chosen / 7, abs=1e-5)
    assert "chosen NLL" in rpo.describe(rec) and "chosen NLL" not in plain.describe(rec)
    with pytest.raises(ValueError, match="rpo_alpha"):
        DpoObjective(0.1, CopyReference(ref), rpo_alpha=-1)


def test_with_lora_the_reference_is_the_model_with_its_adapters_off():
    plain = tiny_gpt(0)
    model = copy.deepcopy(plain)
    lora.apply_lora(model, 2, 4.0)
    x = torch.randint(0, 40, (2, 8))
    y = torch.full((2, 8), IGNORE_INDEX)
    y[:, 4:] = torch.randint(0, 40, (2, 4))
    objective = DpoObjective(0.1, Reference(None))
    # Adapters start at zero: the policy is the reference, the loss ln 2 and every reward 0.
    assert objective.loss(model, model, x, y).item() == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.normal_()
        ref = objective.reference.logits(model, x)
        assert torch.allclose(ref, plain(x)[0], atol=1e-6)  # the frozen base weights alone
        assert not torch.allclose(model(x)[0], ref, atol=1e-3)  # and the adapters are back on afterwards
    assert objective.reference.copy is None  # no second model was made


# ---- rows ---------------------------------------------------------------------------------------------
def test_every_row_format_gives_the_same_pair_and_only_the_last_answer_is_scored(tmp_path, tok):
    user = {"role": "user", "content": ASK_GOOD}
    good, bad = {"role": "assistant", "content": GOOD}, {"role": "assistant", "content": BAD}
    f = write_rows(tmp_path / "formats.jsonl", [
        {"prompt": ASK_GOOD, "chosen": GOOD, "rejected": BAD},
        {"messages": [user], "chosen": GOOD, "rejected": BAD},
        {"prompt": [user], "chosen": [good], "rejected": [bad]},
        {"chosen": [user, good], "rejected": [user, bad]},
        {"prompt": ASK_GOOD, "completion": GOOD, "label": True, "date": "2026-12-06"},
        {"prompt": ASK_GOOD, "completion": BAD, "label": False},
    ])
    prefs = read_pref_file(f, tok, CHATML, CTX)
    assert not prefs.problems and [r.line for r in prefs.rows] == [1, 2, 3, 4, 5]
    first = prefs.rows[0]
    assert all(r.chosen.ids == first.chosen.ids and r.rejected.ids == first.rejected.ids for r in prefs.rows)
    end = tok.token_to_id("<|im_end|>")
    for side, text in ((first.chosen, GOOD), (first.rejected, BAD)):
        scored = side.answer_ids
        assert tok.decode(scored[:-1]) == text and scored[-1] == end
        assert tok.decode(side.ids[:side.mask.index(True)]).endswith("<|im_start|>assistant\n")
    # A multi-turn prompt: its earlier answer is read, not scored.
    f2 = write_rows(tmp_path / "mt.jsonl", [{"messages": [{"role": "user", "content": "讲个笑话"},
                                                           {"role": "assistant", "content": "今天我终于"}, user],
                                             "chosen": GOOD, "rejected": BAD, "system": "你是段子手"}])
    (row,) = read_pref_file(f2, tok, CHATML, CTX).rows
    assert tok.decode(row.chosen.answer_ids[:-1]) == GOOD and row.prompt[0]["role"] == "system"
    # A batch: chosen and rejected interleaved, targets exactly the scored ids.
    src = PrefData(prefs, tok, CHATML, context=CTX, val_fraction=0.2, seed=0, beta=0.1, reference="r")
    x, y = src.train_batch(2, CTX, torch.Generator())
    assert x.shape[0] == 4 and x.shape[1] == len(first.chosen.ids) - 1  # padded to the longest row, not the context
    assert y[0][y[0] != IGNORE_INDEX].tolist() == first.chosen.answer_ids
    assert y[1][y[1] != IGNORE_INDEX].tolist() == first.rejected.answer_ids


def test_a_pair_and_its_mirror_stay_on_one_side_of_the_split(tmp_path, tok):
    """reviews-prefs asks for both kinds with each two reviews: held out together, or a held-out pair's mirror
    would train (a model that ignores the request then scores below chance on the held-out pairs)."""
    answers = ["服务很好", "味道一般", "下次还来", "今天我终于", "讲个笑话", "你是段子手"]
    rows = []
    for i in range(0, 6, 2):
        for j in range(1, 6, 2):
            a, b = answers[i], answers[j]
            rows += [{"prompt": ASK_GOOD, "chosen": a, "rejected": b}, {"prompt": ASK_BAD, "chosen": b, "rejected": a}]
    prefs = read_pref_file(write_rows(tmp_path / "mirrored.jsonl", rows), tok, CHATML, CTX)
    for seed in range(5):
        src = PrefData(prefs, tok, CHATML, context=CTX, val_fraction=0.3, seed=seed, beta=0.1, reference="r")
        assert len(src.val_pairs) == 6 and len(src.train_pairs) == 12
        held = {frozenset((prefs.rows[i].chosen.text, prefs.rows[i].rejected.text)) for i in src.val_pairs}
        trained = {frozenset((prefs.rows[i].chosen.text, prefs.rows[i].rejected.text)) for i in src.train_pairs}
        assert not held & trained


def test_bad_rows_are_named_with_their_line_and_skipped_or_refused(tmp_path, tok):
    f = write_rows(tmp_path / "bad.jsonl", [
        {"prompt": ASK_GOOD, "chosen": GOOD, "rejected": BAD},
        {"prompt": ASK_GOOD, "chosen": GOOD, "rejected": GOOD},
        "{not json",
        {"prompt": ASK_GOOD, "chosen": GOOD},
        {"prompt": ASK_GOOD, "chosen": "  ", "rejected": BAD},
        {"messages": [{"role": "user", "content": ASK_GOOD}, {"role": "assistant", "content": GOOD}],
         "chosen": GOOD, "rejected": BAD},
        {"prompt": ASK_GOOD, "completion": GOOD, "label": "yes"},
        {"prompt": ASK_BAD, "completion": BAD, "label": True},
        {"prompt": ASK_GOOD, "chosen": GOOD + "今" * 200, "rejected": BAD},
        [1, 2],
    ])
    prefs = read_pref_file(f, tok, CHATML, CTX)
    assert [r.line for r in prefs.rows] == [1]
    assert [p.split(": ", 1)[0] for p in prefs.problems] == [f"{f}:{n}" for n in (2, 3, 4, 5, 6, 7, 9, 10)]
    why = "\n".join(prefs.problems)
    for text in ("same answer", "not valid JSON", "no \"rejected\"", "\"chosen\" is empty", "end with the user",
                 "\"label\" must be true", "longer than the context", "expected a JSON object"):
        assert text in why, text
    assert prefs.unpaired == 1  # a 👍 without a 👎 for its prompt waits
    with pytest.raises(GoushiError, match=rf"{f.name}:2: .*same answer.*drop --strict"):
        read_pref_file(f, tok, CHATML, CTX, strict=True)
    with pytest.raises(GoushiError, match="at least 2"):
        PrefData(prefs, tok, CHATML, context=CTX, val_fraction=0.1, seed=0, beta=0.1, reference="r")


# ---- training -----------------------------------------------------------------------------------------
def test_dpo_teaches_a_chat_run_the_preference_and_records_it(tmp_path, chat_run, prefs_file):
    out = tmp_path / "dpo"
    s = run_dpo(DpoOptions(base=str(chat_run), data=str(prefs_file), epochs=4, credit={"license": "CC-BY-4.0"}),
                dpo_cfg(chat_run, out, lr=2e-3, min_lr=2e-4, warmup=2, eval_every=10), progress=False, log=quiet)
    evals = [r for r in rundir.read_metrics(out) if "val_loss" in r]
    start, end = evals[0], evals[-1]
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert start["val_reward_margin"] == pytest.approx(0, abs=1e-5) and start["val_kl"] == pytest.approx(0, abs=1e-6)
    assert end["val_loss"] < 0.3 and end["val_pref_accuracy"] == 1.0 and end["val_reward_margin"] > 1
    assert end["val_kl"] > 0 and s["final_val_pref_accuracy"] == 1.0 and s["dpo_beta"] == 0.1
    # The saved weights prefer the chosen answer more than the chat run does, and answer as a chat run.
    assert preference(out) > preference(chat_run) + 1
    engine = Engine.load(out, device="cpu")
    assert engine.is_chat and engine.chat([{"role": "user", "content": ASK_GOOD}], SampleConfig(max_new_tokens=5))
    info = read_config(out)
    assert info["dpo"]["pairs"] == 40 and info["dpo"]["beta"] == 0.1 and "frozen copy" in info["dpo"]["reference"]
    assert info["base"]["run_dir"] == str(chat_run.resolve()) and info["model"]["dropout"] == 0.0
    assert RunRecord.from_dict(info).is_chat
    card = (out / rundir.MODEL_CARD).read_text(encoding="utf-8")
    for text in ("prefs-set", "CC-BY-4.0", "| chat-set |", "| test |", "final val pref accuracy"):
        assert text in card, text


def _train(opts: DpoOptions, out: Path, rank: int, *, resume: bool = False, on_step=None) -> dict:
    """run_dpo's pieces by hand, so a test can stop the run with on_step."""
    prefs, base, template = load_pref_file(opts, quiet)
    ref = Reference(None if rank else opts.base)
    source = PrefData(prefs, base.tokenizer, template, context=CTX, val_fraction=0.05, seed=1337, beta=opts.beta,
                      reference=ref.name, base_data_dir=base.record.data.dir)
    cfg = dpo_cfg(Path(opts.base), out, max_steps=8, lora_rank=rank)
    cfg.resume = resume
    return train(cfg, source=source, on_step=on_step, progress=False, log=quiet, objective=DpoObjective(opts.beta, ref))


@pytest.mark.parametrize("rank", [0, 4])
def test_dpo_resumes_exactly_and_saves_a_plain_run(tmp_path, chat_run, prefs_file, rank):
    opts = DpoOptions(base=str(chat_run), data=str(prefs_file))
    whole = tmp_path / "whole"
    s = run_dpo(opts, dpo_cfg(chat_run, whole, max_steps=8, lora_rank=rank), progress=False, log=quiet)
    if rank:
        assert s["trainable_parameters"] < 0.2 * s["parameters"] and "adapters" in s["reference"]
    assert not lora.has_lora(load_run(whole).model)

    def interrupt(step, _loss):
        if step == 4:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    assert _train(opts, part, rank, on_step=interrupt)["stop_reason"] == "interrupted"
    _train(opts, part, rank, resume=True)
    assert losses(part) == pytest.approx(losses(whole), abs=1e-6)
    def margins(run: Path) -> dict[int, float]:
        return {r["step"]: r["val_reward_margin"] for r in rundir.read_metrics(run) if "val_loss" in r}

    assert margins(part) == pytest.approx(margins(whole), abs=1e-6)
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---- the command --------------------------------------------------------------------------------------
def test_cli_trains_resumes_and_shows_the_mask(tmp_path, chat_run, prefs_file, capsys):
    common = ["--data", str(prefs_file), "--batch-size", "4", "--eval-every", "3", "--sample-tokens", "0",
              "--no-progress"]
    part = tmp_path / "part"
    assert main(["dpo", str(chat_run), *common, "--max-steps", "3", "--out", str(part), "--lora"]) == 0
    out = capsys.readouterr().out
    assert "goushi chat" in out and "reward margin" in out and "preference accuracy" in out
    state = torch.load(part / rundir.STATE, weights_only=True)
    assert state["step"] == 3 and state["source"] == {"epoch": 0, "cursor": 12}  # 3 steps x 4 pairs
    assert main(["dpo", "--out", str(part), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    assert [r["step"] for r in rundir.read_metrics(part) if "val_loss" in r] == [0, 3, 6]
    assert read_config(part)["train"]["lora_rank"] == 8
    rpo = tmp_path / "rpo"
    assert main(["dpo", str(chat_run), *common, "--max-steps", "2", "--out", str(rpo), "--rpo-alpha", "0.5"]) == 0
    assert read_config(rpo)["dpo"]["rpo_alpha"] == 0.5 and "chosen NLL" in capsys.readouterr().out
    assert main(["dpo", "--out", str(rpo), "--resume", "--max-steps", "3", "--no-progress"]) == 0  # keeps its alpha
    assert "chosen NLL" in capsys.readouterr().out and read_config(rpo)["dpo"]["rpo_alpha"] == 0.5
    capsys.readouterr()
    assert main(["dpo", "--show-mask", str(prefs_file), "--row", "2", "--base", str(chat_run)]) == 0
    shown = capsys.readouterr().out
    assert "chosen:" in shown and "rejected:" in shown
    trained = [ln for ln in shown.splitlines() if ln.rstrip().endswith("✓")]
    assert len(trained) == len(GOOD) + 1 + len(BAD) + 1  # each answer and its end-of-turn token


def test_cli_errors_are_one_line(tmp_path, chat_run, prefs_file, capsys):
    bad = write_rows(tmp_path / "same.jsonl", [{"prompt": ASK_GOOD, "chosen": GOOD, "rejected": GOOD}] * 3)
    for argv, msg in (
        (["dpo", str(chat_run), "--out", str(tmp_path / "x")], "--data"),
        (["dpo", str(chat_run), "--data", str(prefs_file)], "--out"),
        (["dpo", str(tmp_path), "--data", str(prefs_file), "--out", str(tmp_path / "x")], "not a run directory"),
        (["dpo", str(chat_run), "--data", str(prefs_file), "--out", str(tmp_path / "x"), "--beta", "0"], "--beta"),
        (["dpo", str(chat_run), "--data", str(prefs_file), "--out", str(tmp_path / "x"), "--rpo-alpha", "-1"],
         "--rpo-alpha"),
        (["dpo", str(chat_run), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")], "not found"),
        (["dpo", str(chat_run), "--data", str(bad), "--out", str(tmp_path / "x"), "--strict"], "same.jsonl:1:"),
        (["dpo", str(chat_run), "--data", str(bad), "--out", str(tmp_path / "x")], "0 usable pair(s)"),
        (["dpo", "--out", str(chat_run), "--resume"], "not a DPO run"),
        (["dpo", "--show-mask", str(prefs_file), "--row", "999", "--base", str(chat_run)], "no row on line 999"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)


@pytest.mark.slow
def test_a_dpo_run_exports_with_its_chat_template_and_imports_back_as_a_chat_run(tmp_path, chat_run, prefs_file):
    out = tmp_path / "dpo"
    run_dpo(DpoOptions(base=str(chat_run), data=str(prefs_file)), dpo_cfg(chat_run, out, max_steps=2, eval_every=0),
            progress=False, log=quiet)
    assert main(["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "<|im_start|>" in config["chat_template"]
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = rundir.read_run(tmp_path / "back")
    assert back.is_chat and back.dpo is not None and back.dpo.pairs == 40


# ---- the demo's DPO stage ------------------------------------------------------------------------------
def _demo_dpo(tmp_path: Path, chat_run: Path, prefs_file: Path, steps: int, minutes: float) -> Path:
    """`goushi demo --chat --dpo`'s DPO stage on the tiny chat run, with a preference file a previous demo left."""
    import argparse
    import shutil

    from goushi.cli import demo

    out = tmp_path / "demo"
    (out / "chat_corpus" / "reviews-prefs").mkdir(parents=True)
    shutil.copyfile(prefs_file, out / "chat_corpus" / "reviews-prefs" / "prefs.jsonl")
    args = argparse.Namespace(fresh=False, dpo_steps=steps, dpo_minutes=minutes, device="cpu")
    return demo._dpo_stages(args, out, chat_run, 9)


def test_the_demo_trains_a_fixed_number_of_dpo_steps_with_the_minutes_as_a_cap(tmp_path, chat_run, prefs_file,
                                                                              capsys):
    dpo_run = _demo_dpo(tmp_path, chat_run, prefs_file, steps=12, minutes=15)
    printed = capsys.readouterr().out
    assert "[8/9] DPO: prefer the chosen answers more than the chat run does, 12 steps of 8 pairs (stops early only " \
           "at the 15-minute cap)" in printed
    assert "--max-steps 12 --time-budget 900s" in printed and "reached its" not in printed
    train_cfg = read_config(dpo_run)["train"]
    assert train_cfg["max_steps"] == 12 and train_cfg["time_budget"] == "900s"
    assert train_cfg["lr"] == 1e-4 and read_config(dpo_run)["dpo"]["rpo_alpha"] == 0.5  # the demo's measured settings
    assert max(r["step"] for r in rundir.read_metrics(dpo_run)) == 12
    assert "  SFT: " in printed and "  DPO: " in printed


def test_the_demo_says_when_the_cap_stopped_dpo_short(tmp_path, chat_run, prefs_file, capsys):
    # A million steps cannot fit in one second on any machine: the cap ends the stage, and the demo says so.
    dpo_run = _demo_dpo(tmp_path, chat_run, prefs_file, steps=1_000_000, minutes=1 / 60)
    done = max(r["step"] for r in rundir.read_metrics(dpo_run))
    assert 0 < done < 1_000_000
    assert f"note: DPO reached its 0.0166667-minute cap after {done} of 1000000 steps" in capsys.readouterr().out


@pytest.mark.parametrize("flags, msg", [
    (["--dpo-steps", "0"], "--dpo-steps 0: must be at least 1"),
    (["--dpo-minutes", "0"], "--dpo-minutes 0: must be a finite number of minutes > 0"),
    (["--dpo-minutes", "nan"], "--dpo-minutes nan: must be"),
])
def test_the_demo_refuses_bad_dpo_budgets_in_one_line(flags, msg, capsys):
    assert main(["demo", "--chat", "--dpo", "--no-ui", *flags]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err


def test_the_bench_prints_the_held_out_checked_judge_beside_the_word_counts(tmp_path, chat_run, monkeypatch, capsys):
    import sys

    from test_dpo_judge import review_build

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import chat_following
    import dpo_targets

    data, chat, prefs = review_build(tmp_path)
    common = ["--data", str(data), "--exclude", str(chat), str(prefs), "--samples", "3"]
    monkeypatch.setattr(sys, "argv", ["dpo_targets.py", str(chat_run), str(chat_run), *common])
    dpo_targets.main()
    printed = capsys.readouterr().out
    assert "judge: naive Bayes on characters and character pairs, fitted on 16 labelled chat answers; held-out " \
           "accuracy on 5 of the 7 held-out validation reviews" in printed
    assert printed.count("with positive words, 写一条差评") == 2 and printed.count("held-out-checked judge: ") == 4
    assert "target <= 1.03" in printed
    monkeypatch.setattr(sys, "argv", ["chat_following.py", str(chat_run), *common])
    chat_following.main()
    printed = capsys.readouterr().out
    assert "held-out accuracy on 5 of the 7" in printed and printed.count("held-out-checked judge: ") == 2
    monkeypatch.setattr(sys, "argv", ["chat_following.py", str(chat_run), "--samples", "2"])
    chat_following.main()  # without --data: the word counts as before, the judge says why it is absent
    printed = capsys.readouterr().out
    assert "judge: not fitted" in printed and "held-out-checked judge: " not in printed
    assert printed.count("answers with positive words") == 2
