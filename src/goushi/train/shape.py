"""The model's shape for a time budget on a big corpus, from the tokens the budget buys on this machine.

On a corpus too big to see twice, the best shape for a budget is a trade: a wider or deeper model learns more
per token but gets fewer tokens. Measured on poetry-full (docs/recipe.md, "The shape from the tokens"): at 10
minutes of a Xeon core 4 x 192 beat 4 x 128 and 4 x 256; at 3 minutes (about what a CPU without native bf16 buys
in 10) 4 x 128 beat 4 x 192. So the shape cannot be chosen from minutes alone: a run times one short training
step of each candidate here (eager, at the run's precision, threads and batch; cached per machine), and takes the
largest candidate that still gets MIN_TOKENS_PER_PARAM training tokens per parameter inside its blocks in the
budget. Those ratios in the measured rows, by the same eager timing: winners 3.4 and 3.6, losers 1.1 and 1.3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from goushi.config import ModelConfig, param_counts
from goushi.precision import cache_get, cache_put, probing
from goushi.train.config import TrainConfig

# (layers, width, heads): head size 32 up to width 256, then 32 to 64; each rung costs about 1.5-2x the last.
LADDER: tuple[tuple[int, int, int], ...] = ((4, 128, 4), (4, 192, 6), (6, 192, 6), (6, 256, 8), (8, 320, 10),
                                            (12, 384, 12), (12, 512, 16))
# Between the measured winners (3.4, 3.6 tokens per block parameter, eager-timed) and losers (1.1, 1.3).
MIN_TOKENS_PER_PARAM = 2.5
PROBE_STEPS = 2  # timed, after one untimed step (allocations, autotuning)
# Load on a shared machine only ever slows a timing, so the cache keeps the fastest seen. The smallest rung is timed
# again on every run (about a second); when it runs this much faster than its cached figure, the cached ladder was
# timed under load and every rung the climb reaches is timed again.
RECHECK = 1.10


@dataclass(frozen=True)
class Rung:
    n_layer: int
    n_embd: int
    n_head: int
    tokens_per_s: float
    block_params: int
    tokens: float  # in the budget, at the probed speed

    @property
    def per_param(self) -> float:
        return self.tokens / max(1, self.block_params)

    def label(self) -> str:
        return f"{self.n_layer} x {self.n_embd}"


def rung_config(base: ModelConfig, n_layer: int, n_embd: int, n_head: int) -> ModelConfig:
    """`base` (the recipe's family, vocabulary and context) at another depth and width; the llama family's
    halved key/value heads kept."""
    kv = n_head // 2 if base.n_kv_head and base.n_kv_head < base.n_head else 0
    return replace(base, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=kv, mlp_hidden=0).validate()


def time_step(mc: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype,
              make_optimizers: Callable[[torch.nn.Module], list[torch.optim.Optimizer]],
              prepare: Callable[[torch.nn.Module], None] = lambda m: None) -> float:
    """Training tokens per second of `mc`: forward, backward and optimiser steps on random tokens, as the
    trainer runs them (autocast at `dtype`), best of PROBE_STEPS after one untimed step."""
    from goushi.model import GPT

    torch.manual_seed(0)
    model = GPT(mc).to(device)
    model.train()
    prepare(model)
    opts = make_optimizers(model)
    x = torch.randint(0, mc.vocab_size, (batch, mc.context_length), device=device)
    best = float("inf")
    for i in range(PROBE_STEPS + 1):
        t = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x, x)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return batch * mc.context_length / best


def choose(base: ModelConfig, budget_s: float, batch: int, device: torch.device, dtype: torch.dtype,
           make_optimizers: Callable[[torch.nn.Module], list[torch.optim.Optimizer]],
           prepare: Callable[[torch.nn.Module], None] = lambda m: None,
           optimizer: str = "", ranks: int = 1) -> tuple[ModelConfig, list[Rung], float]:
    """(the shape, the rungs timed, seconds spent timing). Rungs are timed smallest first and the climb stops at
    the first that falls short (a bigger one only gets fewer tokens per parameter); the first rung is taken
    whatever it gets. Speeds are cached per machine, shape, precision, threads, batch and optimiser (RECHECK).
    `batch` is one process's; under torchrun `ranks` processes each train it, so the budget buys `ranks` times
    the tokens one process times here."""
    t0 = time.perf_counter()
    rungs: list[Rung] = []
    chosen = rung_config(base, *LADDER[0])
    stale = False
    for i, (layers, width, heads) in enumerate(LADDER):
        mc = rung_config(base, layers, width, heads)
        key = (f"L{layers} d{width} H{heads} kv{mc.n_kv_head} V{mc.vocab_size} T{mc.context_length} {mc.family} "
               f"{mc.mlp} b{batch} {dtype} {optimizer} threads{torch.get_num_threads()} {device.type}")
        entry = cache_get("shape", key)
        cached = float(entry["tokens_per_s"]) if entry else 0.0
        speed = cached
        if not cached or stale or i == 0:
            now = time_step(mc, batch, device, dtype, make_optimizers, prepare)
            stale = stale or (i == 0 and 0 < cached * RECHECK < now)
            speed = max(now, cached)
            if speed != cached:
                cache_put("shape", key, {"tokens_per_s": speed})
        rung = Rung(layers, width, heads, speed, param_counts(mc)["blocks"], speed * budget_s * ranks)
        rungs.append(rung)
        if rungs[1:] and rung.per_param < MIN_TOKENS_PER_PARAM:
            break
        chosen = mc
    return chosen, rungs, time.perf_counter() - t0


def describe(chosen: ModelConfig, rungs: list[Rung], seconds: float, budget: str, ranks: int = 1) -> list[str]:
    """The lines a run prints about its shape: what each rung would get in the budget, and the pick."""
    lines = [f"shape: {chosen.n_layer} layers x {chosen.n_embd}, the largest that gets {MIN_TOKENS_PER_PARAM:g} "
             f"training tokens per block parameter in {budget} at this machine's measured speed "
             f"(timed in {seconds:.1f} s; goushi.train.shape):"]
    per = "eager" if ranks == 1 else f"eager, each of {ranks} processes"
    for r in rungs:
        mark = "<- chosen" if (r.n_layer, r.n_embd) == (chosen.n_layer, chosen.n_embd) else ""
        lines.append(f"  {r.label():>8}: {r.tokens_per_s:>9,.0f} tokens/s ({per}) -> {r.tokens / 1e6:>7.1f} M tokens, "
                     f"{r.per_param:>5.1f} per block parameter {mark}".rstrip())
    return lines


def wanted(cfg: TrainConfig) -> bool:
    """`shape = "auto"` on a new run from scratch with a time budget (a run of steps or tokens has no minutes to
    spend); GOUSHI_PROBE=0 (no timing at all) keeps the preset's shape."""
    return (cfg.shape == "auto" and bool(cfg.budget_seconds) and not cfg.resume and not cfg.init_from
            and not cfg.lora_rank and probing())


def for_run(cfg: TrainConfig, base: ModelConfig, device: torch.device, dtype: torch.dtype,
            prepare: Callable[[torch.nn.Module], None] = lambda m: None,
            ranks: int = 1) -> tuple[ModelConfig, list[str]]:
    """The shape `cfg` trains (its optimiser, batch and budget) and the lines that say why. Under torchrun
    (`ranks` processes) each process trains its share of the global batch, and is timed at that share."""
    from goushi.train.optim import build_optimizers, muon_ns_dtype

    def make(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        return build_optimizers(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                betas=(cfg.beta1, cfg.beta2), muon_momentum=cfg.muon_momentum, device=device,
                                ns_dtype=muon_ns_dtype(dtype), embed_lr_mult=cfg.embed_lr_mult)

    mc, rungs, secs = choose(base, float(cfg.budget_seconds or 0), max(1, cfg.batch_size // ranks), device, dtype,
                             make, prepare, optimizer=cfg.optimizer, ranks=ranks)
    return mc, describe(mc, rungs, secs, cfg.time_budget, ranks)


__all__ = ["LADDER", "MIN_TOKENS_PER_PARAM", "RECHECK", "Rung", "choose", "describe", "for_run", "rung_config", "time_step", "wanted"]
