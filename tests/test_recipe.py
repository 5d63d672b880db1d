"""Budget recipes: which one a run gets, what the user's settings keep, what --print-config says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goushi.cli import main as goushi
from goushi.errors import ConfigError
from goushi.train import recipe as recipes
from goushi.train.config import TrainConfig, resolve_run_config


def data_dir(path: Path, train_chars: int) -> Path:
    """Enough of a DATA_DIR for choosing a recipe and printing a config: meta.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps({"version": 1, "dtype": "uint16", "vocab_size": 600,
                                                "train_chars": train_chars, "train_tokens": train_chars}),
                                    encoding="utf-8")
    return path


def flat(settings: dict) -> dict:
    return {**{k: v for k, v in settings.items() if k != "model"}, **settings.get("model", {})}


def resolved(tmp_path: Path, chars: int = 2_000_000, path: str | None = None, **overrides):
    return resolve_run_config(path, {"data": str(data_dir(tmp_path / "d", chars)), "out": str(tmp_path / "r"),
                                     **overrides})


def test_a_time_budget_gets_the_recipe_for_it_and_every_setting_of_it(tmp_path):
    for budget in ("90s", "5m", "10m"):
        cfg, why = resolved(tmp_path, time_budget=budget)
        chosen = recipes.RECIPES[cfg.recipe]
        assert chosen is recipes.choose(cfg.budget_seconds, 2_000_000) is recipes.RECIPES["short"]
        for k, v in flat(chosen.settings).items():
            assert (cfg.model[k] if k in cfg.model else getattr(cfg, k)) == v, (budget, k)
        assert why[0].startswith(f"recipe: {chosen.name}, chosen for a {budget} budget and 2,000,000 training")
    # above 10 minutes nothing measured beat the classic recipe: the plain defaults
    plain = TrainConfig()
    for budget in ("11m", "30m", "2h"):
        cfg, why = resolved(tmp_path, time_budget=budget)
        assert cfg.recipe == "none" and (cfg.family, cfg.schedule, cfg.lr, cfg.weight_decay) == (
            plain.family, plain.schedule, plain.lr, plain.weight_decay)
        assert "above 10 minutes no recipe was measured to beat the classic one" in why[0]


def test_a_big_corpus_gets_the_big_recipe_at_any_budget_with_the_shape_left_to_the_probe(tmp_path):
    big = recipes.BIG_CORPUS_CHARS
    assert recipes.choose(600, big - 1) is recipes.RECIPES["short"]
    assert recipes.choose(600, None) is recipes.RECIPES["short"]  # unknown size: taken as small
    for budget in ("5m", "10m", "11m", "60m", "2h"):
        cfg, why = resolved(tmp_path, chars=big, time_budget=budget)
        assert cfg.recipe == "big", budget
        assert why[0].startswith(f"recipe: big, chosen for a {budget} budget and {big:,} training characters")
        assert cfg.shape == "auto" and not any(k in cfg.model for k in ("n_layer", "n_embd")), budget
        assert cfg.optimizer == "muon" and cfg.decay_frac == 0.5 and cfg.serve != "best"
        assert cfg.weight_decay < recipes.RECIPES["short"].settings["weight_decay"]
    # a given shape (a preset or any size flag) replaces the recipe's: no probe then
    for given in (dict(preset="small"), dict(n_layer=2)):
        overrides = {"model": given} if "n_layer" in given else given
        mine, why = resolved(tmp_path, chars=big, time_budget="60m", **overrides)
        assert mine.shape == "preset" and "shape" in why[-1], given
    # the first long recipe stays by name, to reproduce its rows
    old, why = resolved(tmp_path, chars=big, time_budget="60m", recipe="big-long")
    assert (old.model["n_layer"], old.model["n_embd"], old.optimizer) == (6, 192, "adamw")


