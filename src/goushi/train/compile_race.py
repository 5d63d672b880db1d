"""torch.compile against eager, raced on a run's own first steps when this machine has no measurement yet.

On a CPU compiling pays or not by the CPU, the shape and the precision (1.46x for the tiny llama in bf16 at one
thread on a Xeon with AMX, after ~60 s of compiling; unknown elsewhere), so `--compile auto` never assumes it.
Both nets share the same parameters, so every raced step is a real training step whichever net ran it: the race
costs the compile time (spent anyway when compiling wins) and nothing else. The verdict is kept in the speed
cache (goushi.precision.record_compile), so later runs of the shape decide without racing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from goushi.precision import cache_get, compile_key, probing, record_compile

# Steps: compiled, compiled (warm), then eager and compiled alternating this many times each.
ROUNDS = 3
# Only runs this long race: a shorter one cannot win back ~a minute of compiling (twice over, as
# goushi.precision.should_compile asks of a measured gain).
MIN_SECONDS = 300.0
MIN_STEPS = 1000


def wanted(setting: str, device: torch.device, key: tuple, *, budget_seconds: float | None, steps: int | None,
           processes: int) -> bool:
    """Race when left to auto on a CPU, one process, measuring allowed (GOUSHI_PROBE), nothing measured for this
    shape yet, and the run long enough."""
    cfg, batch, dtype = key
    return (setting == "auto" and device.type == "cpu" and processes == 1 and probing()
            and cache_get("compile", compile_key(cfg, batch, dtype)) is None
            and ((budget_seconds or 0.0) >= MIN_SECONDS or (steps or 0) >= MIN_STEPS))


class CompileRace:
    """Which net runs the next step (`net()`), what each step took (`timed`), and when decided the winner."""

    def __init__(self, eager: nn.Module, compiled: nn.Module, key: tuple) -> None:
        self.eager, self.compiled, self.key = eager, compiled, key  # key: (ModelConfig, batch, dtype) to record
        self.n = 0
        self.first = math.inf
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.winner: nn.Module | None = None

    def _compiled_turn(self) -> bool:
        return self.n < 2 or (self.n - 2) % 2 == 1

    def net(self) -> nn.Module:
        return self.compiled if self._compiled_turn() else self.eager

    def timed(self, seconds: float) -> str | None:
        """Record the step just run; once decided, the log line (and `winner` is set)."""
        if self.n == 0:
            self.first = seconds
        else:
            self.times[self._compiled_turn()].append(seconds)
        self.n += 1
        if self.n < 2 + 2 * ROUNDS:
            return None
        eager_s, compiled_s = min(self.times[False]), min(self.times[True])
        compile_s = max(0.0, self.first - compiled_s)
        cfg, batch, dtype = self.key
        record_compile(cfg, batch, dtype, eager_s=eager_s, compiled_s=compiled_s, compile_s=compile_s)
        won = compiled_s < eager_s
        self.winner = self.compiled if won else self.eager
        return (f"torch.compile raced on this run's first steps: {eager_s / compiled_s:.2f}x eager's speed after "
                f"{compile_s:.0f}s of compiling; {'kept' if won else 'dropped, training eagerly'} "
                "(remembered for this shape; --compile/--no-compile decide yourself)")


def start(model: nn.Module, key: tuple) -> CompileRace:
    return CompileRace(model, torch.compile(model), key)


__all__ = ["CompileRace", "wanted", "start", "MIN_SECONDS", "MIN_STEPS", "ROUNDS"]
