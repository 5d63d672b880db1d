"""Budget recipes: what `goushi train --time-budget B` trains when nothing else is said.

A recipe is a set of settings chosen by measurement (`bench/quality_budget.py`, the write-up in docs/recipe.md):
the one that reached the lowest bits per character on held-out text for a wall-clock budget on 2 CPU cores. With
`recipe = "auto"` (the default) a run with a time budget, trained from scratch, gets the recipe for its budget and
corpus size; every setting the user gives (a flag or the TOML file) wins over the recipe's, and a given model shape
(--preset or any size flag) replaces the recipe's whole shape. `--recipe NAME` applies one to any run (a --tokens
or --max-steps run, or to reproduce a choice); `--recipe none` keeps the plain defaults (the classic recipe).

This module is data and a choice; `goushi.train.config` merges the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from goushi.errors import ConfigError

# Model fields that make up a shape: given any of them (or --preset), the user's shape is kept whole.
SHAPE_KEYS = ("preset", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden", "context_length")


@dataclass(frozen=True)
class Recipe:
    name: str
    settings: dict[str, Any]  # TrainConfig keys; ModelConfig fields under "model"
    summary: str  # what it is, in words
    evidence: str  # what it was measured to do, with the command's name
    budgets: str  # which budgets it is chosen for
    extra: dict[str, Any] = field(default_factory=dict)


_MODERN = {"family": "llama", "schedule": "wsd", "lr": 3e-3}

RECIPES: dict[str, Recipe] = {
    "short": Recipe(
        "short", dict(_MODERN),
        summary="llama family (RoPE, RMSNorm, SwiGLU, GQA), warmup-stable-decay, peak lr 3e-3",
        evidence="with a 4,096-token BPE build, 5 minutes on 2 cores: bits per character 5.2% below the classic recipe "
                 "on poetry (bench/quality_budget.py; docs/recipe.md)",
        budgets="budgets up to 20 minutes"),
    "long": Recipe(
        "long", {**_MODERN, "model": {"n_layer": 6, "n_embd": 192, "n_head": 6}},
        summary="the short recipe on a bigger model: 6 layers x 192 wide (6 heads, 3 key/value heads)",
        evidence="being measured at 30 minutes; at 5 minutes it was 1.5% behind the short recipe on poetry "
                 "(bench/quality_budget.py; docs/recipe.md)",
        budgets="budgets over 20 minutes on a corpus of at least 1,000,000 characters"),
}
# Budgets above this many seconds get the long recipe (when the corpus is big enough for it).
LONG_AFTER_S = 20 * 60
LONG_MIN_CHARS = 1_000_000


def names() -> tuple[str, ...]:
    return ("auto", "none", *RECIPES)


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"train config: recipe={name!r} is not one of {', '.join(names())}")
    return RECIPES[name]


def choose(budget_s: float, train_chars: int | None) -> Recipe:
    """The recipe for a time budget of `budget_s` seconds on a corpus of `train_chars` training characters
    (None: unknown)."""
    if "long" in RECIPES and budget_s > LONG_AFTER_S and (train_chars or 0) >= LONG_MIN_CHARS:
        return RECIPES["long"]
    return RECIPES["short"]


def settings_for(recipe: Recipe, given: set[str]) -> tuple[dict[str, Any], list[str]]:
    """(the recipe's settings minus those the user gave, the names of the ones the user's win over)."""
    shape_given = any(k in given for k in SHAPE_KEYS)
    out: dict[str, Any] = {}
    kept: list[str] = []
    for k, v in recipe.settings.items():
        if k == "model":
            model = {}
            for mk, mv in v.items():
                if mk in given or (shape_given and mk in SHAPE_KEYS):
                    kept.append(mk)
                else:
                    model[mk] = mv
            if model:
                out["model"] = model
        elif k in given or (shape_given and k in SHAPE_KEYS):
            kept.append(k)
        else:
            out[k] = v
    return out, kept


__all__ = ["Recipe", "RECIPES", "SHAPE_KEYS", "choose", "get", "names", "settings_for"]
