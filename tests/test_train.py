"""The trainer: config, parameter groups, schedules, exact resume, learning, DDP, run directory, bad input."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from goushi.checkpoint import load_run
from goushi.cli import train as cli_train
from goushi.cli.train import sample_line
from goushi.config import ConfigError
from goushi.errors import GoushiError
from goushi.model import GPT
from goushi.tokenizer import Tokenizer
from goushi.train import TrainConfig, load_train_config, parse_duration, train
from goushi.train import checkpoint as ckpt
from goushi.train.config import run_config
from goushi.train.optim import Muon, build_optimizers, lr_multiplier, muon_ns_dtype, newton_schulz, set_lr

WORDS = "今天 我 终于 吃 到 了 这家 店 的 烤鸭 说实话 味道 一般 但是 服务 很好 下次 还 来 ， 。 ！".split()
TINY = dict(n_layer=2, n_head=2, n_embd=32, context_length=32)


def make_data_dir(path: Path, docs_train: list[str], docs_val: list[str], *, extra_chars: str = "") -> Path:
    """A DATA_DIR as `goushi data build` writes it, built from a char tokenizer and numpy."""
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.train_char(docs_train + docs_val + [extra_chars])
    tok.save(path / "tokenizer.json")
    meta = {"version": 1, "dtype": "uint16", "vocab_size": tok.vocab_size, "tokenizer_hash": tok.hash(),
            "tokenizer_kind": "char", "sources": {"test": {"docs": len(docs_train), "license": "CC0"}}}
    for split, docs in (("train", docs_train), ("val", docs_val)):
        ids: list[int] = []
        for d in docs:
            ids += tok.encode(d) + [tok.eot_id]
        np.asarray(ids, dtype="<u2").tofile(path / f"{split}.bin")
        meta[f"{split}_tokens"] = len(ids)
        meta[f"{split}_chars"] = sum(len(d) + 1 for d in docs)
        meta[f"{split}_docs"] = len(docs)
    (path / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    (path / "DATA_CARD.md").write_text("# Data card\n\ntest corpus\n", encoding="utf-8")
    return path


def random_docs(n: int, seed: int) -> list[str]:
    r = np.random.default_rng(seed)
    return ["".join(r.choice(WORDS, size=int(r.integers(8, 30)))) for _ in range(n)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    docs = random_docs(600, 0)
    return make_data_dir(tmp_path_factory.mktemp("data") / "d", docs[:540], docs[540:])


def cfg_for(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=dict(TINY), batch_size=8, max_steps=10, eval_every=5,
                eval_batches=2, log_every=1, sample_tokens=8, warmup=3)
    base.update(kw)
    return load_train_config(None, base)


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        m = json.loads(line)
        if "loss" in m:
            out[m["step"]] = m["loss"]
    return out


def quiet(_msg: str) -> None:
    pass


# ---- config ----------------------------------------------------------------------------------------
def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    for bad in ("ten minutes", "-5m", "0s", "5d"):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)


def test_toml_then_flags_and_unknown_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 0.01\nbatch_size = 4\nn_layer = 3\n[model]\nn_head = 2\n', encoding="utf-8")
    cfg = load_train_config(f, {"lr": 0.02})
    assert (cfg.lr, cfg.batch_size, cfg.model) == (0.02, 4, {"n_layer": 3, "n_head": 2})
    f.write_text('lr = 0.01\nlearning_rate = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config(f)
    f.write_text('batch_size = "big"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="batch_size"):
        load_train_config(f)


@pytest.mark.parametrize("overrides,field", [
    (dict(lr=-1.0), "lr"), (dict(min_lr=1.0), "min_lr"), (dict(batch_size=0), "batch_size"),
    (dict(schedule="linear"), "schedule"), (dict(optimizer="sgd"), "optimizer"), (dict(time_budget="soon"), "time_budget"),
    (dict(preset="huge"), "preset"), (dict(dtype="int8"), "dtype"), (dict(clip=-1.0), "clip"),
    (dict(model={"n_embd": 33}), "n_embd"), (dict(model={"n_kv_head": 3}), "n_kv_head"),
    (dict(model={"layers": 3}), "layers"),
])
def test_impossible_settings_are_refused_before_work(tmp_path, data_dir, overrides, field):
    with pytest.raises(ConfigError, match=field):
        train(dict(data=str(data_dir), out=str(tmp_path / "run"), **overrides), log=quiet)
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ---- optimisers and schedules ---------------------------------------------------------------------
@pytest.mark.parametrize("family,tied", [("gpt2", True), ("llama", False)])
def test_parameter_groups(family, tied):
    from goushi.config import preset_config

    model = GPT(preset_config("tiny", family, 100, tie_embeddings=tied, **TINY))
    g = model.param_groups()
    names = {k: {n for n, _ in v} for k, v in g.items()}
    every = {id(p) for p in model.parameters()}
    assert sum(len(v) for v in g.values()) == len(every)  # each parameter exactly once, tied ones too
    assert "wte.weight" in names["embed"] and ("lm_head.weight" in names["embed"]) == (not tied)
    assert all(p.dim() == 2 and n.startswith("blocks.") for n, p in g["hidden"])
    assert all(p.dim() == 1 for _, p in g["other"]) and any("ln_" in n for n in names["other"])
    opt = build_optimizers(model, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))[0]
    decayed = {id(p) for grp in opt.param_groups if grp["weight_decay"] > 0 for p in grp["params"]}
    assert decayed == {id(p) for _, p in g["hidden"]}
    muon, adamw = build_optimizers(model, name="muon", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert isinstance(muon, Muon) and muon.ns_dtype == torch.bfloat16
    assert {id(p) for grp in muon.param_groups for p in grp["params"]} == {id(p) for _, p in g["hidden"]}
    assert all(grp["weight_decay"] == 0 for grp in adamw.param_groups)
    # --embed-lr-mult: the tables (an untied head too) get their own rate; the schedule scales it with the rest
    for name in ("adamw", "muon"):
        opts = build_optimizers(model, name=name, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), embed_lr_mult=4.0)
        rates = {id(p): grp["base_lr"] for opt in opts for grp in opt.param_groups for p in grp["params"]}
        assert {rates[id(p)] for _, p in g["embed"]} == {4e-3}
        assert {rates[id(p)] for _, p in g["hidden"] + g["other"]} == {1e-3}
        set_lr(opts, 0.5)
        assert {grp["lr"] for opt in opts for grp in opt.param_groups} == {5e-4, 2e-3}


def test_muon_equals_torchs_in_bf16_and_orthogonalises_in_fp32():
    """Our Muon is torch.optim.Muon with the Newton-Schulz precision chosen: in bf16 the very same updates (three
    steps, momentum included); in fp32 (CPUs without native bf16) the same orthogonalisation, to bf16's rounding."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(24, 40, generator=gen), torch.randn(40, 16, generator=gen)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(3)]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    ends = []
    for make in (lambda ps: torch.optim.Muon(ps, **kw), lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **kw),
                 lambda ps: Muon(ps, ns_dtype=torch.float32, **kw)):
        ps = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(ps)
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        ends.append([p.detach() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(ends[0], ends[1], strict=True))
    assert all(torch.allclose(a, c, atol=2e-3) and not torch.equal(a, c) for a, c in zip(ends[0], ends[2], strict=True))
    for g in start:  # singular values pushed near 1 (the quintic lands them in about [0.5, 1.5])
        s = torch.linalg.svdvals(newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32))
        assert s.min() > 0.4 and s.max() < 1.6
    assert muon_ns_dtype(torch.bfloat16) == torch.bfloat16
    assert muon_ns_dtype(torch.float32) == muon_ns_dtype(torch.float16) == torch.float32


