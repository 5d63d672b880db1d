"""The one checkpoint format: a self-describing directory, loaded by `load_run` and nothing else.

    RUN_DIR/model.safetensors   weights (no pickle; no `_orig_mod.` / `module.` prefixes; tied head omitted)
    RUN_DIR/config.json         {"model": ModelConfig, "train": ..., "data": ..., "goushi_version": ...}
    RUN_DIR/tokenizer.json      the tokenizer the model was trained with
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from goushi.config import ConfigError, ModelConfig
from goushi.errors import GoushiError
from goushi.fsutil import atomic_path, atomic_write_json
from goushi.model import GPT

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
_PREFIXES = ("_orig_mod.", "module.")


def clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with wrapper prefixes stripped (torch.compile, DDP) and the tied head left out."""
    if hasattr(model, "module"):  # DistributedDataParallel
        model = model.module
    if hasattr(model, "_orig_mod"):  # torch.compile
        model = model._orig_mod
    sd = {}
    for k, v in model.state_dict().items():
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


def load_weights(path: str | Path, model: GPT) -> None:
    """Strict load: a missing or unexpected tensor is an error, never a silently random model."""
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
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise GoushiError(f"{path}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise GoushiError(f"{path}: tensor {k} has shape {tuple(v.shape)}, config.json expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=True)


def write_config(run_dir: str | Path, info: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, info)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoushiError(f"{path}: missing; {run_dir} is not a run directory (train one with `goushi train`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or "model" not in info:
        raise GoushiError(f"{path}: has no \"model\" section; not a goushi run directory")
    return info


@dataclass
class Run:
    model: GPT
    config: ModelConfig
    tokenizer: Any  # goushi.tokenizer.Tokenizer
    run_dir: Path
    info: dict[str, Any] = field(default_factory=dict)


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GoushiError(f"{run_dir}: no such run directory (train one with `goushi train --out {run_dir}`)")
    missing = [n for n in (CONFIG, WEIGHTS, TOKENIZER) if not (run_dir / n).is_file()]
    if missing:
        raise GoushiError(f"{run_dir}: not a run directory, missing {', '.join(missing)}")
    return run_dir


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Run:
    """Load model, config and tokenizer from a run directory; needs no other file and no flag."""
    from goushi.tokenizer import Tokenizer  # the tokenizer layer sits beside, not below, the model

    run_dir = check_run_dir(run_dir)
    info = read_config(run_dir)
    try:
        cfg = ModelConfig.from_dict(info["model"], source=str(run_dir / CONFIG))
    except ConfigError as e:
        raise GoushiError(str(e)) from None
    tok = Tokenizer.from_file(run_dir / TOKENIZER)
    if tok.vocab_size > cfg.vocab_size:
        raise GoushiError(f"{run_dir / TOKENIZER}: {tok.vocab_size} tokens but the model has vocab_size={cfg.vocab_size}")
    model = GPT(cfg)
    load_weights(run_dir / WEIGHTS, model)
    model.to(device)
    if dtype is not None:
        model.to(dtype=dtype)
    model.eval()
    return Run(model=model, config=cfg, tokenizer=tok, run_dir=run_dir, info=info)
