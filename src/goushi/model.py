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
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

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

    Per layer one (2, B, kv_heads, max_len, head_dim) tensor, allocated once: `k[layer]` and `v[layer]` are
    views into it, so a decode step writes a token's key and value with one copy. `length` is how much is filled.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (2, batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.length = 0

    @property
    def k(self) -> list[torch.Tensor]:
        return [t[0] for t in self.kv]

    @property
    def v(self) -> list[torch.Tensor]:
        return [t[1] for t in self.kv]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        ck, cv = self.kv[layer].narrow(3, 0, end).unbind(0)
        ck.narrow(2, pos, end - pos).copy_(k)
        cv.narrow(2, pos, end - pos).copy_(v)
        return ck, cv

    def update_kv(self, layer: int, kv_new: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`update` for keys and values already side by side, (2, B, kv_heads, T, head_dim): one copy."""
        end = pos + kv_new.size(3)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        kv = self.kv[layer].narrow(3, 0, end)
        kv.narrow(3, pos, end - pos).copy_(kv_new)
        return kv.unbind(0)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search picks which hypotheses survive)."""
        self.kv = [t.index_select(1, index) for t in self.kv]

    def crop(self, n: int) -> None:
        self.length = min(self.length, n)

    @property
    def batch(self) -> int:
        return self.kv[0].size(1)


class SlotKVCache(KVCache):
    """A KVCache whose rows stand at different lengths (goushi.generation.slots: rows join and leave a running
    batch). A decode step (one token per row) runs the first B <= batch rows; of those, rows `rows` write their
    key and value at positions `at` (the others are blanks that write nothing), and every row attends over the
    first `span` positions, where the caller's key_padding_mask (B, max_len) says which hold its tokens, its own
    new one included. `pos` is ignored."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        super().__init__(cfg, batch, max_len, device, dtype)
        self.rows = torch.zeros(0, dtype=torch.long, device=device)  # set by the caller before each step
        self.at = torch.zeros(0, dtype=torch.long, device=device)
        self.span = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.update_kv(layer, torch.stack([k, v]), pos)

    def update_kv(self, layer: int, kv_new: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        B = kv_new.size(1)
        if kv_new.size(3) != 1:
            raise ValueError(f"a SlotKVCache step writes one token per row, not {kv_new.size(3)}")
        kv = self.kv[layer].narrow(1, 0, B)
        # (rows, max_len, 2, kv_heads, head_dim) views: row r's token goes to position at[r], one indexed copy.
        # (index_put_ itself: the [rows, at] = ... spelling spends ~50 us in Python parsing the indices.)
        kv.permute(1, 3, 0, 2, 4).index_put_((self.rows, self.at), kv_new[:, :, :, 0].permute(1, 0, 2, 3)[self.rows])
        return kv.narrow(3, 0, self.span).unbind(0)


# ---------------------------------------------------------------------------------------------
# The block

# Plain layers are called through their functional form: a module call costs microseconds of Python,
# which is a good part of a decode step for a small model. Anything else in their place (a LoRA adapter,
# a quantised layer) keeps its own forward.


def linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight, m.bias) if type(m) is nn.Linear else m(x)


def norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(m) is nn.LayerNorm:
        return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
    return m(x)


def _plain(*layers: nn.Module | None) -> bool:
    return all(m is None or type(m) is nn.Linear for m in layers)


def addmm(x: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x @ w_t + b for x (..., in) and w_t (in, out) stored contiguous: for a few rows ~2x faster than
    F.linear's x @ W.T on a CPU (Hugging Face's GPT-2 keeps its weights in this layout for the same reason)."""
    x2 = x.reshape(-1, x.size(-1))
    y = torch.addmm(b, x2, w_t) if b is not None else x2 @ w_t
    return y.view(*x.shape[:-1], w_t.size(1))


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()


def _cat(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if ts[0] is None else torch.cat(ts)


def _norm_spec(m: nn.Module):
    """What F.layer_norm needs, gathered once; any other norm is called as it is."""
    if type(m) is nn.LayerNorm:
        return (m.normalized_shape, m.weight, m.bias, m.eps)
    return m


def _apply_norm(spec, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, *spec) if type(spec) is tuple else spec(x)


# A linear layer arranged for inference: (weight transposed and contiguous, bias) for addmm, or a module called
# on x (an int8 layer).
Lin = Any


def _lin(spec: Lin, x: torch.Tensor) -> torch.Tensor:
    return addmm(x, *spec) if type(spec) is tuple else spec(x)


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """torch.ao's dynamic int8 Linear (CPU, fbgemm/x86 kernels): weights int8 with a scale per output channel,
    activations quantised per call, so a decode step reads a quarter of the fp32 weight bytes."""
    lin = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao points at torchao; its eager dynamic Linear is what we need here
        warnings.simplefilter("ignore")
        return torch.ao.nn.quantized.dynamic.Linear.from_float(lin)


def _arrange(weight: torch.Tensor, bias: torch.Tensor | None, int8: Callable[[int, int], bool] | None) -> Lin:
    if int8 is not None and int8(weight.size(1), weight.size(0)):
        return int8_linear(weight, bias)
    return (_t(weight), bias)


class BlockWeights(NamedTuple):
    """A block's layers arranged for inference: q/k/v fused into one, each linear a Lin."""

    ln_1: Any
    qkv: Lin
    o: Lin
    ln_2: Any
    up: Lin
    down: Lin
    gate: Lin | None


class Attention(nn.Module):
    """Causal multi-head self-attention: each position looks only at itself and the past.

    q_proj, k_proj and v_proj stay three layers (their names are the checkpoint format and Hugging Face's), but
    run as one matmul over their weights side by side: concatenated at every training step (autograd splits the
    gradient), fused once for inference (GPT.prepare_for_inference).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout if cfg.attn_dropout else 0.0
        # The dtype attention itself runs in; None follows its inputs (and autocast). Set to float32 where a
        # CPU's bf16 attention kernels are slower than its fp32 ones (goushi.precision measures it).
        self.attn_dtype: torch.dtype | None = None

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int, pos: int, need_weights: bool):
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        if _plain(q, k, v):
            qkv = F.linear(x, torch.cat([q.weight, k.weight, v.weight]), _cat([q.bias, k.bias, v.bias]))
            y, weights = self.attend(x, qkv, rope, mask, cache, layer, pos, need_weights)
        else:  # adapters (LoRA) on the projections: each its own layer
            y, weights = self.attend(x, None, rope, mask, cache, layer, pos, need_weights)
        return linear(self.o_proj, y), weights

    def attend(self, x, qkv, rope, mask, cache: KVCache | None, layer: int, pos: int, need_weights: bool):
        """Attention over the projections `qkv` (B, T, q+k+v) of x (or x's own projections when None), before
        the output projection: (y (B, T, n_head * head_dim), weights or None)."""
        B, T, _ = x.shape
        H, KV, D = self.n_head, self.n_kv, self.head_dim
        kv_new = None  # keys and values side by side (2, B, KV, T, D), when they can go to the cache in one copy
        if qkv is None:
            q = linear(self.q_proj, x).view(B, T, H, D).transpose(1, 2)
            k = linear(self.k_proj, x).view(B, T, KV, D).transpose(1, 2)
            v = linear(self.v_proj, x).view(B, T, KV, D).transpose(1, 2)
        elif KV == H:
            qkv = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D), a view
            q, k, v = qkv.unbind(0)
            kv_new = qkv[1:]
        else:
            q, k, v = qkv.split((H * D, KV * D, KV * D), dim=-1)
            q, k, v = q.view(B, T, H, D).transpose(1, 2), k.view(B, T, KV, D).transpose(1, 2), \
                v.view(B, T, KV, D).transpose(1, 2)
        if self.q_norm is not None:
            q, k, kv_new = self.q_norm(q), self.k_norm(k), None
        if rope is not None:
            q, k, kv_new = apply_rope(q, *rope), apply_rope(k, *rope), None
        if cache is not None:
            k, v = cache.update_kv(layer, kv_new, pos) if kv_new is not None else cache.update(layer, k, v, pos)
        if KV != H:  # grouped-query attention: each key/value head serves a group of query heads
            rep = H // KV
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        weights = None
        if isinstance(cache, SlotKVCache):
            y = _decode_attention(q, k, v, mask)
        elif need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.float().softmax(-1).type_as(q)
            y = weights @ v
        else:
            drop = self.dropout if self.training else 0.0
            dt = self.attn_dtype
            if dt is not None and q.dtype != dt:
                with torch.autocast(x.device.type, enabled=False):
                    y = _sdpa(q.to(dt), k.to(dt), v.to(dt), mask, T, drop)
            else:
                y = _sdpa(q, k, v, mask, T, drop)
        return y.transpose(1, 2).reshape(B, T, H * D), weights


# Positions a decode step over a SlotKVCache attends over in one piece; see _decode_attention.
DECODE_CHUNK = 64


def _decode_attention(q, k, v, hidden) -> torch.Tensor:
    """One query per row over the first `span` positions of a SlotKVCache (a multiple of DECODE_CHUNK that covers
    every row's tokens; `hidden` True where a row must not look), by plain matmuls over fixed chunks of DECODE_CHUNK positions, summed chunk after chunk.

    Why chunks: a CPU matmul's summation order (even the order of its output columns' blocking) changes with the
    number of positions, so a row's floats would depend on the longest row beside it. Here every matmul has the
    same shape whatever the span, and the chunks beyond a row's own tokens add exact zeros, so a row's result is
    the same bits for any span and any batch. Plain matmuls, not SDPA: its CPU flash kernel is ~10x slower for a
    single query over a masked cache (measured on a Xeon at 2-32 rows). Softmax and sums in fp32."""
    C, S = DECODE_CHUNK, k.size(2)
    scale = 1.0 / math.sqrt(q.size(-1))
    parts = [q @ k[:, :, c: c + C].transpose(-2, -1) for c in range(0, S, C)]
    e = (torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]).float().mul_(scale)
    e = e.masked_fill_(hidden, float("-inf"))
    e = e.sub_(e.amax(-1, keepdim=True)).exp_()
    total, y = None, None
    for c in range(0, S, C):
        ec = e[..., c: c + C]
        part, part_sum = (ec.to(v.dtype) @ v[:, :, c: c + C]).float(), ec.sum(-1, keepdim=True)
        total, y = (part_sum, part) if y is None else (total + part_sum, y + part)
    return y.div_(total).to(v.dtype)


def _sdpa(q, k, v, mask, T: int, drop: float) -> torch.Tensor:
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=drop)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = linear(self.gate_proj, x) if self.kind == "swiglu" else None
        return linear(self.down_proj, self.activate(linear(self.up_proj, x), gate))

    def activate(self, up: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "swiglu":
            return F.silu(gate) * up
        if self.kind == "relu2":
            return F.relu(up).square()
        return F.gelu(up)


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
        a, w = self.attn(norm(self.ln_1, x), rope, mask, cache, layer, pos, need_weights)
        dropping = self.training and self.drop.p > 0
        x = x + (self.drop(a) if dropping else a)
        m = self.mlp(norm(self.ln_2, x))
        x = x + (self.drop(m) if dropping else m)
        return x, w

    def inference_weights(self, int8: Callable[[int, int], bool] | None = None) -> BlockWeights | None:
        """This block's layers for `infer`, or None when a layer is not a plain Linear (LoRA, quantised).
        `int8(in_features, out_features)` says which linears become int8 layers."""
        a, m = self.attn, self.mlp
        gate = getattr(m, "gate_proj", None)
        if not _plain(a.q_proj, a.k_proj, a.v_proj, a.o_proj, gate, m.up_proj, m.down_proj):
            return None
        qkv = _arrange(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       _cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]), int8)
        return BlockWeights(_norm_spec(self.ln_1), qkv, _arrange(a.o_proj.weight, a.o_proj.bias, int8),
                            _norm_spec(self.ln_2), _arrange(m.up_proj.weight, m.up_proj.bias, int8),
                            _arrange(m.down_proj.weight, m.down_proj.bias, int8),
                            _arrange(gate.weight, gate.bias, int8) if gate is not None else None)

    def infer(self, x, rope, mask, cache, layer, pos, w: BlockWeights):
        """forward() without gradients, on layers arranged by inference_weights (no module calls: for a small
        model their Python is a good part of a decode step)."""
        attn, mlp = self.attn, self.mlp
        h = _apply_norm(w.ln_1, x)
        y, _ = attn.attend(h, _lin(w.qkv, h), rope, mask, cache, layer, pos, False)
        x = x + _lin(w.o, y)
        h = _apply_norm(w.ln_2, x)
        gate = _lin(w.gate, h) if w.gate is not None else None
        return x + _lin(w.down, mlp.activate(_lin(w.up, h), gate))

    def decode_one(self, x, rope, kv: torch.Tensor, pos: int, w: BlockWeights) -> torch.Tensor:
        """infer() for one token of one row, x (1, C), its key and value written at `pos` of this layer's cache
        tensor kv (2, 1, kv_heads, max_len, head_dim): the same operations as infer() over a KVCache (so the same
        floats), in 2-D and without the general case's branches and reshapes (GPT.decode_one says why)."""
        attn = self.attn
        H, KV, D = attn.n_head, attn.n_kv, attn.head_dim
        h = _apply_norm(w.ln_1, x)
        qkv = _lin2(w.qkv, h)
        # (narrow, not slicing: a tensor's __getitem__ with a tuple of slices costs microseconds of Python)
        if KV == H and attn.q_norm is None and rope is None:
            a = qkv.view(3, 1, H, 1, D)
            q = a[0]
            kv.narrow(3, pos, 1).copy_(a.narrow(0, 1, 2))
        else:
            q, k, v = one_token_qkv(attn, qkv, rope)
            kv[0].narrow(2, pos, 1).copy_(k)
            kv[1].narrow(2, pos, 1).copy_(v)
        k, v = kv.narrow(3, 0, pos + 1).unbind(0)
        if KV != H:
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        dt = attn.attn_dtype
        if dt is not None and q.dtype != dt:
            with torch.autocast(x.device.type, enabled=False):
                y = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt))
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        x = _lin2(w.o, y.reshape(1, H * D)).add_(x)  # in place on a fresh tensor: a + b == b + a, bit for bit
        h = _apply_norm(w.ln_2, x)
        gate = _lin2(w.gate, h) if w.gate is not None else None
        return _lin2(w.down, self.mlp.activate(_lin2(w.up, h), gate)).add_(x)


def one_token_qkv(attn: Attention, qkv: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token's fused projection (1, (H + 2 KV) D) as q (1, H, 1, D), k and v (1, KV, 1, D), with the q/k norms
    and rotary positions applied: the decode steps' shared head of attention (Block.decode_one, the compiled step)."""
    H, KV, D = attn.n_head, attn.n_kv, attn.head_dim
    q = qkv[:, : H * D].view(1, H, 1, D)
    k = qkv[:, H * D: (H + KV) * D].view(1, KV, 1, D)
    v = qkv[:, (H + KV) * D:].view(1, KV, 1, D)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k, v


def _lin2(spec: Lin, x: torch.Tensor) -> torch.Tensor:
    """_lin for x already 2-D (rows, in)."""
    if type(spec) is tuple:
        w_t, b = spec
        return torch.addmm(b, x, w_t) if b is not None else x @ w_t
    return spec(x)


# ---------------------------------------------------------------------------------------------
# The LM head and its loss

IGNORE_INDEX = -100  # a target that carries no loss (torch's cross_entropy default); batch sources write it


class _LMHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ weight.T, a chunk of rows at a time, with both gradients computed
    on the way (softmax minus one-hot is known as soon as a chunk's logits are): the (rows x vocabulary)
    logits, their log-softmax and their gradient never exist whole. On a CPU those three passes over memory
    cost more than the LM head's matmuls for a small model; chunks stay in cache. (The idea of Liger
    Kernel's fused linear cross-entropy.)"""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int, dtype: torch.dtype):
        need_x, need_w = ctx.needs_input_grad[:2]  # a frozen head (LoRA) needs no weight gradient
        with torch.autocast(x.device.type, enabled=False):
            xd, wd = x.to(dtype), weight.to(dtype)
            valid = targets != IGNORE_INDEX
            count = valid.sum().to(torch.float32)  # 0 gives nan, as F.cross_entropy does
            grad_x = torch.empty_like(xd) if need_x else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            for s in range(0, x.size(0), chunk):
                xs, ts, vs = xd[s: s + chunk], targets[s: s + chunk], valid[s: s + chunk]
                logp = F.linear(xs, wd).float().log_softmax(-1)
                tgt = ts.clamp(min=0).unsqueeze(1)
                total -= logp.gather(1, tgt).squeeze(1).masked_fill(~vs, 0.0).sum()
                g = logp.exp_()  # softmax, in place
                g.scatter_add_(1, tgt, -vs.unsqueeze(1).to(g.dtype))
                g.mul_((vs.to(g.dtype) / count).unsqueeze(1))
                gd = g.to(dtype)
                if need_x:
                    torch.mm(gd, wd, out=grad_x[s: s + chunk])
                if need_w and dtype == torch.float32:
                    grad_w.addmm_(gd.t(), xs)
                elif need_w:
                    grad_w += (gd.t() @ xs).float()
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = (x.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        return (None if grad_x is None else (grad_x * grad_loss).to(x_dtype),
                None if grad_w is None else (grad_w * grad_loss).to(w_dtype), None, None, None)


def lm_head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """F.cross_entropy(F.linear(x, weight), targets, ignore_index=-100) for x (N, d), weight (V, d), targets (N,),
    without materialising the logits. Under autocast the matmuls run in its dtype, the softmax in fp32."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
    # Rows per chunk: about 4 MB of fp32 logits, the fastest of 64..1024 rows measured on a Xeon (AVX-512, AMX)
    # for vocabularies of 4,787 and widths 128 and 384, fp32 and bf16 (2-3x the unchunked loss).
    chunk = chunk or max(64, min(x.size(0), 1 << max(0, ((1 << 20) // weight.size(0)) - 1).bit_length()))
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LMHeadLoss.apply(x, weight, targets, chunk, dtype)
    with torch.autocast(dev, enabled=False):  # evaluation: no gradients to compute on the way
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        xd, wd = x.to(dtype), weight.to(dtype)
        for s in range(0, x.size(0), chunk):
            logits = F.linear(xd[s: s + chunk], wd).float()
            total += F.cross_entropy(logits, targets[s: s + chunk], ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum()


def _trainable(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]


def check_param_groups(model: nn.Module, groups: dict[str, list[tuple[str, nn.Parameter]]]) -> None:
    """ValueError naming each trainable parameter of `model` in no group or in two, and each group member that
    is not a trainable parameter of it: an optimiser built from the groups then trains exactly the model."""
    where: dict[int, list[str]] = {}
    for group, members in groups.items():
        for _, p in members:
            where.setdefault(id(p), []).append(group)
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for members in groups.values() for n, p in members}
    problems = [f"{n} is in no group" for i, n in trainable.items() if i not in where]
    problems += [f"{trainable.get(i, names[i])} is in {' and '.join(g)}" for i, g in where.items() if len(g) > 1]
    problems += [f"{names[i]} is not a trainable parameter of the model" for i in where if i not in trainable]
    if problems:
        raise ValueError(f"{type(model).__name__} parameter groups must hold every trainable parameter exactly once "
                         f"(the optimiser is built from them): {'; '.join(problems)}")


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
        self._inference: tuple | None = None  # ([BlockWeights] or None, int8 LM head or None); see prepare_for_inference
        self._int8: Callable[[int, int], bool] | None = None
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

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The trainable parameters by how an optimiser treats them: `hidden`, the matrices inside the blocks
        (weight decay; Muon when it is used); `embed`, the token and position tables and an untied LM head;
        `other`, norm gains and biases. Chosen by module, not by name pattern, and checked (check_param_groups):
        a parameter added to the model without a group is an error, never a weight that silently does not
        train. Frozen parameters (the base weights under LoRA) are in none."""
        embed: dict[int, tuple[str, nn.Parameter]] = {}
        for name in ("wte", "wpe", "lm_head"):  # a tied head is wte's weight: once, as wte
            if hasattr(self, name):
                for n, p in _trainable(getattr(self, name), name):
                    embed.setdefault(id(p), (n, p))
        blocks = _trainable(self.blocks, "blocks")
        groups = {"hidden": [(n, p) for n, p in blocks if p.dim() == 2], "embed": list(embed.values()),
                  "other": [(n, p) for n, p in blocks + _trainable(self.ln_f, "ln_f") if p.dim() == 1]}
        check_param_groups(self, groups)
        return groups

    def new_kv_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch, max_len or self.config.context_length, p.device, dtype or p.dtype)

    # --- inference -----------------------------------------------------------------------------
    def prepare_for_inference(self, int8: Callable[[int, int], bool] | None = None) -> bool:
        """Arrange the weights for inference now (q/k/v fused, matrices transposed: one matmul instead of
        three, each ~2x faster for a few rows) instead of at the first forward in inference mode. `int8(in, out)`
        picks linears (the LM head included) to run as int8 layers (CPU only; see int8_linear). The parameters
        and the state dict are untouched (q_proj/k_proj/v_proj, fp32, as on disk). False when a block keeps its
        modules (LoRA adapters, FSDP)."""
        if int8 is not None and (self.wte.weight.device.type != "cpu" or self.wte.weight.dtype != torch.float32):
            raise ValueError("int8 layers need an fp32 model on the CPU")
        self._inference = None
        self._int8 = int8
        return self._inference_weights() is not None

    def _inference_weights(self) -> list[BlockWeights] | None:
        inference = self._inference  # read once (several decode threads share the model)
        if inference is not None:
            return inference[0]
        weights, head, int8 = None, None, self._int8
        if all(type(b) is Block for b in self.blocks):  # FSDP swaps the class: its blocks gather their weights
            with torch.no_grad():
                weights = [b.inference_weights(int8) for b in self.blocks]
                if type(self.lm_head) is nn.Linear and int8 is not None:
                    head = _arrange(self.lm_head.weight, None, int8)
            if any(w is None for w in weights):
                weights = None
        self._inference = (weights, head if type(head) is not tuple else None)
        return weights

    def _head_t(self) -> torch.Tensor:
        """The LM head's weight transposed, for decode steps over a SlotKVCache: x @ W.T (F.linear) sums in another
        order for a handful of rows than for more (measured on a Xeon: up to 15 rows differ), x @ W_t for every
        count of 2 rows or more gives each row the same floats. Made at the first such step (a copy of the head)."""
        inference = self._inference  # read once: another decode thread may rebuild it meanwhile (equal values)
        if len(inference) < 3:
            with torch.no_grad():
                inference = (*inference, _t(self.lm_head.weight))
            self._inference = inference
        return inference[2]

    # What changes the weights drops their inference arrangement: a training forward (see _run), loading a
    # state dict, moving or casting the model. Edit weights in place some other way and call
    # prepare_for_inference() again: checking every parameter at every decode step costs more than a matmul.
    def _apply(self, fn, recurse=True):
        self._inference = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._inference = None
        return super()._load_from_state_dict(*args, **kwargs)

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
        doc_sep: int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position (or only the last); with targets, (None, the mean next-token loss).

        With targets the logits are never materialised (see lm_head_loss): a model that trains needs only the loss.

        idx (B, T) token ids. With a `kv_cache`, the tokens sit at positions pos .. pos+T-1 after what the
        cache holds. `key_padding_mask` (B, pos+T), True where a real token is, lets batches of prompts of
        different lengths be left-padded; `position_ids` (B, T) then gives each token its own position.

        `doc_sep` (training on packed documents): a token id that starts a new document (<|endoftext|>); each
        position then attends only within its own document, from that token on, and its position counts from
        there, so every document in a row is computed as if it stood alone at the start of a sequence.
        """
        if doc_sep is not None:
            if kv_cache is not None or pos or position_ids is not None or key_padding_mask is not None:
                raise ValueError("doc_sep packs whole rows: it takes no kv_cache, pos, position_ids or padding mask")
            doc_mask, position_ids = self._doc_layout(idx, doc_sep)
            logits, loss, _ = self._run(idx, targets, None, 0, position_ids, None, last_only, False, doc_mask)
            return logits, loss
        logits, loss, _ = self._run(idx, targets, kv_cache, pos, position_ids, key_padding_mask, last_only, False)
        return logits, loss

    def _doc_layout(self, idx: torch.Tensor, doc_sep: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(a (B, 1, T, T) mask, True where a position may attend: causal and within its document; the positions
        counted from each document's first token, or None under RoPE, where only differences count)."""
        T = idx.size(1)
        at = torch.arange(T, device=idx.device)
        first = torch.where(idx == doc_sep, at, torch.zeros_like(at)).cummax(dim=1).values  # (B, T)
        same_doc = first[:, :, None] == first[:, None, :]
        mask = (same_doc & (at[None, :] <= at[:, None])[None])[:, None]
        positions = None if self.config.pos_encoding == "rope" else at[None] - first
        return mask, positions

    def decode_one(self, token: int, cache: KVCache, pos: int) -> torch.Tensor:
        """Next-token logits (1, V) after `token` at position `pos` of a batch-1 `cache` (a plain KVCache): what
        forward(ids (1, 1), kv_cache=cache, pos=pos, last_only=True) gives, by the same operations on the same
        shapes (so the same floats), with the Python around them cut to what one token of one row needs: for a
        small model that Python is a good part of a decode step (goushi.generation.solo decodes with it)."""
        fast = self._inference_weights() if torch.is_inference_mode_enabled() and type(self) is GPT else None
        cfg = self.config
        if fast is None or type(self.wte) is not nn.Embedding or type(cache) is not KVCache or self.training:
            logits, _ = self(torch.tensor([[token]], device=self.wte.weight.device), kv_cache=cache, pos=pos,
                             last_only=True)
            return logits[:, -1]
        if pos + 1 > cfg.context_length:
            raise ValueError(f"sequence of {pos + 1} tokens is longer than context_length={cfg.context_length}")
        x = self.wte.weight[token]
        rope = None
        if cfg.pos_encoding == "learned":
            x = x + self.wpe.weight[pos]
        elif cfg.pos_encoding == "sinusoidal":
            x = x + self.pos_table[pos].to(x.dtype)
        else:
            rope = (self.rope_cos[pos: pos + 1][None, None], self.rope_sin[pos: pos + 1][None, None])
        x = x.view(1, -1)
        for block, w, kv in zip(self.blocks, fast, cache.kv, strict=True):
            x = block.decode_one(x, rope, kv, pos, w)
        cache.length = pos + 1
        x = norm(self.ln_f, x)
        head = self._inference[1]
        return head(x) if head is not None else linear(self.lm_head, x)

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each layer's attention weights (B, n_head, T, T), for looking inside the model."""
        logits, _, weights = self._run(idx, None, None, 0, None, None, False, True)
        return logits, weights

    def _run(self, idx, targets, cache, pos, position_ids, key_padding_mask, last_only, need_weights, doc_mask=None):
        cfg = self.config
        B, T = idx.shape
        if pos + T > cfg.context_length:
            raise ValueError(f"sequence of {pos + T} tokens is longer than context_length={cfg.context_length}")
        x = F.embedding(idx, self.wte.weight) if type(self.wte) is nn.Embedding else self.wte(idx)
        rope = None
        # Without position_ids every row is at pos .. pos+T-1: a slice of the table, no index tensor to build.
        if cfg.pos_encoding == "learned":
            x = x + (self.wpe.weight[pos: pos + T] if position_ids is None else self.wpe(position_ids))
        elif cfg.pos_encoding == "sinusoidal":
            table = self.pos_table[pos: pos + T] if position_ids is None else self.pos_table[position_ids]
            x = x + table.to(x.dtype)
        elif position_ids is None:
            rope = (self.rope_cos[pos: pos + T][None, None], self.rope_sin[pos: pos + T][None, None])
        else:
            rope = (self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1))
        if self.training and self.drop.p > 0:
            x = self.drop(x)
        if doc_mask is not None:
            mask = doc_mask
        elif isinstance(cache, SlotKVCache):  # rows at their own lengths: True where a row must not look, made once
            mask = ~key_padding_mask[:, None, None, : cache.span]
        else:
            mask = self._mask(B, T, pos, key_padding_mask, idx.device, explicit=need_weights)
        fast = None
        if torch.is_grad_enabled():
            # Training: the weights are about to change, and a fused optimizer (AdamW(fused=True)) updates them
            # without bumping their _version; the inference arrangement is rebuilt when next needed.
            self._inference = None
        elif torch.is_inference_mode_enabled() and not need_weights and type(self) is GPT:
            fast = self._inference_weights()
        weights = []
        for i, block in enumerate(self.blocks):
            if fast is not None:
                x, w = block.infer(x, rope, mask, cache, i, pos, fast[i]), None
            elif self.gradient_checkpointing and self.training:
                x, w = torch.utils.checkpoint.checkpoint(block, x, rope, mask, None, i, pos, False, use_reentrant=False)
            else:
                x, w = block(x, rope, mask, cache, i, pos, need_weights)
            weights.append(w)
        if cache is not None:
            cache.length = pos + T
        x = norm(self.ln_f, x)
        if targets is not None and type(self.lm_head) is nn.Linear:
            return None, lm_head_loss(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1)), weights
        if last_only:
            x = x[:, -1:]
        head = self._inference[1] if fast is not None else None
        if head is None and fast is not None and isinstance(cache, SlotKVCache):
            logits = addmm(x, self._head_t(), None)
        else:
            logits = head(x) if head is not None else linear(self.lm_head, x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss, weights

    @staticmethod
    def _mask(B, T, pos, key_padding_mask, device, explicit: bool):
        """Boolean mask (True = may attend), or None when SDPA's own causal mask is exact."""
        if key_padding_mask is None and pos == 0 and not explicit:
            return None
        if T == 1 and not explicit:
            if key_padding_mask is None:
                return None  # one new token may look at everything cached
            # A decode step: the new token sees every real position, and always itself (a padding query row
            # would otherwise see nothing and give NaN).
            mask = key_padding_mask[:, : pos + 1].bool().clone()
            mask[:, pos] = True
            return mask[:, None, None]
        q_pos = torch.arange(pos, pos + T, device=device)[:, None]
        k_pos = torch.arange(pos + T, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, pos+T)
        if key_padding_mask is not None:
            mask = mask & key_padding_mask[:, None, None, : pos + T].bool()
            # A padding query row would see nothing and give NaN; let it see itself instead.
            mask = mask | (k_pos == q_pos)[None, None]
        return mask.expand(B, 1, T, pos + T) if mask.size(0) == 1 else mask
