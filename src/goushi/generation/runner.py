"""Runs the model over a batch of growing sequences: prefill once, then one token at a time from the KV cache.
Beam search uses it (its rows are reordered at every step); greedy decoding and sampling use goushi.generation.slots.

Sequences of different lengths are left-padded; a key-padding mask hides the padding and each
row gets its own position ids, so a row's logits do not depend on what else is in the batch.
When a sequence would outgrow the model's context window, the runner keeps the most recent
`window` tokens of every row and prefills the cache again over them (a sliding window with a
re-prefill every `context_length - window` tokens instead of recomputing at every step).
"""

from __future__ import annotations

import torch

from goushi.model import GPT


def slide_window(context_length: int) -> int:
    """Tokens kept after the window slides: three quarters of the context, so a re-prefill
    buys a quarter of the context in cheap cached steps."""
    return max(1, context_length - max(1, context_length // 4))


class Runner:
    def __init__(self, model: GPT, seqs: list[list[int]], capacity: int, pad_id: int):
        """`seqs`: each row's tokens so far (prompt). `capacity`: most tokens any row will hold
        (prompt + new tokens), used to size the cache no larger than needed."""
        self.model = model
        self.context = model.config.context_length
        self.window = slide_window(self.context)
        self.device = model.wte.weight.device
        self.pad_id = pad_id
        self.seqs = [list(s) for s in seqs]
        self.truncated = [False] * len(seqs)
        self.cache = model.new_kv_cache(len(seqs), min(self.context, max(capacity, 1)))
        self.padding = torch.zeros(0)  # (B, cache.max_len) bool, True at real tokens; set by prefill
        self.next_pos = torch.zeros(0)
        self.padded = False

    @property
    def batch(self) -> int:
        return len(self.seqs)

    def prefill(self) -> torch.Tensor:
        """Run every row's visible tokens through the model; return next-token logits (B, V)."""
        keep = self.window if any(len(s) > self.context for s in self.seqs) else self.context
        rows = []
        for r, s in enumerate(self.seqs):
            if len(s) > keep:
                self.truncated[r] = True
            rows.append(s[-keep:])
        lengths = [len(s) for s in rows]
        T = max(lengths)
        B = len(rows)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        padding = torch.zeros((B, self.cache.max_len), dtype=torch.bool)
        positions = torch.zeros((B, T), dtype=torch.long)
        for r, s in enumerate(rows):
            ids[r, T - len(s):] = torch.tensor(s, dtype=torch.long)
            padding[r, T - len(s):T] = True
            positions[r, T - len(s):] = torch.arange(len(s))
        self.padded = min(lengths) < T
        self.padding = padding.to(self.device)
        self.next_pos = torch.tensor(lengths, dtype=torch.long, device=self.device)
        ids = ids.to(self.device)
        if self.padded:
            logits, _ = self.model(ids, kv_cache=self.cache, pos=0, position_ids=positions.to(self.device),
                                   key_padding_mask=self.padding[:, :T], last_only=True)
        else:
            logits, _ = self.model(ids, kv_cache=self.cache, pos=0, last_only=True)
        return logits[:, -1]

    def step(self, tokens: torch.Tensor, token_list: list[int]) -> torch.Tensor:
        """Append one token per row and return the next-token logits (B, V)."""
        for s, t in zip(self.seqs, token_list, strict=True):
            s.append(t)
        pos = self.cache.length
        if pos >= self.cache.max_len:
            # The cache can only be full here if the window must slide (capacity was sized to fit otherwise).
            return self.prefill()
        ids = tokens.view(-1, 1)
        if self.padded:
            self.padding[:, pos] = True
            logits, _ = self.model(ids, kv_cache=self.cache, pos=pos, position_ids=self.next_pos.view(-1, 1),
                                   key_padding_mask=self.padding[:, : pos + 1], last_only=True)
            self.next_pos += 1
        else:  # every row is at `pos`: no position ids to keep
            logits, _ = self.model(ids, kv_cache=self.cache, pos=pos, last_only=True)
        return logits[:, -1]

    def select(self, rows: list[int]) -> None:
        """Keep (and reorder or repeat) rows: drops finished sequences, or follows beam search's choices."""
        if rows == list(range(self.batch)):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.reorder(index)
        self.padding = self.padding.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.seqs = [list(self.seqs[r]) for r in rows]
        self.truncated = [self.truncated[r] for r in rows]
