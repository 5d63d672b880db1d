"""Trainer checkpoints: `last` is RUN_DIR itself, `best/` the best validation loss so far.

A `last` checkpoint is two files that must agree (model.safetensors and trainer_state.pt). They are
written into RUN_DIR/.saving/, a COMPLETE marker is written last, and only then are they renamed into
place. `recover` runs before any resume: a .saving without the marker is a save that died half way
(a crash, a full disk), so it is thrown away and the previous checkpoint stands; one with the marker died
while renaming, so the renames are finished. `best/` is built under a temporary name and swapped in.

trainer_state.pt holds only tensors and plain containers and is read with torch.load(weights_only=True):
loading a checkpoint never runs code. `pack_state` writes its content (STATE_VERSION) and `restore_state` puts
it back into a run's optimisers, generators, adapters and batch source.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from goushi import lora
from goushi.checkpoint import load_weights, save_weights
from goushi.device import DTYPES
from goushi.errors import GoushiError
from goushi.fsutil import atomic_dir, atomic_path, fsync_dir
from goushi.model import GPT
from goushi.precision import Plan
from goushi.rundir import BEST, LAST_WEIGHTS, SAVING, STATE, WEIGHTS
from goushi.train.budget import Budget
from goushi.train.config import TrainConfig
from goushi.train.source import BatchSource

COMPLETE = "COMPLETE"
STATE_VERSION = 1


# ---- RNG states as tensors and plain values (weights_only-loadable) -------------------------------
def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_generator.set_state(state["data"])


# ---- the trainer state -----------------------------------------------------------------------------
class Progress(NamedTuple):
    """How far a run is: the loop's counters."""

    step: int
    tokens: int
    elapsed_s: float
    best_val_loss: float
    best_step: int
    last_eval_step: int


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).replace("torch.", "") if dtype is not None else None


def pack_state(progress: Progress, *, budget: Budget, optimizers: list[dict[str, Any]], scaler: dict[str, Any],
               rngs: list[dict[str, Any]], source: dict[str, Any], adapters: dict[str, torch.Tensor],
               dtype: torch.dtype, attn_dtype: torch.dtype | None) -> dict[str, Any]:
    """trainer_state.pt's content: everything but the weights that decides the next step. `rngs` holds every
    process's RNG states (rng_state), in rank order; `adapters` LoRA's (the weights on disk have them merged)."""
    return {"version": STATE_VERSION, **progress._asdict(), "schedule": budget.schedule(), "budget": budget.key(),
            "optimizers": optimizers, "scaler": scaler, "rng": rngs, "world_size": len(rngs), "source": source,
            "adapters": adapters, "precision": {"dtype": _dtype_name(dtype), "attn_dtype": _dtype_name(attn_dtype)}}


def restore_state(state: dict[str, Any], run_dir: Path, *, optimizers: list[torch.optim.Optimizer],
                  load_optimizer: Callable[[torch.optim.Optimizer, dict[str, Any]], None],
                  scaler: torch.amp.GradScaler | None, rank: int, world: int, data_generator: torch.Generator,
                  source: BatchSource, adapters_of: torch.nn.Module | None, budget: Budget,
                  log: Callable[[str], None]) -> Progress:
    """Put pack_state's content back (from `load_state`); returns the counters. `adapters_of` is the model whose
    LoRA adapters it holds (None without LoRA). GoushiError when the state does not fit this run."""
    try:
        if len(state["optimizers"]) != len(optimizers):
            raise GoushiError(f"--resume: the run used a different optimizer; keep --optimizer as it was "
                              f"(this run: {len(state['optimizers'])} optimiser(s))")
        for opt, sd in zip(optimizers, state["optimizers"], strict=True):
            load_optimizer(opt, sd)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) != world:
            log(f"note: run saved with {len(rngs)} process(es), now {world}; data order continues exactly, dropout "
                f"randomness does not")
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0], data_generator)
        if adapters_of is not None:
            lora.load_adapter_state(adapters_of, state["adapters"])
        source.load_state_dict(state.get("source") or {})
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise GoushiError(f"{Path(run_dir) / STATE}: does not fit this run ({type(e).__name__}: {e}); "
                          f"start a new run with --force") from None
    if not budget.restore(state.get("budget"), state.get("schedule") or {}):
        log("note: budget changed since the run was saved; the schedule is planned again")
    return Progress(int(state["step"]), int(state["tokens"]), float(state["elapsed_s"]), float(state["best_val_loss"]),
                    int(state["best_step"]), int(state["last_eval_step"]))


