"""TrainConfig: every knob of a training run, as data (TOML file and CLI flags on top of defaults).

Model shape is not here: it is a preset + family + ModelConfig field overrides (`model`), resolved by
`resolve_model_config` once the vocabulary size is known (from DATA_DIR/meta.json) -- or, with `init_from`,
the shape of the run whose weights the new run starts from (`run_model_config` decides which, and
`check_resumable` that a resumed run still fits its data and its shape).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.checkpoint import open_run
from goushi.config import PRESETS, ModelConfig, load_toml, preset_config
from goushi.errors import ConfigError, GoushiError
from goushi.run_record import BaseRecord, RunRecord
from goushi.tokenizer import Tokenizer
from goushi.train import recipe as recipes
from goushi.train.data import WINDOWS

SCHEDULES = ("cosine", "wsd")
SERVES = ("last", "best")
SHAPES = ("preset", "auto")
OPTIMIZERS = ("adamw", "muon")
MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig))


@dataclass
class TrainConfig:
    data: str = ""  # DATA_DIR written by `goushi data build`
    out: str = ""  # RUN_DIR
    preset: str = "tiny"
    family: str = "gpt2"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig field overrides on top of preset+family
    init_from: str = ""  # RUN_DIR whose weights (and shape) a new run starts from, instead of a random preset
    lora_rank: int = 0  # >0: train LoRA adapters of this rank on the init_from weights (frozen) instead of all weights
    lora_alpha: float = 0.0  # adapter scale alpha / rank; 0 = 2 x rank
    # auto: a from-scratch run with a time budget gets the measured recipe for its budget and corpus size
    # (goushi.train.recipe), under whatever the user set; none: the plain defaults below; or a recipe's name
    recipe: str = "auto"
    # preset: the shape is the preset's (and the size flags'); auto: the largest shape of goushi.train.shape's
    # ladder that gets enough tokens per parameter in the time budget at this machine's measured speed
    shape: str = "preset"

    # optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3
    min_lr: float = 2e-4  # floor the schedule decays to
    warmup: int = 30  # optimizer steps of linear warmup (capped at a fifth of the run)
    schedule: str = "cosine"
    decay_frac: float = 0.2  # wsd: final fraction of the run spent decaying linearly to min_lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    muon_momentum: float = 0.95
    embed_lr_mult: float = 1.0  # the token (and position) tables and an untied head learn at lr x this
    clip: float = 1.0  # gradient-norm clip; 0 = off
    # where training windows start: any token, or a document's start (goushi.train.data says how)
    windows: str = "any"
    doc_mask: bool = False  # attend only within each document of a window (<|endoftext|> starts one)
    batch_size: int = 32  # sequences per micro-step, global (split across torchrun processes)
    grad_accum: int = 1

    # budgets: whichever ends first; none given = 1000 steps
    max_steps: int = 0
    tokens: int = 0
    time_budget: str = ""  # "90s", "10m", "1.5h"

    # evaluation, logging, checkpoints
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    sample_every: int = 0  # 0 = with every evaluation
    sample_tokens: int = 40  # 0 = no samples
    save_every: int = 500  # steps between `last` checkpoints (also at every evaluation, the end and Ctrl-C)
    # stop after this many evaluations in a row without a new best validation loss; 0 = never
    patience: int = 0
    # what RUN_DIR/model.safetensors holds when the run ends: the last step's weights, or the best validation
    # loss's (best/; the last ones then wait in last.safetensors for --resume)
    serve: str = "last"

    # machine
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: str = "auto"  # auto | on | off; auto: on for CUDA, on a CPU only where a measurement says it pays
    activation_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: shard the model across processes (FSDP2) instead of copying it (DDP)

    # run directory handling
    resume: bool = False
    force: bool = False

    # ---------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Refuse impossible values before any work, naming the field and the fix."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"train config: {name}={getattr(self, name)!r} {why}")

        if self.recipe not in recipes.names():
            raise bad("recipe", f"is not one of {', '.join(recipes.names())}")
        if self.preset not in PRESETS:
            raise bad("preset", f"is not one of {', '.join(PRESETS)}")
        if self.family not in ("gpt2", "llama"):
            raise bad("family", "is not one of gpt2, llama")
        unknown = sorted(set(self.model) - set(MODEL_FIELDS))
        if unknown:
            raise ConfigError(f"train config: unknown model field {unknown[0]!r}; known: {', '.join(MODEL_FIELDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"is not one of {', '.join(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", "must be a positive number")
        if not 0 <= self.min_lr <= self.lr:
            raise bad("min_lr", f"must be between 0 and lr={self.lr}")
        if not 0 < self.decay_frac <= 1:
            raise bad("decay_frac", "must be in (0, 1]")
        if self.windows not in WINDOWS:
            raise bad("windows", f"is not one of {', '.join(WINDOWS)}")
        if not (self.embed_lr_mult > 0 and math.isfinite(self.embed_lr_mult)):
            raise bad("embed_lr_mult", "must be a positive number (1 = the same lr as the rest)")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        for name in ("batch_size", "grad_accum", "eval_batches"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("warmup", "max_steps", "tokens", "eval_every", "log_every", "sample_every", "sample_tokens",
                     "save_every"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.log_every < 1:
            raise bad("log_every", "must be >= 1")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.clip < 0:
            raise bad("clip", "must be >= 0 (0 turns clipping off)")
        if self.patience < 0:
            raise bad("patience", "must be >= 0 (0 never stops early)")
        if self.patience and not self.eval_every:
            raise bad("patience", "needs eval_every > 0: it counts evaluations without a new best validation loss")
        if self.serve not in SERVES:
            raise bad("serve", f"is not one of {', '.join(SERVES)}")
        if self.shape not in SHAPES:
            raise bad("shape", f"is not one of {', '.join(SHAPES)}")
        if self.time_budget:
            parse_duration(self.time_budget)
        if self.lora_rank < 0:
            raise bad("lora_rank", "must be >= 0 (0 trains every weight)")
        if self.lora_rank and not self.init_from:
            raise bad("lora_rank", "needs init_from: adapters fine-tune an existing run's weights")
        if self.lora_alpha < 0:
            raise bad("lora_alpha", "must be >= 0 (0 means 2 x lora_rank)")
        if self.init_from and self.out and Path(self.init_from).resolve() == Path(self.out).resolve():
            raise bad("init_from", "is the run being written; start from another run, or use --resume")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise bad("dtype", "is not one of auto, float32, bfloat16, float16")
        if self.compile not in ("auto", "on", "off"):
            raise bad("compile", "is not one of auto, on, off")
        if self.fsdp and self.lora_rank:
            raise bad("fsdp", "cannot train LoRA adapters (a small fine-tune that DDP handles); drop --fsdp")
        if self.fsdp and self.dtype in ("float16", "fp16"):
            raise bad("fsdp", "does not support float16 (its gradient scaler is not FSDP-aware); use --dtype bfloat16 "
                      "or --dtype float32, or drop --fsdp")
        if self.resume and self.force:
            raise ConfigError("train config: resume and force together make no sense; --resume continues a run, "
                              "--force replaces it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def budget_seconds(self) -> float | None:
        """The time budget in seconds (None: no time budget); the one place the string is read."""
        return parse_duration(self.time_budget) if self.time_budget else None

    def budget_summary(self) -> str:
        parts = [f"{self.max_steps} steps" if self.max_steps else "",
                 f"{self.tokens:,} tokens" if self.tokens else "",
                 f"{self.time_budget}" if self.time_budget else ""]
        return " / ".join(p for p in parts if p) or "1000 steps (default)"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|m|min|mins|h|hr|hrs|)\s*$", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600}


def parse_duration(text: str | float | int) -> float:
    """'90s' / '10m' / '1.5h' / '600' (seconds) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"train config: time_budget={text!r} is not a duration; write e.g. 90s, 10m or 1.5h")
        seconds = float(m.group(1)) * _UNIT[m.group(2).lower()]
    if seconds <= 0:
        raise ConfigError(f"train config: time_budget={text!r} must be longer than zero")
    return seconds


