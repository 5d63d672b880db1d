"""Map a GPT onto Hugging Face `GPT2LMHeadModel` / `LlamaForCausalLM` with a strict load.

This is the seam the export command and the throughput benchmarks build on: the two families are named
and shaped so that every tensor has exactly one place in the Hugging Face model.
"""

from __future__ import annotations

import torch

from goushi.config import ModelConfig
from goushi.errors import GoushiError
from goushi.model import GPT


def hf_family(cfg: ModelConfig) -> str:
    """Which Hugging Face architecture holds this config exactly, or a GoushiError saying why none does."""
    gpt2 = dict(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True, qk_norm=False)
    llama = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=False)
    for name, want in (("gpt2", gpt2), ("llama", llama)):
        if all(getattr(cfg, k) == v for k, v in want.items()):
            if name == "gpt2" and (cfg.kv_heads != cfg.n_head or cfg.hidden != 4 * cfg.n_embd):
                continue
            return name
    raise GoushiError("model config matches neither GPT-2 (learned/layernorm/gelu/bias, no GQA) nor Llama "
                      "(rope/rmsnorm/swiglu/no bias); Hugging Face export needs one of these two families")


def hf_config(cfg: ModelConfig, eot_id: int = 0):
    import transformers  # seconds to import; only export and the benchmarks need it

    family = hf_family(cfg)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.hidden, activation_function="gelu", layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=eot_id, eos_token_id=eot_id,
        )
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eot_id, eos_token_id=eot_id,
    )


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
            for n in ("ln_1", "ln_2"):
                out[q + n + ".weight"], out[q + n + ".bias"] = sd[p + n + ".weight"], sd[p + n + ".bias"]
            qkv = [p + f"attn.{n}_proj" for n in "qkv"]
            out[q + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], 0).t().contiguous()
            out[q + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], 0)
            out[q + "attn.c_proj.weight"] = sd[p + "attn.o_proj.weight"].t().contiguous()
            out[q + "attn.c_proj.bias"] = sd[p + "attn.o_proj.bias"]
            out[q + "mlp.c_fc.weight"] = sd[p + "mlp.up_proj.weight"].t().contiguous()
            out[q + "mlp.c_fc.bias"] = sd[p + "mlp.up_proj.bias"]
            out[q + "mlp.c_proj.weight"] = sd[p + "mlp.down_proj.weight"].t().contiguous()
            out[q + "mlp.c_proj.bias"] = sd[p + "mlp.down_proj.bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    else:
        out["model.embed_tokens.weight"] = sd["wte.weight"]
        for i in range(cfg.n_layer):
            p, q = f"blocks.{i}.", f"model.layers.{i}."
            for n in "qkvo":
                out[q + f"self_attn.{n}_proj.weight"] = sd[p + f"attn.{n}_proj.weight"]
            for n in ("gate", "up", "down"):
                out[q + f"mlp.{n}_proj.weight"] = sd[p + f"mlp.{n}_proj.weight"]
            out[q + "input_layernorm.weight"] = sd[p + "ln_1.weight"]
            out[q + "post_attention_layernorm.weight"] = sd[p + "ln_2.weight"]
        out["model.norm.weight"] = sd["ln_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def to_hf(model: GPT, eot_id: int = 0):
    """A Hugging Face model holding exactly our weights (strict load), in eval mode."""
    import transformers  # seconds to import; only export and the benchmarks need it

    config = hf_config(model.config, eot_id)
    cls = transformers.GPT2LMHeadModel if hf_family(model.config) == "gpt2" else transformers.LlamaForCausalLM
    hf = cls(config)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()
