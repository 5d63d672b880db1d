"""What the OpenAI-compatible API accepts and answers: request bodies checked field by field, errors in
OpenAI's JSON shape, and the response objects.

Requests are parsed strictly (an unknown field is a 400 naming it, so a typo never silently does nothing);
OpenAI fields we do not implement are accepted only at their neutral value. Our own decoding options
(`top_k`, `repetition_penalty`, `num_beams`, `min_p`, `no_repeat_ngram_size`, `min_tokens`) ride along as
extra fields, as the `openai` client's `extra_body` sends them.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from goushi.engine import SampleConfig
from goushi.generation.options import MAX_BEAMS, MAX_REPETITION_PENALTY, SEED_LIMIT
from goushi.serve.limits import Limits


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


UNION_MEMBERS = {"str", "int", "float", "bool", "list", "dict", "none"}


def validation_error(e: ValidationError) -> APIError:
    """The first problem pydantic found, named by its field path."""
    first = e.errors()[0]
    # A field typed as a union (prompt, stop, content) adds the member pydantic tried ("str", "list[str]").
    loc = [p for p in first.get("loc", ()) if not (isinstance(p, str) and (p in UNION_MEMBERS or "[" in p))]
    param = ".".join(str(p) for p in loc) or None
    kind = first.get("type", "")
    msg = "unknown field; see the API reference in the README" if kind == "extra_forbidden" else first.get("msg", "invalid")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Decoding settings shared by both endpoints (OpenAI's names, then ours)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    user: str | None = None
    # OpenAI's, accepted only at their neutral value
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    # ours
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=MAX_REPETITION_PENALTY)
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    num_beams: int = Field(1, ge=1, le=MAX_BEAMS)
    min_tokens: int = Field(0, ge=0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def check_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name}: not supported; use repetition_penalty (an extra field, e.g. 1.2)",
                               param=name, code="unsupported_parameter")
        if self.logit_bias:
            raise APIError(400, "logit_bias: not supported", param="logit_bias", code="unsupported_parameter")
        if self.logprobs not in (None, False, 0):
            raise APIError(400, "logprobs: not supported", param="logprobs", code="unsupported_parameter")

    def sample_config(self, max_tokens: int | None, limits: Limits) -> SampleConfig:
        """The engine's settings for this request, within the server's limits."""
        self.check_unsupported()
        if self.n > limits.max_n:
            raise APIError(400, f"n: {self.n} is more than this server allows ({limits.max_n})", param="n",
                           code="invalid_value")
        tokens = limits.max_tokens if max_tokens is None else max_tokens
        if not 1 <= tokens <= limits.max_tokens:
            raise APIError(400, f"max_tokens: {tokens} must be between 1 and {limits.max_tokens} on this server",
                           param="max_tokens", code="invalid_value")
        if self.min_tokens > tokens:
            raise APIError(400, f"min_tokens: {self.min_tokens} is more than max_tokens ({tokens})", param="min_tokens",
                           code="invalid_value")
        if self.num_beams > 1 and self.n > self.num_beams:
            raise APIError(400, f"n: {self.n} beams asked for but num_beams is {self.num_beams}", param="n",
                           code="invalid_value")
        strategy = "beam" if self.num_beams > 1 else "greedy" if self.temperature == 0 else "sample"
        return SampleConfig(strategy=strategy, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                            min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                            no_repeat_ngram_size=self.no_repeat_ngram_size, num_beams=max(self.num_beams, 1),
                            max_new_tokens=tokens, min_new_tokens=self.min_tokens, num_samples=self.n, seed=self.seed,
                            stop=list(self.stop or []))


class CompletionRequest(_Sampling):
    prompt: str | list[str] = ""
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self, limits: Limits) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings", param="prompt",
                           code="invalid_value")
        if len(prompts) > limits.max_prompts:
            raise APIError(400, f"prompt: {len(prompts)} prompts; this server takes at most {limits.max_prompts} "
                           "per request", param="prompt", code="invalid_value")
        if sum(len(p) for p in prompts) > limits.max_prompt_chars:
            raise APIError(400, f"prompt: longer than {limits.max_prompt_chars} characters", param="prompt",
                           code="invalid_value")
        if self.echo or self.suffix or (self.best_of not in (None, 1)):
            name = "echo" if self.echo else "suffix" if self.suffix else "best_of"
            raise APIError(400, f"{name}: not supported", param=name, code="unsupported_parameter")
        return prompts


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, refusal ... carry nothing we use
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)

    def conversation(self, limits: Limits) -> list[dict[str, str]]:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]
        if sum(len(m["content"]) for m in msgs) > limits.max_prompt_chars:
            raise APIError(400, f"messages: longer than {limits.max_prompt_chars} characters", param="messages",
                           code="invalid_value")
        return msgs

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---- responses ------------------------------------------------------------------------------------
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


__all__ = ["Limits", "APIError", "validation_error", "CompletionRequest", "ChatRequest", "ChatMessage", "FINISH",
           "new_id", "now", "usage"]
