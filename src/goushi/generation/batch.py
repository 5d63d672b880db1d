"""Continuous batching: rows of many requests decoded together, joining and leaving at token boundaries.

    batch = DecodeBatch(model, size=16, pad_id=vocab.eot_id)
    batch.add(owner, specs, cfg, vocab)        # a request's rows (RowSpec), its settings, its vocabulary rules
    while batch.busy:
        batch.admit()                          # waiting rows into free slots (their prompts prefilled alone)
        for owner, event in batch.step():      # one token for every running row
            ...
    batch.drop(owner)                          # a request abandoned: its rows leave, their slots are free again

Every row keeps its own settings (strategy, temperature, top-k/p, min-p, penalties, n-gram ban, minimum and
maximum length, stop strings, top-N), its own random generator (seed), its own UTF-8 guard state and its own text.
Rows whose settings are the same are scored together; every scoring operation works row by row, so a row's
choice is the same whether its neighbours share its settings or not, and the same as alone (goushi.generation.slots
says why its logits are; a DecodeBatch of size 1 trades that for the single-row kernels, goushi.generation.solo).
Samples of one prompt share one prefill. Beam search does not run here: it reorders a
request's rows at every step and stays one request at a time (goushi.generation.beam).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from goushi.generation.options import SampleConfig, StreamEvent
from goushi.generation.processors import (
    NEG_INF,
    NgramBan,
    draw,
    process_scores,
    top_candidates,
    top_k_top_p_min_p,
)
from goushi.generation.sampling import Row, RowSpec, Vocab
from goushi.generation.slots import Prefilled, Slots
from goushi.generation.solo import Solo
from goushi.generation.text import TextTracker

# Prompt tokens prefilled per admit() at most (one prompt always goes in, whatever its length): new requests
# join within a few steps' time while the running rows wait at most this much prefill between two tokens.
PREFILL_BUDGET = 512


@dataclass
class _Waiting:
    """A request's rows not yet in a slot, in order, and the prefills they share (one per prompt)."""

    owner: Any
    cfg: SampleConfig
    vocab: Vocab
    specs: deque[RowSpec]
    prefilled: dict[tuple[int, ...], Prefilled] = field(default_factory=dict)


@dataclass
class _Running(Row):
    """A row in a slot: Row's text and results, plus what scoring its next token needs."""

    owner: Any = None
    cfg: SampleConfig = None  # type: ignore[assignment]
    vocab: Vocab = None  # type: ignore[assignment]
    order: int = 0  # admission order: events go out in it, so a request's rows stay prompt-major
    uniforms: list[float] | None = None  # one per step from the row's own generator (sampling only)
    draws: torch.Tensor | None = None  # the same uniforms as a tensor: a lone row slices it, no tensor per step
    seen: torch.Tensor | None = None  # (1, V) prompt and text tokens, for the repetition penalty
    state: int = 0  # UTF-8 guard state
    logits: torch.Tensor | None = None  # (V,) the model's scores for the next token


def _group_key(row: _Running) -> Hashable:
    """Rows scored together: the same rules and vocabulary (values of a row never depend on the group). Lengths
    and stop strings are each row's own."""
    c = row.cfg
    return (c.is_greedy, c.temperature, c.top_k, c.top_p, c.min_p, c.repetition_penalty, c.no_repeat_ngram_size,
            c.top_n, id(row.vocab))


