"""What a training run writes into RUN_DIR besides its checkpoints: config.json and copies of the
tokenizer and the data card when it starts; the loss plot and the model card when it ends (also into
best/, so that folder is a complete run directory on its own)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import goushi
from goushi import rundir
from goushi.config import ModelConfig
from goushi.fsutil import atomic_path, atomic_write_bytes
from goushi.model_card import write_model_card
from goushi.plots import loss_plot_png
from goushi.train.config import TrainConfig
from goushi.train.source import BatchSource

# Files that make best/ loadable and credited on its own (its weights are written by the checkpoint code).
BEST_COPIES = (rundir.CONFIG, rundir.TOKENIZER, rundir.DATA_CARD, rundir.MODEL_CARD)


def config_info(cfg: TrainConfig, model_config: ModelConfig, source: BatchSource, out: Path,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """RUN_DIR/config.json: the model, the settings that `--resume` starts from, the data it learned from,
    and (with init_from) the run it started from with that run's data."""
    train = cfg.to_dict()
    data = source.run_info()
    train["data"] = data.get("dir", train["data"])
    train["out"] = str(out.resolve())
    if cfg.init_from:
        train["init_from"] = str(Path(cfg.init_from).resolve())
    for k in ("resume", "force"):
        train.pop(k)
    info: dict[str, Any] = {"model": model_config.to_dict(), "train": train, "data": data,
                            **source.config_entries(), "goushi_version": goushi.__version__}
    if base is not None:
        info["base"] = base
    return info


def base_info(init_dir: Path, init_config: dict[str, Any]) -> dict[str, Any]:
    """What a run started from another one records about it: where, and whose data that run learned from
    (its sources keep their credit in the new model card)."""
    data = rundir.data_section(init_config)
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return {"run_dir": str(init_dir.resolve()), "data_dir": data.get("dir"), "sources": meta.get("sources") or {},
            "base": init_config.get("base")}


def write_start(out: Path, info: dict[str, Any], source: BatchSource) -> None:
    rundir.write_config(out, info)
    source.tokenizer.save(out / rundir.TOKENIZER)
    card = source.data_card()
    if card is not None:
        with atomic_path(out / rundir.DATA_CARD) as tmp:
            shutil.copyfile(card, tmp)


def write_end(out: Path, *, model_config: ModelConfig, summary: dict[str, Any], data_meta: dict[str, Any]) -> None:
    """loss.png, MODEL_CARD.md, and the up-to-date card, config and tokenizer into best/."""
    png = loss_plot_png(rundir.read_metrics(out))
    if png is not None:
        atomic_write_bytes(out / rundir.LOSS_PLOT, png)
    card_summary = {k: v for k, v in summary.items() if k != "run_dir" and v is not None}
    write_model_card(out, model_config=model_config, train_summary=card_summary, data_meta=data_meta)
    best = out / rundir.BEST
    if best.is_dir():
        for name in BEST_COPIES:
            if (out / name).is_file():
                with atomic_path(best / name) as tmp:
                    shutil.copyfile(out / name, tmp)


__all__ = ["BEST_COPIES", "config_info", "base_info", "write_start", "write_end"]
