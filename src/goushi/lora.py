"""LoRA: train a small low-rank update beside each frozen projection instead of the whole matrix.

    y = x W^T + b  +  (alpha / r) * x A^T B^T        A: (r, in), B: (out, r), B starts at zero

so a model with adapters starts out exactly equal to the model without them. Only A and B train;
everything else is frozen. `plain_state_dict` folds B A into W, so every saved run is a plain model
that any consumer loads without knowing LoRA was used; `adapter_state` keeps A and B apart for the
trainer's exact resume (the frozen W comes from the base run). `adapters_off` runs the model as the base
alone, which is DPO's reference model with LoRA (no second copy of the weights in memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from goushi.errors import GoushiError

# The attention and MLP projections of goushi.model (gate_proj exists with swiglu only).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.enabled = True  # False: the frozen projection alone (adapters_off)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_B @ self.lora_A) * self.scale


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> int:
    """Freeze every parameter and put an adapter beside each target projection; returns how many were wrapped."""
    if rank < 1:
        raise GoushiError(f"--lora-rank {rank}: must be at least 1")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                if rank > min(child.in_features, child.out_features):
                    raise GoushiError(f"--lora-rank {rank}: larger than the {name} matrix "
                                      f"({child.out_features} x {child.in_features}); choose a smaller rank")
                setattr(module, name, LoRALinear(child, rank, alpha))
                wrapped += 1
    if not wrapped:
        raise GoushiError(f"no projection named {', '.join(targets)} found for LoRA adapters")
    return wrapped


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes what its frozen base weights alone compute (every adapter skipped)."""
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in wrapped:
        m.enabled = False
    try:
        yield
    finally:
        for m in wrapped:
            m.enabled = True


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with every adapter folded into its projection, under the plain model's names."""
    sd = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            prefix = f"{name}." if name else ""
            for k in ("lora_A", "lora_B", "base.weight", "base.bias"):
                sd.pop(prefix + k, None)
            sd[prefix + "weight"] = m.merged_weight().detach()
            if m.base.bias is not None:
                sd[prefix + "bias"] = m.base.bias.detach()
    return sd


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone (A and B of each wrapped projection), for the trainer state."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = adapter_state(model)
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise GoushiError(f"LoRA adapters do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                          "resume with the same --lora-rank and base run")
    model.load_state_dict(state, strict=False)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["TARGETS", "LoRALinear", "apply_lora", "has_lora", "adapters_off", "plain_state_dict", "adapter_state",
           "load_adapter_state", "trainable_parameters"]