class DecodeBatch:
    def __init__(self, model, size: int, pad_id: int, prefill_budget: int = PREFILL_BUDGET, compiled=None):
        """`size` 1: one row at a time on the model's single-row kernels (goushi.generation.solo: faster, but its
        floats are not the batched ones), or on `compiled` (goushi.generation.compiled.CompiledStep) when given;
        2 or more: batch-invariant slots (goushi.generation.slots)."""
        if size < 1:
            raise ValueError(f"a DecodeBatch holds at least 1 row, not {size}")
        self.slots: Slots | Solo = Solo(model, pad_id, compiled) if size == 1 else Slots(model, size, pad_id)
        self.prefill_budget = prefill_budget
        self.waiting: deque[_Waiting] = deque()
        self.running: dict[int, _Running] = {}  # slot -> row
        self._order = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def size(self) -> int:
        return self.slots.size

    def add(self, owner: Any, specs: list[RowSpec], cfg: SampleConfig, vocab: Vocab) -> None:
        """Queue a request's rows (cfg already validated; greedy, sampling: not beam search)."""
        if cfg.strategy == "beam":
            raise ValueError("beam search runs one request at a time (goushi.generation.beam), not in a DecodeBatch")
        if specs:
            self.waiting.append(_Waiting(owner, cfg, vocab, deque(specs)))

    def drop(self, owner: Any) -> None:
        """Forget every row of `owner`, waiting or running; its slots are free for the next admit()."""
        self.waiting = deque(w for w in self.waiting if w.owner is not owner)
        for slot in [s for s, r in self.running.items() if r.owner is owner]:
            del self.running[slot]
            self.slots.release(slot)

    def owners(self) -> set[int]:
        """ids of the owners with rows waiting or running."""
        return {id(w.owner) for w in self.waiting} | {id(r.owner) for r in self.running.values()}

    def admit(self) -> int:
        """Move waiting rows into free slots, first come first served, prefilling at most about prefill_budget
        prompt tokens; returns how many rows joined."""
        free = self.slots.free_slots()
        joined, spent = 0, 0
        while free and self.waiting and (spent < self.prefill_budget or joined == 0):
            w = self.waiting[0]
            spec = w.specs[0]
            key = tuple(spec.ids)
            pre = w.prefilled.get(key)
            if pre is None:
                pre = self.slots.prefill(spec.ids, w.cfg.max_new_tokens)
                spent += pre.length
                w.prefilled[key] = pre
            slot = free.pop(0)
            self.slots.place(slot, pre)
            self.running[slot] = self._start(w, spec, pre)
            joined += 1
            w.specs.popleft()
            if not w.specs:
                self.waiting.popleft()
            elif tuple(w.specs[0].ids) != key:
                del w.prefilled[key]  # a request's samples of one prompt are consecutive: this prefill is done
        return joined

    def _start(self, w: _Waiting, spec: RowSpec, pre: Prefilled) -> _Running:
        cfg, vocab = w.cfg, w.vocab
        row = _Running(spec, TextTracker(vocab.token_bytes, cfg.stop),
                       NgramBan(cfg.no_repeat_ngram_size, spec.ids) if cfg.no_repeat_ngram_size else None,
                       owner=w.owner, cfg=cfg, vocab=vocab, order=next(self._order), logits=pre.logits)
        row.truncated = pre.truncated
        if not cfg.is_greedy:
            # The row's own generator: reproducible per row, whatever the batch and other threads (the global
            # torch RNG is never touched); drawn for max_new_tokens at once, as alone.
            gen = torch.Generator().manual_seed(spec.seed or 0)
            row.draws = torch.rand(cfg.max_new_tokens, generator=gen)
            row.uniforms = row.draws.tolist()  # float32 values, exact as floats
            row.draws = row.draws.to(self.slots.device)
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros((1, vocab.size), dtype=torch.bool)
            seen[0, spec.ids] = True
            row.seen = seen.to(self.slots.device)
        return row

    # ---- one token for every running row ----------------------------------------------------------------
    def step(self) -> list[tuple[Any, StreamEvent]]:
        """Choose every running row's next token, let finished rows leave, run the model one step for the rest.
        Returns (owner, event) per row, in admission order; a row's last event carries its result."""
        events = self.choose()
        self.advance()
        return events

    def choose(self) -> list[tuple[Any, StreamEvent]]:
        """The scoring half of step(): pick tokens, make events, free the slots of finished rows."""
        groups: dict[Hashable, list[int]] = {}
        for slot, row in self.running.items():
            groups.setdefault(_group_key(row), []).append(slot)
        out: list[tuple[int, Any, StreamEvent]] = []
        self._next: dict[int, int] = {}
        for slots in groups.values():
            for slot, t, ev in self._choose_group(slots):
                row = self.running[slot]
                out.append((row.order, row.owner, ev))
                if row.finish_reason is not None:
                    del self.running[slot]
                    self.slots.release(slot)
                else:
                    self._next[slot] = t
        out.sort(key=lambda e: e[0])
        return [(owner, ev) for _, owner, ev in out]

    def advance(self) -> None:
        """The model half of step(): logits for the token each continuing row just chose."""
        tokens = getattr(self, "_next", {})
        self._next = {}
        for slot in [s for s in tokens if self.slots.full(s)]:
            # The row filled the context window: prefill its last window tokens alone, as a new prompt.
            row = self.running[slot]
            pre = self.slots.prefill([*row.spec.ids, *row.token_ids], row.cfg.max_new_tokens - len(row.token_ids))
            self.slots.place(slot, pre)
            row.logits, row.truncated = pre.logits, True
            del tokens[slot]
        if tokens:
            logits = self.slots.step(tokens)
            for slot in tokens:
                self.running[slot].logits = logits[slot]

    def _choose_group(self, slots: list[int]) -> list[tuple[int, int, StreamEvent]]:
        rows = [self.running[s] for s in slots]
        first = rows[0]
        cfg, vocab = first.cfg, first.vocab
        guard = vocab.guard
        # A lone row (the usual case of a solo batch) builds no tensor it can do without: a view of its logits,
        # its guard state as a slice, its uniform sliced from its own tensor. (Each torch.tensor / stack costs
        # microseconds, as much as a small model's matmul.) Nothing below writes into `raw`.
        one = len(rows) == 1
        raw = (first.logits.unsqueeze(0) if one else torch.stack([r.logits for r in rows]))[:, : vocab.size].float()
        seen = torch.cat([r.seen for r in rows]) if first.seen is not None else None
        states = [r.state for r in rows] if guard else None
        # process_scores with each row's own step: <|endoftext|> is held back per row below instead.
        work = process_scores(raw, cfg, cfg.min_new_tokens, eot_id=vocab.eot_id, seen=seen,
                              bans=[r.ban for r in rows], banned=vocab.banned, guard=guard, states=states)
        young = [i for i, r in enumerate(rows) if len(r.token_ids) < r.cfg.min_new_tokens]
        if young:
            work = work.clone() if work is raw else work
            if len(young) == len(rows):
                work[:, vocab.eot_id] = NEG_INF  # plain indexing: list indices cost ~20 us of Python parsing
            else:
                work[young, vocab.eot_id] = NEG_INF
        if cfg.is_greedy:
            choice = work.argmax(dim=-1)  # first index among equal maxima: deterministic
            probs = work.softmax(-1) if cfg.top_n else None
        else:
            work = top_k_top_p_min_p(work / cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
            probs = work.softmax(-1)
            if one:
                u = first.draws[len(first.token_ids): len(first.token_ids) + 1]
            else:
                u = torch.tensor([r.uniforms[len(r.token_ids)] for r in rows], dtype=torch.float32,
                                 device=raw.device)
            choice = draw(probs, u)
        chosen = choice.tolist()
        if guard is not None:
            for r, t in zip(rows, chosen, strict=True):
                r.state = guard.table[r.state][t]
        # log_softmax then gather: torch's CPU logsumexp is ~10x slower than log_softmax over a vocabulary.
        logps = raw.log_softmax(-1).gather(1, choice.view(-1, 1)).squeeze(1).tolist()
        tops = top_candidates(probs, cfg.top_n) if cfg.top_n else None

        out = []
        for i, (slot, row) in enumerate(zip(slots, rows, strict=True)):
            t = chosen[i]
            row.logprob += logps[i]
            top = [(vocab.pieces[j], p, j) for p, j in zip(tops[0][i], tops[1][i], strict=True)] if tops else None
            if top is not None:
                row.steps.append(top)
            if t == vocab.eot_id:
                row.finish_reason, delta = "eos", row.tracker.finish()
            else:
                row.token_ids.append(t)
                delta, stopped = row.tracker.push(t)
                if stopped:
                    row.finish_reason = "stop"
                elif len(row.token_ids) >= row.cfg.max_new_tokens:
                    row.finish_reason = "length"
                    delta += row.tracker.finish()
                if row.ban is not None:
                    row.ban.add(t)
                if row.seen is not None:
                    row.seen[0, t] = True
            spec = row.spec
            out.append((slot, t, StreamEvent(delta, t, top, row.finish_reason, row.truncated, index=spec.index,
                                             seed=spec.seed, prompt_tokens=len(spec.ids),
                                             result=None if row.finish_reason is None else row.result())))
        return out
