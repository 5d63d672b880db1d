"""What attending only within each document (`goushi train --doc-mask`) costs a training step.

    python bench/doc_mask_speed.py                      # 4 x 192 llama, context 128, batch 32, eager and compiled
    python bench/doc_mask_speed.py --n-layer 6 --n-embd 256 --context 256 --no-compile

The same model, batches and optimiser step with and without the mask (`GPT.forward(..., doc_sep=EOT)`: a
(B, 1, T, T) boolean mask for SDPA instead of its built-in causal one), at the precision and threads
`goushi train` picks here. Rows are windows of ../shared/data/poetry-full's text when a DATA_DIR is given
(`--data`), else random tokens with an <|endoftext|> every 83 tokens on average (a poem's length there). Rounds
alternate between the two, the best round of each is kept, and the ratio is masked / plain tokens per second.
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
from goushi.train.data import TokenData, new_generator  # noqa: E402
from goushi.train.optim import build_optimizers, muon_ns_dtype  # noqa: E402


def batches(args, src: TokenData | None, vocab: int, eot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if src is not None:
        g = new_generator(0)
        return [src.train_batch(args.batch_size, args.context, g) for _ in range(4)]
    out = []
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        xy = torch.randint(1, vocab, (args.batch_size, args.context + 1), generator=g)
        xy[torch.rand(xy.shape, generator=g) < 1 / 83] = eot
        out.append((xy[:, :-1], xy[:, 1:]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="a DATA_DIR whose training windows to use (default: random tokens)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab", type=int, default=6000)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--no-compile", action="store_true", help="time eager mode only")
    args = p.parse_args()

    src = TokenData(args.data, windows="docs") if args.data else None
    vocab, eot = (src.vocab_size, src.tokenizer.eot_id) if src else (args.vocab, 0)
    mc = preset_config("tiny", "llama", vocab_size=vocab, n_layer=args.n_layer, n_embd=args.n_embd,
                       n_head=args.n_head, context_length=args.context)
    plan = train_plan(mc, args.batch_size, torch.device("cpu"))
    plan.apply_threads()
    data = batches(args, src, vocab, eot)
    print(f"CPU: {precision.describe_cpu()}, {torch.get_num_threads()} thread(s), {plan.dtype}; llama {args.n_layer} x "
          f"{args.n_embd}, context {args.context}, batch {args.batch_size}, "
          f"{'windows of ' + args.data if args.data else 'random tokens'}")
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    for mode in modes:
        torch.manual_seed(0)
        model = GPT(mc).train()
        plan.apply_to(model)
        opts = build_optimizers(model, name="muon", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                device=torch.device("cpu"), ns_dtype=muon_ns_dtype(plan.dtype))
        net = torch.compile(model) if mode == "compiled" else model

        def step(x, y, sep, net=net, model=model, opts=opts):
            with torch.autocast("cpu", dtype=plan.dtype, enabled=plan.dtype != torch.float32):
                _, loss = net(x, y, doc_sep=sep)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)

        best = {None: 0.0, eot: 0.0}
        for sep in best:  # warm up (and compile) both graphs
            for x, y in data[:2]:
                step(x, y, sep)
        for _ in range(args.rounds):
            for sep in best:
                t0 = time.perf_counter()
                for i in range(args.steps):
                    step(*data[i % len(data)], sep)
                tps = args.steps * args.batch_size * args.context / (time.perf_counter() - t0)
                best[sep] = max(best[sep], tps)
        print(f"{mode:9s} plain {best[None]:9,.0f} tok/s   doc mask {best[eot]:9,.0f} tok/s   "
              f"ratio {best[eot] / best[None]:.3f}")


if __name__ == "__main__":
    main()
