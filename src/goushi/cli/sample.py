"""`goushi sample RUN_DIR --prompt 今天我终于`: continue a prompt with a trained model, streamed to the terminal.

Formatting only: each prompt is one `Engine.stream` call (every sample, any strategy). Sample 1 prints as it
is generated; the others are buffered and each is printed whole, in order, once the one before it is done.
Seeds, token counts and copied spans come from the engine's events.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from typing import Any

from goushi.engine import Engine, SampleConfig, StreamEvent
from goushi.errors import GoushiError
from goushi.generation.options import MAX_NEW_TOKENS

# Shell users cannot easily type a newline; these escapes in --stop mean what they say.
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r"}


def register(sub: argparse._SubParsersAction) -> None:
    d = SampleConfig()
    p = sub.add_parser(
        "sample", help="generate text from a trained model (greedy, sampling or beam search)",
        description="Continue prompts with the model in RUN_DIR. Text streams to the terminal as it is "
        "generated; --json prints the results (with token ids, finish reason and seed) instead.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `goushi train`")
    p.add_argument("--prompt", action="append", help="text to continue (repeat for several; \"\" starts from nothing)")
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default=d.strategy,
                   help=f"how to choose each token (default: {d.strategy})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sample: >1 more random, <1 more predictable, 0 = greedy (default: {d.temperature})")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample: only from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=d.top_p,
                   help="sample: only from the smallest set of likely tokens whose probability reaches p (1 = off)")
    p.add_argument("--min-p", type=float, default=d.min_p,
                   help="sample: drop tokens less likely than min-p x the best token's probability (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help="make tokens already in the prompt or text less likely, e.g. 1.2 (1 = off)")
    p.add_argument("--no-repeat-ngram", dest="no_repeat_ngram_size", type=int, default=d.no_repeat_ngram_size,
                   metavar="N", help="never produce the same N tokens in a row twice (0 = off)")
    p.add_argument("--num-beams", type=int, default=d.num_beams, help=f"beam: beams kept (default: {d.num_beams})")
    p.add_argument("--length-penalty", type=float, default=d.length_penalty,
                   help="beam: >1 favours longer texts, <1 shorter (default: 1)")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="beam: keep searching after num-beams texts have ended")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"most tokens to generate, 1..{MAX_NEW_TOKENS} (default: {d.max_new_tokens})")
    p.add_argument("--min-new-tokens", type=int, default=d.min_new_tokens,
                   help="do not end the text before this many tokens (default: 0)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="continuations per prompt (default: 1)")
    p.add_argument("--seed", type=int, help="make sampling repeatable; sample k uses SEED+k (default: random)")
    p.add_argument("--stop", action="append", default=[],
                   help="stop before this text (repeatable; \\n and \\t are understood); <|endoftext|> always stops")
    p.add_argument("--top-n", type=int, default=0, help="--json: record the N most likely tokens at every step")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile-decode", action="store_true",
                   help="decode with a torch.compile'd step, kept only if it measures faster than the eager one here "
                   "(15-35 s of compiling the first time on a machine; printed at start)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' precision (default auto: on a CPU bf16 only where it has native bf16 and a short "
                   "probe finds a decode step faster in it, else fp32; printed at start)")
    p.add_argument("--quantize", default="none", choices=("none", "int8"),
                   help="int8: run the linears that measure faster as int8 on this CPU as int8 layers (weights "
                   "quantised per output channel; the run on disk is unchanged); costs a little quality, "
                   "see README Benchmarks")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="after --prompt (if any), keep asking for prompts until EOF (Ctrl-D) or Ctrl-C")
    p.add_argument("--check-copies", type=int, default=0, metavar="N",
                   help="after each sample, list spans of >= N characters copied verbatim from the training data, "
                   "with their source and licence (0 = off; 8 is a good start)")
    p.add_argument("--json", action="store_true", help="print one JSON object (one line) per prompt instead of streaming text")
    p.set_defaults(func=run)


def _unescape(s: str) -> str:
    for k, v in _ESCAPES.items():
        s = s.replace(k, v)
    return s


def _config(args: argparse.Namespace) -> SampleConfig:
    names = {f.name for f in dataclasses.fields(SampleConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k != "stop"}
    cfg = SampleConfig(**values, stop=[_unescape(s) for s in args.stop])
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)  # refuse bad options before spending seconds loading the model
    if args.prompt is None and not args.interactive:
        raise GoushiError("give --prompt TEXT (or --interactive to type prompts)")
    engine = Engine.load(args.run_dir, device=args.device, dtype=args.dtype, quantize=args.quantize, threads=True,
                         compile_decode=args.compile_decode)
    engine.plan.apply_threads()
    engine.compiled_step()  # compiled and raced now (with --compile-decode), so that its line comes first
    for line in [*engine.plan.lines(), engine.quantize_note] + ([engine.compile_note] if args.compile_decode else []):
        print(line, file=sys.stderr)
    for prompt in args.prompt or []:
        _answer(engine, prompt, cfg, args.json)
    if args.interactive:
        _loop(engine, cfg, args.json)
    return 0


def _loop(engine: Engine, cfg: SampleConfig, as_json: bool) -> None:
    print(f"model: {engine.run_dir} · {cfg.strategy} · Ctrl-D or Ctrl-C to quit", file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        try:
            _answer(engine, prompt, cfg, as_json)
        except KeyboardInterrupt:  # stop this answer, keep the session
            print("\n(interrupted)", file=sys.stderr)


def _answer(engine: Engine, prompt: str, cfg: SampleConfig, as_json: bool) -> None:
    if as_json:
        gens = engine.generate([prompt], cfg)
        print(json.dumps(_to_json(engine, prompt, cfg, gens), ensure_ascii=False))
        return
    shown = SamplePrinter(engine, prompt, cfg)
    events = engine.stream(prompt, cfg)
    try:
        for ev in events:
            shown.add(ev)
    finally:
        events.close()  # Ctrl-C in --interactive: the engine's generator must not keep running


class SamplePrinter:
    """Prints the rows of one prompt in order: the current row live, later rows' events kept until it ends."""

    def __init__(self, engine: Engine, prompt: str, cfg: SampleConfig):
        self.engine, self.prompt, self.cfg = engine, prompt, cfg
        self.current = 0  # the row being printed
        self.started = False  # its header and prompt are out
        self.waiting: dict[int, collections.deque[StreamEvent]] = collections.defaultdict(collections.deque)

    def add(self, ev: StreamEvent) -> None:
        self.waiting[ev.index].append(ev)
        while self.waiting.get(self.current):
            self._show(self.waiting[self.current].popleft())

    def _show(self, ev: StreamEvent) -> None:
        if not self.started:
            _header(self.cfg, ev.index, ev.seed)
            print(self.prompt, end="", flush=True)
            self.started = True
        print(ev.delta, end="", flush=True)
        if ev.result is None:
            return
        g = ev.result
        print(flush=True)
        _footer(self.engine, g.finish_reason, len(g.token_ids), g.truncated_prompt, g.seed,
                g.score if self.cfg.strategy == "beam" else None)
        _copies(g.copied, self.cfg)
        del self.waiting[self.current]
        self.current += 1
        self.started = False


