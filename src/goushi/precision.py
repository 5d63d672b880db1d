"""Precision, threads and torch.compile chosen by what this machine measurably does, never assumed.

The same bf16 matmul is ~8x faster than fp32 on a Xeon with AMX and was 26x slower on a Zen 3 without native
bf16; the same CPU's bf16 attention backward can be 5x slower than its fp32 one while its bf16 matmuls win.
So: CPU flags are the first filter (no native bf16: fp32, nothing to measure); otherwise a short probe times
fp32 against bf16 at the model's own shapes (the matmuls: an MLP and the LM head with its loss, forward and
backward; attention apart), interleaved, best of several, and the decision is cached in
~/.cache/goushi/speed.json keyed by CPU model, torch version, thread count and shape.

Threads are timed at every start-up instead (all cores against fewer, median of several): on a shared machine
threads that wait for each other at every op can be several times slower than one thread, and that depends on
the load of the moment, not on the machine.

torch.compile: on for CUDA; on a CPU only where a measurement on this machine (`bench/train_throughput.py
--compile` records one) says the run is long enough to win back its compile time.

Environment: GOUSHI_PROBE=0 turns probing off (CPU: fp32 and torch's threads, deterministic: the tests use it);
GOUSHI_REPROBE=1 measures again ignoring the cache; GOUSHI_CACHE_DIR moves the cache; OMP_NUM_THREADS or
GOUSHI_THREADS fix the thread count; GOUSHI_CPU_FLAGS replaces the CPU flags /proc/cpuinfo gives.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from goushi.config import ModelConfig
from goushi.device import DTYPES, measure_matmul_peak, pick_dtype
from goushi.device import peak_flops as _sheet_or_measure
from goushi.fsutil import atomic_write_json
from goushi.model import int8_linear, lm_head_loss

CACHE_VERSION = 2
# bf16 must beat fp32 by this much to be chosen: below it the precision it costs buys too little.
BF16_MARGIN = 1.15
# Fewer threads must beat all cores by this much (median): a small difference is noise.
THREADS_MARGIN = 1.1
# At most this many rows in the training probe: fewer understate bf16's gain (1.1-1.4x at 1,024 rows against
# 1.7-2.0x at 2,048 and 4,096 for the tiny preset on a Xeon with AMX, whose whole steps gain 1.5x); the probe
# takes ~0.4 s for tiny, ~1 s for small, once per machine and shape. The thread race, run at every start, uses
# THREAD_ROWS: it only has to show whether threads wait for each other.
PROBE_ROWS = 2048
THREAD_ROWS = 512


# ---- the CPU ---------------------------------------------------------------------------------------------
# Every decision below reads the CPU through cpu_model() and cpu_flags(), so tests replace those two to run the
# "has bf16" and "has no bf16" paths on any machine. GOUSHI_CPU_FLAGS (space-separated) replaces what
# /proc/cpuinfo says: for a VM that advertises instructions its sandbox does not allow (AMX, seen here), or to
# try the decisions another CPU would get.
FLAGS_ENV = "GOUSHI_CPU_FLAGS"


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine() or "unknown CPU"


def _flags_override() -> str | None:
    v = os.environ.get(FLAGS_ENV)
    return v.strip().lower() if v is not None else None


def cpu_flags() -> set[str]:
    override = _flags_override()
    if override is not None:
        return set(override.split())
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


# The flags that decide bf16 and matmul speed; the start-up line and the benches print these.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8", "bf16",
               "asimd", "sve")


def native_bf16(flags: set[str] | None = None) -> bool | None:
    """True when the CPU computes bf16 natively (x86 AVX512_BF16 or AMX, Arm BF16), False when it would be
    emulated, None when /proc/cpuinfo says nothing (then only the probe decides)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def describe_cpu() -> str:
    """E.g. "Intel(R) Xeon(R) Processor, 2 cores, torch AVX512; avx2 fma avx512f avx512_bf16 amx_bf16 ..."."""
    flags = sorted(cpu_flags() & set(SPEED_FLAGS), key=SPEED_FLAGS.index)
    cap = torch.backends.cpu.get_cpu_capability()
    given = f" (from {FLAGS_ENV})" if _flags_override() is not None else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {cap}; " + (" ".join(flags) or "flags unknown") + given


