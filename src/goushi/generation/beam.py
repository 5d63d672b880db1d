"""Beam search: keep the `num_beams` most likely partial texts, not just the single best next token.

Follows Hugging Face `generate` (num_beams, length_penalty, early_stopping): at every step each
running beam proposes its continuations; of the 2 * num_beams best (beam score + log p), those
ending in <|endoftext|> or a stop string become finished hypotheses (only if among the top
num_beams candidates), the rest become the next running beams. A finished hypothesis scores
sum(log p) / length ** length_penalty, where length counts the generated tokens whose log p is
summed (the final <|endoftext|> included). The KV cache rows follow the surviving beams.
Temperature and the top-k/top-p/min-p filters do not apply; penalties and the n-gram ban do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from goushi.generation.options import Generation, SampleConfig, TopToken
from goushi.generation.processors import NgramBan, process_scores, top_candidates
from goushi.generation.runner import Runner
from goushi.generation.sampling import RowSpec, Vocab
from goushi.generation.text import TextTracker


@dataclass
class _Beam:
    tracker: TextTracker
    ban: NgramBan | None
    seen: set[int]
    token_ids: list[int] = field(default_factory=list)
    steps: list[list[TopToken]] = field(default_factory=list)

    def fork(self, token: int, top: list[TopToken] | None) -> _Beam:
        child = _Beam(self.tracker.copy(), self.ban.copy() if self.ban else None, self.seen | {token},
                      self.token_ids + [token], self.steps + [top] if top is not None else list(self.steps))
        if child.ban is not None:
            child.ban.add(token)
        return child


def _normalised(sum_logprobs: float, length: int, length_penalty: float) -> float:
    return sum_logprobs / (max(length, 1) ** length_penalty)


def _best(cand: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n best candidates, best first; among equal scores the lower index (beam, then token id)
    wins, as greedy's argmax does, so one beam is exactly greedy. topk finds the threshold; only
    candidates at or above it are sorted (a full stable sort of beams x vocabulary costs ms)."""
    threshold = torch.topk(cand, n).values[-1]
    idx = (cand >= threshold).nonzero().flatten()  # ascending index
    order = torch.sort(cand[idx], descending=True, stable=True).indices[:n]
    return cand[idx[order]], idx[order]


def beam_search(model, spec: RowSpec, cfg: SampleConfig, vocab: Vocab) -> list[Generation]:
    """The best `cfg.num_samples` hypotheses for one prompt, best first."""
    K, V = cfg.num_beams, vocab.size
    device = model.wte.weight.device
    runner = Runner(model, [spec.ids], len(spec.ids) + cfg.max_new_tokens, vocab.eot_id)
    logits = runner.prefill()
    root = _Beam(TextTracker(vocab.token_bytes, cfg.stop),
                 NgramBan(cfg.no_repeat_ngram_size, spec.ids) if cfg.no_repeat_ngram_size else None, set(spec.ids))
    beams = [root]
    scores = torch.zeros(1, device=device)
    finished: list[tuple[float, Generation]] = []
    truncated = False
    guard = vocab.guard
    states = guard.start(1) if guard is not None else None

    def finish(beam: _Beam, sum_logprobs: float, reason: str, extra_len: int) -> None:
        score = _normalised(sum_logprobs, len(beam.token_ids) + extra_len, cfg.length_penalty)
        beam.tracker.finish()
        finished.append((score, Generation(
            prompt=spec.prompt, text=beam.tracker.text, token_ids=beam.token_ids, finish_reason=reason,
            steps=beam.steps, truncated_prompt=truncated, score=score, seed=None, prompt_tokens=len(spec.ids))))
        finished.sort(key=lambda x: -x[0])
        del finished[K:]

    for step in range(cfg.max_new_tokens):
        truncated = truncated or any(runner.truncated)
        seen = None
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros((len(beams), V), dtype=torch.bool)
            for b, beam in enumerate(beams):
                seen[b, list(beam.seen)] = True
            seen = seen.to(device)
        work = process_scores(logits[:, :V].float(), cfg, step, eot_id=vocab.eot_id, seen=seen,
                              bans=[b.ban for b in beams], banned=vocab.banned, guard=guard, states=states)
        logp = work.log_softmax(-1)
        tops = top_candidates(logp.exp(), cfg.top_n) if cfg.top_n else None
        cand = (scores.view(-1, 1) + logp).view(-1)
        values, flat = _best(cand, min(2 * K, int(torch.isfinite(cand).sum())))
        new_beams: list[_Beam] = []
        new_scores: list[float] = []
        parents: list[int] = []
        for rank, (score, idx) in enumerate(zip(values.tolist(), flat.tolist(), strict=True)):
            b, t = divmod(idx, V)
            top = [(vocab.pieces[j], p, j) for p, j in zip(tops[0][b], tops[1][b], strict=True)] if tops else None
            if t == vocab.eot_id:
                if rank < K:
                    child = beams[b].fork(t, top)
                    child.token_ids.pop()  # <|endoftext|> ends the text; it is not part of it
                    finish(child, score, "eos", 1)
                continue
            child = beams[b].fork(t, top)
            _, stopped = child.tracker.push(t)
            if stopped:
                if rank < K:
                    finish(child, score, "stop", 0)
                continue
            new_beams.append(child)
            new_scores.append(score)
            parents.append(b)
            if len(new_beams) == K:
                break
        if not new_beams:  # every candidate ended the text
            beams = []
            break
        beams = new_beams
        scores = torch.tensor(new_scores, device=device)
        if step == cfg.max_new_tokens - 1:
            break
        if len(finished) >= K:
            if cfg.early_stopping:
                beams = []
                break
            # Hugging Face's heuristic: stop when no running beam, scored at its current length, beats the worst kept.
            best_running = _normalised(max(new_scores), len(beams[0].token_ids), cfg.length_penalty)
            if best_running <= finished[-1][0]:
                beams = []
                break
        runner.select(parents)
        tokens = [beam.token_ids[-1] for beam in beams]
        token_tensor = torch.tensor(tokens, device=device)
        if guard is not None:
            states = guard.step(states.index_select(0, torch.tensor(parents, device=device)), token_tensor)
        logits = runner.step(token_tensor, tokens)
    truncated = truncated or any(runner.truncated)
    for beam, score in zip(beams, scores.tolist()[: len(beams)], strict=True):  # ran out of max_new_tokens
        finish(beam, score, "length", 0)
    return [g for _, g in finished[: cfg.num_samples]]
