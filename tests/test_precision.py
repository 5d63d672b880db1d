"""goushi.precision: CPU flags first, a cached probe, overrides; and the decisions it feeds (compile, MFU peak).

Timings are never asserted: only what is decided from given figures, what is cached and what can be forced.
"""

from __future__ import annotations

import json

import pytest
import torch

from goushi import precision
from goushi.config import preset_config
from goushi.model import GPT

CPU = torch.device("cpu")


def tiny_cfg(**kw):
    return preset_config("tiny", "gpt2", vocab_size=97, n_layer=1, n_head=2, n_embd=32, context_length=16, **kw)


@pytest.fixture
def probing(monkeypatch, tmp_path):
    """The probe on, with its cache in a temporary directory and one thread (no thread race)."""
    monkeypatch.setenv("GOUSHI_PROBE", "1")
    monkeypatch.setenv("GOUSHI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GOUSHI_THREADS", "1")
    monkeypatch.delenv("GOUSHI_REPROBE", raising=False)
    monkeypatch.delenv(precision.FLAGS_ENV, raising=False)
    return tmp_path


# The flags of the two kinds of machine this project runs on; every test below that depends on the CPU picks one,
# so it decides the same way on a Xeon with AMX, a Zen 3 or a laptop.
XEON_AMX = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN3 = {"avx2", "fma"}


@pytest.fixture
def cpu(monkeypatch):
    """cpu(flags): make precision see a CPU with these flags (and a model name that says so)."""
    def use(flags: set[str], name: str = "Test CPU"):
        monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(precision, "cpu_model", lambda: name)
    return use


def test_probe_off_gives_fp32_and_leaves_threads_alone():
    # conftest sets GOUSHI_PROBE=0 for every test: deterministic fp32.
    plan = precision.train_plan(tiny_cfg(), 8, CPU)
    assert plan.dtype == torch.float32 and plan.attn_dtype is None and plan.threads == 0
    assert "GOUSHI_PROBE=0" in plan.lines()[0]
    assert precision.inference_plan(tiny_cfg(), CPU).dtype == torch.float32


@pytest.mark.parametrize("flags", [XEON_AMX, ZEN3], ids=["bf16", "no-bf16"])
@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("bf16", torch.bfloat16),
                                        ("bfloat16", torch.bfloat16)])
def test_explicit_dtype_wins_without_measuring(probing, cpu, flags, name, dtype):
    cpu(flags)
    plan = precision.train_plan(tiny_cfg(), 8, CPU, name)
    assert plan.dtype == dtype and "--dtype" in plan.precision_note
    assert precision.inference_plan(tiny_cfg(), CPU, name).dtype == dtype
    assert not (probing / "speed.json").exists()


@pytest.mark.parametrize("flags", [XEON_AMX, set()], ids=["bf16", "flags-unknown"])
def test_probe_decides_caches_and_says_so(probing, cpu, flags):
    cpu(flags)  # native bf16, or a CPU that does not say (then only the probe decides)
    plan = precision.train_plan(tiny_cfg(), 8, CPU)
    assert plan.dtype in (torch.float32, torch.bfloat16)
    assert plan.threads == 1 and "GOUSHI_THREADS" in plan.threads_note
    line = plan.lines()[0]
    assert line.startswith("precision: ") and "probe on Test CPU" in line and "cached" not in line
    data = json.loads((probing / "speed.json").read_text())
    assert data["version"] == precision.CACHE_VERSION and any(k.startswith("train|") for k in data["entries"])
    again = precision.train_plan(tiny_cfg(), 8, CPU)
    assert again.dtype == plan.dtype and again.attn_dtype == plan.attn_dtype and "cached" in again.lines()[0]
    decode = precision.inference_plan(tiny_cfg(), CPU)
    assert "batch-1 decode step" in decode.precision_note and "cached" not in decode.precision_note
    assert "cached" in precision.inference_plan(tiny_cfg(), CPU).precision_note


