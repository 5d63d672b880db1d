"""Optimisers, their step (gradient clipping, the fp16 loss scaler) and learning-rate schedules.

The model says which parameter is which (GPT.param_groups, checked to hold each trainable one exactly once).
AdamW: weight decay only on the hidden matrices of the blocks; norms, biases and embeddings keep theirs
(decaying an embedding pulls rare tokens to zero; decaying a norm gain fights the norm).
Muon (torch.optim.Muon's algorithm, torch >= 2.9): orthogonalised momentum for the hidden matrices; embeddings,
the LM head, norms and biases stay on AdamW, as Muon's authors recommend. Its Newton-Schulz iteration runs in the
training's own low precision: torch's Muon always runs it in bfloat16, which a CPU without native bf16 (AVX2 only)
computes many times slower than fp32 (see `Muon`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from goushi.errors import GoushiError
from goushi.model import GPT


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    # Fused AdamW (one kernel for all parameters) exists for CUDA, MPS and CPU in recent torch; fall
    # back to the foreach implementation where this build lacks it.
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type in ("cuda", "cpu", "mps"))
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in `ns_dtype`: the same state, settings and update, but
    torch's runs the iteration in bfloat16 whatever the machine. On a CPU without native bf16 a bf16 matmul is
    emulated (~26x slower than fp32 on a Zen 3), so the trainer passes fp32 there, and bf16 where its own matmuls
    run in bf16 (measured faster: goushi.precision). With ns_dtype=bfloat16 the updates equal torch's bit for bit."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.ndim != 2 or torch.is_complex(p):
                    raise ValueError(f"Muon updates real 2-D matrices only, not a {tuple(p.shape)} {p.dtype} one")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-_muon_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """An approximate orthogonalisation of g (U S' V^T with S' near 1), by the quintic iteration of torch's Muon
    (Keller Jordan's), in `dtype`."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _muon_lr(lr: float, adjust: str | None, shape: torch.Size) -> float:
    """torch's Muon learning-rate adjustment for a matrix of `shape`."""
    rows, cols = shape[:2]
    if adjust is None or adjust == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def muon_ns_dtype(train_dtype: torch.dtype) -> torch.dtype:
    """Muon's Newton-Schulz precision for a run training in `train_dtype`: bf16 only where the run's matmuls are
    bf16 (the machine does them fast), else fp32 (fp16's range is too narrow for the iteration)."""
    return torch.bfloat16 if train_dtype == torch.bfloat16 else torch.float32


def build_optimizers(model: GPT, *, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                     muon_momentum: float = 0.95, device: torch.device | None = None,
                     ns_dtype: torch.dtype = torch.bfloat16, embed_lr_mult: float = 1.0) -> list[torch.optim.Optimizer]:
    """One optimiser (AdamW) or two (Muon + AdamW). Each param group carries `base_lr` for the schedule.
    `ns_dtype`: Muon's Newton-Schulz precision (muon_ns_dtype of the training dtype). `embed_lr_mult`: the token
    (and position) tables and an untied head learn at lr x this."""
    device = device or next(model.parameters()).device
    g = model.param_groups()
    hidden = [p for _, p in g["hidden"]]
    embed = [p for _, p in g["embed"]]
    other = [p for _, p in g["other"]]
    # One group unless the tables learn at their own rate: an earlier run's optimiser state has that layout.
    rest_nodecay = [dict(params=embed + other, weight_decay=0.0)] if embed_lr_mult == 1.0 else [
        grp for grp in (dict(params=embed, weight_decay=0.0, lr_mult=embed_lr_mult),
                        dict(params=other, weight_decay=0.0)) if grp["params"]]
    if name == "adamw":
        opt = _adamw([dict(params=hidden, weight_decay=weight_decay), *rest_nodecay], lr, betas, device)
        opts: list[torch.optim.Optimizer] = [opt]
    elif name == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise GoushiError(f"--optimizer muon needs torch >= 2.9 (this is {torch.__version__}); use --optimizer adamw")
        # match_rms_adamw scales each update to AdamW's typical RMS (Moonshot's recipe), so the same
        # --lr suits both optimisers and the same schedule drives them.
        muon = Muon([dict(params=hidden)], lr=lr, weight_decay=weight_decay, momentum=muon_momentum,
                    nesterov=True, adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype)
        opts = [muon, _adamw(rest_nodecay, lr, betas, device)]
    else:
        raise GoushiError(f"--optimizer {name!r} is not one of adamw, muon")
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = lr * group.get("lr_mult", 1.0)
    return opts


def grad_scaler(dtype: torch.dtype, device: torch.device, *, fsdp: bool, asked: str,
                log: Callable[[str], None]) -> tuple[torch.amp.GradScaler | None, torch.dtype]:
    """(loss scaler, the dtype to train in): fp16 gradients underflow without loss scaling (the NaNs older-GPU
    users hit), so float16 gets a scaler, or float32 with a note where this device has none; others need none."""
    if dtype != torch.float16:
        return None, dtype
    if fsdp:
        raise GoushiError(f"--fsdp does not support float16 (its gradient scaler is not FSDP-aware) and float16 is "
                          f"what --dtype {asked} gives on {device}; use --dtype bfloat16 or --dtype float32, "
                          f"or drop --fsdp")
    try:
        return torch.amp.GradScaler(device.type), dtype
    except (RuntimeError, ValueError) as e:
        log(f"note: no gradient scaler for fp16 on {device.type} ({e}); training in float32")
        return None, torch.float32


def optimizer_step(opts: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler | None,
                   parameters: Iterable[torch.nn.Parameter], clip: float) -> None:
    """Clip the gradient norm (when clip > 0; unscaled first under a loss scaler), step every optimiser, and
    clear the gradients for the next step."""
    if clip > 0:
        if scaler:
            for o in opts:
                scaler.unscale_(o)
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    for o in opts:
        if scaler:
            scaler.step(o)
        else:
            o.step()
    if scaler:
        scaler.update()
    for o in opts:
        o.zero_grad(set_to_none=True)


def set_lr(opts: list[torch.optim.Optimizer], multiplier: float) -> float:
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * multiplier
    return opts[0].param_groups[0]["lr"]


def lr_multiplier(step: int, *, total: int | None, warmup: int, schedule: str, min_ratio: float,
                  decay_frac: float = 0.2) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based).

    Linear warmup starts at 1/(warmup+1), never 0, so step 0 already learns. Then `cosine` decays to
    `min_ratio` by the last step; `wsd` (warmup-stable-decay) holds the peak and decays linearly over
    the final `decay_frac` of the run. With `total` unknown (time budget not planned yet) it stays at
    the warmup/peak value.
    """
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if not total or step >= total:
        return 1.0 if not total else min_ratio
    if schedule == "cosine":
        span = max(1, total - 1 - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_frac * (total - warmup)))
        start = total - decay_steps
        if step < start:
            return 1.0
        progress = (step - start + 1) / decay_steps
        return 1.0 - (1 - min_ratio) * progress
    raise GoushiError(f"schedule {schedule!r} is not one of cosine, wsd")


__all__ = ["build_optimizers", "grad_scaler", "optimizer_step", "set_lr", "lr_multiplier"]
