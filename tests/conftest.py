"""Shared fixtures. Everything here is built from a few made-up sentences in a temporary directory;
no test reads the corpus or ../shared."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# goushi.precision picks precision and threads by timing this machine; tests need the same answer everywhere
# (fp32, torch's threads), whatever the developer's shell says. Subprocesses (CLI, torchrun) inherit it.
# tests/test_precision.py turns it back on where it tests the probe.
os.environ["GOUSHI_PROBE"] = "0"
os.environ.pop("GOUSHI_REPROBE", None)
# What this machine measured before (~/.cache/goushi/speed.json: compile gains, probes, peaks) must never decide
# anything in a test: the whole session, and the processes it starts, get an empty cache of their own.
_CACHE = tempfile.mkdtemp(prefix="goushi-test-cache-")
os.environ["GOUSHI_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def pytest_report_header(config) -> str:
    """Which machine a run was on, so a red run says so (the CPU decides precision and speed, never a result)."""
    from goushi.precision import describe_cpu

    return f"CPU: {describe_cpu()}"

# Enough text for a char tokenizer (every character once or more) and a small BPE.
TINY_TEXTS = [
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "今天我终于学会了做饭，味道还不错。",
    "今天疯狂星期四，V我50！我们去吃肯德基吧。",
    "好评！物流很快，东西不错，下次还来。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
] * 20


def build_run(run_dir: Path, *, kind: str = "char", family: str = "gpt2", seed: int = 0, bpe_pre: str | None = None,
              **model_overrides) -> Path:
    """A complete run directory (weights, config.json, tokenizer.json) with a random tiny model; a BPE one
    behind the pre-tokenizer `bpe_pre` (default: goushi's default)."""
    import torch

    from goushi.checkpoint import save_weights
    from goushi.config import preset_config
    from goushi.model import GPT
    from goushi.run_record import RunRecord
    from goushi.rundir import write_run
    from goushi.tokenizer import Tokenizer

    pre = {"pre": bpe_pre} if bpe_pre else {}
    tok = Tokenizer.train_char(TINY_TEXTS) if kind == "char" else Tokenizer.train_bpe(TINY_TEXTS, vocab_size=400, **pre)
    shape = dict(n_layer=2, n_head=4, n_embd=64, context_length=64)
    shape.update(model_overrides)
    cfg = preset_config("tiny", family, vocab_size=tok.vocab_size, **shape)
    torch.manual_seed(seed)
    model = GPT(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", model)
    write_run(run_dir, RunRecord(model=cfg))
    tok.save(run_dir / "tokenizer.json")
    return run_dir


@pytest.fixture(scope="session")
def make_run(tmp_path_factory) -> Callable[..., Path]:
    """make_run(kind="char"|"bpe", family="gpt2"|"llama", **model_overrides) -> run directory.
    Runs with the same arguments are built once per session; treat them as read-only."""
    built: dict[tuple, Path] = {}

    def make(kind: str = "char", family: str = "gpt2", **overrides) -> Path:
        key = (kind, family, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = build_run(tmp_path_factory.mktemp(f"run_{kind}_{family}"), kind=kind, family=family, **overrides)
        return built[key]

    return make
