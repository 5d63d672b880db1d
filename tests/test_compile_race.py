"""torch.compile raced against eager on a run's first steps: who races, how the winner is chosen and kept, and that
every raced step is a real training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from goushi import precision
from goushi.checkpoint import load_run
from goushi.config import preset_config
from goushi.train import compile_race, train
from test_train import cfg_for, losses, make_data_dir, quiet, random_docs


class Wrapped(nn.Module):
    """What torch.compile gives, without compiling: the same module behind a wrapper (as OptimizedModule has)."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod
        self.calls = 0

    def forward(self, *a, **kw):
        self.calls += 1
        return self._orig_mod(*a, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    docs = random_docs(200, 1)
    return make_data_dir(tmp_path_factory.mktemp("data") / "d", docs[:180], docs[180:])


def key():
    return (preset_config("tiny", family="llama", vocab_size=300), 8, torch.float32)


def test_the_race_alternates_and_keeps_the_faster_net_and_remembers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path))
    eager = nn.Linear(2, 2)
    for compiled_s, eager_s, kept in ((0.5, 1.0, True), (1.0, 0.5, False)):
        race = compile_race.CompileRace(eager, Wrapped(eager), key())
        order = []
        verdict = None
        while verdict is None:
            net = race.net()
            order.append("c" if net is race.compiled else "e")
            # the first compiled step pays 60 s of compiling
            verdict = race.timed((60.0 if len(order) == 1 else 0.0) + (compiled_s if order[-1] == "c" else eager_s))
        assert "".join(order) == "cc" + "ec" * compile_race.ROUNDS
        assert (race.winner is race.compiled) is kept
        assert ("kept" if kept else "dropped") in verdict and f"{eager_s / compiled_s:.2f}x" in verdict
        entry = precision.cache_get("compile", precision.compile_key(*key()))
        assert {k: entry[k] for k in ("eager_s", "compiled_s", "compile_s")} == {
            "eager_s": eager_s, "compiled_s": compiled_s, "compile_s": 60.0}
        monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path / "next"))


def test_who_races(tmp_path, monkeypatch):
    monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    long = dict(budget_seconds=600.0, steps=None, processes=1)
    assert not compile_race.wanted("auto", cpu, key(), **long)  # the tests' GOUSHI_PROBE=0: never measure
    monkeypatch.setenv("GOUSHI_PROBE", "1")
    assert compile_race.wanted("auto", cpu, key(), **long)
    assert compile_race.wanted("auto", cpu, key(), budget_seconds=None, steps=compile_race.MIN_STEPS, processes=1)
    assert not compile_race.wanted("auto", cpu, key(), budget_seconds=60.0, steps=100, processes=1)  # too short
    assert not compile_race.wanted("on", cpu, key(), **long) and not compile_race.wanted("off", cpu, key(), **long)
    assert not compile_race.wanted("auto", cpu, key(), **{**long, "processes": 2})
    assert not compile_race.wanted("auto", torch.device("meta"), key(), **long)
    precision.record_compile(*key(), eager_s=1.0, compiled_s=0.5, compile_s=10.0)
    assert not compile_race.wanted("auto", cpu, key(), **long)  # measured: should_compile decides from it


def test_a_raced_run_trains_exactly_as_an_eager_one_and_says_what_won(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("GOUSHI_THREADS", "1")  # the thread count is not raced either: same sums in both runs
    monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GOUSHI_PROBE", "1")
    eager = train(cfg_for(data_dir, tmp_path / "eager", max_steps=14, compile="off", dtype="float32"),
                  progress=False, log=quiet)
    monkeypatch.setattr(compile_race, "MIN_STEPS", 10)
    monkeypatch.setattr(compile_race.torch, "compile", Wrapped)
    lines: list[str] = []
    raced = train(cfg_for(data_dir, tmp_path / "raced", max_steps=14, dtype="float32"), progress=False,
                  log=lines.append)
    assert any("raced against eager on the first steps" in ln for ln in lines)
    assert sum("torch.compile raced on this run's first steps" in ln for ln in lines) == 1
    assert losses(tmp_path / "raced") == losses(tmp_path / "eager")  # every raced step trained, exactly
    assert raced["final_val_loss"] == eager["final_val_loss"]
    mc = load_run(tmp_path / "raced").model.config
    assert precision.cache_get("compile", precision.compile_key(mc, 8, torch.float32)) is not None
    # measured now: the next run of this shape decides from the cache and does not race
    lines.clear()
    train(cfg_for(data_dir, tmp_path / "next", max_steps=14, dtype="float32"), progress=False, log=lines.append)
    assert not any("raced against eager" in ln or "compile raced" in ln for ln in lines)
