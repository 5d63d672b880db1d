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
    concurrency: int = 2  # generations running at once; more wait their turn
    max_queue: int = 64  # requests waiting; beyond it the server answers 503


__all__ = ["Limits"]
