"""Training throughput: tokens/s and MFU per preset, ours against Hugging Face GPT2LMHeadModel of the same shape.

    python bench/train_throughput.py                     # tiny and small, gpt2 family, batch 32
    python bench/train_throughput.py --presets tiny small base --steps 3 --batch-size 8

Both models train in this process on the same random batches with AdamW, fp32 on CPU (bf16 autocast on a
GPU). MFU = model FLOPs per token (6N + attention, goushi.model.GPT.flops_per_token) x tokens/s / peak,
where the peak is a matmul measured on this machine (or a data-sheet figure for known GPUs). Each model
is timed in alternating rounds and the best round counts, because shared machines are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from goushi.config import preset_config
from goushi.device import peak_flops, pick_device, pick_dtype
from goushi.model import GPT
from goushi.train.optim import build_optimizers


def hf_gpt2(cfg) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.hidden, activation_function="gelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
                        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"  # the same fused attention kernel ours uses
    return GPT2LMHeadModel(hf_cfg)


def timed_steps(step, n: int, device: torch.device) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench_preset(preset: str, args, device, dtype, peak: float) -> None:
    cfg = preset_config(preset, "gpt2", args.vocab_size)
    T, B = cfg.context_length, args.batch_size
    torch.manual_seed(0)
    ours = GPT(cfg).to(device).train()
    theirs = hf_gpt2(cfg).to(device).train()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    opt_ours = build_optimizers(ours, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device=device)[0]
    opt_theirs = build_optimizers(theirs, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device=device)[0]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g).to(device) for _ in range(4)]

    def amp():
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    state = {"i": 0}

    def step_ours():
        xy = batches[state["i"] % 4]
        state["i"] += 1
        with amp():
            _, loss = ours(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs():
        xy = batches[state["i"] % 4]
        state["i"] += 1
        with amp():
            logits = theirs(input_ids=xy[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    steps = args.steps or {"tiny": 10, "small": 3, "base": 2}[preset]
    for fn in (step_ours, step_theirs):  # warm up allocators and kernels
        timed_steps(fn, 2, device)
    best = {"goushi": float("inf"), "hf": float("inf")}
    for _ in range(args.rounds):
        best["goushi"] = min(best["goushi"], timed_steps(step_ours, steps, device) / steps)
        best["hf"] = min(best["hf"], timed_steps(step_theirs, steps, device) / steps)
    flops_tok = ours.flops_per_token(T)
    print(f"\n{preset}: {n_ours:,} parameters (HF {n_theirs:,}), batch {B} x context {T} = {B * T:,} tokens/step, "
          f"{flops_tok / 1e6:.1f} MFLOP/token")
    for name, sec in best.items():
        tps = B * T / sec
        print(f"  {name:<7} {sec * 1000:9.1f} ms/step  {tps:10,.0f} tokens/s  MFU {flops_tok * tps / peak:6.1%}")
    print(f"  ratio goushi/HF tokens/s: {best['hf'] / best['goushi']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=4787, help="default: the reviews corpus' char vocabulary")
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (default: per preset)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    dtype = pick_dtype(device)
    peak, src = peak_flops(device, dtype)
    print(f"torch {torch.__version__}, device {device}, {str(dtype).replace('torch.', '')}, "
          f"{torch.get_num_threads()} threads; peak {peak / 1e9:,.1f} GFLOP/s ({src})")
    for preset in args.presets:
        bench_preset(preset, args, device, dtype, peak)


if __name__ == "__main__":
    main()
