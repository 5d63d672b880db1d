"""Greedy decoding and sampling for a batch of rows (prompt x sample), one step at a time.

`decode` is a generator: after every step it yields the StreamEvent of each row still running; a
row's last event carries its finished Generation. `Engine.stream` passes the events on as they come
and `Engine.generate` keeps only the finished results, so both produce the same text. Finished rows
leave the batch at once, so a long sample does not make short ones pay for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from goushi.generation.options import Generation, SampleConfig, StreamEvent, TopToken
from goushi.generation.processors import NgramBan, draw, process_scores, top_candidates, top_k_top_p_min_p
from goushi.generation.runner import Runner
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


def _uniforms(specs: list[RowSpec], n: int, device: torch.device) -> torch.Tensor:
    """n uniforms per row from the row's own generator: reproducible per row, independent of the
    batch and of other threads (the global torch RNG is never touched)."""
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(s.seed or 0)) for s in specs]
    return torch.stack(rows).to(device)  # float32: MPS has no float64


def decode(model, specs: list[RowSpec], cfg: SampleConfig, vocab: Vocab) -> Iterator[list[StreamEvent]]:
    """Yield, after each step, the events of the rows that were still running (`event.index` is the
    row's spec.index); a row's last event has its finish_reason and its Generation as `result`."""
    greedy = cfg.is_greedy
    device = model.wte.weight.device
    rows = [Row(s, TextTracker(vocab.token_bytes, cfg.stop),
                NgramBan(cfg.no_repeat_ngram_size, s.ids) if cfg.no_repeat_ngram_size else None) for s in specs]
    active = list(range(len(rows)))
    runner = Runner(model, [s.ids for s in specs], max(len(s.ids) for s in specs) + cfg.max_new_tokens, vocab.eot_id)
    uniforms = None if greedy else _uniforms(specs, cfg.max_new_tokens, device)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros((len(rows), vocab.size), dtype=torch.bool)
        for r, s in enumerate(specs):
            seen[r, s.ids] = True
        seen = seen.to(device)

    guard = vocab.guard
    states = guard.start(len(rows)) if guard is not None else None
    logits = runner.prefill()
    for step in range(cfg.max_new_tokens):
        for i, r in enumerate(active):
            rows[r].truncated |= runner.truncated[i]
        raw = logits[:, : vocab.size].float()
        work = process_scores(raw, cfg, step, eot_id=vocab.eot_id, seen=seen, bans=[rows[r].ban for r in active],
                              banned=vocab.banned, guard=guard, states=states)
        if greedy:
            choice = work.argmax(dim=-1)  # first index among equal maxima: deterministic
            probs = work.softmax(-1) if cfg.top_n else None
        else:
            work = top_k_top_p_min_p(work / cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
            probs = work.softmax(-1)
            choice = draw(probs, uniforms[:, step])
        chosen = choice.tolist()
        if guard is not None:
            states = guard.step(states, choice)
        # log_softmax then gather: torch's CPU logsumexp is ~10x slower than log_softmax over a vocabulary.
        logps = raw.log_softmax(-1).gather(1, choice.view(-1, 1)).squeeze(1).tolist()
        tops = top_candidates(probs, cfg.top_n) if cfg.top_n else None

        events, keep = [], []
        for i, r in enumerate(active):
            row, t = rows[r], chosen[i]
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
                elif len(row.token_ids) >= cfg.max_new_tokens:
                    row.finish_reason = "length"
                    delta += row.tracker.finish()
                if row.ban is not None:
                    row.ban.add(t)
            spec = row.spec
            events.append(StreamEvent(delta, t, top, row.finish_reason, row.truncated, index=spec.index,
                                      seed=spec.seed, prompt_tokens=len(spec.ids),
                                      result=None if row.finish_reason is None else row.result()))
            if row.finish_reason is None:
                keep.append(i)
        yield events
        if not keep:
            return
        if len(keep) < len(active):
            runner.select(keep)
            index = torch.tensor(keep, device=device)
            choice = choice.index_select(0, index)
            chosen = [chosen[i] for i in keep]
            if uniforms is not None:
                uniforms = uniforms.index_select(0, index)
            if seen is not None:
                seen = seen.index_select(0, index)
            if states is not None:
                states = states.index_select(0, index)
            active = [active[i] for i in keep]
        if seen is not None:
            seen.scatter_(1, choice.view(-1, 1), True)
        logits = runner.step(choice, chosen)
