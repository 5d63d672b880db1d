"""What a batch's loss is, when it is not the next-token loss of the batch's targets.

The trainer's own loss is the model's: mean cross-entropy over the targets that carry loss. An objective
replaces it for training methods that score whole answers against each other (DPO: goushi.sft.dpo), while
the trainer keeps everything else: batches, budgets, checkpoints, exact resume, the metrics log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from goushi.train.source import Batch


@runtime_checkable
class Objective(Protocol):
    def loss(self, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one (micro-)batch, to back-propagate. `net` is what to call for the trained forward pass
        (wrapped for several processes or compiled); `model` is the plain model underneath (for a reference
        pass that must not synchronise gradients). Called under the run's autocast."""

    def eval_sums(self, model: nn.Module, batches: Iterator[Batch], autocast: Callable[[], AbstractContextManager],
                  device: torch.device) -> list[float]:
        """Sums over this process's validation batches (model in eval mode, no gradients); the trainer adds them
        up over processes, so eval_record sees totals."""

    def eval_record(self, totals: list[float]) -> dict[str, float]:
        """The evaluation's metrics from eval_sums' totals; "val_loss" decides the best step."""

    def describe(self, rec: dict[str, Any]) -> str:
        """The log line of one evaluation (after "step N: ")."""

    def summary(self, rec: dict[str, Any]) -> dict[str, Any]:
        """What the run summary and the model card add from the last evaluation."""


__all__ = ["Objective"]
