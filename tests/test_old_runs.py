"""Runs written by goushi before the typed run record (commit c02bcbf; tests/fixtures/make_old_runs.py made
them) still load, chat, export and resume exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from goushi import rundir
from goushi.checkpoint import load_run
from goushi.engine import Engine, SampleConfig
from goushi.train import train
from goushi.train.config import run_config

OLD = Path(__file__).parent / "fixtures" / "runs_c02bcbf"


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy (the tests write into the runs): the absolute paths recorded in them no longer exist, as when a
    user moves their runs to another machine."""
    shutil.copytree(OLD, tmp_path / "old")
    return tmp_path / "old"


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rundir.read_metrics(run_dir) if "loss" in r}


def resume(run_dir: Path, data: Path, **kw):
    return train(run_config(None, {"out": str(run_dir), "resume": True, "data": str(data), **kw}), progress=False,
                 log=lambda _m: None)


def test_an_old_interrupted_run_resumes_exactly(old, tmp_path):
    shutil.copytree(old / "pretrain", tmp_path / "twice")
    once = resume(old / "pretrain", old / "data")
    assert once["steps"] == 12 and once["stop_reason"] == "budget"
    before = losses(OLD / "pretrain")
    after = losses(old / "pretrain")
    assert sorted(after) == list(range(1, 13)) and all(after[s] == before[s] for s in before)

    # Resumed in one go or stopped again at step 9 and resumed: the same steps, bit for bit, on this machine.
    def stop_at_9(step: int, loss: float) -> None:
        if step == 9:
            raise KeyboardInterrupt

    cfg = run_config(None, {"out": str(tmp_path / "twice"), "resume": True, "data": str(old / "data")})
    assert train(cfg, on_step=stop_at_9, progress=False, log=lambda _m: None)["steps"] == 9
    twice = resume(tmp_path / "twice", old / "data")
    assert twice["final_val_loss"] == once["final_val_loss"] and losses(tmp_path / "twice") == after
    a, b = load_run(old / "pretrain").model.state_dict(), load_run(tmp_path / "twice").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # And it continues the old run's own path: the uninterrupted run the old code trained ends where this one
    # does (not bit for bit: that run's steps 8-12 ran on the machine that made the fixture).
    whole = losses(OLD / "whole")
    for s in range(8, 13):
        assert after[s] == pytest.approx(whole[s], rel=1e-4), s


def test_an_old_chat_run_loads_answers_and_exports(old, tmp_path):
    engine = Engine.load(old / "chat")
    assert engine.is_chat and engine.chat_template.turn_end == "<|im_end|>"
    out = engine.chat([{"role": "user", "content": "写一句今天"}], SampleConfig(strategy="greedy", max_new_tokens=4))[0]
    assert len(out.token_ids) <= 4 and "<|im_start|>" not in out.text
    from goushi.export import export_hf

    hf = export_hf(old / "chat", tmp_path / "hf")
    card = (hf / "README.md").read_text(encoding="utf-8")
    assert "CC0-1.0" in card  # the base run's data is still credited
    assert json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
