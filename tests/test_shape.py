"""The big recipe's shape rule (goushi.train.shape): the largest rung that gets enough tokens per parameter in the
budget at the speed timed here. Speeds are made up by the tests (the rule, not the machine, is under test)."""

from __future__ import annotations

import json

import pytest
import torch

from goushi import rundir
from goushi.config import param_counts, preset_config
from goushi.train import shape, train
from goushi.train.config import TrainConfig, load_train_config, resolve_model_config
from goushi.train.optim import build_optimizers
from test_train import SteadyClock, make_data_dir, random_docs

BASE = preset_config("tiny", "llama", vocab_size=600, context_length=32)


@pytest.fixture
def fake_speeds(monkeypatch, tmp_path):
    """time_step replaced by a table {(layers, width): tokens/s}; returns the list of rungs it was asked for."""
    monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path / "cache"))
    asked: list[tuple[int, int]] = []

    def install(table: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
        def timed(mc, *a, **k):
            asked.append((mc.n_layer, mc.n_embd))
            return table[(mc.n_layer, mc.n_embd)]

        monkeypatch.setattr(shape, "time_step", timed)
        return asked

    return install


def speeds_for(per_param: dict[tuple[int, int], float], budget_s: float) -> dict[tuple[int, int], float]:
    """Speeds that give each rung exactly `per_param` tokens per block parameter in `budget_s`."""
    out = {}
    for layers, width, heads in shape.LADDER:
        blocks = param_counts(shape.rung_config(BASE, layers, width, heads))["blocks"]
        out[(layers, width)] = per_param.get((layers, width), 0.01) * blocks / budget_s
    return out


def no_optimizer(model):
    return []


def test_the_largest_rung_that_gets_enough_tokens_per_parameter_is_chosen_and_the_climb_stops_there(fake_speeds):
    k = shape.MIN_TOKENS_PER_PARAM
    table = speeds_for({(4, 128): 12.0, (4, 192): k * 1.2, (6, 192): k * 0.8, (6, 256): k * 5}, 600)
    asked = fake_speeds(table)
    mc, rungs, _ = shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc.n_layer, mc.n_embd, mc.n_head) == (4, 192, 6)
    # 6 x 192 fell short: nothing bigger is timed (it could only get fewer tokens per parameter)
    assert asked == [(4, 128), (4, 192), (6, 192)] and len(rungs) == 3
    assert rungs[1].per_param == pytest.approx(k * 1.2) and rungs[2].per_param < k
    # the family, vocabulary and context stay the recipe's; llama's halved key/value heads too
    assert (mc.family, mc.vocab_size, mc.context_length, mc.n_kv_head) == ("llama", 600, 32, 3)
    lines = shape.describe(mc, rungs, 1.0, "10m")
    assert "4 layers x 192" in lines[0] and lines[2].endswith("<- chosen") and not lines[3].endswith("chosen")
    # the next run reads the cache, timing only the smallest rung again (to see whether the cache is stale)
    shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert asked[3:] == [(4, 128)]


def test_a_ladder_timed_under_load_is_timed_again_and_the_fastest_timing_is_kept(fake_speeds):
    k = shape.MIN_TOKENS_PER_PARAM
    loaded = speeds_for({(4, 128): 12.0, (4, 192): k * 0.9}, 600)  # a busy machine: 4 x 192 seems too slow
    asked = fake_speeds(loaded)
    mc, _, _ = shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc.n_layer, mc.n_embd) == (4, 128)
    # quiet now: the smallest rung runs 1.5x its cached speed, so the rest are timed again and 4 x 192 fits
    asked.clear()
    fake_speeds({r: s * 1.5 for r, s in loaded.items()})
    mc, rungs, _ = shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc.n_layer, mc.n_embd) == (4, 192) and asked[:2] == [(4, 128), (4, 192)]
    # busy again: the smallest rung is slower than cached, so the cached (fastest) figures stand, untimed
    asked.clear()
    fake_speeds({r: s * 0.5 for r, s in loaded.items()})
    mc2, rungs2, _ = shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc2.n_layer, mc2.n_embd) == (4, 192) and asked == [(4, 128)]
    assert [r.tokens_per_s for r in rungs2] == [r.tokens_per_s for r in rungs]


