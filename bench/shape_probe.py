"""What the big-corpus recipe's shape rule (goushi.train.shape) sees on this machine: every rung of the ladder
timed as `goushi train` times it (eager training steps at the run's precision, threads, batch and optimiser),
the tokens each would train in each budget, per block parameter, and the shape each budget gets.

    GOUSHI_THREADS=1 python bench/shape_probe.py DATA_DIR --budgets 3m 10m 30m 60m

Nothing is cached or read from the cache: every rung is timed now (best of its steps). Print the CPU with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from goushi.config import param_counts
from goushi.data.layout import read_meta
from goushi.precision import train_plan
from goushi.train import shape
from goushi.train.config import TrainConfig, apply_recipe, parse_duration, resolve_model_config
from goushi.train.optim import build_optimizers, muon_ns_dtype


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a data directory from `goushi data build` (its vocabulary sets the head)")
    ap.add_argument("--budgets", nargs="+", default=["3m", "10m", "30m", "60m"])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per rung (default 3)")
    args = ap.parse_args()
    cfg, _ = apply_recipe(TrainConfig(data=args.data, out="-", recipe="big", time_budget="10m").validate(), set())
    base = resolve_model_config(cfg, int(read_meta(args.data)["vocab_size"]))
    device = torch.device("cpu")
    plan = train_plan(base, cfg.batch_size, device)
    if os.environ.get("GOUSHI_THREADS"):
        plan.threads = int(os.environ["GOUSHI_THREADS"])
    plan.apply_threads()
    shape.PROBE_STEPS = args.steps

    def make(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        return build_optimizers(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                betas=(cfg.beta1, cfg.beta2), device=device, ns_dtype=muon_ns_dtype(plan.dtype))

    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {plan.dtype}, "
          f"batch {cfg.batch_size} x {base.context_length}, {cfg.optimizer}, vocabulary {base.vocab_size}")
    speeds = []
    for layers, width, heads in shape.LADDER:
        mc = shape.rung_config(base, layers, width, heads)
        tps = shape.time_step(mc, cfg.batch_size, device, plan.dtype, make, plan.apply_to)
        blocks = param_counts(mc)["blocks"]
        speeds.append((layers, width, heads, tps, blocks))
        print(f"  {layers:>2} x {width:<4} {blocks / 1e6:>6.2f} M block parameters  {tps:>9,.0f} tokens/s", flush=True)
        if tps * max(parse_duration(b) for b in args.budgets) / blocks < shape.MIN_TOKENS_PER_PARAM:
            break  # every longer rung gets fewer tokens per parameter still
    print(f"\ntokens per block parameter in each budget (the rule takes the largest >= {shape.MIN_TOKENS_PER_PARAM:g}):")
    for b in args.budgets:
        secs = parse_duration(b)
        cells, pick = [], f"{speeds[0][0]} x {speeds[0][1]}"
        for i, (layers, width, _, tps, blocks) in enumerate(speeds):
            per = tps * secs / blocks
            cells.append(f"{layers}x{width} {per:5.1f}")
            if i and per < shape.MIN_TOKENS_PER_PARAM:
                break
            pick = f"{layers} x {width}"
        print(f"  {b:>5}: " + "  ".join(cells) + f"   -> {pick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
