"""Weights: safetensors in and out of a GPT; `open_run`, the one reader of a run directory's model shape and
tokenizer, and `load_run`, the one loader of a run.

Weights never go through pickle; saved state dicts carry no `_orig_mod.` / `module.` prefixes and leave a
tied LM head out; loads are strict. The directory's other files belong to goushi.rundir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from goushi import rundir
from goushi.config import ModelConfig
from goushi.errors import GoushiError
from goushi.fsutil import atomic_path
from goushi.lora import plain_state_dict
from goushi.model import GPT
from goushi.run_record import RunRecord
from goushi.tokenizer import Tokenizer

_PREFIXES = ("_orig_mod.", "module.")


def clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with wrapper prefixes stripped (torch.compile, DDP), LoRA adapters folded into their
    projections (a saved run is always a plain model) and the tied head left out."""
    if hasattr(model, "module"):  # DistributedDataParallel
        model = model.module
    if hasattr(model, "_orig_mod"):  # torch.compile
        model = model._orig_mod
    sd = {}
    for k, v in plain_state_dict(model).items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        sd[k] = v.detach().contiguous().cpu()
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    with atomic_path(path) as tmp:
        save_file(clean_state_dict(model), str(tmp), metadata={"format": "pt", "producer": "goushi"})


def load_weights(path: str | Path, model: GPT, *, grow_vocab: bool = False) -> None:
    """Strict load: a missing or unexpected tensor is an error, never a silently random model. `grow_vocab`: the
    model's vocabulary extends the file's (a tokenizer grown by `goushi data build --extend-vocab`); the new rows
    of the embedding (and an untied head) start at the mean of the old ones, so a new token starts as an average
    one, neither favoured nor ruled out."""
    path = Path(path)
    try:
        sd = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise GoushiError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise GoushiError(f"{path}: not a readable safetensors file ({e}); the file is corrupt or truncated, "
                          f"use another checkpoint (e.g. best/) or retrain") from None
    if model.config.tie_embeddings:
        sd.setdefault("lm_head.weight", sd.get("wte.weight"))
    own = model.state_dict()
    if grow_vocab:
        for k in ("wte.weight", "lm_head.weight"):
            v, rows = sd.get(k), own[k].shape[0] if k in own else 0
            if v is not None and v.dim() == 2 and v.shape[0] < rows and v.shape[1:] == own[k].shape[1:]:
                sd[k] = torch.cat([v, v.mean(0, keepdim=True).expand(rows - v.shape[0], -1)])
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise GoushiError(f"{path}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise GoushiError(f"{path}: tensor {k} has shape {tuple(v.shape)}, config.json expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=True)


@dataclass
class RunFiles:
    """What a run directory says about its model before any weights are read."""

    run_dir: Path
    record: RunRecord  # config.json
    config: ModelConfig
    tokenizer: Tokenizer


def open_run(run_dir: str | Path, *, role: str = "") -> RunFiles:
    """A run's config.json, model shape and tokenizer, checked: the first thing a loader, a fine-tune of a run and a
    run started from another (--init-from) read. `role` names the argument when the path is no run at all."""
    path = Path(run_dir)
    if role and not rundir.looks_like_run(path):
        raise GoushiError(f"{role} {path}: not a run directory (no {rundir.CONFIG}); give a run written by "
                          "`goushi train`")
    path = rundir.check_run_dir(path)
    record = rundir.read_run(path)
    cfg = record.model
    tok = Tokenizer.from_file(path / rundir.TOKENIZER)
    if tok.vocab_size > cfg.vocab_size:
        raise GoushiError(f"{path / rundir.TOKENIZER}: {tok.vocab_size} tokens but the model has "
                          f"vocab_size={cfg.vocab_size}")
    return RunFiles(run_dir=path, record=record, config=cfg, tokenizer=tok)


@dataclass
class Run:
    model: GPT
    config: ModelConfig
    tokenizer: Tokenizer
    run_dir: Path
    record: RunRecord | None = None  # config.json; None for a model built in memory


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Run:
    """Load model, config and tokenizer from a run directory; needs no other file and no flag."""
    files = open_run(run_dir)
    model = GPT(files.config)
    load_weights(files.run_dir / rundir.WEIGHTS, model)
    model.to(device)
    if dtype is not None:
        model.to(dtype=dtype)
    model.eval()
    return Run(model=model, config=files.config, tokenizer=files.tokenizer, run_dir=files.run_dir, record=files.record)