def test_under_torchrun_a_rung_is_timed_at_one_process_batch_and_the_budget_buys_every_process_tokens(
        fake_speeds, monkeypatch):
    k = shape.MIN_TOKENS_PER_PARAM
    fake_speeds(speeds_for({(4, 128): 12.0, (4, 192): k * 0.6, (6, 192): k * 0.3}, 600))
    batches: list[int] = []
    real = shape.time_step

    def timed(mc, batch, *a, **kw):
        batches.append(batch)
        return real(mc, batch, *a, **kw)

    monkeypatch.setattr(shape, "time_step", timed)
    one, _, _ = shape.choose(BASE, 600, 32, torch.device("cpu"), torch.float32, no_optimizer)
    cfg = TrainConfig(time_budget="10m", batch_size=64, optimizer="adamw")
    mc, lines = shape.for_run(cfg, BASE, torch.device("cpu"), torch.float32, ranks=2)
    assert (one.n_layer, one.n_embd) == (4, 128)  # one process: 4 x 192 gets 0.6 of what it needs
    assert set(batches[-2:]) == {32}  # 64 split between 2 processes
    assert (mc.n_layer, mc.n_embd) == (4, 192)  # two processes: 1.2
    assert "each of 2 processes" in lines[1]


def test_a_short_budget_keeps_the_smallest_rung_even_when_it_falls_short(fake_speeds):
    fake_speeds(speeds_for({(4, 128): 0.5, (4, 192): 0.2}, 60))
    mc, rungs, _ = shape.choose(BASE, 60, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc.n_layer, mc.n_embd) == (4, 128) and len(rungs) == 2
    # the same machine with a longer budget climbs: the shape follows the tokens, not the minutes
    mc, _, _ = shape.choose(BASE, 60 * 60, 32, torch.device("cpu"), torch.float32, no_optimizer)
    assert (mc.n_layer, mc.n_embd) > (4, 128)


def test_time_step_times_a_real_training_step():
    mc = preset_config("tiny", "llama", vocab_size=64, n_layer=1, n_embd=32, n_head=2, context_length=16)
    before = {}

    def make(model):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return build_optimizers(model, name="muon", lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95),
                                device=torch.device("cpu"), ns_dtype=torch.float32)

    speed = shape.time_step(mc, 4, torch.device("cpu"), torch.float32, make)
    assert speed > 0 and speed != float("inf") and before


def test_who_gets_a_shape_by_the_probe(monkeypatch):
    monkeypatch.setattr(shape, "probing", lambda: True)
    auto = dict(shape="auto", time_budget="10m")
    assert shape.wanted(TrainConfig(**auto))
    for other in (dict(shape="preset"), dict(time_budget="", max_steps=10), dict(resume=True),
                  dict(init_from="base"), dict(lora_rank=4, init_from="base")):
        assert not shape.wanted(TrainConfig(**{**auto, **other})), other
    monkeypatch.setattr(shape, "probing", lambda: False)  # GOUSHI_PROBE=0: no timing at all
    assert not shape.wanted(TrainConfig(**auto))


def test_a_run_trains_the_chosen_shape_and_records_it_for_resume(tmp_path, monkeypatch, fake_speeds):
    monkeypatch.setattr(shape, "LADDER", ((1, 32, 2), (2, 32, 2), (2, 64, 4)))
    monkeypatch.setattr(shape, "probing", lambda: True)
    monkeypatch.setattr("goushi.train.trainer.time", SteadyClock())
    # 2 s of budget: 1 x 32 and 2 x 32 get plenty of tokens per parameter, 2 x 64 too few
    mcs = {r[:2]: shape.rung_config(BASE, *r) for r in shape.LADDER}
    fake_speeds({k: shape.MIN_TOKENS_PER_PARAM * param_counts(m)["blocks"] * f / 2
                 for (k, m), f in zip(mcs.items(), (9, 3, 0.5), strict=True)})
    docs = random_docs(300, 1)
    data = make_data_dir(tmp_path / "d", docs[:270], docs[270:])
    lines: list[str] = []
    cfg = load_train_config(None, dict(data=str(data), out=str(tmp_path / "run"), family="llama", shape="auto",
                                       time_budget="2s", batch_size=4, eval_every=0, sample_tokens=0,
                                       model=dict(context_length=32)))
    train(cfg, progress=False, log=lines.append)
    assert any(line.startswith("shape: 2 layers x 32") for line in lines)
    record = rundir.read_run(tmp_path / "run")
    assert (record.model.n_layer, record.model.n_embd) == (2, 32)
    # the run's own settings rebuild that shape (what --resume starts from), with no probe
    stored = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["train"]
    again = resolve_model_config(load_train_config(None, {**stored, "resume": True}), record.model.vocab_size)
    assert (again.n_layer, again.n_embd, again.n_head) == (2, 32, 2)