def test_reprobe_ignores_the_cache(probing, cpu, monkeypatch):
    cpu(XEON_AMX)
    precision.train_plan(tiny_cfg(), 8, CPU)
    monkeypatch.setenv("GOUSHI_REPROBE", "1")
    assert "cached" not in precision.train_plan(tiny_cfg(), 8, CPU).lines()[0]


def test_cpu_without_native_bf16_is_not_even_probed(probing, cpu):
    cpu(ZEN3)  # bf16 would be emulated (26x slower than fp32 on a Zen 3)
    plan = precision.train_plan(tiny_cfg(), 8, CPU)
    assert plan.dtype == torch.float32 and plan.attn_dtype is None and "no native bf16" in plan.precision_note
    inference = precision.inference_plan(tiny_cfg(), CPU)
    assert inference.dtype == torch.float32 and "no native bf16" in inference.precision_note
    assert not (probing / "speed.json").exists()


def test_native_bf16_reads_the_flags():
    assert precision.native_bf16({"avx512f", "avx512_bf16"}) is True
    assert precision.native_bf16({"amx_bf16"}) is True
    assert precision.native_bf16({"fp", "asimd", "bf16"}) is True  # Arm
    assert precision.native_bf16(ZEN3) is False
    assert precision.native_bf16(set()) is None  # unknown: only the probe decides
    assert precision.cpu_model() in precision.describe_cpu()


def test_the_flags_can_be_given_and_their_figures_are_kept_apart(probing, monkeypatch):
    monkeypatch.setenv(precision.FLAGS_ENV, "AVX2 fma")
    assert precision.cpu_flags() == {"avx2", "fma"} and precision.native_bf16() is False
    assert "avx2 fma" in precision.describe_cpu() and precision.FLAGS_ENV in precision.describe_cpu()
    plan = precision.train_plan(tiny_cfg(), 8, CPU)
    assert plan.dtype == torch.float32 and "no native bf16" in plan.precision_note
    faked_key = precision._machine_key()
    monkeypatch.setenv(precision.FLAGS_ENV, "")  # set but empty: a CPU with no flags known
    assert precision.native_bf16() is None
    monkeypatch.delenv(precision.FLAGS_ENV)
    assert precision._machine_key() != faked_key  # a cache entry measured under given flags is not this CPU's


def test_decision_follows_the_measured_figures(probing, cpu, monkeypatch):
    cpu(XEON_AMX)
    cfg = tiny_cfg()
    rows = min(8 * cfg.context_length, precision.PROBE_ROWS)

    def fake(figures):
        monkeypatch.setattr(precision, "race", lambda cands, reps=3, drop_after=0.0: {k: [figures[k]] for k in cands})

    monkeypatch.setenv("GOUSHI_REPROBE", "1")
    fake({"fp32": 2.0, "bf16": 1.0})  # bf16 2x faster, in matmuls and in attention
    plan = precision._probe_train_dtype(cfg, rows)
    assert plan.dtype == torch.bfloat16 and plan.attn_dtype == torch.bfloat16
    assert precision._probe_decode_dtype(cfg).dtype == torch.bfloat16
    fake({"fp32": 1.05, "bf16": 1.0})  # within the margin: keep fp32's precision
    assert precision._probe_train_dtype(cfg, rows).dtype == torch.float32
    assert precision._probe_decode_dtype(cfg).dtype == torch.float32

    calls = iter([{"fp32": 3.0, "bf16": 1.0}, {"fp32": 1.0, "bf16": 3.0}])  # matmuls win, attention loses
    monkeypatch.setattr(precision, "race", lambda cands, reps=3, drop_after=0.0: {k: [v] for k, v in next(calls).items()})
    plan = precision._probe_train_dtype(cfg, rows)
    assert plan.dtype == torch.bfloat16 and plan.attn_dtype == torch.float32
    assert plan.describe_dtype() == "bf16, attention fp32"


