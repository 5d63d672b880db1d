"""The one generation engine: the CLI, the web page, the evaluation and an API server all call it.

    engine = Engine.load("runs/tiny")                            # model + tokenizer + config.json, loaded once
    engine.generate(["今天我终于"], SampleConfig(top_p=0.9))        # -> [Generation]
    for ev in engine.stream(["今天", "春眠"], SampleConfig(num_samples=2)):   # -> StreamEvent per token and row
        print(ev.index, ev.delta)
    engine.chat([{"role": "user", "content": "讲个笑话"}], SampleConfig())   # a chat fine-tuned run answers

A request makes rows, prompt-major: row `prompt_index * num_samples + k` is sample k of a prompt, with
seed `seed + k` (that derivation lives here and nowhere else). `stream` yields the events of every row
(decoded together, at most MAX_BATCH_ROWS at a time, rows joining as others finish; the samples of a prompt share
one prefill); `generate` keeps each row's finished result, so a row's deltas always concatenate to its generated
text. A row's text does not depend on what is decoded beside it: a server decoding many requests in one batch
(`request` / `chat_request` give it a request's rows) answers a seeded request the same whatever else it decodes.
A call with a single row (one prompt, one sample) decodes it on the model's faster single-row kernels instead,
whose floats can differ from the batch's in the last bits: the same text as the server's except at float
near-ties; `batch_invariant=True` makes such calls run as the server's batch does, bit for bit.

Every prompt is preceded by <|endoftext|>, the separator the model saw before each training
document, so a prompt reads as the start of a document (and an empty prompt works). A chat is
rendered to token ids by goushi.chat (the run's template, ChatML by default) and stops where the
template says an answer ends (ChatTemplate.stops). The engine keeps no per-request state: one
instance serves many threads (each call has its own KV cache and its own random generator), and it
never touches the global torch RNG. The decoding pieces live in goushi.generation (processors, text,
runner, sampling, beam).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from goushi import rundir
from goushi.chat import ChatTemplate
from goushi.checkpoint import load_run
from goushi.config import ModelConfig
from goushi.data.textindex import Span, TextIndex
from goushi.device import DTYPES, pick_device
from goushi.errors import GoushiError
from goushi.generation.batch import DecodeBatch
from goushi.generation.beam import beam_search
from goushi.generation.options import MAX_TOP_N, Generation, SampleConfig, StreamEvent, TopToken, fresh_seed
from goushi.generation.sampling import RowSpec, Vocab
from goushi.generation.slots import MIN_ROWS
from goushi.generation.utf8 import Utf8Guard
from goushi.precision import Plan, inference_plan, int8_shapes
from goushi.run_record import RunRecord
from goushi.tokenizer import EOT, SPECIAL_TOKENS, UNK, Tokenizer

# Rows (prompts x samples) decoded together; more join as others finish, so memory stays bounded
# (each row holds a KV cache of n_layer x 2 x context_length x n_embd values).
MAX_BATCH_ROWS = 32
QUANTIZE = ("none", "int8")

# A prompt ready for the model: its text (Generation.prompt) and its ids, <|endoftext|> first.
Prompt = tuple[str, list[int]]


class Engine:
    def __init__(self, model, tokenizer: Tokenizer, *, run_dir: str | Path | None = None,
                 record: RunRecord | None = None, data_dir: str | Path | None = None, quantize: str | None = None,
                 batch_invariant: bool = False, compile_decode: bool = False):
        """`record`: the run's config.json (None for a model built in memory). `data_dir`: where the training
        data's verbatim-copy index is, overriding the run's record (`--data`). `quantize="int8"`: the linears
        that measure faster as int8 on this CPU run as int8 layers (the model's own weights stay fp32).
        `batch_invariant` (also an attribute, read at each call): see the attribute below. `compile_decode`: a
        lone row decodes with a compiled step (goushi.generation.compiled), compiled at the first such call and
        kept only if it measures faster than the eager step (`compile_note` says which)."""
        self.model = model.eval()
        self.compile_decode = compile_decode
        self.compile_note = "compiled decode: off"
        self._compiled: list = []  # [CompiledStep or None] once built
        self._compile_lock = threading.Lock()
        # False (the default): a call that decodes a single row (one prompt, one sample) runs it on the model's
        # single-row kernels (goushi.generation.solo), 1.7-1.9x the batch's speed for a small model on a CPU. True:
        # every row runs in a batch of slots as the server's batch runs it, so a lone call's floats are the
        # server's bit for bit (what tests comparing the server with the engine need). Otherwise the two differ
        # in the last bits, as between thread counts: the same text except at float near-ties.
        self.batch_invariant = batch_invariant
        self.tokenizer = tokenizer
        self.config: ModelConfig = model.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.record = record
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.plan: Plan | None = None  # set by load(): the precision and threads measured for this model
        self._text_index: TextIndex | None = None
        self._text_index_lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.quantize_note = self._prepare_model(quantize or "none")
        if tokenizer.vocab_size > self.config.vocab_size:
            raise GoushiError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {self.config.vocab_size}")
        n = tokenizer.vocab_size
        # Special tokens print as their own text (as Tokenizer.decode does); <|endoftext|> never
        # reaches the text because it ends it.
        token_bytes = [SPECIAL_TOKENS[i].encode("utf-8") if i < len(SPECIAL_TOKENS) else tokenizer.token_bytes(i)
                       for i in range(n)]
        guard = Utf8Guard(token_bytes, self.device)
        pieces = [tokenizer.id_to_piece(i) for i in range(n)]
        # Special tokens no training text contained, so a young model's score for them is noise: <|unk|> (the
        # tokenizers spell unknown text as bytes instead), and in plain text the chat markers, unless the run
        # was chat fine-tuned. A chat call keeps the markers: its answer ends on them.
        never = {UNK} if self.is_chat else set(SPECIAL_TOKENS) - {EOT}
        self.vocab = Vocab(size=n, eot_id=tokenizer.eot_id, token_bytes=token_bytes, pieces=pieces,
                           guard=guard if guard.needed else None, banned=self._ids_of(pieces, never))
        self.chat_vocab = dataclasses.replace(self.vocab, banned=self._ids_of(pieces, {UNK}))

    def _ids_of(self, pieces: list[str], names: set[str]) -> torch.Tensor | None:
        ids = [i for i, p in enumerate(pieces) if p in names]
        return torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None,
             *, data_dir: str | Path | None = None, quantize: str | None = None, threads: bool = False,
             batch_invariant: bool = False, compile_decode: bool = False) -> Engine:
        """Load a run directory once (GoushiError naming what is missing if it is not one). `dtype` None or
        "auto": goushi.precision.inference_plan decides (fp32 unless bf16 measures faster here); the plan is
        `engine.plan`. `threads=True` also measures the thread count for decoding (engine.plan.threads), for a
        caller that owns the process to apply; a server shares the cores between requests and sets its own."""
        dev = device if isinstance(device, torch.device) else pick_device(device)
        if isinstance(dtype, str) and dtype not in ("auto", *DTYPES):
            raise GoushiError(f"--dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
        run = load_run(run_dir, device=dev)
        name = None if dtype is None or isinstance(dtype, str) else str(dtype).replace("torch.", "")
        plan = inference_plan(run.config, dev, name or (dtype if isinstance(dtype, str) else None), threads=threads)
        if plan.dtype != torch.float32:
            run.model.to(dtype=plan.dtype)
        engine = cls(run.model, run.tokenizer, run_dir=run.run_dir, record=run.record, data_dir=data_dir,
                     quantize=quantize, batch_invariant=batch_invariant, compile_decode=compile_decode)
        engine.plan = plan
        return engine

    def _prepare_model(self, quantize: str) -> str:
        """Arrange the weights for decoding once (goushi.model.GPT.prepare_for_inference); with int8, on the
        linears measured faster as int8. Returns a line saying what was done."""
        if quantize not in QUANTIZE:
            raise GoushiError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
        prepare = getattr(self.model, "prepare_for_inference", None)
        if quantize == "none":
            if prepare is not None:
                prepare()
            return "quantize: none"
        p = next(self.model.parameters())
        if prepare is None or p.device.type != "cpu" or p.dtype != torch.float32:
            raise GoushiError(f"--quantize int8 needs an fp32 model on the CPU (this one is {str(p.dtype)[6:]} on "
                              f"{p.device.type}); use --dtype float32 --device cpu, or drop --quantize")
        shapes, note = int8_shapes(self.config)
        prepare(int8=lambda i, o: (i, o) in shapes)
        which = ", ".join(f"{i}x{o}" for i, o in sorted(shapes)) or "none (none measured faster)"
        return f"quantize: int8 layers {which} ({note})"

    # ---- what the run is ------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(self.config.context_length)

    @property
    def is_chat(self) -> bool:
        """Chat fine-tuned (the run's record has "sft"): only then does `chat` give answers."""
        return self.record is not None and self.record.is_chat

    @property
    def chat_template(self) -> ChatTemplate:
        """The template the run was tuned with, ChatML by default."""
        return self.record.template if self.record is not None else ChatTemplate()

    def count_prompt_tokens(self, text: str) -> int:
        """Ids the model is fed for prompt `text`: its tokens plus the leading <|endoftext|>
        (Generation.prompt_tokens; before any cut to the context window)."""
        return len(self._prompt_ids(text))

    def copied_spans(self, text: str, min_chars: int = 8) -> list[Span]:
        """Spans of `text` (>= min_chars characters) found verbatim in the training data, each with its
        source id, author, url and licence. GoushiError when the run has no index (rundir.provenance_index_dir)."""
        return self._index().find_copied_spans(text, min_chars)

    def _index(self) -> TextIndex:
        with self._text_index_lock:
            if self._text_index is None:
                self._text_index = TextIndex.load(rundir.provenance_index_dir(self.run_dir, self.data_dir,
                                                                                 record=self.record))
            return self._text_index

    # ---- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: str | list[str], cfg: SampleConfig | None = None) -> list[Generation]:
        """cfg.num_samples continuations of each prompt, in prompt order (all samples of the first
        prompt, then of the second ...). Beam search returns its best num_samples beams, best first."""
        cfg, encoded = self._prepare(prompts, cfg)
        return self._collect(self._events(self._specs(encoded, cfg), cfg))

    def stream(self, prompts: str | list[str], cfg: SampleConfig | None = None) -> Iterator[StreamEvent]:
        """The rows of generate(prompts, cfg) as they are made: one event per generated token and row
        (`event.index` is the row); row i's deltas concatenate to generate()[i].text for the same seed and
        its last event carries the finish reason and the finished Generation (`result`). Beam search
        cannot know a text until it ends, so it yields one event per returned beam, with the whole text.
        Options are checked now; close() the iterator to abandon the rest."""
        cfg, encoded = self._prepare(prompts, cfg)
        return self._events(self._specs(encoded, cfg), cfg)

    @torch.inference_mode()
    def chat(self, messages: list[dict[str, str]], cfg: SampleConfig | None = None) -> list[Generation]:
        """cfg.num_samples answers to the conversation (its last message is the user's). An answer stops at
        the end of the assistant's turn and never contains the template's markers. Generation.prompt is the
        rendered conversation. Any run can be asked; only a chat fine-tuned one (`is_chat`) answers well."""
        cfg, prompt = self._prepare_chat(messages, cfg)
        return self._collect(self._events(self._specs([prompt], cfg), cfg, self.chat_vocab))

    def stream_chat(self, messages: list[dict[str, str]], cfg: SampleConfig | None = None) -> Iterator[StreamEvent]:
        """`chat`, one event per token and row, as `stream`."""
        cfg, prompt = self._prepare_chat(messages, cfg)
        return self._events(self._specs([prompt], cfg), cfg, self.chat_vocab)

    @torch.inference_mode()  # on a generator, torch enters the mode around each step only
    def _events(self, specs: list[RowSpec], cfg: SampleConfig, vocab: Vocab | None = None) -> Iterator[StreamEvent]:
        """Every row's events: beam search prompt by prompt, else one DecodeBatch of up to MAX_BATCH_ROWS slots
        (of size 1, the single-row kernels, for a lone row unless batch_invariant). With cfg.check_copies a row's
        result gets its copied spans before its last event goes out."""
        vocab = vocab or self.vocab
        if cfg.strategy == "beam":
            for start in range(0, len(specs), cfg.num_samples):
                for k, g in enumerate(beam_search(self.model, specs[start], cfg, vocab)):
                    self.add_copies(g, cfg)
                    yield StreamEvent(g.text, g.token_ids[-1] if g.token_ids else None, None, g.finish_reason,
                                      g.truncated_prompt, index=start + k, seed=None, prompt_tokens=g.prompt_tokens,
                                      result=g)
            return
        size = 1 if len(specs) == 1 and not self.batch_invariant else max(MIN_ROWS, min(MAX_BATCH_ROWS, len(specs)))
        batch = DecodeBatch(self.model, size, vocab.eot_id, compiled=self.compiled_step() if size == 1 else None)
        batch.add(None, specs, cfg, vocab)
        while batch.busy:
            batch.admit()
            # The events go out before the model runs the next step (batch.step() would run it first): the first
            # token reaches a streaming caller one decode step sooner, as the server does it.
            for _, ev in batch.choose():
                if ev.result is not None:
                    self.add_copies(ev.result, cfg)
                yield ev
            batch.advance()

    def compiled_step(self):
        """The compiled single-row step with compile_decode, built at the first call (under a lock: callers may be
        threads); None without compile_decode or where it was dropped (`compile_note` says why)."""
        if not self.compile_decode:
            return None
        with self._compile_lock:
            if not self._compiled:
                from goushi.generation.compiled import CompiledStep

                step, self.compile_note = CompiledStep.build(self.model)
                self._compiled.append(step)
            return self._compiled[0]

    @staticmethod
    def _collect(events: Iterator[StreamEvent]) -> list[Generation]:
        done = {ev.index: ev.result for ev in events if ev.result is not None}
        return [done[i] for i in sorted(done)]

    def add_copies(self, g: Generation, cfg: SampleConfig) -> None:
        """With cfg.check_copies, fill g.copied (a caller decoding `request` rows itself calls it per result)."""
        if cfg.check_copies:
            g.copied = self.copied_spans(g.text, cfg.check_copies)

    # ---- rows for a caller that decodes them itself (the server's batch) ----------------------------------
    def request(self, prompts: str | list[str], cfg: SampleConfig | None = None) -> tuple[SampleConfig, list[RowSpec], Vocab]:
        """What `stream(prompts, cfg)` decodes: the checked settings, the rows (seeds given) and the vocabulary
        rules, for goushi.generation.batch.DecodeBatch.add. GoushiError for bad options, before any work."""
        cfg, encoded = self._prepare(prompts, cfg)
        return cfg, self._specs(encoded, cfg), self.vocab

    def chat_request(self, messages: list[dict[str, str]], cfg: SampleConfig | None = None
                     ) -> tuple[SampleConfig, list[RowSpec], Vocab]:
        """`request` for `stream_chat(messages, cfg)`."""
        cfg, prompt = self._prepare_chat(messages, cfg)
        return cfg, self._specs([prompt], cfg), self.chat_vocab

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

    def _prepare(self, prompts: str | list[str], cfg: SampleConfig | None) -> tuple[SampleConfig, list[Prompt]]:
        """Checked options and encoded prompts, before any work is done."""
        cfg = self._options(cfg)
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise GoushiError("prompts: give a string or a non-empty list of strings")
        encoded = [(p, [self.vocab.eot_id, *ids]) for p, ids in zip(prompts, self.tokenizer.encode_batch(list(prompts)),
                                                                    strict=True)]
        return cfg, encoded

    def _prepare_chat(self, messages: list[dict[str, str]], cfg: SampleConfig | None) -> tuple[SampleConfig, Prompt]:
        """Checked options with the template's markers as stop strings, and the conversation's ids as they are
        (no decode / re-encode round trip). Bad messages: GoushiError from goushi.chat naming the message."""
        cfg = self._options(cfg)
        tpl = self.chat_template
        ids, _ = tpl.encode(self.tokenizer, messages, add_generation_prompt=True)
        cfg.stop = list(dict.fromkeys([*cfg.stop, *tpl.stops]))
        return cfg, (tpl.render(messages, add_generation_prompt=True), ids)

    def _options(self, cfg: SampleConfig | None) -> SampleConfig:
        # A copy: validate() normalises fields, and a caller's config may be shared between threads.
        cfg = dataclasses.replace(cfg or SampleConfig(), stop=list(cfg.stop) if cfg else [])
        cfg.validate()
        if cfg.check_copies:  # no index: say so before generating, not after
            try:
                self._index()
            except GoushiError as e:
                raise GoushiError(f"{e}; or turn --check-copies off") from None
        return cfg

    def _specs(self, prompts: list[Prompt], cfg: SampleConfig) -> list[RowSpec]:
        """One row per (prompt, sample), prompt-major; sample k uses seed + k, the same whatever the batch."""
        base = cfg.seed if cfg.seed is not None else fresh_seed()
        greedy = cfg.is_greedy or cfg.strategy == "beam"
        n = cfg.num_samples
        return [RowSpec(text, ids, None if greedy else base + k, index=p * n + k)
                for p, (text, ids) in enumerate(prompts) for k in range(n)]


__all__ = ["Engine", "SampleConfig", "Generation", "StreamEvent", "MAX_BATCH_ROWS"]