# ---- the cache -------------------------------------------------------------------------------------------
def probing() -> bool:
    return os.environ.get("GOUSHI_PROBE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    if os.environ.get("GOUSHI_CACHE_DIR"):
        return Path(os.environ["GOUSHI_CACHE_DIR"]) / "speed.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "goushi" / "speed.json"


def _machine_key() -> str:
    # Figures measured under GOUSHI_CPU_FLAGS are kept apart: they answer for the flags given, not the machine.
    override = _flags_override()
    flags = f"|flags {' '.join(sorted(override.split()))}" if override is not None else ""
    return f"{cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}{flags}"


def cache_get(kind: str, key: str) -> dict[str, Any] | None:
    if os.environ.get("GOUSHI_REPROBE", "").strip() not in ("", "0"):
        return None
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return None
    entry = data.get("entries", {}).get(f"{kind}|{_machine_key()}|{key}")
    return entry if isinstance(entry, dict) else None


def cache_put(kind: str, key: str, entry: dict[str, Any]) -> None:
    """Best effort: a read-only home only means measuring again next time."""
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise ValueError
    except (OSError, ValueError):
        data = {"version": CACHE_VERSION, "entries": {}}
    data.setdefault("entries", {})[f"{kind}|{_machine_key()}|{key}"] = {**entry, "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    except OSError:
        pass


# ---- timing ----------------------------------------------------------------------------------------------
def race(candidates: dict[str, Callable[[], Any]], reps: int = 3, drop_after: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each candidate, interleaved (A, B, A, B, ...) so a burst of load from other
    processes hits them alike; one warm-up call each first. `drop_after` > 0: a candidate whose first timed call
    is that many times slower than the fastest one's is not called again (it cannot win; under load a bad
    thread count can cost 100x)."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    live = dict(candidates)
    for r in range(reps):
        for k, fn in live.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if r == 0 and drop_after:
            fastest = min(v[0] for v in times.values())
            live = {k: fn for k, fn in live.items() if times[k][0] <= drop_after * fastest}
    return times


def _with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        torch.set_num_threads(n)
        return fn()
    return run


def _autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)


def _train_workloads(cfg: ModelConfig, rows: int) -> dict[str, Callable[[torch.dtype], Callable[[], None]]]:
    """One MLP and the LM head with its loss (the matmuls), and causal attention, forward and backward, at the
    model's shapes over `rows` positions."""
    g = torch.Generator().manual_seed(0)
    d, h, V, H, D = cfg.n_embd, cfg.hidden, cfg.vocab_size, cfg.n_head, cfg.head_dim
    T = max(1, min(cfg.context_length, rows))
    b = max(1, rows // T)
    N = b * T
    x = torch.randn(N, d, generator=g).requires_grad_()
    w1 = (torch.randn(h, d, generator=g) * 0.02).requires_grad_()
    w2 = (torch.randn(d, h, generator=g) * 0.02).requires_grad_()
    wv = (torch.randn(V, d, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    gy = torch.randn(N, d, generator=g)
    qkv = [torch.randn(b, H, T, D, generator=g).requires_grad_() for _ in range(3)]
    ga = torch.randn(b, H, T, D, generator=g)

    def matmuls(dtype: torch.dtype) -> Callable[[], None]:
        def run():
            with _autocast(dtype):
                y = F.linear(F.gelu(F.linear(x, w1)), w2)
                loss = lm_head_loss(x, wv, targets)
            torch.autograd.backward([y, loss], [gy.to(y.dtype), None])
        return run

    def attention(dtype: torch.dtype, inputs: torch.dtype = torch.bfloat16) -> Callable[[], None]:
        """Attention in `dtype` on q, k, v that the projections made in `inputs`, the casts both ways
        included (what goushi.model.Attention does with attn_dtype under autocast)."""
        def run():
            q, k, v = (t.to(inputs) for t in qkv)
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True).to(inputs)
            y.backward(ga.to(inputs))
        return run

    return {"matmuls": matmuls, "attention": attention}


def _decode_workload(cfg: ModelConfig, dtype: torch.dtype) -> Callable[[], None]:
    """The matmuls of one decode step at batch 1: every layer's q/k/v, output and MLP projections, the LM head
    (weight-bound at this size, so the whole model's weights are allocated)."""
    g = torch.Generator().manual_seed(0)
    d, h, V = cfg.n_embd, cfg.hidden, cfg.vocab_size
    kv = cfg.kv_heads * cfg.head_dim

    def w(o: int, i: int) -> torch.Tensor:
        return (torch.randn(o, i, generator=g) * 0.02).to(dtype)

    layers = [(w(d + 2 * kv, d), w(d, d), w(h, d), w(d, h)) for _ in range(cfg.n_layer)]
    head = w(V, d)
    x = torch.randn(1, d, generator=g).to(dtype)
    xh = torch.randn(1, h, generator=g).to(dtype)

    def run():
        with torch.inference_mode():
            for qkv, o, up, down in layers:
                F.linear(x, qkv)
                F.linear(x, o)
                F.linear(x, up)
                F.linear(xh, down)
            F.linear(x, head)
    return run


# ---- decisions -------------------------------------------------------------------------------------------
def _name(dtype: torch.dtype | None) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@dataclass
class Plan:
    """What a run uses: `dtype` for compute (autocast while training, the weights' dtype for inference),
    `attn_dtype` for attention when it differs (None: the same), `threads`, and why, in two lines."""

    device: torch.device
    dtype: torch.dtype
    attn_dtype: torch.dtype | None = None
    threads: int = 0  # 0: leave torch's setting alone
    precision_note: str = ""
    threads_note: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"precision: {self.describe_dtype()} ({self.precision_note})"]
        if self.threads_note:
            out.append(f"threads: {torch.get_num_threads() if not self.threads else self.threads} of "
                       f"{os.cpu_count()} ({self.threads_note})")
        return out

    def describe_dtype(self) -> str:
        s = _name(self.dtype)
        if self.attn_dtype is not None and self.attn_dtype != self.dtype:
            s += f", attention {_name(self.attn_dtype)}"
        return s

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def apply_to(self, model: torch.nn.Module) -> None:
        """Attention layers run in `attn_dtype` (goushi.model.Attention.attn_dtype)."""
        for m in model.modules():
            if hasattr(m, "attn_dtype"):
                m.attn_dtype = self.attn_dtype if self.attn_dtype != self.dtype else None


def _thread_candidates() -> list[int]:
    n = os.cpu_count() or 1
    return sorted({n, max(1, n // 2), 1}, reverse=True)


def _fixed_threads() -> int:
    for var in ("GOUSHI_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 0


def choose_threads(make: Callable[[], Callable[[], Any]], reps: int = 5) -> tuple[int, str, dict[str, Any]]:
    """(threads, why, medians): the thread count whose median time over `reps` interleaved calls of the
    workload is lowest, all cores unless fewer win by THREADS_MARGIN."""
    fixed = _fixed_threads()
    if fixed:
        return fixed, "set by GOUSHI_THREADS or OMP_NUM_THREADS", {}
    cands = _thread_candidates()
    if len(cands) == 1:
        return cands[0], "one core", {}
    before = torch.get_num_threads()
    fn = make()
    try:
        times = race({str(n): _with_threads(n, fn) for n in cands}, reps, drop_after=4.0)
    finally:
        torch.set_num_threads(before)
    med = {int(k): statistics.median(v) for k, v in times.items()}
    best = min(med, key=med.get)
    n_all = cands[0]
    if best != n_all and med[n_all] / med[best] < THREADS_MARGIN:
        best = n_all
    ratio = med[n_all] / med[best]
    why = (f"probe: {best} thread{'s' if best > 1 else ''} {ratio:.1f}x faster than {n_all} (median); other work "
           f"is using the cores" if best != n_all else "probe: fewer threads were not faster (median)")
    return best, why, {"median_s": {str(k): v for k, v in med.items()}}


def train_plan(cfg: ModelConfig, batch: int, device: torch.device, dtype_name: str | None = None) -> Plan:
    """Precision and threads for training `cfg` at `batch` sequences per step on `device`."""
    requested = dtype_name not in (None, "", "auto")
    if device.type != "cpu":
        return Plan(device, pick_dtype(device, dtype_name), precision_note="--dtype" if requested else
                    f"{device.type} default")
    if not probing():
        dtype = pick_dtype(device, dtype_name) if requested else torch.float32
        return Plan(device, dtype, precision_note="--dtype" if requested else "GOUSHI_PROBE=0: fp32 without measuring")
    rows = max(1, min(batch * cfg.context_length, PROBE_ROWS))
    small = min(rows, THREAD_ROWS)
    threads, threads_note, tt = choose_threads(lambda: _train_workloads(cfg, small)["matmuls"](torch.float32), 3)
    if requested:
        plan = Plan(device, pick_dtype(device, dtype_name), precision_note="--dtype")
    else:
        plan = _at_threads(threads, lambda: _probe_train_dtype(cfg, rows))
    plan.threads, plan.threads_note = threads, threads_note
    plan.timings["threads"] = tt
    return plan


def _at_threads(n: int, fn: Callable[[], Plan]) -> Plan:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _probe_train_dtype(cfg: ModelConfig, rows: int) -> Plan:
    cpu = torch.device("cpu")
    native = native_bf16()
    if native is False:
        return Plan(cpu, torch.float32, precision_note="this CPU has no native bf16 (no avx512_bf16, amx_bf16 or "
                    "bf16 flag): it would be emulated")
    key = (f"d{cfg.n_embd} h{cfg.hidden} V{cfg.vocab_size} H{cfg.n_head} T{cfg.context_length} rows{rows} "
           f"threads{torch.get_num_threads()}")
    entry = cache_get("train", key)
    cached = entry is not None
    if entry is None:
        t0 = time.perf_counter()
        work = _train_workloads(cfg, rows)
        entry = {}
        for part, make in work.items():
            times = race({"fp32": make(torch.float32), "bf16": make(torch.bfloat16)}, reps=3)
            entry[part] = {k: min(v) for k, v in times.items()}
            if part == "matmuls" and entry[part]["fp32"] / entry[part]["bf16"] < BF16_MARGIN:
                break  # fp32 matmuls: attention stays fp32, nothing to decide
        entry["probe_s"] = round(time.perf_counter() - t0, 3)
        cache_put("train", key, entry)
    mm = entry["matmuls"]["fp32"] / entry["matmuls"]["bf16"]
    dtype = torch.bfloat16 if mm >= BF16_MARGIN else torch.float32
    attn, at_note = None, ""
    if dtype == torch.bfloat16:
        at = entry["attention"]["fp32"] / entry["attention"]["bf16"]
        attn = torch.bfloat16 if at >= 1.0 else torch.float32
        at_note = f", attention bf16 {at:.1f}x fp32 (casts included)"
    note = f"probe on {cpu_model()}: matmuls bf16 {mm:.1f}x fp32{at_note}{'; cached' if cached else ''}"
    return Plan(cpu, dtype, attn, precision_note=note, timings={"train": entry})


def inference_plan(cfg: ModelConfig, device: torch.device, dtype_name: str | None = None,
                   threads: bool = True) -> Plan:
    """Weight dtype and threads for generating with `cfg` on `device`: the decode step at batch 1 decides
    (it is what a user waits for). `threads=False` leaves the thread count to the caller (a server)."""
    requested = dtype_name not in (None, "", "auto")
    if device.type != "cpu":
        return Plan(device, pick_dtype(device, dtype_name), precision_note="--dtype" if requested else
                    f"{device.type} default")
    if not probing():
        dtype = pick_dtype(device, dtype_name) if requested else torch.float32
        return Plan(device, dtype, precision_note="--dtype" if requested else "GOUSHI_PROBE=0: fp32 without measuring")
    n, threads_note, tt = 0, "", {}
    if threads:
        n, threads_note, tt = choose_threads(lambda: _decode_workload(cfg, torch.float32), 5)
    if requested:
        plan = Plan(device, pick_dtype(device, dtype_name), precision_note="--dtype")
    else:
        plan = _at_threads(n or torch.get_num_threads(), lambda: _probe_decode_dtype(cfg))
    plan.threads, plan.threads_note = n, threads_note
    plan.timings["threads"] = tt
    return plan


def _probe_decode_dtype(cfg: ModelConfig) -> Plan:
    cpu = torch.device("cpu")
    if native_bf16() is False:
        return Plan(cpu, torch.float32, precision_note="this CPU has no native bf16: it would be emulated")
    key = (f"d{cfg.n_embd} h{cfg.hidden} V{cfg.vocab_size} L{cfg.n_layer} kv{cfg.kv_heads * cfg.head_dim} "
           f"threads{torch.get_num_threads()}")
    entry = cache_get("decode", key)
    cached = entry is not None
    if entry is None:
        times = race({"fp32": _decode_workload(cfg, torch.float32), "bf16": _decode_workload(cfg, torch.bfloat16)},
                     reps=5)
        entry = {k: min(v) for k, v in times.items()}
        cache_put("decode", key, entry)
    ratio = entry["fp32"] / entry["bf16"]
    dtype = torch.bfloat16 if ratio >= BF16_MARGIN else torch.float32
    return Plan(cpu, dtype, precision_note=f"probe on {cpu_model()}: a batch-1 decode step's matmuls bf16 "
                f"{ratio:.2f}x fp32{'; cached' if cached else ''}", timings={"decode": entry})


# ---- int8 layers for CPU inference ----------------------------------------------------------------------
def int8_shapes(cfg: ModelConfig) -> tuple[set[tuple[int, int]], str]:
    """The (in_features, out_features) of the model's linears that run faster as torch.ao dynamic int8 layers
    than as fp32 matmuls in a batch-1 decode step on this machine (each shape timed with as many copies as the
    model has, so the weights come from memory as they do when decoding), and a note with the figures.
    Cached like the precision probe."""
    d, h, V = cfg.n_embd, cfg.hidden, cfg.vocab_size
    kv = cfg.kv_heads * cfg.head_dim
    counts: dict[tuple[int, int], int] = {}
    for shape in [(d, d + 2 * kv), (d, d), (d, h), (h, d)] + ([(d, h)] if cfg.mlp == "swiglu" else []):
        counts[shape] = counts.get(shape, 0) + cfg.n_layer
    counts[(d, V)] = counts.get((d, V), 0) + 1
    key = " ".join(f"{i}x{o}x{n}" for (i, o), n in sorted(counts.items())) + f" threads{torch.get_num_threads()}"
    entry = cache_get("int8", key)
    cached = entry is not None
    if entry is None:
        entry = {}
        g = torch.Generator().manual_seed(0)
        for (i, o), n in counts.items():
            ws = [(torch.randn(o, i, generator=g) * 0.02, torch.zeros(o)) for _ in range(n)]
            fp32 = [(w.t().contiguous(), b) for w, b in ws]
            q8 = [int8_linear(w, b) for w, b in ws]
            x = torch.randn(1, i, generator=g)

            def run_fp32(fp32=fp32, x=x):
                with torch.inference_mode():
                    for w, b in fp32:
                        torch.addmm(b, x, w)

            def run_int8(q8=q8, x=x):
                with torch.inference_mode():
                    for m in q8:
                        m(x)

            times = race({"fp32": run_fp32, "int8": run_int8}, reps=5)
            entry[f"{i}x{o}"] = {k: min(v) for k, v in times.items()}
        cache_put("int8", key, entry)
    shapes = {k: v for k, v in entry.items() if isinstance(v, dict)}
    chosen = {tuple(int(n) for n in k.split("x")) for k, v in shapes.items() if v["fp32"] / v["int8"] >= 1.1}
    note = ", ".join(f"{k} {v['fp32'] / v['int8']:.1f}x" for k, v in shapes.items())
    return chosen, f"int8 against fp32 per layer shape (in x out): {note}{'; cached' if cached else ''}"


# ---- MFU peak --------------------------------------------------------------------------------------------
def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, where it comes from) for MFU: a data sheet for known GPUs; on a CPU a square matmul in the
    compute dtype at the current thread count, best of several repeats, and the best ever seen on this machine
    is kept in the cache: a single start-up matmul on a busy machine would understate the peak (and so
    overstate MFU); over runs the cached figure approaches a quiet moment's."""
    if device.type != "cpu":
        return _sheet_or_measure(device, dtype)
    now = measure_matmul_peak(device, dtype, n=1024, seconds=0.15)
    if not probing():
        return now, f"measured {_name(dtype)} matmul now"
    key = f"{_name(dtype)} n1024 threads{torch.get_num_threads()}"
    entry = cache_get("peak", key) or {}
    best = max(now, float(entry.get("flops", 0.0)))
    if best > float(entry.get("flops", 0.0)):
        cache_put("peak", key, {"flops": best})
        return best, f"measured {_name(dtype)} matmul now (the best seen here)"
    return best, f"measured {_name(dtype)} matmul, best seen here ({entry.get('measured', '?')}; now {now / 1e9:,.0f})"


# ---- torch.compile ---------------------------------------------------------------------------------------
def compile_key(cfg: ModelConfig, batch: int, dtype: torch.dtype) -> str:
    # Not the vocabulary: the LM head is one matmul whatever its size, and every data directory has its own.
    return f"{cfg.family} d{cfg.n_embd} L{cfg.n_layer} H{cfg.n_head} T{cfg.context_length} B{batch} {_name(dtype)}"


def record_compile(cfg: ModelConfig, batch: int, dtype: torch.dtype, *, eager_s: float, compiled_s: float,
                   compile_s: float) -> None:
    """What a measurement found (seconds per step eager and compiled, seconds spent compiling)."""
    cache_put("compile", compile_key(cfg, batch, dtype),
              {"eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s})


def should_compile(setting: str, device: torch.device, cfg: ModelConfig, batch: int, dtype: torch.dtype, *,
                   budget_seconds: float | None, steps: int | None) -> tuple[bool, str]:
    """(compile?, why). `setting` on/off decide; auto: CUDA yes, elsewhere only when this machine's cached
    measurement says the run wins back the compile time with room to spare (twice over)."""
    if setting == "on":
        return True, "--compile"
    if setting == "off":
        return False, "--no-compile"
    if device.type == "cuda":
        return True, "auto: CUDA"
    entry = cache_get("compile", compile_key(cfg, batch, dtype))
    if entry is None:
        return False, ("auto: not measured on this machine for this shape and batch "
                       "(`python bench/train_throughput.py --compile` measures it)")
    eager, comp, cost = float(entry["eager_s"]), float(entry["compiled_s"]), float(entry["compile_s"])
    if comp >= eager:
        return False, f"auto: measured {eager / comp:.2f}x, no gain here"
    limits = [t for t in (budget_seconds, steps * eager if steps else None) if t]
    run = min(limits) if limits else 1000 * eager  # no budget given: goushi train's 1000 steps
    saved = run * (1 - comp / eager)
    why = f"auto: measured {eager / comp:.2f}x after {cost:.0f}s of compiling; this run saves ~{saved:.0f}s"
    return saved > 2 * cost, why


__all__ = ["Plan", "train_plan", "inference_plan", "int8_shapes", "peak_flops", "choose_threads", "race", "describe_cpu",
           "cpu_model", "cpu_flags", "native_bf16", "cache_path", "should_compile", "record_compile", "probing",
           "DTYPES"]