def keep_precision(plan: Plan, state: dict[str, Any]) -> None:
    """A resumed run keeps the precision it started with (pack_state's "precision"), so it continues exactly."""
    kept = state.get("precision") or {}
    if kept.get("dtype") in DTYPES:
        plan.dtype = DTYPES[kept["dtype"]]
        plan.attn_dtype = DTYPES.get(kept.get("attn_dtype") or "")
        plan.precision_note = "the run's own, chosen when it started"


def load_start_weights(model: GPT, cfg: TrainConfig) -> None:
    """The weights a run starts from: on --resume its own last ones, with init_from that run's, else the random
    init stays. LoRA resumes from the frozen base weights plus the adapters in the trainer state (exactly); the
    run's own model.safetensors holds them merged, for every other reader."""
    if cfg.resume and not cfg.lora_rank:
        last = Path(cfg.out) / LAST_WEIGHTS  # the run ended serving best/'s weights (serve_best)
        load_weights(last if last.is_file() else Path(cfg.out) / WEIGHTS, model)
    elif cfg.init_from:
        base_weights = Path(cfg.init_from) / WEIGHTS
        if cfg.resume and not base_weights.is_file():
            raise GoushiError(f"--resume: this LoRA run trains adapters on the frozen weights of {cfg.init_from}, "
                              f"and {base_weights} is gone; put the base run back to continue")
        load_weights(base_weights, model, grow_vocab=True)


# ---- last ------------------------------------------------------------------------------------------
def recover(run_dir: str | Path) -> str | None:
    """Finish or discard an interrupted save; returns what was done (for a message) or None."""
    run_dir = Path(run_dir)
    saving = run_dir / SAVING
    if not saving.exists():
        return None
    if (saving / COMPLETE).is_file():
        (run_dir / LAST_WEIGHTS).unlink(missing_ok=True)  # the save being finished is the last step now
        for name in (WEIGHTS, STATE):
            if (saving / name).exists():
                os.replace(saving / name, run_dir / name)
        fsync_dir(run_dir)
        shutil.rmtree(saving, ignore_errors=True)
        return "finished a checkpoint save that was interrupted while renaming"
    shutil.rmtree(saving, ignore_errors=True)
    return "discarded a half-written checkpoint; resuming from the previous one"


def save_last(run_dir: str | Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    saving = run_dir / SAVING
    if saving.exists():
        shutil.rmtree(saving)
    saving.mkdir(parents=True)
    save_weights(saving / WEIGHTS, model)
    tmp = saving / STATE
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    with open(saving / COMPLETE, "wb") as f:
        f.write(b"ok\n")
        os.fsync(f.fileno())
    fsync_dir(saving)
    # From here on recover() rolls forward, so the pair can never be mixed (nor paired with last.safetensors).
    (run_dir / LAST_WEIGHTS).unlink(missing_ok=True)
    for name in (WEIGHTS, STATE):
        os.replace(saving / name, run_dir / name)
    fsync_dir(run_dir)
    shutil.rmtree(saving, ignore_errors=True)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise GoushiError(f"{path}: missing, so {run_dir} cannot be resumed; start a new run with --force "
                          f"or another --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GoushiError(f"{path}: not a readable trainer state ({first}); the file is corrupt or truncated, "
                          f"start a new run with --force") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise GoushiError(f"{path}: unknown trainer state format; start a new run with --force")
    return state


# ---- best ------------------------------------------------------------------------------------------
def save_best(run_dir: str | Path, model: torch.nn.Module, copy_files: list[str]) -> None:
    """RUN_DIR/best/: weights plus the files that make it a loadable run directory on its own."""
    run_dir = Path(run_dir)
    with atomic_dir(run_dir / BEST, force=True) as tmp:
        save_weights(tmp / WEIGHTS, model)
        for name in copy_files:
            src = run_dir / name
            if src.is_file():
                shutil.copy2(src, tmp / name)


def serve_best(run_dir: str | Path) -> bool:
    """Make RUN_DIR/model.safetensors best/'s weights, keeping the last step's in last.safetensors, which
    --resume continues from (the trainer state belongs to them). False when there is no best/ to serve. Each
    step is an atomic copy, so a crash leaves either the last weights served or both files right."""
    run_dir = Path(run_dir)
    best = run_dir / BEST / WEIGHTS
    if not best.is_file():
        return False
    if not (run_dir / LAST_WEIGHTS).is_file():
        with atomic_path(run_dir / LAST_WEIGHTS) as tmp:
            shutil.copyfile(run_dir / WEIGHTS, tmp)
    with atomic_path(run_dir / WEIGHTS) as tmp:
        shutil.copyfile(best, tmp)
    return True


__all__ = ["serve_best", "STATE_VERSION", "Progress", "pack_state", "restore_state", "keep_precision", "load_start_weights", "rng_state", "set_rng_state", "recover", "save_last", "load_state", "save_best"]