def test_schedule_shapes():
    kw = dict(total=100, warmup=10, min_ratio=0.1)
    cos = [lr_multiplier(s, schedule="cosine", **kw) for s in range(100)]
    assert 0 < cos[0] < cos[5] < cos[9] < 1  # learns at step 0, ramps up
    assert cos[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[10:], cos[11:], strict=False))
    assert cos[-1] == pytest.approx(0.1)
    wsd = [lr_multiplier(s, schedule="wsd", decay_frac=0.2, **kw) for s in range(100)]
    assert all(m == 1.0 for m in wsd[10:82]) and wsd[81] == 1.0
    assert all(a > b for a, b in zip(wsd[82:], wsd[83:], strict=False))
    assert wsd[-1] == pytest.approx(0.1)
    # Before a time budget is planned the schedule only warms up and holds.
    assert lr_multiplier(50, total=None, warmup=10, schedule="cosine", min_ratio=0.1) == 1.0


# ---- exact resume -----------------------------------------------------------------------------------
class StopAt:
    def __init__(self, step: int):
        self.step = step

    def __call__(self, step: int, loss: float) -> None:
        if step == self.step:
            raise KeyboardInterrupt  # what Ctrl-C does, at a known step


@pytest.mark.parametrize("extra", [dict(), dict(optimizer="muon", grad_accum=2, schedule="wsd", dropout=0.1)])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, data_dir, extra):
    extra = dict(extra)
    if "dropout" in extra:
        extra["model"] = {**TINY, "dropout": extra.pop("dropout")}
    whole = train(cfg_for(data_dir, tmp_path / "whole", max_steps=12, save_every=0, **extra), progress=False, log=quiet)
    # The interrupted run prints the CLI's samples, the whole one none: samples never change the run.
    part = train(cfg_for(data_dir, tmp_path / "part", max_steps=12, save_every=0, **extra), on_step=StopAt(7),
                 sampler=sample_line, progress=False, log=quiet)
    assert part["stop_reason"] == "interrupted" and part["steps"] == 7
    rest = train(run_config(None, {"out": str(tmp_path / "part"), "resume": True}), sampler=sample_line,
                 progress=False, log=quiet)
    assert rest["steps"] == 12 and rest["stop_reason"] == "budget"
    a, b = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in a] == [b[s] for s in a]  # exactly, not approximately
    assert whole["final_val_loss"] == rest["final_val_loss"]
    wa = load_run(tmp_path / "whole").model.state_dict()
    wb = load_run(tmp_path / "part").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tiny_model_learns_a_repeated_corpus(tmp_path):
    doc = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    data = make_data_dir(tmp_path / "data", [doc] * 200, [doc] * 20)
    s = train(cfg_for(data, tmp_path / "run", max_steps=300, lr=3e-3, eval_every=0, batch_size=16, warmup=10,
                      sample_tokens=0), progress=False, log=quiet)
    assert s["final_train_loss"] < 0.1 and s["final_val_loss"] < 0.1
    assert s["final_val_bpc"] < 0.15
    assert losses(tmp_path / "run")[1] > 3.0  # it started near the uniform guess, ln(vocab) ~ 5.6


