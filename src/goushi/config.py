"""Model configuration: one dataclass, two families, three presets, JSON/TOML I/O.

Config is data. Nothing here is ever executed from a file: TOML and JSON are parsed into
dataclasses and every field is checked by name and type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from goushi.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


POS_ENCODINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")
FAMILIES = ("gpt2", "llama", "custom")


@dataclass
class ModelConfig:
    """Shape of a decoder-only transformer.

    Field names follow nanoGPT; `goushi.export` maps them onto Hugging Face names
    (n_embd -> hidden_size, n_layer -> num_hidden_layers, n_kv_head -> num_key_value_heads ...).
    """

    vocab_size: int = 8192
    context_length: int = 256  # longest sequence the model sees (HF: n_positions / max_position_embeddings)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0 = same as n_head (plain multi-head attention); fewer = grouped-query attention
    n_embd: int = 128
    mlp_hidden: int = 0  # 0 = 4 * n_embd for gelu/relu2, ~8/3 * n_embd (rounded to 32) for swiglu
    pos_encoding: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    tie_embeddings: bool = True
    dropout: float = 0.0
    # dropout on the attention weights too (nanoGPT's default). Off, it stays on the residual branches only: on
    # a CPU, SDPA with dropout leaves its fused kernel for the plain one (4x slower attention, measured).
    attn_dropout: bool = True
    bias: bool = True
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    family: str = "gpt2"

    # ---- derived -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return int(math.ceil(8 * self.n_embd / 3 / 32) * 32)
        return 4 * self.n_embd

    def validate(self) -> ModelConfig:
        """Refuse impossible shapes before any work is done, naming the field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"model config: {name}={getattr(self, name)!r} {why}")

        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if self.n_kv_head < 0:
            raise bad("n_kv_head", "must be >= 0 (0 means same as n_head)")
        if self.mlp_hidden < 0:
            raise bad("mlp_hidden", "must be >= 0 (0 means automatic)")
        if self.n_embd % self.n_head:
            raise bad("n_embd", f"is not divisible by n_head={self.n_head}; pick a width that is a multiple of it")
        if self.n_head % self.kv_heads:
            raise bad("n_kv_head", f"must divide n_head={self.n_head} (grouped-query attention)")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise bad("n_embd", f"gives an odd head size {self.head_dim}; rope needs an even one")
        if self.pos_encoding not in POS_ENCODINGS:
            raise bad("pos_encoding", f"is not one of {', '.join(POS_ENCODINGS)}")
        if self.norm not in NORMS:
            raise bad("norm", f"is not one of {', '.join(NORMS)}")
        if self.mlp not in MLPS:
            raise bad("mlp", f"is not one of {', '.join(MLPS)}")
        if self.family not in FAMILIES:
            raise bad("family", f"is not one of {', '.join(FAMILIES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if self.norm_eps <= 0:
            raise bad("norm_eps", "must be > 0")
        return self

    # ---- I/O -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> ModelConfig:
        return dataclass_from_dict(cls, d, source=source).validate()


# The two families share every line of model code; they differ only in these switches.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True, norm_eps=1e-6),
}

# Shapes per preset. Times are for 2 CPU cores; see README for measured figures.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, context_length=128),  # a few CPU minutes
    "small": dict(n_layer=6, n_head=6, n_embd=384, context_length=256),  # about a CPU hour
    "base": dict(n_layer=12, n_head=12, n_embd=768, context_length=1024),  # ~100M, for a GPU
}


def preset_config(preset: str = "tiny", family: str = "gpt2", vocab_size: int = 8192, **overrides: Any) -> ModelConfig:
    """ModelConfig for a named preset and family, with field overrides on top."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if family not in FAMILY_DEFAULTS:
        raise ConfigError(f"unknown family {family!r}; choose one of {', '.join(FAMILY_DEFAULTS)}")
    values: dict[str, Any] = dict(vocab_size=vocab_size, family=family)
    values.update(FAMILY_DEFAULTS[family])
    values.update(PRESETS[preset])
    if family == "llama":
        values["n_kv_head"] = max(1, values["n_head"] // 2)
    names = {f.name for f in fields(ModelConfig)}
    for k, v in overrides.items():
        if k not in names:
            raise ConfigError(f"unknown model config field {k!r}")
        if v is not None:
            values[k] = v
    return ModelConfig(**values).validate()


def dataclass_from_dict(cls: type, d: dict[str, Any], *, source: str = "config") -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types by name."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        want = type(getattr(defaults, k))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if want in (int, float, str, bool) and type(v) is not want:
            raise ConfigError(f"{source}: {k}={v!r} should be {want.__name__}")
        kwargs[k] = v
    return cls(**kwargs)


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None


def read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts computed from the shape alone (no model built)."""
    d, h, L = cfg.n_embd, cfg.hidden, cfg.n_layer
    kv = cfg.kv_heads * cfg.head_dim
    b = 1 if cfg.bias else 0
    attn = d * d + 2 * d * kv + d * d + b * (d + 2 * kv + d)
    if cfg.qk_norm:
        attn += 2 * cfg.head_dim
    mlp = (3 * d * h + b * (2 * h + d)) if cfg.mlp == "swiglu" else (2 * d * h + b * (h + d))
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    block = attn + mlp + 2 * norm
    embedding = cfg.vocab_size * d
    positions = cfg.context_length * d if cfg.pos_encoding == "learned" else 0
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    total = embedding + positions + L * block + norm + head
    return dict(total=total, embedding=embedding + head, positions=positions, blocks=L * block, non_embedding=total - embedding - head - positions)


__all__ = [
    "ModelConfig",
    "PRESETS",
    "FAMILY_DEFAULTS",
    "preset_config",
    "dataclass_from_dict",
    "load_toml",
    "read_json",
    "param_counts",
]
