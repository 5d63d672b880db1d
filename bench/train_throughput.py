"""Training throughput: ours against Hugging Face GPT2LMHeadModel at its best precision and a nanoGPT-style loop.

    python bench/train_throughput.py                          # tiny and small, batch 32, loss check, peak RSS
    python bench/train_throughput.py --presets small --batch-size 16 --rounds 5
    python bench/train_throughput.py --compile                # also time torch.compile, recorded for `--compile auto`

Every model trains in this one process, on the same batches (char tokens of ../shared/data/reviews when it is
there, random tokens otherwise), at the same thread count, with fused AdamW and gradient clipping:

- goushi: `goushi.model.GPT` at the precision and threads `goushi.precision.train_plan` picks for this machine
  (what `goushi train` does), printed with the probe's figures;
- HF: `transformers.GPT2LMHeadModel` of the same shape (SDPA attention), at fp32 and at bf16 autocast; a short
  race picks its faster precision, which then runs the timed rounds ("HF at its best precision");
- nanoGPT: the model and step of Karpathy's nanoGPT (train.py / model.py) written out below, best precision too.

Timed rounds are interleaved (goushi, HF, nanoGPT, goushi, ...) so load from other processes hits all alike; the
best and the median round are printed, ratios from the best. MFU = model FLOPs per token (6N + attention) x
tokens/s / the peak of a matmul in that model's compute dtype (goushi.precision.peak_flops: best seen here).
The loss check trains ours from the same initial weights on the same batches at fp32 and at the chosen precision
and compares the loss after the same tokens. Peak RSS is measured in a fresh child process (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from goushi import precision  # noqa: E402
from goushi.config import preset_config  # noqa: E402
from goushi.model import GPT  # noqa: E402
from goushi.train.optim import build_optimizers  # noqa: E402

REVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reviews"


# ---- the nanoGPT reference (github.com/karpathy/nanoGPT model.py, without dropout and flash checks) ----------
class NanoAttention(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(d, 3 * d), nn.Linear(d, d), h

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), NanoAttention(d, h), nn.LayerNorm(d)
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.context_length, cfg.n_embd)
        self.h = nn.ModuleList(NanoBlock(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)


# ---- the peers -----------------------------------------------------------------------------------------------
def hf_gpt2(cfg) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.hidden, activation_function="gelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
                        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(hf_cfg)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizers(model, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                            device=torch.device("cpu"))[0]


class Trainee:
    """A model, its optimiser and its training step at one precision."""

    def __init__(self, name: str, model: nn.Module, loss_fn, dtype: torch.dtype):
        self.name, self.model, self.loss_fn, self.dtype = name, model.train(), loss_fn, dtype
        self.opt = adamw(model)

    def step(self, xy: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.loss_fn(self.model, xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def ours_loss(m, x, y):
    return m(x, y)[1]


def hf_loss(m, x, y):
    logits = m(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def nano_loss(m, x, y):
    return m(x, y)


def ours(cfg, plan: precision.Plan, dtype: torch.dtype | None = None) -> Trainee:
    torch.manual_seed(0)
    model = GPT(cfg)
    if dtype is None:
        plan.apply_to(model)
    return Trainee("goushi", model, ours_loss, dtype or plan.dtype)


# ---- data ----------------------------------------------------------------------------------------------------
def corpus_ids(limit_chars: int = 2_000_000) -> tuple[np.ndarray, int, str]:
    """Char ids of the reviews corpus (the demo's data), or random ids when it is not there."""
    files = sorted(REVIEWS.glob("*.txt")) if REVIEWS.is_dir() else []
    if not files:
        rng = np.random.default_rng(0)
        return rng.integers(0, 4787, 1_000_000), 4787, "random tokens (../shared/data/reviews not found)"
    text = "".join(f.read_text(encoding="utf-8") for f in files)[:limit_chars]
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text)), len(chars), \
        f"{len(text):,} characters of {REVIEWS} ({len(chars):,} distinct: the vocabulary)"


def batches(ids: np.ndarray, n: int, B: int, T: int, seed: int = 0) -> list[torch.Tensor]:
    g = np.random.default_rng(seed)
    return [torch.from_numpy(np.stack([ids[s: s + T + 1] for s in g.integers(0, len(ids) - T - 1, B)]))
            for _ in range(n)]