# ---- run directory ----------------------------------------------------------------------------------
def test_run_directory_is_complete_and_loadable(tmp_path, data_dir):
    s = train(cfg_for(data_dir, tmp_path / "run"), progress=False, log=quiet)
    run = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "DATA_CARD.md", "MODEL_CARD.md",
                 "metrics.jsonl", "loss.png", "trainer_state.pt", "best/model.safetensors", "best/config.json",
                 "best/tokenizer.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "config.json").read_text(encoding="utf-8"))
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    assert info["data"]["dir"] == str(data_dir.resolve())
    assert info["data"]["tokenizer_hash"] == meta["tokenizer_hash"]
    assert info["data"]["meta"]["val_chars"] == meta["val_chars"]
    assert info["model"]["n_layer"] == 2 and info["train"]["max_steps"] == 10 and "goushi_version" in info
    evals = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [m for m in evals if "loss" in m]
    assert {"step", "loss", "lr", "tokens", "elapsed_s", "tokens_per_s"} <= set(steps[0])
    vals = [m for m in evals if "val_loss" in m]
    assert [m["step"] for m in vals] == [0, 5, 10]
    v = vals[-1]
    assert v["val_ppl"] == pytest.approx(math.exp(v["val_loss"]))
    assert v["val_bpc"] == pytest.approx(v["val_loss"] * meta["val_tokens"] / meta["val_chars"] / math.log(2))
    assert s["final_val_bpc"] == pytest.approx(v["val_bpc"])
    assert load_run(run).config.n_layer == 2 and load_run(run / "best").config.n_layer == 2
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["step"] == 10 and state["schedule"]["total"] == 10
    assert "CC0" in (run / "MODEL_CARD.md").read_text(encoding="utf-8")