def merge_dict(cfg: TrainConfig, d: dict[str, Any], *, source: str) -> TrainConfig:
    """Apply settings from a TOML/JSON table: TrainConfig keys, ModelConfig keys (flat or under [model])."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table of settings")
    train_names = {f.name: f for f in fields(TrainConfig)}
    values = cfg.to_dict()
    model = dict(values["model"])
    for k, v in d.items():
        if k == "model":
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: [model] should be a table of model fields")
            for mk, mv in v.items():
                if mk not in MODEL_FIELDS:
                    raise ConfigError(f"{source}: unknown model key {mk!r}; known: {', '.join(MODEL_FIELDS)}")
                model[mk] = mv
        elif k in train_names:
            values[k] = _typed(source, k, v, type(getattr(TrainConfig(), k)))
        elif k in MODEL_FIELDS:
            model[k] = v
        else:
            raise ConfigError(f"{source}: unknown key {k!r}; see `goushi train --help` for the settings")
    values["model"] = model
    return TrainConfig(**values)


def _typed(source: str, key: str, v: Any, want: type) -> Any:
    if want is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if key == "compile" and isinstance(v, bool):  # --compile/--no-compile, and runs saved when it was a bool
        return "on" if v else "off"
    if key == "time_budget" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v}s"
    if want in (int, float, str, bool) and type(v) is not want:
        raise ConfigError(f"{source}: {key}={v!r} should be {want.__name__}")
    return v


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the TOML file, then explicit overrides (CLI flags); validated."""
    return _layered(TrainConfig(), path, load_toml(path) if path else {}, overrides)


