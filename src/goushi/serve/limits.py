"""How much one request may ask for, and how much work the server runs at once (no web dependencies, so the
CLI can show the defaults without FastAPI installed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 16_000  # per request: all prompts, or all messages, together
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_tokens: int = 1024  # per choice
    max_n: int = 8  # choices per prompt
    concurrency: int = 2  # with max_batch 1: generations running at once; more wait their turn
    # Rows decoded together in one batch per model (continuous batching; goushi.serve.scheduler); 1 = each request
    # its own engine call, `concurrency` at a time. The default is the fastest measured by bench/serve_load.py.
    max_batch: int = 32
    # Decode threads per model when batched, the max_batch slots split between them; 0 = measured rule: one per CPU
    # core for a model big enough to gain from it (goushi.serve.app.decode_threads), else one.
    decode_threads: int = 0
    max_queue: int = 64  # requests waiting; beyond it the server answers 503


__all__ = ["Limits"]
