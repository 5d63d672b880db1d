"""How long a run lasts, and so how long its learning-rate schedule is.

A run stops at whichever comes first of `max_steps`, `tokens` (turned into steps) and `time_budget`;
none given means DEFAULT_STEPS. A time budget becomes a step count once the first PLAN_AFTER steps of
the session were measured, so the schedule can end on time; it is planned again at evaluations in the
first REPLAN_BEFORE of the run from the longer measurement (the decay phase is never moved).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from goushi.train.config import TrainConfig

DEFAULT_STEPS = 1000
PLAN_AFTER = 8  # steps of this session measured before a time budget is turned into a step count
REPLAN_BEFORE = 0.6  # re-plan at evaluations only this early in the run
SAFETY = 0.98  # plan a little short: the last step must not overrun the budget
# Settings whose change makes a saved schedule meaningless (the schedule is planned again on resume).
KEYS = ("max_steps", "tokens", "time_budget", "batch_size", "grad_accum")


def plan_steps(seconds_left: float, per_step: float, eval_cost: float, eval_every: int) -> int:
    """Optimizer steps that fit in `seconds_left`, paying for an evaluation every `eval_every` steps
    and keeping room for the final one (at least 1)."""
    evals_per_step = 1 / eval_every if eval_every else 0.0
    remaining = seconds_left - eval_cost
    return max(1, int(SAFETY * remaining / (per_step + evals_per_step * eval_cost)))


class Budget:
    """The planned number of optimizer steps (`total`, None until known) and the warmup that fits it."""

    def __init__(self, cfg: TrainConfig, tokens_per_step: int):
        self.cfg = cfg
        self.seconds = cfg.budget_seconds
        self.tokens_per_step = tokens_per_step
        self.total: int | None = None
        self.warmup = cfg.warmup
        self.planned_here = False  # planned from this session's measurements (so re-planning may refine it)

    def key(self) -> dict[str, Any]:
        return {k: getattr(self.cfg, k) for k in KEYS}

    def fixed_total(self) -> int | None:
        """Steps from the step and token budgets (DEFAULT_STEPS when there is no budget at all)."""
        cands = []
        if self.cfg.max_steps:
            cands.append(self.cfg.max_steps)
        if self.cfg.tokens:
            cands.append(math.ceil(self.cfg.tokens / self.tokens_per_step))
        if not cands and self.seconds is None:
            cands.append(DEFAULT_STEPS)
        return min(cands) if cands else None

    def restore(self, saved_key: dict[str, Any] | None, schedule: dict[str, Any]) -> bool:
        """Take a resumed run's schedule if its budget is unchanged; False when it must be planned again."""
        if saved_key != self.key():
            return False
        if schedule.get("total", -1) > 0:
            self.total, self.warmup = int(schedule["total"]), int(schedule["warmup"])
        return True

    def schedule(self) -> dict[str, int]:
        return {"total": self.total or -1, "warmup": self.warmup}

    def start(self, step: int) -> None:
        """Without a time budget the length is known before the first step."""
        fixed = self.fixed_total()
        if self.total is None and fixed and self.seconds is None:
            self.set_total(fixed, step)

    def set_total(self, total: int, step: int) -> None:
        self.total = max(total, step + 1)
        capped = min(self.cfg.warmup, self.total // 5)
        # Never restart a warmup already under way (a time budget is planned a few steps in).
        self.warmup = capped if capped >= step else step

    def patience_out(self, step: int, best_step: int) -> bool:
        """Early stopping: `patience` evaluations in a row since the best validation loss (counted from the
        steps, so a resumed run counts on exactly)."""
        p, every = self.cfg.patience, self.cfg.eval_every
        return bool(p and every and best_step >= 0 and step - best_step >= p * every)

    def serves_best(self, step: int, best_step: int) -> bool:
        """--serve best, and the best validation loss was not the last step's."""
        return self.cfg.serve == "best" and best_step >= 0 and best_step != step

    def time_up(self, elapsed: float) -> bool:
        return self.seconds is not None and elapsed >= self.seconds

    def needs_plan(self, step: int, session_start_step: int) -> bool:
        return self.seconds is not None and self.total is None and step - session_start_step >= PLAN_AFTER

    def may_replan(self, step: int) -> bool:
        return self.planned_here and bool(self.total) and step < REPLAN_BEFORE * self.total

    def propose(self, step: int, elapsed: float, per_step: float, eval_cost: float) -> int:
        """The total step count the time budget allows, from measured seconds per step and per evaluation."""
        total = step + plan_steps(self.seconds - elapsed, per_step, eval_cost, self.cfg.eval_every)
        fixed = self.fixed_total()
        return min(total, fixed) if fixed else total

    def apply(self, total: int, step: int) -> str | None:
        """Adopt a proposed total; returns what changed for the log (None when a re-plan moved too little)."""
        if self.planned_here:
            if abs(total - (self.total or 0)) <= 0.02 * total:
                return None
            old, self.total = self.total, max(total, step + 1)
            return f"re-planned {old} -> {self.total} steps"
        self.set_total(total, step)
        self.planned_here = True
        return f"planned {self.total} steps in total"

    def plan(self, step: int, elapsed: float, step_times: list[float], eval_seconds: float | None,
             agree: Callable[[float], float]) -> str | None:
        """Turn the time budget into a step count from measured step and evaluation times (`eval_seconds`, None
        before the first evaluation); `agree` makes every process take the same total. Returns the log line."""
        per_step = float(np.mean(step_times))
        eval_cost = eval_seconds if eval_seconds is not None else \
            per_step * self.cfg.eval_batches / (3 * self.cfg.grad_accum)  # a forward is ~1/3 of a step
        total = int(agree(float(self.propose(step, elapsed, per_step, eval_cost))))
        change = self.apply(total, step)
        return f"time budget {self.cfg.time_budget}: {per_step:.2f}s/step measured -> {change}" if change else None


__all__ = ["Budget", "plan_steps", "DEFAULT_STEPS", "PLAN_AFTER", "REPLAN_BEFORE", "KEYS"]
