"""A compiled decode step for one row (goushi.generation.solo), built on request and kept only where it measures faster.

A small model's decode step on a CPU is some 45 small operations, and their dispatch, not their arithmetic, is most
of its time. torch.compile fuses them into a few C++ kernels, but only over fixed shapes: so this step attends over
the whole context-length KV cache (a KVCache sized to the context, as Solo allocates it here) with a mask that hides
the positions not written yet, writes the new key and value with index_copy_ at a position given as a tensor, and
gathers positional tables the same way, so one graph serves every position. Inductor's C++ wrapper
(`cpp_wrapper`) and freezing (weights as constants) cut the Python left around the kernels.

Measured on a 2-core Xeon, one thread (bench/generate_throughput.py --compile-decode): see docs/serving.md. Compiling
takes 15-35 s the first time on a machine (inductor caches it on disk after), so it is opt-in (`goushi sample
--compile-decode`, `goushi chat --compile-decode`, Engine(compile_decode=True)), and after compiling it races the
eager step on a scratch cache: the slower one is dropped (CompiledStep.build says which).

Its logits equal the eager step's to float noise (summation order differs), so a seeded text is the same except at
float near-ties, as between thread counts.
"""

from __future__ import annotations

import itertools
import logging
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from goushi.model import GPT, KVCache, _apply_norm, _lin2, norm, one_token_qkv

log = logging.getLogger("goushi.generation")

# Inductor settings of the compiled step, tried in this order: the C++ wrapper calls the kernels without Python
# between them, and freezing folds the weights in as constants (plain torch.compile measured 1.0x on a tiny model:
# its Python wrapper cost what the fusion saved). Both together gave NaN logits under ATEN_CPU_CAPABILITY=avx2 on an
# AVX-512 Xeon, so every candidate is checked against the eager step before it is timed, and the next one tried.
OPTION_SETS = ({"cpp_wrapper": True, "freezing": True}, {"cpp_wrapper": True})
CHECK_STEPS = 12  # positions compared with the eager step's logits before a compiled step is trusted
RACE_STEPS = 16  # decode steps per timing in the race against eager
RACE_ROUNDS = 3