# ---- timing --------------------------------------------------------------------------------------------------
def timed(t: Trainee, data: list[torch.Tensor], steps: int, start: int) -> float:
    tick = time.perf_counter()
    for i in range(steps):
        t.step(data[(start + i) % len(data)])
    return (time.perf_counter() - tick) / steps


def best_precision(make, data, steps: int) -> tuple[Trainee, str]:
    """The faster of fp32 and bf16 autocast for a peer (interleaved, best of 2), and the figures."""
    cands = {dt: make(dt) for dt in (torch.float32, torch.bfloat16)}
    for t in cands.values():
        timed(t, data, 1, 0)
    times = {dt: [] for dt in cands}
    for r in range(2):
        for dt, t in cands.items():
            times[dt].append(timed(t, data, steps, r))
    best = min(times, key=lambda dt: min(times[dt]))
    note = ", ".join(f"{precision._name(dt)} {min(v) * 1000:,.0f} ms/step" for dt, v in times.items())
    return cands[best], note


def bench_preset(preset: str, args, ids: np.ndarray, vocab: int, plan_cache: dict) -> dict:
    cfg = preset_config(preset, "gpt2", vocab)
    T, B = cfg.context_length, args.batch_size
    plan = plan_cache.get(preset) or precision.train_plan(cfg, B, torch.device("cpu"))
    data = batches(ids, 8, B, T)
    steps = args.steps or {"tiny": 4, "small": 2, "base": 1}[preset]
    print(f"\n{preset}: {sum(p.numel() for p in GPT(cfg).parameters()):,} parameters, batch {B} x context {T} = "
          f"{B * T:,} tokens/step; goushi {plan.describe_dtype()} ({plan.precision_note})", flush=True)

    def make_hf(dt):
        torch.manual_seed(0)
        return Trainee("HF", hf_gpt2(cfg), hf_loss, dt)

    def make_nano(dt):
        torch.manual_seed(0)
        return Trainee("nanoGPT", NanoGPT(cfg), nano_loss, dt)

    hf, hf_note = best_precision(make_hf, data, steps)
    print(f"  HF precision race: {hf_note} -> {precision._name(hf.dtype)}", flush=True)
    nano, nano_note = best_precision(make_nano, data, steps)
    print(f"  nanoGPT precision race: {nano_note} -> {precision._name(nano.dtype)}", flush=True)
    mine = ours(cfg, plan)
    runners = [mine, hf, nano]
    for t in runners:
        timed(t, data, 1, 0)  # warm up allocators and kernels
    times: dict[str, list[float]] = {t.name: [] for t in runners}
    for r in range(args.rounds):
        for t in runners:
            times[t.name].append(timed(t, data, steps, r * steps))
    flops = GPT(cfg).flops_per_token(T)
    peaks = {dt: precision.peak_flops(torch.device("cpu"), dt)[0] for dt in {t.dtype for t in runners}}
    row = {"preset": preset}
    for t in runners:
        best, med = min(times[t.name]), statistics.median(times[t.name])
        tps = B * T / best
        row[t.name] = tps
        print(f"  {t.name:<8} {precision._name(t.dtype):>4} {best * 1000:8.1f} ms/step (median {med * 1000:,.1f})  "
              f"{tps:9,.0f} tokens/s  MFU {flops * tps / peaks[t.dtype]:6.1%} of {peaks[t.dtype] / 1e9:,.0f} GFLOP/s "
              f"{precision._name(t.dtype)}", flush=True)
    print(f"  ratio goushi/HF tokens/s: {row['goushi'] / row['HF']:.2f}x; goushi/nanoGPT: "
          f"{row['goushi'] / row['nanoGPT']:.2f}x (best rounds of {args.rounds}, {steps} steps each)", flush=True)
    if args.compile:
        compile_check(cfg, plan, data, steps, args)
    if args.loss_steps and plan.dtype != torch.float32:
        loss_check(cfg, plan, ids, B, T, args.loss_steps)
    return row


