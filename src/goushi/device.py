"""Pick the device and precision a run should use, automatically unless told."""

from __future__ import annotations

import torch

from goushi.errors import GoushiError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    """`auto` (or None) prefers cuda, then mps, then cpu."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GoushiError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GoushiError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GoushiError(f"--device {name}: MPS is not available on this machine; use --device auto or cpu")
    return dev


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """Compute precision: bf16 where the hardware supports it, fp16 on older GPUs, fp32 on CPU."""
    if name not in (None, "", "auto"):
        if name not in DTYPES:
            raise GoushiError(f"--dtype {name!r} is not one of auto, float32, bfloat16, float16")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
