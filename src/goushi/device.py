"""Pick the device and precision a run should use, automatically unless told; measure what the machine can do."""

from __future__ import annotations

import os
import platform
import time

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


# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs, from their data sheets; others are measured.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12, "L40": 181e12, "L4": 121e12,
             "A10": 125e12, "V100": 125e12, "T4": 65e12, "4090": 165e12, "3090": 71e12, "A6000": 155e12}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                        seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on this device: the ceiling an MFU figure is measured against."""
    g = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the training RNG
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    best, reps, t_end = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or reps < 3:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))  # best of several: the machine is noisy
        reps += 1
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from): a data sheet for known GPUs, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAKS.items():
            if key in name and dtype in (torch.bfloat16, torch.float16):
                return peak, f"{name} data sheet"
        return measure_matmul_peak(device, dtype, n=4096), f"measured {name} matmul"
    return measure_matmul_peak(device, dtype if device.type != "cpu" else torch.float32), f"measured {device.type} matmul"


def describe_hardware(device: torch.device | str | None = None) -> str:
    """E.g. "2 CPU cores (x86_64), torch 2.13.0" or "1× NVIDIA A100 ..., 32 CPU cores (x86_64), torch ..."."""
    parts = []
    kind = str(device or "")
    if kind.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}")
    elif kind.startswith("mps"):
        parts.append("Apple GPU (MPS)")
    parts.append(f"{os.cpu_count()} CPU cores ({platform.machine() or 'unknown'})")
    return f"{', '.join(parts)}, torch {torch.__version__.split('+')[0]}"
