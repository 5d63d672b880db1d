"""The one generation engine: the CLI, the web page and the evaluation all call it.

    engine = Engine.load("runs/tiny")                       # model + tokenizer, loaded once
    engine.generate(["今天我终于"], SampleConfig(top_p=0.9))   # -> [Generation]
    for ev in engine.stream("今天我终于", SampleConfig()):    # -> StreamEvent per token
        print(ev.delta, end="")

Every prompt is preceded by <|endoftext|>, the separator the model saw before each training
document, so a prompt reads as the start of a document (and an empty prompt works). The engine
keeps no per-request state: one instance serves many threads (each call has its own KV cache and
its own random generator), and it never touches the global torch RNG.
The decoding pieces live in goushi.generation (processors, text, runner, sampling, beam).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from goushi.config import ModelConfig
from goushi.device import pick_device, pick_dtype
from goushi.errors import GoushiError
from goushi.generation.beam import beam_search
from goushi.generation.options import MAX_TOP_N, Generation, SampleConfig, StreamEvent, TopToken
from goushi.generation.sampling import RowSpec, Vocab, _Row, decode
from goushi.generation.utf8 import Utf8Guard
from goushi.tokenizer import SPECIAL_TOKENS, Tokenizer

# Rows (prompts x samples) decoded together; more are done in turns so memory stays bounded
# (each row holds a KV cache of n_layer x 2 x context_length x n_embd values).
MAX_BATCH_ROWS = 32


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, *, run_dir: str | Path | None = None,
                 data_dir: str | Path | None = None):
        self.model = model.eval()
        # Where the training data (and its verbatim-copy index) lives, for check_copies.
        self.data_dir = Path(data_dir) if data_dir else None
        self._text_index = None
        self._text_index_lock = threading.Lock()
        self.tokenizer = tokenizer
        self.config: ModelConfig = model.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = next(model.parameters()).device
        if tokenizer.vocab_size > self.config.vocab_size:
            raise GoushiError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {self.config.vocab_size}")
        n = tokenizer.vocab_size
        # Special tokens print as their own text (as Tokenizer.decode does); <|endoftext|> never
        # reaches the text because it ends it.
        token_bytes = [SPECIAL_TOKENS[i].encode("utf-8") if i < len(SPECIAL_TOKENS) else tokenizer.token_bytes(i)
                       for i in range(n)]
        guard = Utf8Guard(token_bytes, self.device)
        self.vocab = Vocab(size=n, eot_id=tokenizer.eot_id, token_bytes=token_bytes,
                           pieces=[tokenizer.id_to_piece(i) for i in range(n)], guard=guard if guard.needed else None)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> Engine:
        """Load a run directory once (GoushiError naming what is missing if it is not one)."""
        from goushi.checkpoint import load_run

        dev = device if isinstance(device, torch.device) else pick_device(device)
        run = load_run(run_dir, device=dev, dtype=dtype or pick_dtype(dev))
        data = run.info.get("data") if isinstance(run.info.get("data"), dict) else {}
        return cls(run.model, run.tokenizer, run_dir=run.run_dir, data_dir=data.get("dir"))

    def copied_spans(self, text: str, min_chars: int = 8) -> list:
        """Spans of `text` (>= min_chars characters) found verbatim in the training data, each with its
        source id, author, url and licence (goushi.data.textindex.Span)."""
        from goushi.data.textindex import TextIndex

        with self._text_index_lock:
            if self._text_index is None:
                candidates = [d for d in (self.data_dir, self.run_dir) if d is not None]
                found = next((d for d in candidates if (d / "provenance" / "index.json").is_file()), None)
                if found is None:
                    where = ", ".join(str(d / "provenance") for d in candidates) or "(no run or data directory known)"
                    raise GoushiError(f"no verbatim-copy index at {where}; rebuild the data with `goushi data build` "
                                      "(without --no-provenance) or turn --check-copies off")
                self._text_index = TextIndex.load(found)
        return self._text_index.find_copied_spans(text, min_chars)

    # ---- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: str | list[str], cfg: SampleConfig | None = None) -> list[Generation]:
        """cfg.num_samples continuations of each prompt, in prompt order (all samples of the first
        prompt, then of the second ...). Beam search returns its best num_samples beams, best first."""
        cfg, prompts = self._check(prompts, cfg)
        specs = self._specs(prompts, cfg)
        if cfg.strategy == "beam":
            out: list[Generation] = []
            for i in range(0, len(specs), cfg.num_samples):
                out.extend(beam_search(self.model, specs[i], cfg, self.vocab))
            return self._with_copies(out, cfg)
        results: list[Generation] = []
        for i in range(0, len(specs), MAX_BATCH_ROWS):
            rows: list[_Row] = []
            for _ in decode(self.model, specs[i: i + MAX_BATCH_ROWS], cfg, self.vocab, rows):
                pass
            results.extend(r.result() for r in rows)
        return self._with_copies(results, cfg)

    def _with_copies(self, results: list[Generation], cfg: SampleConfig) -> list[Generation]:
        if cfg.check_copies:
            for g in results:
                g.copied = self.copied_spans(g.text, cfg.check_copies)
        return results

    def stream(self, prompt: str, cfg: SampleConfig | None = None) -> Iterator[StreamEvent]:
        """One continuation of `prompt`, one event per generated token; the deltas concatenate to
        generate()'s text for the same seed. Beam search cannot know its text until it ends, so it
        yields the finished text as one event."""
        cfg, prompts = self._check(prompt, cfg)
        if not isinstance(prompt, str):
            raise GoushiError("stream() takes one prompt string; use generate() for a list")
        if cfg.num_samples != 1:
            raise GoushiError(f"--num-samples {cfg.num_samples}: stream() makes one sample; "
                              "stream each with its own seed, or use generate()")
        return self._stream(prompts[0], cfg)

    @torch.inference_mode()  # on a generator, torch enters the mode around each step only
    def _stream(self, prompt: str, cfg: SampleConfig) -> Iterator[StreamEvent]:
        spec = self._specs([prompt], cfg)[0]
        if cfg.strategy == "beam":
            g = beam_search(self.model, spec, cfg, self.vocab)[0]
            yield StreamEvent(g.text, g.token_ids[-1] if g.token_ids else None, None, g.finish_reason, g.truncated_prompt)
            return
        for events in decode(self.model, [spec], cfg, self.vocab):
            yield events[0][1]

    # ---- inspection (the web page's look inside the model) -----------------------------------------
    def tokenize(self, text: str) -> list[tuple[int, str]]:
        """(id, readable piece) for each token of `text`, exactly as the tokenizer splits it."""
        return [(i, self.vocab.pieces[i]) for i in self.tokenizer.encode(text)]

    @torch.inference_mode()
    def next_token_probs(self, text: str, top_n: int = 10) -> list[TopToken]:
        """The model's top_n guesses for the token after `text` (temperature 1, no filters)."""
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= MAX_TOP_N:
            raise GoushiError(f"top_n {top_n!r}: must be an integer in [1, {MAX_TOP_N}]")
        ids = self._visible(self._prompt_ids(text))
        logits, _ = self.model(torch.tensor([ids], device=self.device), last_only=True)
        probs = logits[0, -1, : self.vocab.size].float().softmax(-1)
        values, indices = torch.topk(probs, min(top_n, self.vocab.size))
        return [(self.vocab.pieces[i], p, i) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]

    @torch.inference_mode()
    def attention(self, text: str) -> tuple[list[str], torch.Tensor]:
        """Pieces (the leading <|endoftext|> first) and attention weights (layers, heads, T, T):
        row i is how much token i looked at each earlier token. Long texts keep their last
        context_length tokens."""
        ids = self._visible(self._prompt_ids(text))
        _, weights = self.model.forward_with_attention(torch.tensor([ids], device=self.device))
        return [self.vocab.pieces[i] for i in ids], torch.stack([w[0].float().cpu() for w in weights])

    # ---- helpers -------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int]:
        return [self.vocab.eot_id, *self.tokenizer.encode(prompt)]

    def _visible(self, ids: list[int]) -> list[int]:
        return ids[-self.config.context_length:]

    def _check(self, prompts: str | list[str], cfg: SampleConfig | None) -> tuple[SampleConfig, list[str]]:
        # A copy: validate() normalises fields, and a caller's config may be shared between threads.
        cfg = dataclasses.replace(cfg or SampleConfig(), stop=list(cfg.stop) if cfg else [])
        cfg.validate()
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise GoushiError("prompts: give a string or a non-empty list of strings")
        return cfg, list(prompts)

    def _specs(self, prompts: list[str], cfg: SampleConfig) -> list[RowSpec]:
        """One row per (prompt, sample); sample k uses seed + k, the same whatever the batch."""
        base = cfg.seed if cfg.seed is not None else secrets.randbelow(2**62)
        greedy = cfg.is_greedy or cfg.strategy == "beam"
        return [RowSpec(p, ids, None if greedy else base + k)
                for p, ids in zip(prompts, self.tokenizer.encode_batch(prompts), strict=True)
                for ids in [[self.vocab.eot_id, *ids]] for k in range(cfg.num_samples)]


__all__ = ["Engine", "SampleConfig", "Generation", "StreamEvent", "MAX_BATCH_ROWS"]
