"""The trainer's parts on their own: budget planning, metrics reading and writing, the batch-source
interface (token shards and a masked source of our own), starting from another run's weights, and the
run-directory owner (goushi.rundir)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from goushi import rundir
from goushi.checkpoint import load_run, load_weights
from goushi.cli import main as goushi
from goushi.config import ModelConfig
from goushi.data.build import BuildOptions, build_dataset
from goushi.errors import ConfigError, GoushiError
from goushi.model import GPT
from goushi.tokenizer import Tokenizer
from goushi.train import IGNORE_INDEX, BatchSource, TrainConfig, train
from goushi.train.budget import DEFAULT_STEPS, PLAN_AFTER, Budget, plan_steps
from goushi.train.data import TokenData, new_generator
from goushi.train.metrics import MetricsLog, Throughput
from run_files import read_config, write_config
from test_train import cfg_for, losses, make_data_dir, quiet, random_docs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    docs = random_docs(400, 1)
    return make_data_dir(tmp_path_factory.mktemp("data") / "d", docs[:360], docs[360:])


# ---- budget ------------------------------------------------------------------------------------------
def test_plan_steps_pays_for_evaluations_and_keeps_room_for_the_last_one():
    # 100 s left, 1 s per step, no evaluations: 98 steps (2% safety margin).
    assert plan_steps(100.0, 1.0, 0.0, 0) == 98
    # An evaluation every 10 steps costing 5 s: each step costs 1.5 s on average, minus one final evaluation.
    assert plan_steps(100.0, 1.0, 5.0, 10) == int(0.98 * 95 / 1.5)
    assert plan_steps(1.0, 10.0, 0.0, 0) == 1  # never zero: a run always takes a step


def test_budget_fixed_totals():
    def budget(**kw) -> Budget:
        return Budget(TrainConfig(**kw).validate(), tokens_per_step=1000)

    assert budget().fixed_total() == DEFAULT_STEPS
    assert budget(max_steps=50).fixed_total() == 50
    assert budget(tokens=12_345).fixed_total() == 13  # ceil(12345 / 1000)
    assert budget(max_steps=5, tokens=12_345).fixed_total() == 5  # whichever ends first
    assert budget(time_budget="10m").fixed_total() is None  # planned from measurements instead
    assert budget(time_budget="10m", max_steps=7).fixed_total() == 7


def test_budget_start_and_warmup_cap():
    b = Budget(TrainConfig(max_steps=40, warmup=30).validate(), 1000)
    b.start(step=0)
    assert b.total == 40 and b.warmup == 8  # warmup capped at a fifth of the run
    tb = Budget(TrainConfig(time_budget="90s").validate(), 1000)
    tb.start(step=0)
    assert tb.total is None and tb.seconds == 90.0


def test_time_budget_plan_then_replan():
    b = Budget(TrainConfig(time_budget="100s", eval_every=0, warmup=30).validate(), 1000)
    assert not b.needs_plan(step=PLAN_AFTER - 1, session_start_step=0)
    assert b.needs_plan(step=PLAN_AFTER, session_start_step=0)
    total = b.propose(step=8, elapsed=8.0, per_step=1.0, eval_cost=0.0)
    assert total == 8 + int(0.98 * 92)
    assert b.apply(total, step=8).startswith("planned")
    assert b.total == total and b.warmup == total // 5  # warmup capped at a fifth of the planned run
    assert b.may_replan(step=10) and not b.may_replan(step=int(0.7 * total))
    assert b.apply(total + 1, step=10) is None  # a change under 2% is not worth moving the schedule
    assert b.apply(total // 2, step=10) == f"re-planned {total} -> {total // 2} steps"
    assert b.time_up(100.0) and not b.time_up(99.9)


def test_budget_restore_only_with_the_same_budget():
    cfg = TrainConfig(max_steps=100).validate()
    b = Budget(cfg, 1000)
    assert b.restore(b.key(), {"total": 77, "warmup": 4}) and (b.total, b.warmup) == (77, 4)
    other = Budget(TrainConfig(max_steps=200).validate(), 1000)
    assert not other.restore(b.key(), {"total": 77, "warmup": 4}) and other.total is None


# ---- metrics -----------------------------------------------------------------------------------------
def test_metrics_log_write_truncate_and_read(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in range(1, 6):
        log.write({"step": step, "loss": 5.0 - step, "tokens_per_s": 100.0 * step})
    log.write({"step": 5, "val_loss": 0.5})
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 5]
    assert log.median_tokens_per_s() == 300.0
    assert rundir.last_value(log.rows(), "val_loss") == 0.5 and rundir.last_value(log.rows(), "nope") is None
    log.close()
    resumed = MetricsLog(tmp_path, enabled=True, resume_step=3)  # steps 4 and 5 will run again
    assert [r["step"] for r in resumed.rows()] == [1, 2, 3]
    resumed.close()
    fresh = MetricsLog(tmp_path, enabled=True)
    assert fresh.rows() == []
    assert MetricsLog(tmp_path / "other", enabled=False).rows() == []  # other ranks never write


def test_read_metrics_skips_only_a_cut_last_line(tmp_path):
    (tmp_path / rundir.METRICS).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert rundir.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    (tmp_path / rundir.METRICS).write_text('{"step": 1\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"metrics.jsonl:1"):
        rundir.read_metrics(tmp_path)


def test_throughput_excludes_evaluation_time():
    meter = Throughput()
    meter.add(1000)
    meter.exclude(-3600.0)  # as if an hour had passed, none of it spent training
    assert meter.rate() < 1.0
    meter.reset()
    assert meter.tokens == 0


# ---- batch sources ------------------------------------------------------------------------------------
def test_token_shards_are_a_batch_source(data_dir):
    src = TokenData(data_dir)
    assert isinstance(src, BatchSource)
    x, y = src.train_batch(8, 16, new_generator(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # the labels are the inputs shifted by one
    x2, _ = src.train_batch(8, 16, new_generator(0))
    assert torch.equal(x, x2)  # the generator alone decides the data order
    half, _ = src.train_batch(8, 16, new_generator(0), rank=1, world=2)
    assert torch.equal(half, x[4:])  # each process keeps its slice of the same global batch
    assert src.count_tokens(y) == 8 * 16
    val = list(src.val_batches(2, 4, 16))
    assert len(val) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(val, src.val_batches(2, 4, 16), strict=True))
    assert src.data_record().tokenizer_hash == src.tokenizer.hash()
    assert src.sample_prompt() and src.data_card() == data_dir / "DATA_CARD.md"


def test_a_short_validation_split_is_read_once_end_to_end(tmp_path):
    chars = iter(chr(0x4E00 + i) for i in range(400))
    val_docs = ["".join(next(chars) for _ in range(n)) for n in (30, 25, 40, 33, 28)]  # 161 tokens with the ends
    data = make_data_dir(tmp_path / "d", ["".join(next(chars) for _ in range(100))], val_docs)
    src, T = TokenData(data), 16
    val = np.asarray(src.val).astype(np.int64)
    # asked for 4 batches of 8 windows (544 tokens): the split holds 161, so each target is read once
    batches = list(src.val_batches(4, 8, T))
    ys = torch.cat([y for _, y in batches])
    assert len(ys) == math.ceil((len(val) - T - 1) / T) + 1 < 4 * 8
    assert sorted(set(ys.flatten().tolist())) == sorted(set(val[1:].tolist()))  # every target in the split
    assert len(ys.flatten()) < len(val) + T  # windows overlap by less than one window
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, src.val_batches(4, 8, T), strict=True))
    # a long enough split keeps the windows asked for
    assert sum(len(y) for _, y in src.val_batches(1, 4, T)) == 4


def test_windows_from_document_starts_cover_every_token(tmp_path):
    chars = iter(chr(0x4E00 + i) for i in range(200))  # no character twice: a window's tokens say where it lies
    docs = ["".join(next(chars) for _ in range(n)) for n in (4, 6, 50, 3, 7, 5, 30, 2)]
    data = make_data_dir(tmp_path / "d", docs, ["".join(next(chars) for _ in range(20))] * 2)
    T = 8
    anyw, docw = TokenData(data), TokenData(data, windows="docs")
    eot = docw.tokenizer.eot_id
    train = np.asarray(docw.train).astype(np.int64)
    where = {int(t): i for i, t in enumerate(train) if t != eot}
    eots = [i for i, t in enumerate(train) if t == eot]
    assert docw.doc_anchors().tolist() == [0] + eots

    def start(row: torch.Tensor) -> int:
        first = next(i for i, t in enumerate(row.tolist()) if t != eot)
        return where[int(row[first])] - first

    seen = np.zeros(len(train), dtype=bool)
    for seed in range(40):
        x, y = docw.train_batch(16, T, new_generator(seed))
        xa, _ = anyw.train_batch(16, T, new_generator(seed))
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row, row_any in zip(x, xa, strict=True):
            s0, s_any = start(row), start(row_any)
            doc_start = max([0] + [e for e in eots if e <= s_any])
            # the same draw as `any`, moved back to its document's <|endoftext|> when that is within a window
            assert s0 == (doc_start if s_any - doc_start < T else s_any)
            seen[s0: s0 + T + 1] = True
    assert seen[: len(train) - T].all()  # every token, the long documents' tails too, is in some window
    with pytest.raises(GoushiError, match="windows='middle'"):
        TokenData(data, windows="middle")


def test_training_with_document_windows_and_masks(tmp_path, data_dir):
    s = train(cfg_for(data_dir, tmp_path / "run", max_steps=4, eval_every=2, sample_tokens=0, windows="docs",
                      doc_mask=True), progress=False, log=quiet)
    assert s["steps"] == 4 and all(v == v for v in losses(tmp_path / "run").values())
    saved = read_config(tmp_path / "run")
    assert saved["train"]["windows"] == "docs" and saved["train"]["doc_mask"] is True
    with pytest.raises(ConfigError, match="windows='sometimes'"):
        cfg_for(data_dir, tmp_path / "bad", windows="sometimes")
    with pytest.raises(ConfigError, match="chat dataset"):
        train(cfg_for(data_dir, tmp_path / "masked", doc_mask=True), source=MaskedSource(data_dir), progress=False,
              log=quiet)


class MaskedSource:
    """Token shards with every other target ignored: what a chat dataset with loss masks looks like to the trainer."""

    def __init__(self, data_dir: Path):
        self.inner = TokenData(data_dir)
        self.tokenizer = self.inner.tokenizer
        self.vocab_size = self.inner.vocab_size
        self.tokens_per_char = self.inner.tokens_per_char
        self.check_context = self.inner.check_context
        self.data_record = self.inner.data_record
        self.data_card = self.inner.data_card
        self.sample_prompt = self.inner.sample_prompt
        self.record_fields = self.inner.record_fields
        self.state_dict = self.inner.state_dict
        self.load_state_dict = self.inner.load_state_dict

    def _mask(self, batch):
        x, y = batch
        y = y.clone()
        y[:, ::2] = IGNORE_INDEX
        return x, y

    def train_batch(self, batch, context, generator, rank=0, world=1):
        return self._mask(self.inner.train_batch(batch, context, generator, rank, world))

    def val_batches(self, n_batches, batch, context, rank=0, world=1):
        for b in self.inner.val_batches(n_batches, batch, context, rank, world):
            yield self._mask(b)

    def count_tokens(self, targets):
        return int((targets != IGNORE_INDEX).sum())


def test_another_batch_source_plugs_into_the_trainer(tmp_path, data_dir):
    src = MaskedSource(data_dir)
    assert isinstance(src, BatchSource)
    s = train(cfg_for(data_dir, tmp_path / "run", max_steps=6, eval_every=3, sample_tokens=4), source=src,
              progress=False, log=quiet)
    assert s["steps"] == 6
    assert s["tokens"] == 6 * 8 * 16  # batch 8 x context 32, half the targets carry loss
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["tokens"] for r in rows if "loss" in r] == [k * 8 * 16 for k in range(1, 7)]
    assert load_run(tmp_path / "run").config.n_layer == 2


# ---- starting from another run -----------------------------------------------------------------------
def test_init_from_continues_from_the_weights_and_credits_the_base(tmp_path, data_dir):
    base = tmp_path / "base"
    train(cfg_for(data_dir, base, max_steps=20, eval_every=0, sample_tokens=0), progress=False, log=quiet)
    child = tmp_path / "child"
    s = train(cfg_for(data_dir, child, max_steps=2, eval_every=1, sample_tokens=0, lr=1e-9, min_lr=0.0,
                      init_from=str(base), preset="small", model={"dropout": 0.1}), progress=False, log=quiet)
    assert s["steps"] == 2
    info = read_config(child)
    assert info["model"]["n_embd"] == 32 and info["model"]["dropout"] == 0.1  # the base's shape, not the preset's
    assert info["train"]["init_from"] == str(base.resolve()) and info["base"]["run_dir"] == str(base.resolve())
    # With a learning rate of ~0, the child is the base: same validation loss at step 0.
    first_val = next(r["val_loss"] for r in rundir.read_metrics(child) if "val_loss" in r)
    base_val = next(r["val_loss"] for r in rundir.read_metrics(base) if "val_loss" in r and r["step"] == 20)
    assert first_val == pytest.approx(base_val, rel=1e-4)
    card = (child / rundir.MODEL_CARD).read_text(encoding="utf-8")
    assert "Started from another model" in card and str(base.resolve()) in card


def test_init_from_refuses_other_shapes_and_tokenizers(tmp_path, data_dir):
    base = tmp_path / "base"
    train(cfg_for(data_dir, base, max_steps=2, eval_every=0, sample_tokens=0), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="n_layer=3.*keeps its shape"):
        train(cfg_for(data_dir, tmp_path / "c1", model={"n_layer": 3}, init_from=str(base)), progress=False, log=quiet)
    other = make_data_dir(tmp_path / "other", ["完全不同的字"] * 50, ["完全不同的字"] * 5, extra_chars="xyz")
    with pytest.raises(GoushiError, match="--tokenizer-from"):
        train(cfg_for(other, tmp_path / "c2", model={}, init_from=str(base), max_steps=1), progress=False, log=quiet)
    with pytest.raises(GoushiError, match="not a run directory|no such run directory"):
        train(cfg_for(data_dir, tmp_path / "c3", init_from=str(tmp_path / "nothing")), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="init_from"):
        TrainConfig(out=str(base), init_from=str(base)).validate()


def test_data_built_with_a_runs_tokenizer_trains_on_from_it(tmp_path, data_dir):
    base = tmp_path / "base"
    train(cfg_for(data_dir, base, max_steps=2, eval_every=0, sample_tokens=0), progress=False, log=quiet)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "new.txt").write_text("\n\n".join(random_docs(80, 7)), encoding="utf-8")
    (corpus / "sources.toml").write_text('[[source]]\nid = "new"\npath = "new.txt"\nlicense = "CC0"\n', encoding="utf-8")
    new_data = tmp_path / "new_data"
    meta = build_dataset(corpus / "sources.toml", new_data, options=BuildOptions(tokenizer_from=str(base)))
    assert meta["tokenizer_hash"] == Tokenizer.from_file(base).hash()
    s = train(cfg_for(new_data, tmp_path / "child", max_steps=2, eval_every=0, sample_tokens=0, init_from=str(base)),
              progress=False, log=quiet)
    assert s["steps"] == 2 and losses(tmp_path / "child")
    with pytest.raises(GoushiError, match="tokenizer file not found"):
        BuildOptions(tokenizer_from=str(tmp_path / "missing")).validate()


def test_a_vocabulary_extended_for_the_new_text_grows_the_base_model(tmp_path, data_dir, capsys):
    base = tmp_path / "base"
    train(cfg_for(data_dir, base, max_steps=2, eval_every=0, sample_tokens=0), progress=False, log=quiet)
    base_tok = Tokenizer.from_file(base)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # 屁, 疯 and 🥵 are new and seen often; 蚂 only once (too rare to learn)
    docs = [d + "屁疯" + "🥵" * (i % 3 == 0) for i, d in enumerate(random_docs(60, 8))] + ["蚂" + random_docs(1, 9)[0]]
    (corpus / "new.txt").write_text("\n\n".join(docs), encoding="utf-8")
    (corpus / "sources.toml").write_text('[[source]]\nid = "new"\npath = "new.txt"\nlicense = "CC0"\n',
                                         encoding="utf-8")
    said: list[str] = []
    meta = build_dataset(corpus / "sources.toml", tmp_path / "grown", log=said.append,
                         options=BuildOptions(tokenizer_from=str(base), extend_vocab=10))
    grown = Tokenizer.from_file(tmp_path / "grown")
    added = [grown.id_to_piece(i) for i in range(base_tok.vocab_size, grown.vocab_size)]
    assert sorted(added) == sorted("屁疯🥵") and meta["vocab_size"] == base_tok.vocab_size + 3
    assert grown.extends(base_tok) and not base_tok.extends(grown)
    assert grown.encode("今天屁") == base_tok.encode("今天") + [grown.token_to_id("屁")]
    assert any("extended by 3 characters" in line for line in said)
    assert meta["tokenizer_coverage"]["char_coverage"] > 0.99  # only 蚂 is still spelled in bytes
    # the child starts from the base's rows and grows new ones at their mean
    child = tmp_path / "child"
    train(cfg_for(tmp_path / "grown", child, max_steps=1, eval_every=0, sample_tokens=0, init_from=str(base),
                  lr=1e-9, min_lr=0.0), progress=False, log=quiet)
    assert read_config(child)["model"]["vocab_size"] == grown.vocab_size
    # --print-config shows the grown shape training builds (it used to refuse the bigger vocabulary)
    assert goushi(["train", "--data", str(tmp_path / "grown"), "--init-from", str(base), "--out",
                   str(tmp_path / "shown"), "--print-config"]) == 0
    assert f"vocab_size = {grown.vocab_size}" in capsys.readouterr().out
    old = GPT(load_run(base).model.config)
    load_weights(base / rundir.WEIGHTS, old)
    new = GPT(ModelConfig.from_dict({**old.config.to_dict(), "vocab_size": grown.vocab_size}))
    load_weights(base / rundir.WEIGHTS, new, grow_vocab=True)
    w, w0 = new.wte.weight.detach(), old.wte.weight.detach()
    assert torch.equal(w[: base_tok.vocab_size], w0) and torch.allclose(w[-1], w0.mean(0))
    with pytest.raises(GoushiError, match="weights do not match|has shape"):
        load_weights(base / rundir.WEIGHTS, GPT(new.config))  # without grow_vocab: refused, never half-loaded
    with pytest.raises(GoushiError, match="--extend-vocab 5: a number of characters >= 0, with --tokenizer-from"):
        BuildOptions(extend_vocab=5).validate()


# ---- the run directory's owner -----------------------------------------------------------------------
def test_force_removes_only_a_runs_own_files(tmp_path):
    out = tmp_path / "run"
    (out / rundir.BEST).mkdir(parents=True)
    for name in (rundir.CONFIG, rundir.METRICS, "my_notes.txt"):
        (out / name).write_text("x", encoding="utf-8")
    with pytest.raises(GoushiError, match="not empty"):
        rundir.prepare_out_dir(out, resume=False, force=False)
    rundir.prepare_out_dir(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]
    with pytest.raises(GoushiError, match="--resume"):
        rundir.prepare_out_dir(tmp_path / "none", resume=True, force=False)


def test_check_and_read_a_run_directory(tmp_path):
    with pytest.raises(GoushiError, match="no such run directory"):
        rundir.check_run_dir(tmp_path / "missing")
    (tmp_path / rundir.CONFIG).write_text("{not json", encoding="utf-8")
    with pytest.raises(GoushiError, match="missing model.safetensors, tokenizer.json"):
        rundir.check_run_dir(tmp_path)
    with pytest.raises(GoushiError, match="not valid JSON"):
        rundir.read_run(tmp_path)
    write_config(tmp_path, {"model": {"n_layer": 0}})
    with pytest.raises(ConfigError, match="n_layer=0"):
        rundir.read_run(tmp_path)
    assert rundir.looks_like_run(tmp_path) and not rundir.looks_like_run(tmp_path / "missing")
    write_config(tmp_path, {"model": {}})
    assert rundir.data_dir_for_run(tmp_path) is None


def test_eval_json_sections_merge(tmp_path):
    rundir.save_eval(tmp_path, "text", {"overall": {"bpc": float("nan")}})
    rundir.save_eval(tmp_path, "generate", {"metrics": {"distinct_1": 0.5}})
    ev = rundir.read_eval(tmp_path)
    assert ev["text"]["overall"]["bpc"] is None and ev["generate"]["metrics"]["distinct_1"] == 0.5
    assert rundir.read_eval(tmp_path / "none") is None


def test_samples_come_from_the_sampler_the_caller_hands_in(tmp_path, data_dir, capsys):
    calls, lines = [], []

    def sampler(model, source, tokens, seed):
        calls.append((tokens, seed, source.tokenizer is not None))
        model.eval()  # as the engine does; the trainer puts it back
        return "今天|好"

    cfg = cfg_for(data_dir, tmp_path / "run", max_steps=4, eval_every=2, sample_tokens=5)
    train(cfg, sampler=sampler, progress=False, log=lines.append)
    lines += capsys.readouterr().out.splitlines()  # during the loop the log goes through the (hidden) progress bar
    assert sorted(m for m in lines if "sample:" in m) == ["  sample: 今天|好"] * 3  # steps 0, 2 and 4
    assert calls == [(5, cfg.seed, True)] * 3
    quiet_lines: list[str] = []
    train(cfg_for(data_dir, tmp_path / "none", max_steps=4, eval_every=2), progress=False, log=quiet_lines.append)
    assert "sample:" not in "\n".join(quiet_lines) + capsys.readouterr().out  # no sampler, no samples


def test_overfit_hint_names_the_best_step_only_when_validation_rose(tmp_path):
    from goushi.train.artifacts import overfit_hint

    rose = {"steps": 900, "best_step": 400, "best_val_loss": 3.90, "final_val_loss": 4.10}
    hint = overfit_hint(rose, tmp_path)
    assert hint is not None and "step 400" in hint and str(tmp_path / rundir.BEST) in hint
    assert overfit_hint({**rose, "final_val_loss": 3.91}, tmp_path) is None  # within noise
    assert overfit_hint({**rose, "best_step": 900}, tmp_path) is None  # best at the end
    assert overfit_hint({**rose, "best_val_loss": None}, tmp_path) is None  # never evaluated