def _copies(spans: list, cfg: SampleConfig) -> None:
    if not cfg.check_copies:
        return
    if not spans:
        print(f"[no span of {cfg.check_copies}+ characters copied from the training data]", file=sys.stderr)
    for s in spans:
        print(f"[copied {s.end - s.start} chars «{s.text}» from {s.source_id} "
              f"({s.author or 'unknown author'}, {s.url or 'no url'}, licence {s.license or 'unknown'})]",
              file=sys.stderr)


def _header(cfg: SampleConfig, k: int, seed: int | None) -> None:
    if cfg.num_samples > 1:
        print(f"--- sample {k + 1}/{cfg.num_samples}" + (f" (seed {seed})" if seed is not None else "") + " ---",
              file=sys.stderr, flush=True)


def _footer(engine: Engine, finish: str, tokens: int, truncated: bool, seed: int | None, score: float | None) -> None:
    why = {"eos": "the model ended the text", "stop": "reached a stop string", "length": "reached --max-new-tokens"}
    parts = [f"{tokens} tokens", why.get(finish, finish)]
    if seed is not None:
        parts.append(f"seed {seed}")
    if score is not None:
        parts.append(f"score {score:.3f}")
    print(f"[{' · '.join(parts)}]", file=sys.stderr, flush=True)
    if truncated:
        ctx = engine.context_length
        print(f"note: prompt + text outgrew the model's context of {ctx} tokens; it kept seeing only the most "
              "recent ones, so the start of the prompt no longer influenced the end", file=sys.stderr, flush=True)


def _to_json(engine: Engine, prompt: str, cfg: SampleConfig, gens: list) -> dict[str, Any]:
    return {
        "run_dir": str(engine.run_dir),
        "prompt": prompt,
        "config": dataclasses.asdict(cfg),
        "generations": [dataclasses.asdict(g) for g in gens],
    }
