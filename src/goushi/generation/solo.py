"""One row decoded alone with the model's ordinary single-row kernels: the backend of a DecodeBatch of size 1.

Slots (goushi.generation.slots) buys batch invariance, a row's floats the same alone as among 31 others, with a
blank partner row, attention in 64-position chunks, per-row positions and indexed cache writes. For a request
that is alone by construction (one `Engine.generate` / `stream` / `chat` row: `goushi sample`, the chat REPL, the
web page, `goushi serve --max-batch 1`) that costs about half its decode speed and buys nothing, so Solo runs what
the model runs for one sequence: a batch-1 KVCache the prompt is prefilled straight into, and steps of one token
at `pos` (GPT.decode_one: forward's operations for one token of one row, SDPA over the row's positions with no
position ids and no mask, the LM head as F.linear, without forward's general-case Python). Measured on a 2-core
Xeon, one thread: 1.7-1.9x the decode speed of a lone row among slots (docs/serving.md).

Same interface as Slots (prefill / place / release / full / free_slots / step ...), so DecodeBatch's choosing code
(sampling, seeds, stops, UTF-8 guard, top-N) is shared and behaves the same. What differs is only the kernels a
model step runs, so a row's logits here can differ from the same row's in Slots in the last bits (as they differ
between thread counts): a seeded text is the same except where two tokens are within float noise of each other.
The server's guarantee (a seeded request gives the same text batched as alone in the server) is Slots' and is
untouched: the server's batch always has at least MIN_ROWS slots.
"""

from __future__ import annotations

import torch

from goushi.generation.runner import slide_window
from goushi.generation.slots import Prefilled
from goushi.model import KVCache


class Solo:
    size = 1

    def __init__(self, model, pad_id: int, compiled=None):
        """`compiled`: a goushi.generation.compiled.CompiledStep for this model, used for every step (its caches
        are then sized to the whole context: its shapes are fixed)."""
        self.model = model
        self.compiled = compiled
        self.pad_id = pad_id  # unused: a lone row never needs a blank partner (kept for Slots' interface)
        self.max_len = int(model.config.context_length)
        self.window = slide_window(self.max_len)
        p = model.wte.weight
        self.device, self.dtype = p.device, p.dtype
        self.cache: KVCache | None = None
        self.lengths = [0]
        self.used = [False]

    # ---- joining and leaving ------------------------------------------------------------------------------
    def free_slots(self) -> list[int]:
        return [] if self.used[0] else [0]

    def prefill(self, ids: list[int], new_tokens: int | None = None) -> Prefilled:
        """Run `ids` (its last window tokens when longer than the context) into a cache of its own, sized for
        `new_tokens` more (the context when None), as the pre-batching runner sized it: no copy into a slot."""
        truncated = len(ids) > self.max_len
        ids = ids[-self.window:] if truncated else ids
        n = len(ids)
        room = self.max_len if new_tokens is None or self.compiled else min(self.max_len, n + max(new_tokens, 1))
        cache = KVCache(self.model.config, 1, room, self.device, self.dtype)
        logits, _ = self.model(torch.tensor([ids], device=self.device), kv_cache=cache, pos=0, last_only=True)
        return Prefilled(cache.kv, logits[0, -1], n, truncated, cache)

    def place(self, slot: int, pre: Prefilled) -> None:
        """Decode from the prefill's own cache. Placing one prefill again (the samples of a prompt one after the
        other) is safe: a row writes only at positions >= pre.length, and a slide prefills into a new cache."""
        if slot != 0 or pre.cache is None:
            raise ValueError(f"a Solo has slot 0 only and takes its own prefills (got slot {slot})")
        self.cache = pre.cache
        self.lengths[0] = pre.length
        self.used[0] = True

    def release(self, slot: int) -> None:
        self.used[0] = False
        self.lengths[0] = 0
        self.cache = None

    def full(self, slot: int) -> bool:
        """The row has filled the context window: its next token needs prefill() over its window first."""
        return self.lengths[0] >= self.max_len

    # ---- decoding ------------------------------------------------------------------------------------------
    def step(self, tokens: dict[int, int]) -> torch.Tensor:
        """Append the token of slot 0 and return its next-token logits, (1, V)."""
        (t,) = tokens.values()
        pos = self.lengths[0]
        if pos >= self.max_len:
            raise ValueError("the row is full; prefill its window and place it again first")
        if pos >= self.cache.max_len:  # more tokens than prefill() was told of: give the cache the whole context
            self._grow()
        # the compiled step, or GPT's lean step; any other model through its forward
        one = self.compiled or getattr(self.model, "decode_one", None)
        if one is not None:
            logits = one(t, self.cache, pos)
        else:
            logits = self.model(torch.tensor([[t]], device=self.device), kv_cache=self.cache, pos=pos,
                                last_only=True)[0][:, -1]
        self.lengths[0] = pos + 1
        return logits

    def _grow(self) -> None:
        old = self.cache
        cache = KVCache(self.model.config, 1, self.max_len, self.device, self.dtype)
        for new, kv in zip(cache.kv, old.kv, strict=True):
            new[..., : old.max_len, :].copy_(kv)
        cache.length = old.length
        self.cache = cache
