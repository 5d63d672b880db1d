"""What greedy decoding and sampling work on: the vocabulary's rules (Vocab), a row to decode (RowSpec) and a
row being decoded (Row: its text so far and its finished Generation).

The decoding itself is goushi.generation.batch.DecodeBatch: rows of one request (Engine.stream, Engine.generate)
or of many (the server's scheduler) decoded together, each with its own settings and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from goushi.generation.options import Generation, TopToken
from goushi.generation.processors import NgramBan
from goushi.generation.text import TextTracker
from goushi.generation.utf8 import Utf8Guard


@dataclass
class Vocab:
    """What decoding needs from the tokenizer, computed once per engine."""

    size: int  # tokenizer vocabulary; a model with a padded vocabulary never picks ids beyond it
    eot_id: int
    token_bytes: list[bytes]  # raw UTF-8 bytes per id; special tokens as their own text
    pieces: list[str]  # readable pieces for top-N displays
    guard: Utf8Guard | None = None  # set when some token is a raw byte: keeps generated text valid UTF-8
    banned: torch.Tensor | None = None  # ids never generated: special tokens the model was not trained to write


@dataclass
class RowSpec:
    """One row of a request: what to continue, and how to tell it apart from the others."""

    prompt: str  # the prompt as text (Generation.prompt)
    ids: list[int]  # prompt tokens the model sees, starting with <|endoftext|>
    seed: int | None  # this row's own seed (None: greedy or beam)
    index: int = 0  # the row in the request: prompt_index * num_samples + k


@dataclass
class Row:
    """A row being decoded: its text so far and what it needs for the next step."""

    spec: RowSpec
    tracker: TextTracker
    ban: NgramBan | None
    token_ids: list[int] = field(default_factory=list)
    steps: list[list[TopToken]] = field(default_factory=list)
    logprob: float = 0.0
    finish_reason: str | None = None
    truncated: bool = False

    def result(self) -> Generation:
        return Generation(prompt=self.spec.prompt, text=self.tracker.text, token_ids=self.token_ids,
                          finish_reason=self.finish_reason or "length", steps=self.steps,
                          truncated_prompt=self.truncated, score=self.logprob, seed=self.spec.seed,
                          prompt_tokens=len(self.spec.ids))