@pytest.mark.parametrize("bf16_supported,dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_gets_bf16_where_the_gpu_has_it_else_fp16_without_probing(probing, cpu, monkeypatch, bf16_supported,
                                                                       dtype):
    cpu(ZEN3)  # the host CPU does not matter on a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    cuda = torch.device("cuda")
    for plan in (precision.train_plan(tiny_cfg(), 8, cuda), precision.inference_plan(tiny_cfg(), cuda)):
        assert plan.dtype == dtype and plan.precision_note == "cuda default" and plan.threads == 0
    assert precision.train_plan(tiny_cfg(), 8, cuda, "float32").dtype == torch.float32
    assert precision.should_compile("auto", cuda, tiny_cfg(), 8, dtype, budget_seconds=60, steps=None) == (
        True, "auto: CUDA")
    assert not (probing / "speed.json").exists()


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from goushi.device import pick_device, pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda") and pick_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device(None) == torch.device("mps")
    assert pick_dtype(torch.device("mps")) == torch.float16
    assert precision.train_plan(tiny_cfg(), 8, torch.device("mps")).dtype == torch.float16
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")


def test_threads_are_fixed_by_the_environment(monkeypatch):
    monkeypatch.setenv("GOUSHI_THREADS", "1")
    n, why, _ = precision.choose_threads(lambda: (lambda: None))
    assert n == 1 and "GOUSHI_THREADS" in why


def test_plan_sets_attention_dtype_on_the_model():
    model = GPT(tiny_cfg())
    precision.Plan(CPU, torch.bfloat16, torch.float32).apply_to(model)
    assert all(b.attn.attn_dtype == torch.float32 for b in model.blocks)
    precision.Plan(CPU, torch.bfloat16, torch.bfloat16).apply_to(model)
    assert all(b.attn.attn_dtype is None for b in model.blocks)


def test_compile_only_where_a_measurement_says_it_pays(probing):
    cfg = tiny_cfg()
    on, why = precision.should_compile("auto", CPU, cfg, 8, torch.float32, budget_seconds=3600, steps=None)
    assert not on and "not measured" in why
    assert precision.should_compile("on", CPU, cfg, 8, torch.float32, budget_seconds=None, steps=10)[0]
    assert not precision.should_compile("off", torch.device("cuda"), cfg, 8, torch.float32, budget_seconds=None,
                                        steps=10)[0]
    assert precision.should_compile("auto", torch.device("cuda"), cfg, 8, torch.bfloat16, budget_seconds=None,
                                    steps=10)[0]
    precision.record_compile(cfg, 8, torch.float32, eager_s=0.30, compiled_s=0.25, compile_s=50.0)
    assert precision.should_compile("auto", CPU, cfg, 8, torch.float32, budget_seconds=3600, steps=None)[0]
    short, why = precision.should_compile("auto", CPU, cfg, 8, torch.float32, budget_seconds=300, steps=None)
    assert not short and "1.20x" in why  # 300 s x (1 - 0.25/0.30) = 50 s saved: not twice the compile time
    assert not precision.should_compile("auto", CPU, cfg, 16, torch.float32, budget_seconds=3600, steps=None)[0]
    # The shorter of the budgets counts: 100 steps of 0.3 s save 5 s, not worth 50 s of compiling.
    assert not precision.should_compile("auto", CPU, cfg, 8, torch.float32, budget_seconds=3600, steps=100)[0]


def test_peak_keeps_the_best_seen(probing, monkeypatch):
    figures = iter([100e9, 50e9, 300e9])
    monkeypatch.setattr(precision, "measure_matmul_peak", lambda *a, **k: next(figures))
    assert precision.peak_flops(CPU, torch.float32)[0] == 100e9
    peak, src = precision.peak_flops(CPU, torch.float32)  # a busy moment does not lower it
    assert peak == 100e9 and "best seen" in src
    assert precision.peak_flops(CPU, torch.float32)[0] == 300e9


def test_int8_shapes_are_the_models_and_cached(probing):
    cfg = tiny_cfg()
    chosen, note = precision.int8_shapes(cfg)
    assert chosen <= {(32, 96), (32, 32), (32, 128), (128, 32), (32, 97)}
    assert "32x97" in note and "cached" not in note
    assert precision.int8_shapes(cfg)[0] == chosen and "cached" in precision.int8_shapes(cfg)[1]
