"""Training: `train(config) -> summary` and the pieces it is made of.

    from goushi.train import TrainConfig, train
    summary = train(TrainConfig(data="data/", out="runs/tiny", preset="tiny", time_budget="5m"))

Modules: config (TrainConfig), data (memmapped batches), optim (AdamW/Muon, schedules),
checkpoint (last/best, trainer state), distributed (torchrun), trainer (the loop).
"""

from __future__ import annotations

from goushi.train.config import (
           TrainConfig,
           load_train_config,
           parse_duration,
           resolve_model_config,
           run_config,
)
from goushi.train.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train", "load_train_config", "run_config", "parse_duration",
           "resolve_model_config"]
