"""Generation throughput: our engine beside Hugging Face `generate` on the same weights.

    .venv/bin/python bench/generate_throughput.py [--presets tiny small] [--batches 1 8] [--repeats 3] [--threads N]

For each preset (gpt2 family, random weights, vocabulary 6000) the same model is loaded into
`transformers.GPT2LMHeadModel` (goushi.hf.to_hf), and both decode the same prompts greedily with a KV
cache for the same number of tokens (end-of-text is suppressed on both sides, so lengths match).
Prefill tokens/s = batch x prompt tokens / time of a 1-token generation; decode tokens/s = batch x
(new - 1) / (time of the full generation - time of the 1-token one). Best of --repeats interleaved runs.
Figures are printed, never asserted: a shared CPU is noisy.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

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


def bench(preset: str, batch: int, repeats: int, tok: Tokenizer) -> dict:
    torch.manual_seed(0)
    cfg = preset_config(preset, "gpt2", vocab_size=VOCAB)
    model = GPT(cfg).eval()
    hf = to_hf(model, eot_id=tok.eot_id)
    engine = Engine(model, tok)
    prompt_len = cfg.context_length // 2  # tokens, including the leading <|endoftext|>
    new = cfg.context_length - prompt_len - 1
    rng = random.Random(batch)
    prompts = ["".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(prompt_len - 1)) for _ in range(batch)]
    ids = torch.tensor([[tok.eot_id, *tok.encode(p)] for p in prompts])
    assert ids.shape == (batch, prompt_len)
    mask = torch.ones_like(ids)

    def ours(n: int):
        return engine.generate(prompts, SampleConfig(strategy="greedy", max_new_tokens=n, min_new_tokens=n))

    def theirs(n: int):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               use_cache=True, pad_token_id=tok.eot_id)

    # Same weights, same greedy rule: the tokens must agree (a check that the comparison is fair).
    ours_ids = [g.token_ids for g in ours(new)]
    theirs_ids = theirs(new)[:, prompt_len:].tolist()
    agree = ours_ids == theirs_ids
    row = dict(preset=preset, batch=batch, prompt=prompt_len, new=new, same_tokens=agree)
    # Interleaved, so a burst of load from other processes hits both sides alike; the fastest run is
    # the one least disturbed (as timeit recommends).
    runs = {(name, n): [] for name in ("ours", "hf") for n in (1, new)}
    for _ in range(repeats):
        for (name, n), times in runs.items():
            fn = ours if name == "ours" else theirs
            t = time.perf_counter()
            fn(n)
            times.append(time.perf_counter() - t)
    for name in ("ours", "hf"):
        t1, tn = min(runs[name, 1]), min(runs[name, new])
        row[f"{name}_prefill"] = batch * prompt_len / t1
        row[f"{name}_decode"] = batch * (new - 1) / max(tn - t1, 1e-9)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    tok = cjk_tokenizer()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"vocab {VOCAB}, greedy, KV cache, fp32 CPU; tokens/s, best of {args.repeats}")
    head = (f"{'preset':<6} {'batch':>5} {'prompt':>6} {'new':>4} | {'prefill ours':>12} {'HF':>9} {'ratio':>6} | "
            f"{'decode ours':>11} {'HF':>8} {'ratio':>6} | same tokens")
    print(head)
    print("-" * len(head))
    for preset in args.presets:
        for batch in args.batches:
            r = bench(preset, batch, args.repeats, tok)
            print(f"{r['preset']:<6} {r['batch']:>5} {r['prompt']:>6} {r['new']:>4} | "
                  f"{r['ours_prefill']:>12.0f} {r['hf_prefill']:>9.0f} {r['ours_prefill'] / r['hf_prefill']:>5.2f}x | "
                  f"{r['ours_decode']:>11.0f} {r['hf_decode']:>8.0f} {r['ours_decode'] / r['hf_decode']:>5.2f}x | "
                  f"{'yes' if r['same_tokens'] else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
