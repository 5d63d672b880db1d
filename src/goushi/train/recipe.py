"""Budget recipes: what `goushi train --time-budget B` trains when nothing else is said.

A recipe is a set of settings chosen by measurement (`bench/quality_budget.py`, the write-up in docs/recipe.md):
the one that reached the lowest bits per character on held-out text for a wall-clock budget on 2 CPU cores. With
`recipe = "auto"` (the default) a run with a time budget, trained from scratch, gets the recipe for its budget
(none where nothing measured beat the classic defaults); every setting the user gives (a flag or the TOML file)
wins over the recipe's, and a given model shape (--preset or any size flag) replaces the recipe's whole shape.
`--recipe NAME` applies one to any run (a --tokens or --max-steps run, or to reproduce a choice); `--recipe none`
keeps the plain defaults (the classic recipe).

This module is data and a choice; `goushi.train.config` merges the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goushi.data.layout import BIG_CORPUS_CHARS
from goushi.errors import ConfigError

# Fields that make up a shape: given any of them (or --preset, or --shape), the user's shape is kept whole.
SHAPE_KEYS = ("shape", "preset", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden", "context_length")


@dataclass(frozen=True)
class Recipe:
    name: str
    settings: dict[str, Any]  # TrainConfig keys; ModelConfig fields under "model"
    summary: str  # what it is, in words
    evidence: str  # what it was measured to do, with the command's name
    budgets: str  # which budgets it is chosen for


RECIPES: dict[str, Recipe] = {
    "short": Recipe(
        "short", {"family": "llama", "schedule": "wsd", "lr": 3e-3, "weight_decay": 0.5, "serve": "best"},
        summary="llama family (RoPE, RMSNorm, SwiGLU, GQA), warmup-stable-decay, peak lr 3e-3, weight decay 0.5; "
                "serves the weights of its best validation loss (a small corpus is learned by heart within minutes: "
                "on copypasta, 2-core Xeon, 10 minutes ended at 9.12 held-out bits/char, its best step had 6.57)",
        evidence="held-out bits per character against the classic recipe on 2 cores (bench/quality_budget.py; "
                 "docs/recipe.md): at 10 minutes, char level, -2.8% on copypasta + reviews and -1.1% on poetry "
                 "(with weight decay 0.1 instead: -1.4% and +0.5%); at 5 minutes -3.6% on copypasta + reviews "
                 "(-3.3% with 0.1); with weight decay 0.1, -7.4% at 2 minutes on poetry (char)",
        budgets="budgets up to 10 minutes, where it beat the classic recipe"),
}

# Corpora of tens of millions of characters: a budget of minutes does not see the text twice, so nothing needs the
# regularisation or the best-weights serving of `short`; the model grows with the tokens the budget buys instead.
RECIPES["big"] = Recipe(
    "big", {"family": "llama", "schedule": "wsd", "lr": 3e-3, "min_lr": 3e-5, "decay_frac": 0.5, "weight_decay": 0.1,
            "optimizer": "muon", "shape": "auto", "doc_mask": True},
    summary="for big corpora: llama family, Muon (AdamW for embeddings and norms), warmup-stable-decay with the last "
            "half of the run decaying to 1 % of the peak lr 3e-3, weight decay 0.1, each document of a window read "
            "alone (--doc-mask); the shape from the tokens the budget buys on this machine (goushi.train.shape: "
            "4 x 128 when few, 4 x 192 at 10 minutes of a Xeon core, bigger for longer budgets)",
    evidence="bench/quality_budget.py --compile on poetry-full (docs/recipe.md, 'Big corpora'): 10 minutes of one "
             "Xeon core, compiled, 6,000-character vocabulary: 4 x 192 5.920 held-out bits/char, 4 x 128 6.022, "
             "4 x 256 6.069, the classic recipe 6.829 (0.87x); with --doc-mask 5.872 and 5.906 against 5.920 and "
             "5.915 (two seeds; 0.862x); at 3 minutes 4 x 128 6.398 against 4 x 192's 6.473; "
             "60 minutes, 6 x 256: 5.529 (0.93x the 10-minute figure, without --doc-mask)",
    budgets="any budget on a corpus of 10 M characters or more")
RECIPES["big-long"] = Recipe(
    "big-long", {"family": "llama", "schedule": "wsd", "lr": 2e-3, "weight_decay": 0.1,
                 "model": {"n_layer": 6, "n_embd": 192, "n_head": 6}},
    summary="the first long-budget recipe for big corpora (AdamW, llama 6 layers x 192, warmup-stable-decay, peak lr "
            "2e-3); `big` with its measured shape replaced it, kept by name to reproduce earlier rows",
    evidence="bench/quality_budget.py on poetry-full (docs/recipe.md, 'Big corpora'): 60 minutes of one core, eager, "
             "5.672 held-out bits/char against the eager 10-minute default's 6.245",
    budgets="named by --recipe big-long only")

# A run that starts from another run's weights (--init-from) on a small corpus: the data, not the budget, runs
# out, so it evaluates often, stops when validation loss no longer improves and serves the best weights.
FINETUNE = Recipe(
    "finetune", {"lr": 2e-3, "min_lr": 2e-4, "warmup": 20, "schedule": "wsd", "decay_frac": 1.0, "weight_decay": 0.1,
                 "eval_every": 25, "eval_batches": 20, "patience": 4, "serve": "best", "doc_mask": True,
                 "model": {"dropout": 0.1, "attn_dropout": False}},
    summary="fine-tuning: peak lr 2e-3 after 20 warmup steps, then decaying linearly over the whole budget to 2e-4 "
            "(wsd with decay_frac 1); dropout 0.1 on the residual branches (none on the attention weights, so "
            "attention keeps its fused kernel: 1.3-1.45x the steps in the same minutes on a CPU); each document of a window read alone (--doc-mask); validation every 25 steps, stop "
            "after 4 evaluations without a new best, serve the best weights",
    evidence="bench/finetune_transfer.py (docs/recipe.md, 'Pretrain 60 minutes, fine-tune 10'): a 60-minute poetry "
             "base fine-tuned on copypasta, 5.893 held-out bits/char with dropout 0.1 against 6.099 without and "
             "6.476 from scratch; the 6 x 256 base of recipe big: 5.783, 5.656 on a vocabulary grown by "
             "`goushi data build --extend-vocab`, 5.626 there with dropout 0.2 (5.661 in bf16), 5.604 with "
             "--doc-mask (and --windows docs), 5.562 with --doc-mask and the last 60 % decaying, 5.545 decaying over "
             "the whole budget (dropout 0.3 there: 5.674; a second seed of the 60 % row scored 5.636); those rows "
             "had 10 minutes of the base's speed, 2.15x what a fine-tune trains in 10 minutes: at its own speed "
             "5.857 (0.904x scratch's 6.476, Xeon). On an AMD EPYC core, a 6 x 192 base, 10 minutes of each row's "
             "own speed, two seeds: 6.149 and 6.113 with attention dropout, 5.975 and 5.977 without it (0.918x "
             "scratch's 6.509); without it and at lr 2e-3 5.787, dropout 0.1 5.825, both 5.728 and 5.744 (two "
             "seeds; 0.881x scratch)",
    budgets="runs started from another run's weights (--init-from), any budget")
RECIPES["finetune"] = FINETUNE

# Small corpora: measured up to 10 minutes; above that the one candidate measured (a 6 x 192 model at 30 minutes)
# overfitted, so longer budgets keep the plain defaults. Big corpora (layout.BIG_CORPUS_CHARS): `big`, any budget.
SHORT_UP_TO_S = 10 * 60
NONE_ABOVE = ("above 10 minutes no recipe was measured to beat the classic one on a small corpus (a bigger model "
              "at 30 minutes overfitted the 1.4 M-character corpora; docs/recipe.md), so the plain defaults (the "
              "classic recipe)")


def names() -> tuple[str, ...]:
    return ("auto", "none", *RECIPES)


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"train config: recipe={name!r} is not one of {', '.join(names())}")
    return RECIPES[name]


def choose(budget_s: float, train_chars: int | None) -> Recipe | None:
    """The recipe for a time budget of `budget_s` seconds on a corpus of `train_chars` training characters
    (None: unknown, taken as small); None: the plain defaults (NONE_ABOVE says why)."""
    if train_chars is not None and train_chars >= BIG_CORPUS_CHARS:
        return RECIPES["big"]
    return RECIPES["short"] if budget_s <= SHORT_UP_TO_S else None


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


__all__ = ["Recipe", "RECIPES", "FINETUNE", "SHAPE_KEYS", "choose", "get", "names", "settings_for"]