class SteadyClock:
    """The trainer's clock, advancing 10 ms at every reading: the test sees the same seconds per step on any
    machine under any load (a real 2 s budget on a busy machine ran out before the schedule was planned)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.01
        return self.now


def test_time_budget_plans_the_schedule(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr("goushi.train.trainer.time", SteadyClock())
    s = train(cfg_for(data_dir, tmp_path / "run", max_steps=0, time_budget="2s", eval_every=0, sample_tokens=0),
              progress=False, log=quiet)
    assert s["stop_reason"] in ("budget", "time budget")
    assert s["planned_steps"] and s["planned_steps"] >= 5 and s["steps"] >= 5
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["schedule"]["total"] == s["planned_steps"]


# ---- bad input and faults ---------------------------------------------------------------------------
def test_existing_output_is_refused_unless_resume_or_force(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(GoushiError, match="not empty"):
        train(cfg_for(data_dir, out), log=quiet, progress=False)
    train(cfg_for(data_dir, out, force=True, max_steps=2), log=quiet, progress=False)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"  # --force replaces only run files


def test_resume_refuses_other_tokenizer_and_other_model(tmp_path, data_dir):
    out = tmp_path / "run"
    train(cfg_for(data_dir, out, max_steps=2), log=quiet, progress=False)
    other = make_data_dir(tmp_path / "other", random_docs(300, 1), random_docs(30, 2), extra_chars="龙")
    with pytest.raises(GoushiError, match="tokenizer"):
        train(run_config(None, {"out": str(out), "resume": True, "data": str(other), "max_steps": 4}),
              log=quiet, progress=False)
    with pytest.raises(GoushiError, match="n_layer"):
        train(run_config(None, {"out": str(out), "resume": True, "model": {"n_layer": 3}}), log=quiet, progress=False)


def test_truncated_weights_and_corrupt_state_give_clear_errors(tmp_path, data_dir):
    out = tmp_path / "run"
    train(cfg_for(data_dir, out, max_steps=2), log=quiet, progress=False)
    resume = run_config(None, {"out": str(out), "resume": True, "max_steps": 4})
    state = (out / "trainer_state.pt").read_bytes()
    (out / "trainer_state.pt").write_bytes(state[: len(state) // 2])
    with pytest.raises(GoushiError, match="trainer_state.pt.*corrupt"):
        train(resume, log=quiet, progress=False)
    (out / "trainer_state.pt").write_bytes(state)
    w = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(w[: len(w) // 3])
    with pytest.raises(GoushiError, match="model.safetensors.*(corrupt|truncated)"):
        train(resume, log=quiet, progress=False)


def test_failed_save_leaves_previous_checkpoint_loadable(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    train(cfg_for(data_dir, out, max_steps=2), log=quiet, progress=False)
    before = (out / "model.safetensors").read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError):
        train(run_config(None, {"out": str(out), "resume": True, "max_steps": 4, "save_every": 1}),
              log=quiet, progress=False)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before
    assert (out / ".saving").exists()  # the half-written save is left behind ...
    s = train(run_config(None, {"out": str(out), "resume": True, "max_steps": 4}), log=quiet, progress=False)
    assert s["steps"] == 4 and not (out / ".saving").exists()  # ... and discarded on resume


def test_interrupted_rename_is_finished_on_resume(tmp_path, data_dir):
    out = tmp_path / "run"
    train(cfg_for(data_dir, out, max_steps=2), log=quiet, progress=False)
    saving = out / ".saving"
    saving.mkdir()
    for n in ("model.safetensors", "trainer_state.pt"):
        (saving / n).write_bytes((out / n).read_bytes())
    (saving / "COMPLETE").write_text("ok\n", encoding="utf-8")
    (out / "trainer_state.pt").unlink()  # died between the two renames
    assert ckpt.recover(out).startswith("finished")
    assert ckpt.load_state(out)["step"] == 2 and not saving.exists()


def test_missing_and_broken_data_directories(tmp_path, data_dir):
    with pytest.raises(GoushiError, match="no such data directory"):
        train(cfg_for(tmp_path / "nope", tmp_path / "r1"), log=quiet, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    for n in ("tokenizer.json", "meta.json", "val.bin", "DATA_CARD.md"):
        (broken / n).write_bytes((data_dir / n).read_bytes())
    (broken / "train.bin").write_bytes((data_dir / "train.bin").read_bytes()[:-1])
    with pytest.raises(GoushiError, match="train.bin.*truncated"):
        train(cfg_for(broken, tmp_path / "r2"), log=quiet, progress=False)
    (broken / "train.bin").write_bytes((data_dir / "train.bin").read_bytes())
    with pytest.raises(GoushiError, match="context"):
        train(cfg_for(broken, tmp_path / "r3", model={**TINY, "context_length": 4096}), log=quiet, progress=False)


# ---- CLI ----------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """`goushi` with only the train subcommand, handling errors as goushi.cli.main does."""
    import argparse

    from goushi.errors import GoushiError

    parser = argparse.ArgumentParser(prog="goushi")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GoushiError as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2


def test_cli_train_print_config_and_errors(tmp_path, data_dir, capsys):
    rc = main(["train", "--preset", "small", "--family", "llama", "--vocab-size", "4000", "--print-config"])
    out = capsys.readouterr().out
    assert rc == 0 and "embedding share" in out and 'n_kv_head = 3' in out
    rc = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--n-layer", "2", "--n-head", "2",
               "--n-embd", "32", "--context", "32", "--batch-size", "8", "--max-steps", "3", "--eval-every", "0",
               "--no-progress", "--no-tie-embeddings", "--sample-tokens", "0"])
    assert rc == 0
    assert load_run(tmp_path / "run").config.tie_embeddings is False
    rc = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--max-steps", "3"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = main(["train", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "5", "--no-progress"])
    assert rc == 0 and json.loads((tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8")
                                  .splitlines()[-1])["step"] == 5
    rc = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "r2"), "--n-embd", "130", "--n-head", "4"])
    assert rc == 2 and "n_embd" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(data_dir), "--learning-rate", "1"])
    assert e.value.code == 2


# ---- DDP -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(cfg, progress=False, log=quiet)


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, data_dir):
    import torch.multiprocessing as mp

    kw = dict(max_steps=6, grad_accum=2, eval_every=3, save_every=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP worker has; put back after, so later tests get this machine's count
    try:
        single = train(cfg_for(data_dir, tmp_path / "single", **kw), progress=False, log=quiet)
        mp.spawn(_ddp_worker, args=(2, _free_port(), cfg_for(data_dir, tmp_path / "ddp", **kw)), nprocs=2, join=True)
    finally:
        torch.set_num_threads(threads)
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-5)
    ddp_val = [json.loads(ln)["val_loss"] for ln in (tmp_path / "ddp" / "metrics.jsonl").read_text(encoding="utf-8")
               .splitlines() if "val_loss" in ln]
    assert ddp_val[-1] == pytest.approx(single["final_val_loss"], rel=1e-5)
    state = torch.load(tmp_path / "ddp" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
