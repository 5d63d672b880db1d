"""What a training run writes and says besides its checkpoints: config.json and copies of the tokenizer and
the data card when it starts; the summary, the loss plot and the model card when it ends (also into best/, so
that folder is a complete run directory on its own); the lines the log opens and closes with."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

import goushi
from goushi import rundir
from goushi.config import ModelConfig, param_counts
from goushi.device import describe_hardware
from goushi.fsutil import atomic_path, atomic_write_bytes
from goushi.model_card import write_model_card
from goushi.plots import loss_plot_png
from goushi.run_record import BaseRecord, RunRecord
from goushi.train.config import TrainConfig
from goushi.train.source import BatchSource

# Files that make best/ loadable and credited on its own (its weights are written by the checkpoint code).
BEST_COPIES = (rundir.CONFIG, rundir.TOKENIZER, rundir.DATA_CARD, rundir.MODEL_CARD)


def run_record(cfg: TrainConfig, model_config: ModelConfig, source: BatchSource, out: Path,
               base: BaseRecord | None = None) -> RunRecord:
    """RUN_DIR/config.json: the model, the settings that `--resume` starts from, the data it learned from,
    and (with init_from) the run it started from with that run's data."""
    train = cfg.to_dict()
    data = source.data_record()
    train["data"] = data.dir if data.dir is not None else train["data"]
    train["out"] = str(out.resolve())
    if cfg.init_from:
        train["init_from"] = str(Path(cfg.init_from).resolve())
    for k in ("resume", "force"):
        train.pop(k)
    return RunRecord(model=model_config, train=train, data=data, base=base, goushi_version=goushi.__version__,
                     **source.record_fields())


def write_start(out: Path, record: RunRecord, source: BatchSource) -> None:
    rundir.write_run(out, record)
    source.tokenizer.save(out / rundir.TOKENIZER)
    card = source.data_card()
    if card is not None:
        with atomic_path(out / rundir.DATA_CARD) as tmp:
            shutil.copyfile(card, tmp)


def write_end(out: Path, *, model_config: ModelConfig, summary: dict[str, Any], source: BatchSource,
              base: BaseRecord | None) -> None:
    """loss.png, MODEL_CARD.md (crediting the data's sources and, with init_from, the `base` run's), and the
    up-to-date card, config and tokenizer into best/."""
    png = loss_plot_png(rundir.read_metrics(out))
    if png is not None:
        atomic_write_bytes(out / rundir.LOSS_PLOT, png)
    data_meta = RunRecord(model=model_config, data=source.data_record(), base=base).card_data()
    card_summary = {k: v for k, v in summary.items() if k != "run_dir" and v is not None}
    write_model_card(out, model_config=model_config, train_summary=card_summary, data_meta=data_meta)
    best = out / rundir.BEST
    if best.is_dir():
        for name in BEST_COPIES:
            if (out / name).is_file():
                with atomic_path(best / name) as tmp:
                    shutil.copyfile(out / name, tmp)


# ---- what the log says -------------------------------------------------------------------------------
def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def opening_lines(cfg: TrainConfig, mc: ModelConfig, *, trainable: int, plan_lines: list[str], compiled: bool,
                  compile_note: str, device: torch.device, dtype: torch.dtype, processes: str, tokens_per_step: int,
                  peak: float, peak_src: str) -> list[str]:
    """What the run is, before its first step: the model, what trains, precision, compilation and machine."""
    counts = param_counts(mc)
    origin = f"weights of {cfg.init_from}" if cfg.init_from else f"preset {cfg.preset}"
    lines = [f"model: {mc.family}, {origin}, {counts['total']:,} parameters ({counts['non_embedding']:,} outside "
             f"embeddings), context {mc.context_length}, vocabulary {mc.vocab_size}"]
    if cfg.lora_rank:
        lines.append(f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha or 2 * cfg.lora_rank:g}: training {trainable:,} "
                     f"adapter parameters ({trainable / counts['total']:.2%} of the model); saved runs hold the merged "
                     f"weights")
    return lines + plan_lines + [
        f"torch.compile: {'on' if compiled else 'off'} ({compile_note})",
        f"device {device}, {_name(dtype)}{', compiled' if compiled else ''}, {processes}, {tokens_per_step:,} "
        f"tokens/step, budget {cfg.budget_summary()}; peak {peak / 1e9:,.0f} GFLOP/s ({peak_src})",
        f"uniform guess loss = ln(vocab) = ln({mc.vocab_size}) = {math.log(mc.vocab_size):.3f}; a learning model "
        f"drops well below it"]