def test_what_the_user_sets_wins_and_a_given_shape_replaces_the_recipes_whole_shape(tmp_path):
    cfg, why = resolved(tmp_path, time_budget="5m", lr=1e-3, family="gpt2")
    assert cfg.lr == 1e-3 and cfg.family == "gpt2" and cfg.recipe == "short"
    assert cfg.schedule == recipes.RECIPES["short"].settings["schedule"]
    assert "kept your settings over the recipe's: family, lr" in "\n".join(why)
    sized = recipes.Recipe("sized", {"lr": 3e-3, "model": {"n_layer": 6, "n_embd": 192, "dropout": 0.1}},
                           summary="", evidence="", budgets="")
    out, kept = recipes.settings_for(sized, {"preset"})  # --preset small: none of the recipe's shape
    assert out == {"lr": 3e-3, "model": {"dropout": 0.1}} and sorted(kept) == ["n_embd", "n_layer"]
    out, kept = recipes.settings_for(sized, set())
    assert out == sized.settings and kept == []
    # a setting in the TOML file counts as given, like a flag
    toml = tmp_path / "t.toml"
    toml.write_text('schedule = "cosine"\n[model]\ndropout = 0.2\n', encoding="utf-8")
    cfg, _ = resolved(tmp_path, path=str(toml), time_budget="5m")
    assert cfg.schedule == "cosine" and cfg.model["dropout"] == 0.2 and cfg.family == "llama"


def test_no_recipe_without_a_time_budget_for_lora_or_when_told(tmp_path):
    plain = TrainConfig()
    for overrides, says in ((dict(max_steps=10), "chosen by --time-budget"),
                            (dict(time_budget="5m", recipe="none"), "--recipe none"),
                            (dict(time_budget="5m", init_from=str(tmp_path / "base"), lora_rank=8), "LoRA adapters")):
        cfg, why = resolved(tmp_path, **overrides)
        assert (cfg.family, cfg.schedule, cfg.lr, cfg.model) == (plain.family, plain.schedule, plain.lr, {})
        assert cfg.recipe == "none" and says in why[0]
    # --recipe NAME applies one to a steps-budget run
    cfg, why = resolved(tmp_path, max_steps=10, recipe="short")
    assert cfg.family == "llama" and "named by --recipe" in why[0]


def test_a_run_from_another_runs_weights_gets_the_fine_tuning_recipe(tmp_path):
    base = str(tmp_path / "base")
    for overrides in (dict(init_from=base, time_budget="10m"), dict(init_from=base, max_steps=100)):
        cfg, why = resolved(tmp_path, **overrides)
        assert cfg.recipe == "finetune" and (cfg.patience, cfg.serve) == (4, "best") and cfg.lr == 2e-3
        assert why[0] == f"recipe: finetune, chosen for a run that starts from another run's weights ({base})"
        assert cfg.family == TrainConfig().family  # the shape and family are the base run's, never the recipe's
        # weight-free fields: the base's shape takes them (INIT_CHANGEABLE)
        assert cfg.model == {"dropout": 0.1, "attn_dropout": False}
    cfg, why = resolved(tmp_path, init_from=base, max_steps=100, lr=3e-4, patience=0, model={"attn_dropout": True})
    assert (cfg.lr, cfg.patience, cfg.serve) == (3e-4, 0, "best") and "kept your settings" in why[-1]
    assert cfg.model == {"dropout": 0.1, "attn_dropout": True}  # --attn-dropout wins over the recipe


def test_a_bad_recipe_name_is_refused_naming_the_field(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('recipe = "fast"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe='fast' is not one of auto, none, short"):
        resolved(tmp_path, path=str(toml), time_budget="10m")
    with pytest.raises(SystemExit):
        goushi(["train", "--recipe", "fast", "--print-config", "--vocab-size", "100"])


def test_print_config_says_which_recipe_and_why(tmp_path, capsys):
    d = data_dir(tmp_path / "d", 1_500_000)
    assert goushi(["train", "--data", str(d), "--time-budget", "5m", "--lr", "1e-3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'recipe = "short"' in out and 'family = "llama"' in out and "lr = 0.001" in out
    assert "recipe: short, chosen for a 5m budget and 1,500,000 training characters" in out
    assert "measured:" in out and "kept your settings over the recipe's: lr" in out
    assert goushi(["train", "--data", str(d), "--max-steps", "5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'family = "gpt2"' in out and "recipe: none: the budget recipes are chosen by --time-budget" in out
