"""Training: `train(config) -> summary` and the pieces it is made of.

    from goushi.train import TrainConfig, train
    summary = train(TrainConfig(data="data/", out="runs/tiny", preset="tiny", time_budget="5m"))

Modules: config (TrainConfig), source (the batch-source interface), data (token shards, one source),
budget (how long a run lasts), optim (AdamW/Muon, schedules), metrics (metrics.jsonl, throughput),
checkpoint (last/best, trainer state), artifacts (config.json, model card, the log's opening and closing
lines ...), distributed (torchrun, FSDP), interrupt (Ctrl-C), trainer (the loop that wires them). Nothing
here imports the generation engine or evaluation: samples printed during training come from a Sampler the caller
hands in.
"""

from __future__ import annotations

from goushi.train.config import (
           TrainConfig,
           load_train_config,
           parse_duration,
           resolve_model_config,
           run_config,
)
from goushi.train.source import IGNORE_INDEX, BatchSource
from goushi.train.trainer import Sampler, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train", "Sampler", "load_train_config", "run_config", "parse_duration",
           "resolve_model_config", "BatchSource", "IGNORE_INDEX"]
