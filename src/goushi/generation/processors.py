"""Logits processors: the small functions that turn the model's scores into a choice.

Order, as in Hugging Face `generate`: penalties (repetition, n-gram ban, minimum length) change
the scores; then temperature, top-k, top-p and min-p shape the distribution a token is drawn from.
All work on a (B, V) float32 tensor, one row per sequence, and never loop over the vocabulary.
`process_scores` is the chain every strategy runs first (sampling, greedy and beam search alike).
"""

from __future__ import annotations

import numpy as np
import torch

from goushi.generation.options import SampleConfig
from goushi.generation.utf8 import Utf8Guard

NEG_INF = float("-inf")


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style (Keskar et al. 2019): for tokens already seen, divide a positive score by `penalty`
    and multiply a negative one, so the token always becomes less likely when penalty > 1.
    `seen` is a (B, V) bool mask of the tokens in each row's prompt and text."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class NgramBan:
    """Bans, for one sequence, every token that would repeat an n-gram it already contains.

    Keeps a map (n-1 preceding tokens) -> {tokens that followed them}, updated one token at a time,
    so each step costs O(n) instead of rescanning the sequence."""

    def __init__(self, n: int, tokens: list[int]):
        self.n = n
        self.tokens: list[int] = []
        self.follow: dict[tuple[int, ...], set[int]] = {}
        for t in tokens:
            self.add(t)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            key = tuple(self.tokens[len(self.tokens) - self.n: -1])
            self.follow.setdefault(key, set()).add(token)

    def banned(self) -> set[int]:
        if len(self.tokens) < self.n - 1:
            return set()
        key = tuple(self.tokens[len(self.tokens) - self.n + 1:]) if self.n > 1 else ()
        return self.follow.get(key, set())

    def copy(self) -> NgramBan:
        other = NgramBan.__new__(NgramBan)
        other.n, other.tokens = self.n, list(self.tokens)
        other.follow = {k: set(v) for k, v in self.follow.items()}
        return other


def ban_ngrams(logits: torch.Tensor, bans: list[NgramBan]) -> torch.Tensor:
    rows, cols = [], []
    for r, ban in enumerate(bans):
        for t in ban.banned():
            rows.append(r)
            cols.append(t)
    if rows:
        logits[rows, cols] = NEG_INF
    return logits


def process_scores(raw: torch.Tensor, cfg: SampleConfig, step: int, *, eot_id: int,
                   seen: torch.Tensor | None = None, bans: list[NgramBan] | None = None,
                   banned: torch.Tensor | None = None, guard: Utf8Guard | None = None,
                   states: torch.Tensor | list[int] | None = None) -> torch.Tensor:
    """The scores of decoding step `step` after the rules that hold whatever the strategy, in this order: the
    repetition penalty (`seen`: each row's (B, V) mask of prompt and text tokens; None when the penalty is off),
    the n-gram ban (`bans`: each row's NgramBan, with cfg.no_repeat_ngram_size), the ids never generated
    (`banned`), <|endoftext|> before cfg.min_new_tokens, and the UTF-8 guard (`guard`, with each row's `states`).
    Out of place, so `raw` keeps the model's scores for the log-probability of the token chosen."""
    work = raw
    if seen is not None:
        work = repetition_penalty(work, seen, cfg.repetition_penalty)
    if cfg.no_repeat_ngram_size:
        work = ban_ngrams(work.clone(), bans)
    if banned is not None:
        work = work.index_fill(1, banned, NEG_INF)
    if step < cfg.min_new_tokens:
        work = work.clone()
        work[:, eot_id] = NEG_INF
    if guard is not None:
        work = guard.mask(work, states)
    return work


def top_k_top_p_min_p(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the top-k, outside the top-p nucleus, or below min-p.

    One stable descending sort serves all three, so ties are broken the same way everywhere:
    among equal scores the lower token id ranks first. top-k keeps exactly k tokens (fewer only if
    the vocabulary is smaller). top-p keeps the smallest prefix of the ranking whose probability
    reaches p: a token stays when the probability of the tokens ranked above it is still below p.
    """
    V = logits.size(-1)
    k_on = 0 < top_k < V
    if not k_on and top_p >= 1.0 and min_p <= 0.0:
        return logits
    sorted_logits, order = sort_descending(logits)
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if k_on:
        drop[:, top_k:] = True
    if top_p < 1.0 or min_p > 0.0:
        # Probabilities after top-k, as Hugging Face does: each filter sees what the previous left.
        probs = sorted_logits.masked_fill(drop, NEG_INF).softmax(-1)
        if top_p < 1.0:
            before = probs.cumsum(-1) - probs  # mass ranked strictly above each token
            drop |= before >= top_p
        if min_p > 0.0:
            drop |= probs < min_p * probs[:, :1]
        drop[:, 0] = False  # the best token always survives
    mask = torch.zeros_like(drop).scatter_(-1, order, drop)
    return logits.masked_fill(mask, NEG_INF)


def sort_descending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sort(x, dim=-1, descending=True, stable=True) for (B, V): the same values and order (equal scores:
    the lower id first), so the same bits whichever way it is computed. On a CPU for float32, as one sort of
    int64 keys (the score's order in the high half, the id in the low) by numpy: torch's CPU sort takes ~0.45 ms
    for a 6,000-id row on a Xeon, numpy's (SIMD) ~8x less, which makes top-k/top-p/min-p sampling of a small
    model cost about as much as its decode step otherwise."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.size(-1) >= 2**31:
        return torch.sort(x, dim=-1, descending=True, stable=True)
    a = x.detach().numpy() + np.float32(0.0)  # -0.0 becomes 0.0, which torch.sort counts as equal
    a = np.where(a == a, a, np.float32("nan"))  # every NaN one NaN (torch.sort: above everything, all equal)
    bits = a.view(np.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 in the floats' order (negative floats' bits flipped)
    keys = ((~ordered).astype(np.int64) << 32) | np.arange(a.shape[-1], dtype=np.int64)  # descending, then id
    keys.sort(axis=-1)
    order = torch.from_numpy(keys & 0xFFFFFFFF)
    return x.gather(-1, order), order


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row r takes the first token whose cumulative probability exceeds
    uniforms[r] * total. The uniforms come from each request's own generator, so a seed gives the
    same text whatever else is in the batch; `right=True` never lands on a zero-probability token."""
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def top_candidates(probs: torch.Tensor, n: int) -> tuple[list[list[float]], list[list[int]]]:
    """The n most likely tokens of each row and their probabilities, as Python lists."""
    n = min(n, probs.size(-1))
    values, indices = torch.topk(probs, n, dim=-1)
    return values.tolist(), indices.tolist()