def loss_check(cfg, plan: precision.Plan, ids: np.ndarray, B: int, T: int, n: int) -> None:
    """Ours at fp32 and at the chosen precision, same initial weights and batches: the loss after the same tokens."""
    data = batches(ids, n, B, T, seed=1)
    curves = {}
    for dt in (torch.float32, None):
        t = ours(cfg, plan, dtype=torch.float32 if dt else None)
        curves[precision._name(t.dtype)] = [t.step(xy) for xy in data]
    (a_name, a), (b_name, b) = curves.items()
    tail = max(1, n // 10)
    la, lb = float(np.mean(a[-tail:])), float(np.mean(b[-tail:]))
    print(f"  loss after {n} steps ({n * B * T:,} tokens, mean of the last {tail}): {a_name} {la:.4f}, "
          f"{b_name} {lb:.4f} ({(lb - la) / la:+.2%}); step 1: {a[0]:.4f} / {b[0]:.4f}", flush=True)


def compile_check(cfg, plan: precision.Plan, data, steps: int, args) -> None:
    eager = ours(cfg, plan)
    comp = ours(cfg, plan)
    comp.model = torch.compile(comp.model)
    tick = time.perf_counter()
    timed(comp, data, 2, 0)
    compile_s = time.perf_counter() - tick
    timed(eager, data, 1, 0)
    times = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        times["eager"].append(timed(eager, data, steps, r))
        times["compiled"].append(timed(comp, data, steps, r))
    e, c = min(times["eager"]), min(times["compiled"])
    compile_s -= 2 * c
    precision.record_compile(cfg, args.batch_size, plan.dtype, eager_s=e, compiled_s=c, compile_s=compile_s)
    print(f"  torch.compile: {compile_s:.0f} s to compile, then {c * 1000:,.0f} ms/step against {e * 1000:,.0f} eager "
          f"({e / c:.2f}x): pays for itself after ~{compile_s / max(e - c, 1e-9):,.0f} steps, "
          f"~{(compile_s + compile_s / max(e - c, 1e-9) * c) / 60:,.1f} min of training "
          f"(recorded in {precision.cache_path()} for --compile auto)", flush=True)


# ---- peak memory ---------------------------------------------------------------------------------------------
def rss_child(preset: str, batch: int, who: str) -> None:
    """Train a few steps and print this process's peak resident memory (run in a fresh process)."""
    cfg = preset_config(preset, "gpt2", 4787)
    plan = precision.train_plan(cfg, batch, torch.device("cpu"))
    plan.apply_threads()
    t = ours(cfg, plan) if who == "goushi" else Trainee("HF", hf_gpt2(cfg), hf_loss, plan.dtype)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        t.step(torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), generator=g))
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(f"{hwm / 1024:.0f}")


def peak_rss(preset: str, batch: int, who: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", preset, str(batch), who], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (default: per preset)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loss-steps", type=int, default=40, help="steps of the fp32-vs-chosen-precision loss check "
                   "(0 = skip)")
    p.add_argument("--rss", nargs="*", default=["small:16"], metavar="PRESET:BATCH",
                   help="peak RSS of training these (default small:16); give none to skip")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of ours and record it")
    p.add_argument("--threads", type=int, default=0, help="fix the thread count (default: goushi's probe decides)")
    p.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.rss_child[2])
        return
    if args.threads:
        os.environ["GOUSHI_THREADS"] = str(args.threads)
    import transformers

    ids, vocab, source = corpus_ids()
    print(f"CPU: {precision.describe_cpu()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; data: {source}")
    plans = {}
    for preset in args.presets:
        cfg = preset_config(preset, "gpt2", vocab)
        plans[preset] = precision.train_plan(cfg, args.batch_size, torch.device("cpu"))
    # One thread count for the whole process (every peer runs at it): the first preset's probe decides.
    first = plans[args.presets[0]]
    first.apply_threads()
    for line in first.lines()[1:]:
        print(line + " -- every model below runs at this thread count")
    rows = [bench_preset(preset, args, ids, vocab, plans) for preset in args.presets]
    for spec in args.rss:
        preset, _, batch = spec.partition(":")
        ours_mb, hf_mb = peak_rss(preset, int(batch or 16), "goushi"), peak_rss(preset, int(batch or 16), "HF")
        print(f"\npeak RSS training {preset} at batch {batch or 16} (3 steps, fresh process, VmHWM): goushi "
              f"{ours_mb:,.0f} MB, HF at the same precision {hf_mb:,.0f} MB", flush=True)
    print("\nsummary: " + "; ".join(f"{r['preset']} {r['goushi']:,.0f} tokens/s = {r['goushi'] / r['HF']:.2f}x HF, "
                                    f"{r['goushi'] / r['nanoGPT']:.2f}x nanoGPT" for r in rows))


if __name__ == "__main__":
    main()
