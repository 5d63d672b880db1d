"""What dropout costs a training step, on the attention weights and on the residual branches apart.

    python bench/dropout_speed.py                        # 6 x 256 llama (the fine-tuning base's shape), eager
    python bench/dropout_speed.py --n-layer 4 --n-embd 192 --n-head 6 --compile

Rows: no dropout; dropout on the residual branches only (`goushi train --dropout P --no-attn-dropout`); dropout on
both (`--dropout P`, nanoGPT's default). The same model, batches and optimiser step (AdamW, as a fine-tune runs),
each document of a window read alone as `--doc-mask` reads it (an explicit attention mask, <|endoftext|> every 20
tokens on average, about a copypasta document), at the precision and threads `goushi train` picks here. Rounds
alternate between the rows, the best round of each is kept, and each row is printed as a ratio to the first.
Why it matters: SDPA's fused CPU kernel has no dropout, so attention with dropout runs the plain one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from goushi import precision  # noqa: E402
from goushi.config import preset_config  # noqa: E402
from goushi.model import GPT  # noqa: E402
from goushi.precision import train_plan  # noqa: E402
from goushi.train.optim import build_optimizers, muon_ns_dtype  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--vocab", type=int, default=6609)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="time the models under torch.compile")
    args = p.parse_args()

    g = torch.Generator().manual_seed(0)
    xy = torch.randint(1, args.vocab, (args.batch_size, args.context + 1), generator=g)
    xy[torch.rand(xy.shape, generator=g) < 1 / 20] = 0
    x, y = xy[:, :-1], xy[:, 1:]
    rows = {"no dropout": (0.0, True), "residual only": (args.dropout, False), "attention + residual": (args.dropout, True)}
    steps, plan = {}, None
    for name, (drop, attn) in rows.items():
        mc = preset_config("tiny", "llama", vocab_size=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd,
                           n_head=args.n_head, context_length=args.context, dropout=drop, attn_dropout=attn)
        plan = train_plan(mc, args.batch_size, torch.device("cpu"))
        plan.apply_threads()
        torch.manual_seed(0)
        model = GPT(mc).train()
        plan.apply_to(model)
        opts = build_optimizers(model, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                device=torch.device("cpu"), ns_dtype=muon_ns_dtype(plan.dtype))
        net = torch.compile(model) if args.compile else model

        def step(net=net, model=model, opts=opts, dtype=plan.dtype):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                _, loss = net(x, y, doc_sep=0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)

        for _ in range(2):  # warm up (and compile)
            step()
        steps[name] = step
    print(f"CPU: {precision.describe_cpu()}, {torch.get_num_threads()} thread(s), {plan.dtype}; llama {args.n_layer} x "
          f"{args.n_embd}, context {args.context}, batch {args.batch_size}, dropout {args.dropout}, "
          f"{'compiled' if args.compile else 'eager'}")
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[name] = max(best[name], args.steps * args.batch_size * args.context / (time.perf_counter() - t0))
    first = next(iter(best.values()))
    for name, tps in best.items():
        print(f"{name:22s} {tps:9,.0f} tok/s   {tps / first:.3f}x")


if __name__ == "__main__":
    main()