def _layered(cfg: TrainConfig, path: str | Path | None, table: dict[str, Any],
             overrides: dict[str, Any] | None) -> TrainConfig:
    """`cfg`, then the TOML file's `table` (already read), then the overrides; validated."""
    if path:
        cfg = merge_dict(cfg, table, source=str(path))
    if overrides:
        cfg = merge_dict(cfg, overrides, source="command line")
    return cfg.validate()


def run_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a run as the CLI means it (see `resolve_run_config`)."""
    return resolve_run_config(path, overrides)[0]


def resolve_run_config(path: str | Path | None, overrides: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """(config, why): with `resume`, the run's own saved settings are the base (so `goushi train --out RUN
    --resume` needs nothing else), then the TOML file, then the flags; a new run gets its budget recipe under
    the settings given (`why` says which and why, for --print-config and the log)."""
    if not overrides.get("resume"):
        table = load_toml(path) if path else {}
        cfg = _layered(TrainConfig(), path, table, overrides)
        return apply_recipe(cfg, _given_keys(table) | _given_keys(overrides))
    out = overrides.get("out") or ""
    if not out:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    stored = dict(rundir.read_run(out).train)
    stored.pop("out", None)
    stored.setdefault("windows", "any")  # a run saved before `windows` existed drew its windows anywhere
    base = merge_dict(TrainConfig(), stored, source=f"{out}/config.json")
    cfg = _layered(base, path, load_toml(path) if path else {}, overrides)
    return cfg, [f"recipe: {cfg.recipe} (resumed with the run's own settings)"]


def _given_keys(d: dict[str, Any]) -> set[str]:
    keys = {k for k in d if k != "model"}
    model = d.get("model")
    return keys | (set(model) if isinstance(model, dict) else set())


def _train_chars(data: str) -> int | None:
    from goushi.data import layout

    try:
        return int(layout.read_meta(data).get("train_chars") or 0) or None
    except (GoushiError, OSError, ValueError, TypeError):
        return None  # a missing or broken data directory is reported by the trainer, with its own message


def apply_recipe(cfg: TrainConfig, given: set[str]) -> tuple[TrainConfig, list[str]]:
    """`cfg` with its recipe's settings where the user gave none, and the lines that say why."""
    if cfg.recipe == "none":
        return cfg, ["recipe: none (--recipe none): the plain defaults, the classic recipe"]
    if cfg.recipe == "auto":
        if cfg.lora_rank:
            return replace(cfg, recipe="none"), [
                "recipe: none: LoRA adapters keep the plain settings (the recipes train every weight; --recipe NAME "
                "applies one anyway)"]
        if cfg.init_from:
            chosen, why = recipes.FINETUNE, f"chosen for a run that starts from another run's weights ({cfg.init_from})"
        elif not cfg.time_budget:
            return replace(cfg, recipe="none"), [
                "recipe: none: the budget recipes are chosen by --time-budget; without one, the plain defaults "
                "(the classic recipe). --recipe short applies the measured one to a --max-steps or --tokens run"]
        else:
            chars = _train_chars(cfg.data) if cfg.data else None
            chosen = recipes.choose(cfg.budget_seconds, chars)
            size = f"{chars:,} training characters" if chars else "an unknown corpus size"
            if chosen is None:
                return replace(cfg, recipe="none"), [
                    f"recipe: none, chosen for a {cfg.time_budget} budget and {size}: {recipes.NONE_ABOVE}"]
            why = f"chosen for a {cfg.time_budget} budget and {size} ({chosen.budgets})"
    else:
        chosen = recipes.get(cfg.recipe)
        why = "named by --recipe"
    settings, kept = recipes.settings_for(chosen, given)
    out = merge_dict(replace(cfg, recipe=chosen.name), settings, source=f"recipe {chosen.name}").validate()
    lines = [f"recipe: {chosen.name}, {why}", f"  what: {chosen.summary}", f"  measured: {chosen.evidence}"]
    if kept:
        lines.append(f"  kept your settings over the recipe's: {', '.join(sorted(set(kept)))}")
    return out, lines


# Fields a run started from another run's weights may still change: they hold no weights.
INIT_CHANGEABLE = ("dropout", "attn_dropout")


def init_model_config(cfg: TrainConfig, base: ModelConfig, vocab_size: int, *, grow: bool = False) -> ModelConfig:
    """The shape of the run in `cfg.init_from` (`base`), with only weight-free fields overridable; `grow`: the data's
    tokenizer extends the base's, and the vocabulary grows to `vocab_size`."""
    values = base.to_dict()
    for k, v in cfg.model.items():
        if k in INIT_CHANGEABLE:
            values[k] = v
        elif v != values.get(k):
            raise ConfigError(f"model config: {k}={v!r}, but --init-from {cfg.init_from} has {k}={values.get(k)!r}; "
                              f"a run started from another run's weights keeps its shape (only "
                              f"{', '.join(INIT_CHANGEABLE)} may change)")
    if grow:
        values["vocab_size"] = max(base.vocab_size, vocab_size)
    elif base.vocab_size < vocab_size:
        raise ConfigError(f"--init-from {cfg.init_from}: its vocab_size={base.vocab_size} is smaller than the data's "
                          f"vocabulary ({vocab_size})")
    return ModelConfig.from_dict(values)


def resolve_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """Preset + family + overrides -> a validated ModelConfig. An explicit vocab_size may exceed the data's."""
    overrides = dict(cfg.model)
    vs = overrides.pop("vocab_size", None) or vocab_size
    if vs < vocab_size:
        raise ConfigError(f"model config: vocab_size={vs} is smaller than the data's vocabulary ({vocab_size})")
    overrides.pop("family", None)
    if cfg.family == "llama" and overrides.get("n_head") and not overrides.get("n_kv_head"):
        # The llama preset halves the key/value heads; keep that for a custom head count too.
        h = overrides["n_head"]
        overrides["n_kv_head"] = max(d for d in range(1, max(1, h // 2) + 1) if h % d == 0)
    mc = preset_config(cfg.preset, cfg.family, vs, **overrides)
    if cfg.model.get("family") not in (None, cfg.family):
        raise ConfigError(f"model config: family={cfg.model['family']!r} conflicts with family={cfg.family!r}")
    return mc


def run_model_config(cfg: TrainConfig, vocab_size: int, tokenizer: Tokenizer,
                     stored: RunRecord | None) -> tuple[ModelConfig, BaseRecord | None]:
    """(shape, base): a preset's shape, or with init_from the shape of that run, whose tokenizer must be the data's
    `tokenizer` or one it extends (`goushi data build --extend-vocab`: the model then grows to the data's
    vocabulary); `base` is what the new run records about it (None without init_from). `stored` is a resumed
    run's record."""
    if not cfg.init_from:
        return resolve_model_config(cfg, vocab_size), None
    init = open_run(cfg.init_from, role="--init-from")
    if stored is not None and stored.base is not None:
        base = stored.base  # what the run recorded when it started; the base run may be gone since
    else:
        base = base_info(init.run_dir, init.record)
    if not tokenizer.extends(init.tokenizer):
        raise GoushiError(f"--init-from {init.run_dir}: its tokenizer is not the one the data was encoded with; build "
                          f"the data with that run's tokenizer: goushi data build ... --tokenizer-from {init.run_dir}")
    grow = tokenizer.hash() != init.tokenizer.hash()
    return init_model_config(cfg, init.config, vocab_size, grow=grow), base


def base_info(init_dir: Path, init: RunRecord) -> BaseRecord:
    """What a run started from another one records about it: where, and whose data that run learned from
    (its sources keep their credit in the new model card)."""
    return BaseRecord(run_dir=str(init_dir.resolve()), data_dir=init.data.dir, sources=dict(init.data.sources),
                      base=init.base)


def check_resumable(cfg: TrainConfig, mc: ModelConfig, tokenizer_hash: str, stored: RunRecord) -> None:
    """GoushiError unless the run in cfg.out (its record: `stored`) continues with this data (tokenizer) and
    this model shape."""
    out = Path(cfg.out)
    run_hash = stored.data.tokenizer_hash
    own_tok = out / rundir.TOKENIZER
    if own_tok.is_file():
        run_hash = Tokenizer.from_file(own_tok).hash()
    if run_hash and run_hash != tokenizer_hash:
        raise GoushiError(f"--data {cfg.data}: its tokenizer (hash {tokenizer_hash[:12]}) is not the one the run in "
                          f"{out} was trained with ({run_hash[:12]}); resume with the original data directory "
                          f"or start a new --out")
    run_mc = stored.model.to_dict()
    diff = first_difference(mc.to_dict(), run_mc)
    if diff:
        raise GoushiError(f"--resume: model config {diff}={mc.to_dict().get(diff)!r} but the run in {out} "
                          f"has {diff}={run_mc.get(diff)!r}; drop the option or start a new --out")


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first key (in sorted order) whose value differs between `a` and `b`, else None."""
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k
    return None


__all__ = ["TrainConfig", "load_train_config", "run_config", "resolve_run_config", "apply_recipe", "merge_dict",
           "parse_duration", "resolve_model_config", "init_model_config", "INIT_CHANGEABLE", "run_model_config",
           "base_info", "check_resumable", "first_difference"]
