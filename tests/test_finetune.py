"""Fine-tuning a run: early stopping (--patience) and serving the best validation weights (--serve best), with
exact resume from the last step's weights; the fine-tuning recipe a run started from another one gets."""

from __future__ import annotations

import shutil

import pytest
import torch

from goushi import rundir
from goushi.checkpoint import load_run
from goushi.errors import ConfigError
from goushi.train import train
from goushi.train.trainer import Trainer
from test_train import cfg_for, losses, make_data_dir, quiet, random_docs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    docs = random_docs(300, 3)
    return make_data_dir(tmp_path_factory.mktemp("ft") / "d", docs[:270], docs[270:])


def scripted_val(monkeypatch, losses_by_step: dict[int, float]):
    """Validation losses decided by the test (the training steps stay real), so when the best comes is known."""
    real = Trainer.evaluate

    def evaluate(self):
        rec = real(self)
        loss = losses_by_step.get(self.step, rec["val_loss"])
        return {**rec, "val_loss": loss}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patience_stops_after_that_many_evaluations_without_a_new_best(tmp_path, data_dir, monkeypatch):
    scripted_val(monkeypatch, {0: 5.0, 2: 4.0, 4: 4.5, 6: 4.2, 8: 4.1, 10: 3.0})
    s = train(cfg_for(data_dir, tmp_path / "run", max_steps=12, eval_every=2, patience=3, sample_tokens=0),
              progress=False, log=quiet)
    # best at step 2; 4, 6 and 8 do not beat it: stopped at step 8, before the better 10 it never saw
    assert s["stop_reason"] == "early stop" and s["steps"] == 8 and s["best_step"] == 2
    assert s["served"] == "last"  # --serve last (the default) leaves the last weights in place
    with pytest.raises(ConfigError, match="patience=2 needs eval_every > 0"):
        cfg_for(data_dir, tmp_path / "x", patience=2, eval_every=0)
    with pytest.raises(ConfigError, match="serve='first' is not one of last, best"):
        cfg_for(data_dir, tmp_path / "x", serve="first")


def test_serving_the_best_keeps_the_last_weights_for_an_exact_resume(tmp_path, data_dir, monkeypatch, capsys):
    scripted_val(monkeypatch, {0: 5.0, 2: 4.0, 4: 4.5, 6: 4.6})
    kw = dict(eval_every=2, sample_tokens=0, save_every=0)
    logged: list[str] = []
    s = train(cfg_for(data_dir, tmp_path / "best", max_steps=6, serve="best", **kw), progress=False,
              log=logged.append)
    run = tmp_path / "best"
    assert s["served"] == "best" and s["best_step"] == 2 and s["steps"] == 6
    assert same(weights(run / rundir.WEIGHTS), weights(run / rundir.BEST / rundir.WEIGHTS))
    assert not same(weights(run / rundir.LAST_WEIGHTS), weights(run / rundir.WEIGHTS))
    assert any(line.startswith("serving the best weights: step 2") for line in logged)
    assert load_run(run).model is not None  # what every reader loads: the served weights

    # The same run serving its last weights, then both resumed for 4 more steps: bit for bit the same.
    train(cfg_for(data_dir, tmp_path / "last", max_steps=6, **kw), progress=False, log=quiet)
    for name in ("best", "last"):
        train(cfg_for(data_dir, tmp_path / name, max_steps=10, resume=True, serve="last", **kw), progress=False,
              log=quiet)
    assert losses(tmp_path / "best") == losses(tmp_path / "last")
    assert same(weights(tmp_path / "best" / rundir.WEIGHTS), weights(tmp_path / "last" / rundir.WEIGHTS))
    assert not (run / rundir.LAST_WEIGHTS).exists()  # the next checkpoint is the last step again


def test_a_crash_while_saving_after_serving_the_best_never_pairs_old_weights_with_a_new_state(tmp_path, data_dir,
                                                                                              monkeypatch):
    from goushi.train import checkpoint as ckpt

    scripted_val(monkeypatch, {0: 5.0, 2: 4.0, 4: 4.5})
    train(cfg_for(data_dir, tmp_path / "run", max_steps=4, eval_every=2, sample_tokens=0, save_every=0,
                  serve="best"), progress=False, log=quiet)
    run = tmp_path / "run"
    assert (run / rundir.LAST_WEIGHTS).is_file()
    # A save that completed its files but died before renaming them: recover() rolls it forward, and the
    # old last.safetensors must not survive beside the new state.
    saving = run / rundir.SAVING
    saving.mkdir()
    shutil.copy(run / rundir.LAST_WEIGHTS, saving / rundir.WEIGHTS)
    shutil.copy(run / rundir.STATE, saving / rundir.STATE)
    (saving / ckpt.COMPLETE).write_bytes(b"ok\n")
    assert "finished a checkpoint save" in ckpt.recover(run)
    assert not (run / rundir.LAST_WEIGHTS).exists() and not saving.exists()


def test_goushi_train_from_another_run_fine_tunes_and_says_so(tmp_path, data_dir, capsys):
    from goushi.cli import main

    train(cfg_for(data_dir, tmp_path / "base", max_steps=6, eval_every=0, sample_tokens=0), progress=False, log=quiet)
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "child"), "--init-from",
                 str(tmp_path / "base"), "--max-steps", "40", "--eval-every", "5", "--sample-tokens", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "recipe: finetune, chosen for a run that starts from another run's weights" in out
    record = rundir.read_run(tmp_path / "child")
    assert record.train["patience"] == 4 and record.train["serve"] == "best" and record.base is not None