class CompiledStep:
    """step(token, cache, pos) -> logits (1, V), as GPT.decode_one, for a batch-1 KVCache of context_length
    positions."""

    def __init__(self, model: GPT, options: dict | None = None):
        if not supported(model):
            raise ValueError("a compiled decode step needs a plain GPT whose layers are arranged for inference "
                             "(no LoRA adapters, no int8 layers)")
        self.model = model
        self.context = int(model.config.context_length)
        self.options = dict(OPTION_SETS[0] if options is None else options)
        self._fn = torch.compile(_own_code(_step_fn(model)), dynamic=False, fullgraph=True, options=self.options)

    def __call__(self, token: int, cache: KVCache, pos: int) -> torch.Tensor:
        if cache.max_len != self.context:
            raise ValueError(f"the compiled step needs a cache of {self.context} positions, not {cache.max_len}")
        if not 0 <= pos < self.context:
            raise ValueError(f"position {pos} is outside the context of {self.context}")
        dev = cache.kv[0].device
        logits = self._fn(torch.tensor([token], device=dev), torch.tensor([pos], device=dev), cache.kv)
        cache.length = pos + 1
        return logits

    @classmethod
    def build(cls, model: GPT) -> tuple[CompiledStep | None, str]:
        """Compile (each of OPTION_SETS in turn until one gives the eager step's logits), then time it against
        GPT.decode_one on a scratch cache (interleaved, best of RACE_ROUNDS): the compiled step if it is faster
        here, else None; and a line saying which and why. None also when the model is not one it can run or no
        candidate compiles to the same logits (torch.compile needs a C++ compiler on a CPU)."""
        if not supported(model):
            return None, "compiled decode: not used (LoRA adapters or int8 layers: not this model)"
        step, why = None, ""
        with torch.inference_mode():
            for options in OPTION_SETS:
                try:
                    candidate = cls(model, options)
                    why = candidate._check()
                except Exception as e:  # noqa: BLE001 - a failed compile means: the next candidate, or eager
                    why = f"compiling failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if not why:
                    step = candidate
                    break
                log.warning("compiled decode step with %s not used: %s", options, why)
            if step is None:
                return None, f"compiled decode: not used ({why})"
            best = {"eager": float("inf"), "compiled": float("inf")}
            for _ in range(RACE_ROUNDS):
                best["eager"] = min(best["eager"], step._time(model.decode_one, RACE_STEPS))
                best["compiled"] = min(best["compiled"], step._time(step, RACE_STEPS))
        ratio = best["eager"] / best["compiled"]
        step.speedup = ratio
        if ratio > 1:
            return step, f"compiled decode: on ({ratio:.2f}x the eager step's speed here)"
        return None, f"compiled decode: not used (it ran {ratio:.2f}x the eager step's speed here)"

    def _check(self) -> str:
        """'' if this step's logits match the eager step's over the first CHECK_STEPS positions (this also
        compiles it), else what differed."""
        cfg, p = self.model.config, self.model.wte.weight
        eager, mine = (KVCache(cfg, 1, self.context, p.device, p.dtype) for _ in range(2))
        tol = 1e-3 if p.dtype == torch.float32 else 3e-2
        for pos in range(min(CHECK_STEPS, self.context)):
            token = (pos * 7919 + 11) % cfg.vocab_size
            want, got = self.model.decode_one(token, eager, pos), self(token, mine, pos)
            if not torch.isfinite(got).all():
                return f"its logits were not finite at position {pos}"
            diff = (got.float() - want.float()).abs().max().item()
            if diff > tol * max(1.0, want.float().abs().max().item()):
                return f"its logits differed from the eager step's by {diff:.3g} at position {pos}"
        return ""

    def _time(self, fn, steps: int) -> float:
        p = self.model.wte.weight
        cache = KVCache(self.model.config, 1, self.context, p.device, p.dtype)
        # positions spread over the context: the eager step's attention grows with the position, this one's not
        positions = range(0, self.context, max(1, self.context // steps))
        t = time.perf_counter()
        for pos in positions:
            fn(7 % self.model.config.vocab_size, cache, pos)
        return time.perf_counter() - t


def supported(model) -> bool:
    if type(model) is not GPT or type(model.wte) is not nn.Embedding or model.training:
        return False
    with torch.inference_mode():
        fast = model._inference_weights()
    if fast is None or model._inference[1] is not None:  # blocks kept as modules, or an int8 head
        return False
    return all(type(lin) is tuple for w in fast for lin in (w.qkv, w.o, w.up, w.down, w.gate) if lin is not None)


def _own_code(fn):
    """fn with a code object of its own. Dynamo keeps its compiled graphs per code object, and every step function
    shares one: the ninth model compiled in a process (a page switching models, a test suite) would hit its
    recompile limit and fail."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_COUNTER)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_COUNTER = itertools.count()


def _step_fn(model: GPT):
    """The step as a function of (token (1,), pos (1,), the cache's per-layer tensors): fixed shapes throughout."""
    cfg = model.config
    T = int(cfg.context_length)
    with torch.inference_mode():
        fast = model._inference_weights()
    wte, head = model.wte.weight, model.lm_head.weight
    positions = torch.arange(T, device=wte.device)
    blocks = list(zip(model.blocks, fast, strict=True))

    def step(token: torch.Tensor, pos: torch.Tensor, kvs: list[torch.Tensor]) -> torch.Tensor:
        x = F.embedding(token, wte)
        rope = None
        if cfg.pos_encoding == "learned":
            x = x + F.embedding(pos, model.wpe.weight)
        elif cfg.pos_encoding == "sinusoidal":
            x = x + model.pos_table.index_select(0, pos).to(x.dtype)
        else:
            rope = (model.rope_cos.index_select(0, pos)[None, None], model.rope_sin.index_select(0, pos)[None, None])
        visible = (positions <= pos).view(1, 1, 1, T)
        for (block, w), kv in zip(blocks, kvs, strict=True):
            attn = block.attn
            H, KV, D = attn.n_head, attn.n_kv, attn.head_dim
            h = _apply_norm(w.ln_1, x)
            q, k, v = one_token_qkv(attn, _lin2(w.qkv, h), rope)
            kv.index_copy_(3, pos, torch.stack((k, v)).to(kv.dtype))
            keys, values = kv[0], kv[1]
            if KV != H:
                keys, values = keys.repeat_interleave(H // KV, dim=1), values.repeat_interleave(H // KV, dim=1)
            dt = attn.attn_dtype
            if dt is not None and q.dtype != dt:
                y = F.scaled_dot_product_attention(q.to(dt), keys.to(dt), values.to(dt), attn_mask=visible).to(x.dtype)
            else:
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
            x = _lin2(w.o, y.reshape(1, H * D)) + x
            h = _apply_norm(w.ln_2, x)
            gate = _lin2(w.gate, h) if w.gate is not None else None
            x = _lin2(w.down, block.mlp.activate(_lin2(w.up, h), gate)) + x
        return F.linear(norm(model.ln_f, x), head)

    return step


__all__ = ["CompiledStep", "supported", "OPTION_SETS"]
