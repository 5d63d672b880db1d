"""What the trainer needs from its data: a batch source.

The token shards of a DATA_DIR (goushi.train.data.TokenData) are one; a chat dataset with loss masks is
the next. The trainer knows nothing else about where batches come from.

A batch is `(x, y)`: input ids and target ids, both (rows, context) int64 on the CPU; a target of
IGNORE_INDEX carries no loss (padding, or a prompt the model should read but not learn to write).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from goushi.model import IGNORE_INDEX  # the model's loss skips such targets: part of the batch format
from goushi.run_record import DataRecord
from goushi.tokenizer import Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class BatchSource(Protocol):
    tokenizer: Tokenizer  # what the ids mean; copied into RUN_DIR
    vocab_size: int  # ids are below this
    tokens_per_char: float | None  # of the validation text: turns nats per token into bits per character

    def check_context(self, context: int) -> None:
        """GoushiError when the data cannot fill windows of `context` tokens."""

    def train_batch(self, batch: int, context: int, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> Batch:
        """This process's rows of one global batch of `batch` rows, drawn with `generator` only (every
        process draws the same global batch, so the generator state alone resumes the data order)."""

    def val_batches(self, n_batches: int, batch: int, context: int, rank: int = 0,
                    world: int = 1) -> Iterator[Batch]:
        """The same validation batches at every evaluation (so losses compare across steps), this
        process's share of them."""

    def count_tokens(self, targets: torch.Tensor) -> int:
        """How many targets of a batch carry loss: the tokens the model learned from."""

    def sample_prompt(self) -> str | list[dict[str, str]]:
        """What the samples printed during training continue: a short text in the data's own style, or a
        conversation (chat messages) the model answers."""

    def data_record(self) -> DataRecord:
        """What the run's record says it learned from: the DATA_DIR, the tokenizer's hash and the meta whose
        "sources" ({id: {"docs", "chars", "share", "license", "author", "url"}}) the model card credits."""

    def record_fields(self) -> dict[str, Any]:
        """Further RunRecord fields ({} for text; a chat source gives `sft` and `chat_template`, which make
        the run a chat run)."""

    def state_dict(self) -> dict[str, Any]:
        """Where the source is, beyond the generator (e.g. an epoch and a cursor), for exact resume;
        plain values and tensors only."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s value."""

    def data_card(self) -> Path | None:
        """The data's DATA_CARD.md, copied into RUN_DIR so a run credits its sources on its own."""


__all__ = ["IGNORE_INDEX", "Batch", "BatchSource"]
