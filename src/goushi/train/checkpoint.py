"""Trainer checkpoints: `last` is RUN_DIR itself, `best/` the best validation loss so far.

A `last` checkpoint is two files that must agree (model.safetensors and trainer_state.pt). They are
written into RUN_DIR/.saving/, a COMPLETE marker is written last, and only then are they renamed into
place. `recover` runs before any resume: a .saving without the marker is a save that died half way
(a crash, a full disk), so it is thrown away and the previous checkpoint stands; one with the marker died
while renaming, so the renames are finished. `best/` is built under a temporary name and swapped in.

trainer_state.pt holds only tensors and plain containers and is read with torch.load(weights_only=True):
loading a checkpoint never runs code.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goushi.checkpoint import save_weights
from goushi.errors import GoushiError
from goushi.fsutil import atomic_dir, fsync_dir
from goushi.rundir import BEST, SAVING, STATE, WEIGHTS

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


# ---- last ------------------------------------------------------------------------------------------
def recover(run_dir: str | Path) -> str | None:
    """Finish or discard an interrupted save; returns what was done (for a message) or None."""
    run_dir = Path(run_dir)
    saving = run_dir / SAVING
    if not saving.exists():
        return None
    if (saving / COMPLETE).is_file():
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
    # From here on recover() rolls forward, so the pair can never be mixed.
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


__all__ = ["STATE_VERSION", "rng_state", "set_rng_state", "recover", "save_last", "load_state", "save_best"]
