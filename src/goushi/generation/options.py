"""What a caller asks for (SampleConfig) and what it gets back (Generation, StreamEvent).

Plain dataclasses so the CLI, the web page, the evaluation and an API server all speak the same words.
A request makes rows: row `prompt_index * num_samples + k` is sample k of that prompt (beam: the k-th best
beam). `Generation` is a finished row; `StreamEvent` is one step of one row while it is being generated.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from goushi.errors import GoushiError

STRATEGIES = ("greedy", "sample", "beam")
# A small model's text degrades long before this; the cap keeps a typo (max_new_tokens=1e6) from
# holding a shared web-page engine for minutes.
MAX_NEW_TOKENS = 4096
MAX_SAMPLES = 64
MAX_BEAMS = 64
MAX_TOP_N = 1000
MAX_NGRAM = 64
MAX_TEMPERATURE = 100.0
MAX_REPETITION_PENALTY = 10.0
# Sample k of a prompt uses seed + k (k < MAX_SAMPLES), so every row's seed stays a signed 64-bit integer.
SEED_LIMIT = 2**63 - MAX_SAMPLES  # a request's seed is an integer in [0, SEED_LIMIT)
# Fresh seeds stay below 2**53, where JSON readers and JavaScript keep a whole number exact, so the page
# and an API client can show the seed used and send it back.
FRESH_SEED_LIMIT = 2**53

# (readable piece, probability, token id)
TopToken = tuple[str, float, int]


def fresh_seed() -> int:
    """A new random seed in [0, FRESH_SEED_LIMIT), for a request that gave none (the OS's randomness: no
    torch or Python RNG state is touched)."""
    return secrets.randbelow(FRESH_SEED_LIMIT)


@dataclass
class SampleConfig:
    """How to choose each next token. `validate()` checks every field and names the bad one."""

    strategy: str = "sample"  # greedy | sample | beam
    temperature: float = 0.8  # 0 -> greedy
    top_k: int = 0  # 0 = off; otherwise exactly k candidates survive (ties: lower token id first)
    top_p: float = 1.0  # (0, 1]: keep the smallest set of most likely tokens whose probability reaches p
    min_p: float = 0.0  # [0, 1]: drop tokens less likely than min_p * (probability of the best token)
    repetition_penalty: float = 1.0  # CTRL-style: >1 makes tokens already in prompt or text less likely
    no_repeat_ngram_size: int = 0  # >0: never produce an n-gram of this size twice
    num_beams: int = 4  # beam only
    length_penalty: float = 1.0  # beam only: score = sum log p / length ** length_penalty
    early_stopping: bool = True  # beam only: stop as soon as num_beams hypotheses have ended
    max_new_tokens: int = 200
    min_new_tokens: int = 0  # <|endoftext|> is suppressed until this many tokens were generated
    num_samples: int = 1  # continuations per prompt (beam: the best num_samples beams)
    seed: int | None = None  # sample k of a prompt uses seed + k; None draws a fresh seed
    stop: list[str] = field(default_factory=list)  # stop strings; <|endoftext|> always stops
    top_n: int = 0  # >0: record the top-N next tokens with probabilities at every step
    check_copies: int = 0  # >0: list spans of at least this many characters copied verbatim from the training data

    def validate(self) -> SampleConfig:
        """Check every option; return self (with `stop` normalised to a list) or raise GoushiError."""

        def bad(name: str, rule: str) -> GoushiError:
            flag = "--" + name.replace("_", "-")
            return GoushiError(f"{flag} {getattr(self, name)!r}: {rule}")

        def number(name: str, *, integer: bool) -> float:
            v = getattr(self, name)
            ok = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
                raise bad(name, "must be an integer" if integer else "must be a finite number")
            return v

        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if not 0.0 <= number("temperature", integer=False) <= MAX_TEMPERATURE:
            raise bad("temperature", f"must be in [0, {MAX_TEMPERATURE:g}] (0 means greedy)")
        if number("top_k", integer=True) < 0:
            raise bad("top_k", "must be >= 0 (0 turns top-k off)")
        if not 0.0 < number("top_p", integer=False) <= 1.0:
            raise bad("top_p", "must be in (0, 1] (1 turns top-p off)")
        if not 0.0 <= number("min_p", integer=False) <= 1.0:
            raise bad("min_p", "must be in [0, 1] (0 turns min-p off)")
        if not 0.0 < number("repetition_penalty", integer=False) <= MAX_REPETITION_PENALTY:
            raise bad("repetition_penalty", f"must be in (0, {MAX_REPETITION_PENALTY:g}] (1 turns it off)")
        if not 0 <= number("no_repeat_ngram_size", integer=True) <= MAX_NGRAM:
            raise bad("no_repeat_ngram_size", f"must be in [0, {MAX_NGRAM}] (0 turns it off)")
        if not 1 <= number("num_beams", integer=True) <= MAX_BEAMS:
            raise bad("num_beams", f"must be in [1, {MAX_BEAMS}]")
        number("length_penalty", integer=False)
        if not isinstance(self.early_stopping, bool):
            raise bad("early_stopping", "must be true or false")
        if not 1 <= number("max_new_tokens", integer=True) <= MAX_NEW_TOKENS:
            raise bad("max_new_tokens", f"must be in [1, {MAX_NEW_TOKENS}]")
        if not 0 <= number("min_new_tokens", integer=True) <= self.max_new_tokens:
            raise bad("min_new_tokens", f"must be in [0, max_new_tokens={self.max_new_tokens}]")
        if not 1 <= number("num_samples", integer=True) <= MAX_SAMPLES:
            raise bad("num_samples", f"must be in [1, {MAX_SAMPLES}]")
        if self.strategy == "beam" and self.num_samples > self.num_beams:
            raise bad("num_samples", f"must be <= --num-beams {self.num_beams} with beam search (it returns the top beams)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < SEED_LIMIT):
            raise bad("seed", f"must be an integer in [0, 2**63 - {MAX_SAMPLES}) or None")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be a list of non-empty strings")
        self.stop = list(self.stop)
        if not 0 <= number("top_n", integer=True) <= MAX_TOP_N:
            raise bad("top_n", f"must be in [0, {MAX_TOP_N}] (0 turns it off)")
        if not 0 <= number("check_copies", integer=True) <= 10_000:
            raise bad("check_copies", "must be in [0, 10000] characters (0 turns it off; 8 is a good start)")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.strategy == "greedy" or (self.strategy == "sample" and self.temperature == 0.0)


@dataclass
class Generation:
    """One continuation of one prompt.

    `text` is the continuation only (the prompt is not repeated), cut before a stop string and
    without `<|endoftext|>`; `token_ids` are the generated ids (without the final `<|endoftext|>`;
    a stop string may end inside the last one). `steps[i]` holds the top-N candidates of step i
    (with cfg.top_n > 0) from the distribution the token was actually chosen from.
    `truncated_prompt` is True when prompt + text outgrew the context window and the model
    stopped seeing the oldest tokens. `score` is the beam score (sum of log-probabilities divided
    by length ** length_penalty) for beam search, else the sum of log-probabilities of the chosen
    tokens under the model (temperature 1, before filters). `seed` reproduces a sampled result.
    `prompt_tokens` counts the prompt ids fed to the model, the leading <|endoftext|> included, before any
    cut to the context window; `completion_tokens` the generated ones (a final <|endoftext|> included):
    an API's usage.
    """

    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str  # "length" | "stop" | "eos"
    steps: list[list[TopToken]] = field(default_factory=list)
    truncated_prompt: bool = False
    score: float | None = None
    seed: int | None = None
    copied: list = field(default_factory=list)  # goushi.data.textindex.Span per copied stretch (cfg.check_copies)
    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids) + (1 if self.finish_reason == "eos" else 0)  # the <|endoftext|> was generated


@dataclass
class StreamEvent:
    """One decoding step of one row of `Engine.stream`: the new complete text (may be "" while bytes of a
    character are held back), the chosen token, its top-N candidates, and on the row's last event the
    finish reason and the finished `result` (what `generate` returns for that row). `truncated_prompt`
    becomes True once the context window has slid, and stays so. `index` is the row
    (prompt_index * num_samples + k), `seed` the row's seed (None for greedy and beam search).
    Beam search yields one event per returned beam, with the whole text."""

    delta: str
    token_id: int | None
    top: list[TopToken] | None = None
    finish_reason: str | None = None
    truncated_prompt: bool = False
    index: int = 0
    seed: int | None = None
    prompt_tokens: int = 0
    result: Generation | None = None
