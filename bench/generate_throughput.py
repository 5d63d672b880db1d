"""Generation throughput: our engine beside Hugging Face `generate` on the same weights, in one process.

    python bench/generate_throughput.py [--presets tiny small] [--batches 1 8] [--repeats 5] [--threads N]
    python bench/generate_throughput.py --run RUN_DIR       # also int8: speed and bits per character on its val text

For each preset (gpt2 family, or --family llama; random weights, vocabulary 6000) the same model is loaded into
`transformers.GPT2LMHeadModel` or `LlamaForCausalLM` (goushi.hf.to_hf), and both decode the same prompts greedily with a KV cache
for the same number of tokens (end-of-text is suppressed on both sides, so lengths match; the tokens must agree,
a check that the comparison is fair). Both run at the thread count goushi's probe picks for decoding on this
machine (goushi.precision.inference_plan, printed), in fp32 (what the probe picks here; HF at fp32 is the same
weights). Prefill tokens/s = batch x prompt tokens / time of a 1-token generation; decode tokens/s = batch x
(new - 1) / (time of the full generation - time of the 1-token one). Runs are interleaved (ours, HF, ours, ...)
and the best of --repeats counts. Time to first token: a 200-character prompt, batch 1, ours through
Engine.stream until its first event, HF generate(max_new_tokens=1) on the same visible tokens.
With --quantize (default on) ours also decodes with int8 layers (Engine(quantize="int8")); its tokens may differ.
A batch of 1 decodes on the single-row kernels (goushi.generation.solo); --invariant also times it as the server's
batch decodes a lone row (Engine(batch_invariant=True)), and --compile-decode with the compiled step
(Engine(compile_decode=True): its race against the eager step is printed; if it dropped the compiled step, the row
times the eager one), interleaved with the others.
Figures are printed, never asserted: a shared CPU is noisy.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from goushi import precision  # noqa: E402
from goushi.config import preset_config  # noqa: E402
from goushi.engine import Engine, SampleConfig  # noqa: E402
from goushi.hf import to_hf  # noqa: E402
from goushi.model import GPT  # noqa: E402
from goushi.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402

VOCAB = 6000


def cjk_tokenizer() -> Tokenizer:
    """A char tokenizer of exactly VOCAB ids: specials, 256 bytes, and common-range Han characters."""
    n = VOCAB - len(SPECIAL_TOKENS) - 256
    chars = "".join(chr(0x4E00 + i) for i in range(n))
    tok = Tokenizer.train_char([chars])
    assert tok.vocab_size == VOCAB, tok.vocab_size
    return tok


def bench(preset: str, batch: int, repeats: int, tok: Tokenizer, quantize: bool, invariant: bool = False,
          compile_decode: bool = False, family: str = "gpt2") -> dict:
    torch.manual_seed(0)
    cfg = preset_config(preset, family, vocab_size=VOCAB)
    model = GPT(cfg).eval()
    hf = to_hf(model, eot_id=tok.eot_id)
    engine = Engine(model, tok)
    # The same model decoded as the server's batch decodes (a lone row among slots): what batch invariance costs.
    engine_inv = Engine(model, tok, batch_invariant=True) if invariant and batch == 1 else None
    engine8 = None
    if quantize:  # its own copy of the weights: an engine arranges its model's weights for itself
        copy = GPT(cfg)
        copy.load_state_dict(model.state_dict())
        engine8 = Engine(copy.eval(), tok, quantize="int8")
    engine_c = None
    if compile_decode and batch == 1:  # its own copy too: compiling freezes the weights it was given
        copy = GPT(cfg)
        copy.load_state_dict(model.state_dict())
        engine_c = Engine(copy.eval(), tok, compile_decode=True)
        engine_c.compiled_step()
    prompt_len = cfg.context_length // 2  # tokens, including the leading <|endoftext|>
    new = cfg.context_length - prompt_len - 1
    rng = random.Random(batch)
    prompts = ["".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(prompt_len - 1)) for _ in range(batch)]
    ids = torch.tensor([[tok.eot_id, *tok.encode(p)] for p in prompts])
    assert ids.shape == (batch, prompt_len)
    mask = torch.ones_like(ids)

    def ours(n: int, eng: Engine = engine):
        return eng.generate(prompts, SampleConfig(strategy="greedy", max_new_tokens=n, min_new_tokens=n))

    def theirs(n: int):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               use_cache=True, pad_token_id=tok.eot_id)

    ours_ids = [g.token_ids for g in ours(new)]
    theirs_ids = theirs(new)[:, prompt_len:].tolist()
    row = dict(preset=preset, batch=batch, prompt=prompt_len, new=new, same_tokens=ours_ids == theirs_ids)
    sides = {"ours": ours, "hf": theirs}
    if engine_inv is not None:
        sides["inv"] = lambda n: ours(n, engine_inv)
    if engine_c is not None:
        row["compile_note"] = engine_c.compile_note
        # timed whatever the race decided (the engine's own step if it dropped the compiled one): what a user gets
        sides["compiled"] = lambda n: ours(n, engine_c)
        row["compiled_same"] = [g.token_ids for g in ours(new, engine_c)] == ours_ids
    if engine8 is not None:
        sides["int8"] = lambda n: ours(n, engine8)
        row["int8_same"] = [g.token_ids for g in ours(new, engine8)] == ours_ids
    runs = {(name, n): [] for name in sides for n in (1, new)}
    for _ in range(repeats):
        for (name, n), times in runs.items():
            t = time.perf_counter()
            sides[name](n)
            times.append(time.perf_counter() - t)
    for name in sides:
        t1, tn = min(runs[name, 1]), min(runs[name, new])
        row[f"{name}_prefill"] = batch * prompt_len / t1
        row[f"{name}_decode"] = batch * (new - 1) / max(tn - t1, 1e-9)
    if batch == 1:
        row.update(first_token(engine, hf, tok, cfg, repeats))
    return row


def first_token(engine: Engine, hf, tok: Tokenizer, cfg, repeats: int) -> dict:
    """Seconds to the first streamed token for a 200-character prompt (ours), and HF's 1-token generate on the
    tokens our engine keeps visible (the context window may cut a long prompt)."""
    rng = random.Random(200)
    prompt = "".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(200))
    visible = [tok.eot_id, *tok.encode(prompt)]
    if len(visible) > cfg.context_length:
        from goushi.generation.runner import slide_window

        visible = visible[-slide_window(cfg.context_length):]
    ids = torch.tensor([visible])
    ours_t, hf_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        events = engine.stream(prompt, SampleConfig(strategy="greedy", max_new_tokens=8))
        next(iter(events))
        ours_t.append(time.perf_counter() - t)
        events.close()
        t = time.perf_counter()
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                        pad_token_id=tok.eot_id)
        hf_t.append(time.perf_counter() - t)
    return {"ttft_ours": min(ours_t), "ttft_hf": min(hf_t), "ttft_tokens": len(visible)}


def bpc_check(run_dir: str, n_chars: int) -> None:
    """fp32 against int8 layers on a trained run: bits per character on its validation text, and decode speed."""
    from goushi.data.layout import VAL_JSONL

    fp = Engine.load(run_dir, device="cpu", dtype="float32")
    q8 = Engine.load(run_dir, device="cpu", dtype="float32", quantize="int8")
    data_dir = Path(fp.record.data.dir or "") if fp.record is not None else Path()
    val = data_dir / VAL_JSONL
    if not val.is_file():
        print(f"  int8 bpc: {val} not found; skipped")
        return
    import json

    docs, total = [], 0
    for line in val.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        docs.append(text)
        total += len(text)
        if total >= n_chars:
            break
    print(f"\nint8 on {run_dir}: {q8.quantize_note}")
    results = {}
    for name, eng in (("fp32", fp), ("int8", q8)):
        results[name] = bits_per_char(eng, docs)
    d = results["int8"] - results["fp32"]
    print(f"  bits per character on {total:,} characters of {val}: fp32 {results['fp32']:.4f}, int8 "
          f"{results['int8']:.4f} ({d:+.4f}, {d / results['fp32']:+.2%})")


@torch.inference_mode()
def bits_per_char(engine: Engine, docs: list[str]) -> float:
    """Next-token loss through the engine's own inference path (windows of the context, each token scored once)."""
    tok, T = engine.tokenizer, engine.context_length
    nats, chars = 0.0, 0
    for text in docs:
        ids = [tok.eot_id, *tok.encode(text)]
        chars += len(text)
        for s in range(0, len(ids) - 1, T):
            chunk = torch.tensor([ids[s: s + T + 1]])
            if chunk.size(1) < 2:
                continue
            logits, _ = engine.model(chunk[:, :-1])
            logp = logits.float().log_softmax(-1)
            nats -= logp.gather(2, chunk[:, 1:, None]).sum().item()
    return nats / chars / math.log(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--family", default="gpt2", choices=("gpt2", "llama"),
                    help="model family (llama: HF's LlamaForCausalLM beside ours; the recipes' default family)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="fix torch's intra-op threads (default: goushi's probe decides)")
    ap.add_argument("--no-quantize", dest="quantize", action="store_false", help="skip the int8 engine")
    ap.add_argument("--invariant", action="store_true",
                    help="batch 1 also as Engine(batch_invariant=True): a lone row decoded as the server's batch does")
    ap.add_argument("--compile-decode", action="store_true",
                    help="batch 1 also as Engine(compile_decode=True) (goushi.generation.compiled), interleaved")
    ap.add_argument("--run", help="a trained RUN_DIR: int8's bits-per-character change on its validation text")
    ap.add_argument("--bpc-chars", type=int, default=50_000)
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["GOUSHI_THREADS"] = str(args.threads)
    import transformers

    tok = cjk_tokenizer()
    plan = precision.inference_plan(preset_config(args.presets[0], args.family, vocab_size=VOCAB), torch.device("cpu"))
    plan.apply_threads()
    print(f"CPU: {precision.describe_cpu()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, vocab {VOCAB}, greedy, KV cache; "
          f"tokens/s, best of {args.repeats} interleaved runs")
    for line in plan.lines():
        print(line + (" -- ours and HF alike" if line.startswith("threads") else ""))
    q = " | int8 decode  ratio same" if args.quantize else ""
    head = (f"{'preset':<6} {'batch':>5} {'prompt':>6} {'new':>4} | {'prefill ours':>12} {'HF':>9} {'ratio':>6} | "
            f"{'decode ours':>11} {'HF':>8} {'ratio':>6} | same tokens{q}")
    print(head)
    print("-" * len(head))
    ttft = []
    for preset in args.presets:
        for batch in args.batches:
            r = bench(preset, batch, args.repeats, tok, args.quantize, args.invariant, args.compile_decode,
                      args.family)
            line = (f"{r['preset']:<6} {r['batch']:>5} {r['prompt']:>6} {r['new']:>4} | "
                    f"{r['ours_prefill']:>12.0f} {r['hf_prefill']:>9.0f} {r['ours_prefill'] / r['hf_prefill']:>5.2f}x | "
                    f"{r['ours_decode']:>11.0f} {r['hf_decode']:>8.0f} {r['ours_decode'] / r['hf_decode']:>5.2f}x | "
                    f"{'yes' if r['same_tokens'] else 'NO':>11}")
            if args.quantize:
                line += (f" | {r['int8_decode']:>11.0f} {r['int8_decode'] / r['hf_decode']:>5.2f}x "
                         f"{'yes' if r['int8_same'] else 'no'}")
            print(line, flush=True)
            if "inv_decode" in r:
                print(f"{'':<6} {'':>5} batch-invariant (a lone row as the server's batch runs it): decode "
                      f"{r['inv_decode']:.0f} tokens/s, {r['inv_decode'] / r['hf_decode']:.2f}x HF; ours (single-row "
                      f"kernels) {r['ours_decode'] / r['inv_decode']:.2f}x that", flush=True)
            if "compiled_decode" in r:
                print(f"{'':<6} {'':>5} {r['compile_note']}: decode {r['compiled_decode']:.0f} tokens/s, "
                      f"{r['compiled_decode'] / r['hf_decode']:.2f}x HF, {r['compiled_decode'] / r['ours_decode']:.2f}x "
                      f"ours eager; same tokens: {'yes' if r['compiled_same'] else 'no'}", flush=True)
            if "ttft_ours" in r:
                ttft.append(f"{preset}: ours {r['ttft_ours'] * 1000:.1f} ms, HF {r['ttft_hf'] * 1000:.1f} ms "
                            f"({r['ttft_hf'] / r['ttft_ours']:.2f}x; {r['ttft_tokens']} tokens visible)")
    if ttft:
        print("time to first token, 200-character prompt, batch 1: " + "; ".join(ttft))
    if args.run:
        bpc_check(args.run, args.bpc_chars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