def run_summary(cfg: TrainConfig, mc: ModelConfig, *, out: Path, step: int, planned_steps: int | None, tokens: int,
                seconds: float, stop_reason: str, device: torch.device, dtype: torch.dtype, processes: int,
                fsdp: bool, trainable: int, last_loss: float, last_eval: dict[str, Any], best_val: float,
                best_step: int, tokens_per_s: float | None, served_best: bool = False) -> dict[str, Any]:
    """What `train` returns, and the model card's training section: where the run got to, on what, how well."""
    return {
        "run_dir": str(out), "steps": step, "planned_steps": planned_steps, "tokens": tokens,
        "seconds": round(seconds, 2), "stop_reason": stop_reason, "device": str(device),
        "hardware": describe_hardware(device), "dtype": _name(dtype), "processes": processes,
        "fsdp": True if fsdp else None, "preset": cfg.preset, "family": mc.family, "optimizer": cfg.optimizer,
        "batch_size": cfg.batch_size, "learning_rate": cfg.lr, "parameters": param_counts(mc)["total"],
        "trainable_parameters": trainable, "lora_rank": cfg.lora_rank or None,
        "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
        "final_train_loss": last_loss, "final_val_loss": last_eval.get("val_loss"),
        "final_val_ppl": last_eval.get("val_ppl"), "final_val_bpc": last_eval.get("val_bpc"),
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "best_step": best_step if best_step >= 0 else None, "tokens_per_s": tokens_per_s,
        # model.safetensors holds the best validation loss's weights, not the last step's (--serve best)
        "served": "best" if served_best else "last",
    }


def closing_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """What the log says when a run ends: how to continue an interrupted one; what a finished one did, and what to
    do when it learned its text by heart."""
    if summary["stop_reason"] == "interrupted":
        return [f"stopped at step {summary['steps']}; checkpoint saved. Continue with: goushi train --out {out} "
                f"--resume"]
    why = " (early stop: validation loss stopped improving)" if summary["stop_reason"] == "early stop" else ""
    done = f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f}s{why}; run " \
           f"directory {out}"
    if summary.get("served") == "best":
        return [done, f"serving the best weights: step {summary['best_step']}, validation loss "
                f"{summary['best_val_loss']:.4f} ({summary['final_val_loss']:.4f} at the end); {out / rundir.WEIGHTS} "
                f"holds them, the last step's wait in {out / rundir.LAST_WEIGHTS} for --resume"]
    hint = overfit_hint(summary, out)
    return [done] + ([hint] if hint else [])


# A final validation loss this much (nats) above the best one is past noise: the model has started to learn its
# training text by heart.
OVERFIT_NATS = 0.02


def overfit_hint(summary: dict[str, Any], out: Path) -> str | None:
    """What to do when validation loss rose after its best step (small corpora passed over many times), else None."""
    best, final = summary.get("best_val_loss"), summary.get("final_val_loss")
    if best is None or final is None or summary.get("best_step") in (None, summary.get("steps")):
        return None
    if final - best < OVERFIT_NATS:
        return None
    return (f"validation loss was lowest at step {summary['best_step']} ({best:.4f}; {final:.4f} at the end): the "
            f"model learned its training text by heart after that. {out / rundir.BEST} holds the weights of that "
            f"step (goushi sample {out / rundir.BEST}); more text or a shorter run would do better")


__all__ = ["BEST_COPIES", "run_record", "write_start", "write_end", "opening_lines", "run_summary", "closing_lines",
           "overfit_hint", "OVERFIT_NATS"]
