"""A fixed-size batch of KV-cache slots that rows join and leave between decode steps (continuous batching).

A row's prompt is prefilled alone (batch 1) and its keys and values are copied into a free slot; each decode step
then runs one token of every occupied slot together. Rows stand at different lengths, so every slot keeps its own
length and positions, and a step attends over the whole cache with a mask of each row's own tokens
(goushi.model.SlotKVCache).

Why so, and not a left-padded batch: a row's logits must be the same numbers whatever else is decoded beside it,
so that a seeded request gives the same text in a busy server as alone. On a CPU three things change a row's
floats: a one-row matmul (BLAS takes a matrix-vector path with another summation order than for two rows or
more), the number of keys attention sums over, and where in the cache a row's keys sit. So here a prompt is
always prefilled at batch 1, a step always runs at least two rows (a lone row gets a blank partner), attention
always spans the full cache (context_length positions), and a row's tokens always start at position 0 of its slot.
Each piece is then the same computation for a row whether it runs alone or among 31 others (tests check the
logits bit for bit where the CPU's BLAS gives a row the same result for any number of rows >= 2, see
`row_invariant`).

A row that fills its slot (the context window) is prefilled again over its last `slide_window` tokens, alone, as
goushi.generation.runner does for a whole batch.

That invariance is the server's (its batch always has at least MIN_ROWS slots) and it costs a lone row about half
its decode speed; a DecodeBatch of size 1 decodes its one row on the model's single-row kernels instead
(goushi.generation.solo), which is what a lone Engine call does unless the engine is batch_invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goushi.generation.runner import slide_window
from goushi.model import DECODE_CHUNK, KVCache, SlotKVCache

MIN_ROWS = 2  # a step never runs fewer rows: one row would take BLAS's matrix-vector path (other floats)


@dataclass
class Prefilled:
    """A prompt run through the model alone: its keys and values (per layer (2, kv_heads, n, head_dim)), the
    logits after its last token (V,), and whether its start was cut to fit the window. Placed into as many slots
    as the prompt has samples: one prefill for n samples. `cache`: the KVCache itself, when the row decodes in
    it (goushi.generation.solo)."""

    kv: list[torch.Tensor]
    logits: torch.Tensor
    length: int
    truncated: bool
    cache: KVCache | None = None


class Slots:
    def __init__(self, model, size: int, pad_id: int):
        if size < MIN_ROWS:
            raise ValueError(f"a batch of slots holds at least {MIN_ROWS} rows, not {size}")
        self.model = model
        self.size = size
        self.pad_id = pad_id
        self.max_len = int(model.config.context_length)
        self.window = slide_window(self.max_len)
        p = model.wte.weight
        self.device = p.device
        self.cache = SlotKVCache(model.config, size, self.max_len, p.device, p.dtype)
        # True where a slot holds one of its row's tokens. A free slot keeps position 0 visible so that the blank
        # rows a step runs for it never attend over nothing (a NaN that would stay in that row only, but still).
        self.mask = torch.zeros((size, self.max_len), dtype=torch.bool, device=p.device)
        self.mask[:, 0] = True
        self.lengths = [0] * size
        self.used = [False] * size

    # ---- joining and leaving ------------------------------------------------------------------------------
    def free_slots(self) -> list[int]:
        return [s for s in range(self.size) if not self.used[s]]

    def prefill(self, ids: list[int], new_tokens: int | None = None) -> Prefilled:
        """Run `ids` alone (its last window tokens when longer than the context). `new_tokens` (how many the row
        may still add) is for Solo's sizing; a slot always holds the whole context."""
        truncated = len(ids) > self.max_len
        ids = ids[-self.window:] if truncated else ids
        n = len(ids)
        cache = KVCache(self.model.config, 1, n, self.device, self.cache.kv[0].dtype)
        logits, _ = self.model(torch.tensor([ids], device=self.device), kv_cache=cache, pos=0, last_only=True)
        return Prefilled([t[:, 0] for t in cache.kv], logits[0, -1], n, truncated)

    def place(self, slot: int, pre: Prefilled) -> None:
        """Put a prefilled prompt into a free slot; its next token goes to position pre.length."""
        for layer, kv in enumerate(self.cache.kv):
            kv[:, slot, :, : pre.length].copy_(pre.kv[layer])
        self.mask[slot] = False
        self.mask[slot, : pre.length] = True
        self.lengths[slot] = pre.length
        self.used[slot] = True

    def release(self, slot: int) -> None:
        self.used[slot] = False
        self.lengths[slot] = 0
        self.mask[slot] = False
        self.mask[slot, 0] = True

    def full(self, slot: int) -> bool:
        """The slot's row has filled the context window: its next token needs prefill() over its window first."""
        return self.lengths[slot] >= self.max_len

    # ---- decoding ------------------------------------------------------------------------------------------
    def step(self, tokens: dict[int, int]) -> torch.Tensor:
        """Append one token to each slot in `tokens` (slot -> token id) and return the next-token logits of slots
        0 .. max(tokens) (at least MIN_ROWS rows; rows of other slots are blanks to ignore: they write nothing, so
        a slot just placed or slid and not stepping keeps its cache as it is)."""
        rows = max(MIN_ROWS, max(tokens) + 1)
        ids = [self.pad_id] * rows
        positions = [0] * rows
        active = list(tokens)
        for slot, t in tokens.items():
            if self.full(slot):
                raise ValueError(f"slot {slot} is full; prefill its window and place it again first")
            ids[slot], positions[slot] = t, self.lengths[slot]
        # One tensor for ids, positions, writing rows and where they write: each torch.tensor call costs as much
        # as a small model's matmul.
        packed = torch.tensor(ids + positions + active + [positions[s] for s in active], dtype=torch.long,
                              device=self.device)
        ids_t, pos_t = packed[:rows], packed[rows: 2 * rows]
        self.cache.rows, self.cache.at = packed[2 * rows: 2 * rows + len(active)], packed[2 * rows + len(active):]
        self.mask[self.cache.rows, self.cache.at] = True
        self.cache.span = min(self.max_len, (max(positions) // DECODE_CHUNK + 1) * DECODE_CHUNK)
        logits, _ = self.model(ids_t.view(-1, 1), kv_cache=self.cache, position_ids=pos_t.view(-1, 1),
                               key_padding_mask=self.mask[:rows], last_only=True)
        for slot in active:
            self.lengths[slot] += 1
        return logits[:, -1]


def row_invariant(model, rows: int = 17) -> bool:
    """Whether this machine's kernels give a row of a decode step the same floats alone (with its blank partner)
    as among `rows` others of other lengths: the condition for bit-equal logits batched and alone. Checked on the
    model itself, with random prompts, at its dtype and torch's thread count of the moment."""
    gen = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    long = min(int(model.config.context_length) - 2, 70)  # a neighbour long enough to widen the attention span
    prompts = [torch.randint(0, V, (n,), generator=gen).tolist() for n in [5, long] + [3 + s for s in range(rows - 2)]]
    with torch.inference_mode():
        alone = Slots(model, MIN_ROWS, 0)
        alone.place(0, alone.prefill(prompts[0]))
        want = alone.step({0: 1})[0]
        many = Slots(model, rows, 0)
        for s, p in enumerate(prompts):
            many.place(rows - 1 - s, many.prefill(p))  # the row of interest in the last slot
        got = many.step({s: 1 for s in range(rows)})
        return bool(torch.equal(want, got[rows - 1]))
