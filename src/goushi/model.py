"""The decoder-only transformer, top to bottom like the diagram in the seeds.

    token ids ─► token embedding (+ position embedding, unless rotary)
              ─► N × Block:  x + Attention(Norm(x))   (causal multi-head self-attention)
                             x + MLP(Norm(x))
              ─► final Norm ─► LM head ─► logits (softmax gives next-token probabilities)

Two families share this code: `gpt2` (learned positions, LayerNorm, GELU) and `llama` (RoPE, RMSNorm,
SwiGLU, grouped-query attention). Parameter names and shapes map one to one onto Hugging Face
`GPT2LMHeadModel` / `LlamaForCausalLM` (see goushi.export); RoPE uses the same rotate-half layout.
This module knows nothing of files, tokenizers or training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from goushi.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# Normalisation and positions


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: under bf16 autocast the mean of squares loses too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine positions of 'Attention is all you need'."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # rotate-half layout, as in Hugging Face Llama
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin (B, 1, T, D) already gathered at each token's position."""
    return (x * cos + rotate_half(x) * sin).type_as(x)


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for positions already seen, so decoding one token costs O(T).

    Tensors are (B, kv_heads, max_len, head_dim), allocated once; `length` is how much is filled.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer][:, :, pos:end] = k
        self.v[layer][:, :, pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search picks which hypotheses survive)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]

    def crop(self, n: int) -> None:
        self.length = min(self.length, n)

    @property
    def batch(self) -> int:
        return self.k[0].size(0)


# ---------------------------------------------------------------------------------------------
# The block


class Attention(nn.Module):
    """Causal multi-head self-attention: each position looks only at itself and the past."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int, pos: int, need_weights: bool):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v, pos)
        if self.n_kv != self.n_head:  # grouped-query attention: each key/value head serves a group of query heads
            rep = self.n_head // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.float().softmax(-1).type_as(q)
            y = weights @ v
        else:
            drop = self.dropout if self.training else 0.0
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=drop)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y), weights


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.kind == "relu2":
            h = F.relu(self.up_proj(x)).square()
        else:
            h = F.gelu(self.up_proj(x))
        return self.down_proj(h)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added back to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache, layer, pos, need_weights):
        a, w = self.attn(self.ln_1(x), rope, mask, cache, layer, pos, need_weights)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, w


# ---------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.context_length, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.context_length, cfg.n_embd), persistent=False)
        else:
            cos, sin = rope_tables(cfg.context_length, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation; residual output projections scaled by 1/sqrt(2 * n_layer)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    # --- helpers -------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if hasattr(self, "wpe"):
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix / nanoGPT.

        The embedding lookup is free, but the LM head is a matmul whether or not it shares the embedding's weights.
        """
        cfg = self.config
        T = seq_len or cfg.context_length
        matmul_params = self.num_params(non_embedding=True) - (0 if cfg.tie_embeddings else self.lm_head.weight.numel())
        return 6 * (matmul_params + cfg.vocab_size * cfg.n_embd) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    def new_kv_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch, max_len or self.config.context_length, p.device, dtype or p.dtype)

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        pos: int = 0,
        position_ids: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position (or only the last), and the next-token loss when targets are given.

        idx (B, T) token ids. With a `kv_cache`, the tokens sit at positions pos .. pos+T-1 after what the
        cache holds. `key_padding_mask` (B, pos+T), True where a real token is, lets batches of prompts of
        different lengths be left-padded; `position_ids` (B, T) then gives each token its own position.
        """
        logits, loss, _ = self._run(idx, targets, kv_cache, pos, position_ids, key_padding_mask, last_only, False)
        return logits, loss

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each layer's attention weights (B, n_head, T, T), for looking inside the model."""
        logits, _, weights = self._run(idx, None, None, 0, None, None, False, True)
        return logits, weights

    def _run(self, idx, targets, cache, pos, position_ids, key_padding_mask, last_only, need_weights):
        cfg = self.config
        B, T = idx.shape
        if pos + T > cfg.context_length:
            raise ValueError(f"sequence of {pos + T} tokens is longer than context_length={cfg.context_length}")
        if position_ids is None:
            position_ids = torch.arange(pos, pos + T, device=idx.device).unsqueeze(0).expand(B, T)
        x = self.wte(idx)
        rope = None
        if cfg.pos_encoding == "learned":
            x = x + self.wpe(position_ids)
        elif cfg.pos_encoding == "sinusoidal":
            x = x + self.pos_table[position_ids].to(x.dtype)
        else:
            rope = (self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1))
        x = self.drop(x)
        mask = self._mask(B, T, pos, key_padding_mask, idx.device, explicit=need_weights)
        weights = []
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training:
                x, w = torch.utils.checkpoint.checkpoint(block, x, rope, mask, None, i, pos, False, use_reentrant=False)
            else:
                x, w = block(x, rope, mask, cache, i, pos, need_weights)
            weights.append(w)
        if cache is not None:
            cache.length = pos + T
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss, weights

    @staticmethod
    def _mask(B, T, pos, key_padding_mask, device, explicit: bool):
        """Boolean mask (True = may attend), or None when SDPA's own causal mask is exact."""
        if key_padding_mask is None and pos == 0 and not explicit:
            return None
        if key_padding_mask is None and T == 1 and not explicit:
            return None  # one new token may look at everything cached
        q_pos = torch.arange(pos, pos + T, device=device)[:, None]
        k_pos = torch.arange(pos + T, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, pos+T)
        if key_padding_mask is not None:
            mask = mask & key_padding_mask[:, None, None, : pos + T].bool()
            # A padding query row would see nothing and give NaN; let it see itself instead.
            mask = mask | (k_pos == q_pos)[None, None]
        return mask.expand(B, 1, T, pos + T) if mask.size(0) == 1 else mask
