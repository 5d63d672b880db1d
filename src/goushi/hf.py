"""Map a GPT onto Hugging Face `GPT2LMHeadModel` / `LlamaForCausalLM` and back, with strict loads.

This is the seam export, import and the throughput benchmarks build on: the two families are named and
shaped so that every tensor has exactly one place in the Hugging Face model. Options a target class
cannot hold are refused by name (`hf_family`), never approximated.
"""

from __future__ import annotations

from typing import Any

import torch

from goushi.config import ModelConfig
from goushi.errors import GoushiError
from goushi.model import GPT

HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}

# What each Hugging Face class computes; a field listed here must have this value.
_NEEDS: dict[str, dict[str, Any]] = {
    "gpt2": dict(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True, qk_norm=False),
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False),
}


def _mismatches(cfg: ModelConfig, family: str) -> list[str]:
    out = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in _NEEDS[family].items() if getattr(cfg, k) != v]
    if family == "gpt2" and cfg.kv_heads != cfg.n_head:
        out.append(f"n_kv_head={cfg.n_kv_head} (GPT-2 has no grouped-query attention; needs 0 or {cfg.n_head})")
    return out


def hf_family(cfg: ModelConfig) -> str:
    """Which Hugging Face architecture holds this config exactly, or a GoushiError naming the options that
    keep it from the nearest one."""
    found = {name: _mismatches(cfg, name) for name in HF_CLASSES}
    for name, bad in found.items():
        if not bad:
            return name
    near = cfg.family if cfg.family in HF_CLASSES else min(found, key=lambda n: len(found[n]))
    raise GoushiError(f"model config (family {cfg.family!r}) cannot be expressed as {HF_CLASSES[near]}: "
                      f"{'; '.join(found[near])}; only the gpt2 and llama families export")


def hf_config(cfg: ModelConfig, eot_id: int = 0, eos_ids: list[int] | None = None):
    import transformers  # seconds to import; only export, import and the benchmarks need it

    eos = eos_ids if eos_ids and len(eos_ids) > 1 else eot_id
    if hf_family(cfg) == "gpt2":
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.hidden, activation_function="gelu", layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=eot_id, eos_token_id=eos, pad_token_id=eot_id,
        )
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps,
        hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=cfg.bias, mlp_bias=cfg.bias, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eot_id, eos_token_id=eos, pad_token_id=eot_id,
    )


def _gpt2_names(i: int) -> list[tuple[str, str, bool]]:
    """(ours, theirs, transposed) for one block; GPT-2's Conv1D stores weights as (in, out)."""
    p, q = f"blocks.{i}.", f"transformer.h.{i}."
    rows = [(p + n + s, q + n + s, False) for n in ("ln_1", "ln_2") for s in (".weight", ".bias")]
    rows += [(p + "attn.o_proj.weight", q + "attn.c_proj.weight", True), (p + "attn.o_proj.bias", q + "attn.c_proj.bias", False),
             (p + "mlp.up_proj.weight", q + "mlp.c_fc.weight", True), (p + "mlp.up_proj.bias", q + "mlp.c_fc.bias", False),
             (p + "mlp.down_proj.weight", q + "mlp.c_proj.weight", True),
             (p + "mlp.down_proj.bias", q + "mlp.c_proj.bias", False)]
    return rows


def _llama_names(i: int, bias: bool) -> list[tuple[str, str]]:
    p, q = f"blocks.{i}.", f"model.layers.{i}."
    rows = [(p + f"attn.{n}_proj.weight", q + f"self_attn.{n}_proj.weight") for n in "qkvo"]
    rows += [(p + f"mlp.{n}_proj.weight", q + f"mlp.{n}_proj.weight") for n in ("gate", "up", "down")]
    if bias:
        rows += [(p + f"attn.{n}_proj.bias", q + f"self_attn.{n}_proj.bias") for n in "qkvo"]
        rows += [(p + f"mlp.{n}_proj.bias", q + f"mlp.{n}_proj.bias") for n in ("gate", "up", "down")]
    rows += [(p + "ln_1.weight", q + "input_layernorm.weight"), (p + "ln_2.weight", q + "post_attention_layernorm.weight")]
    return rows


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our tensors under Hugging Face names (GPT-2's Conv1D stores weights transposed; q/k/v are fused)."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if hf_family(cfg) == "gpt2":
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            p, q = f"blocks.{i}.", f"transformer.h.{i}."
            qkv = [p + f"attn.{n}_proj" for n in "qkv"]
            out[q + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], 0).t().contiguous()
            out[q + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], 0)
            for ours, theirs, transposed in _gpt2_names(i):
                out[theirs] = sd[ours].t().contiguous() if transposed else sd[ours]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    else:
        out["model.embed_tokens.weight"] = sd["wte.weight"]
        for i in range(cfg.n_layer):
            for ours, theirs in _llama_names(i, cfg.bias):
                out[theirs] = sd[ours]
        out["model.norm.weight"] = sd["ln_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def from_hf_state_dict(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `hf_state_dict`: Hugging Face tensors under our names (a tied head may be absent)."""
    sd: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in hf_sd:
            raise GoushiError(f"Hugging Face weights have no tensor {name!r}; the checkpoint does not match its config.json")
        return hf_sd[name]

    if hf_family(cfg) == "gpt2":
        sd["wte.weight"], sd["wpe.weight"] = take("transformer.wte.weight"), take("transformer.wpe.weight")
        for i in range(cfg.n_layer):
            p, q = f"blocks.{i}.", f"transformer.h.{i}."
            w = take(q + "attn.c_attn.weight").t()
            b = take(q + "attn.c_attn.bias")
            for n, wn, bn in zip("qkv", w.split(cfg.n_embd, 0), b.split(cfg.n_embd, 0), strict=True):
                sd[p + f"attn.{n}_proj.weight"], sd[p + f"attn.{n}_proj.bias"] = wn.contiguous(), bn
            for ours, theirs, transposed in _gpt2_names(i):
                sd[ours] = take(theirs).t().contiguous() if transposed else take(theirs)
        sd["ln_f.weight"], sd["ln_f.bias"] = take("transformer.ln_f.weight"), take("transformer.ln_f.bias")
    else:
        sd["wte.weight"] = take("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            for ours, theirs in _llama_names(i, cfg.bias):
                sd[ours] = take(theirs)
        sd["ln_f.weight"] = take("model.norm.weight")
    sd["lm_head.weight"] = sd["wte.weight"] if cfg.tie_embeddings else take("lm_head.weight")
    return sd


def to_hf(model: GPT, eot_id: int = 0, eos_ids: list[int] | None = None):
    """A Hugging Face model holding exactly our weights (strict load), in eval mode."""
    import transformers  # seconds to import; only export, import and the benchmarks need it

    config = hf_config(model.config, eot_id, eos_ids)
    cls = getattr(transformers, HF_CLASSES[hf_family(model.config)])
    hf = cls(config)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


__all__ = ["HF_CLASSES", "hf_family", "hf_config", "hf_state_dict", "from_hf_state_dict", "to_hf"]
