"""Which decoding settings keep a young model from looping: repetition and diversity of its text per setting,
beside the same statistics of the real continuations.

    .venv/bin/python bench/decoding_defaults.py RUN_DIR [--prompts 24] [--samples 4] [--max-new-tokens 60]

Prompts are the openings (first --prompt-chars characters) of the run's validation documents; the human reference
is what those documents really say next, cut to the same length. For each setting it prints distinct-1, distinct-2
and the repeated 4-gram rate (goushi.eval.metrics, the measures `goushi eval --generate` reports) of the generated
continuations, and the distance to the human text: |repeated-4 - human| + |distinct-2 - human|. Loops show as a
high repeated-4 rate and a low distinct-2; word salad as a distinct-2 above the human one. The settings nearest the
human text are the candidates for defaults. Prints the CPU and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from goushi import rundir
from goushi.engine import Engine, SampleConfig
from goushi.eval.metrics import distinct_n, repeated_ngram_rate

SETTINGS: dict[str, dict] = {
    "greedy": dict(strategy="greedy"),
    "greedy rep1.2": dict(strategy="greedy", repetition_penalty=1.2),
    "greedy no-repeat-3": dict(strategy="greedy", no_repeat_ngram_size=3),
    "greedy rep1.2 no-repeat-4": dict(strategy="greedy", repetition_penalty=1.2, no_repeat_ngram_size=4),
    "beam4 no-repeat-3": dict(strategy="beam", num_beams=4, no_repeat_ngram_size=3),
    "T0.8": dict(strategy="sample", temperature=0.8),
    "T1.0": dict(strategy="sample", temperature=1.0),
    "T0.8 p0.9": dict(strategy="sample", temperature=0.8, top_p=0.9),
    "T0.8 p0.95 rep1.1": dict(strategy="sample", temperature=0.8, top_p=0.95, repetition_penalty=1.1),
    "T0.8 p0.9 rep1.1": dict(strategy="sample", temperature=0.8, top_p=0.9, repetition_penalty=1.1),
    "T0.7 p0.9 rep1.1": dict(strategy="sample", temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    "T0.7 p0.9 rep1.2": dict(strategy="sample", temperature=0.7, top_p=0.9, repetition_penalty=1.2),
    "T0.8 k40 rep1.1": dict(strategy="sample", temperature=0.8, top_k=40, repetition_penalty=1.1),
    "T0.9 minp0.05 rep1.1": dict(strategy="sample", temperature=0.9, min_p=0.05, repetition_penalty=1.1),
    "T0.8 p0.9 no-repeat-4": dict(strategy="sample", temperature=0.8, top_p=0.9, no_repeat_ngram_size=4),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def openings(run_dir: str, n: int, prompt_chars: int, cont_chars: int) -> tuple[list[str], list[str]]:
    val = rundir.val_jsonl_for_run(run_dir)
    if val is None:
        sys.exit(f"error: {run_dir}: its data directory has no val.jsonl to take prompts from")
    prompts, human = [], []
    for line in val.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"].replace("\n", "")
        if len(text) >= prompt_chars + cont_chars:
            prompts.append(text[:prompt_chars])
            human.append(text[prompt_chars:prompt_chars + cont_chars])
        if len(prompts) == n:
            break
    if not prompts:
        sys.exit(f"error: {val}: no document of {prompt_chars + cont_chars}+ characters; lower --max-new-tokens")
    return prompts, human


def stats(texts: list[str]) -> tuple[float, float, float]:
    return distinct_n(texts, 1), distinct_n(texts, 2), repeated_ngram_rate(texts, 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", metavar="RUN_DIR")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--prompt-chars", type=int, default=6)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt for the sampling settings")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    engine = Engine.load(args.run, device=args.device)
    prompts, human = openings(args.run, args.prompts, args.prompt_chars, args.max_new_tokens)
    h1, h2, h4 = stats(human)
    print(f"run {args.run}: {len(prompts)} prompts of {args.prompt_chars} characters, {args.max_new_tokens} new tokens")
    print(f"\n{'setting':<24} {'distinct-1':>10} {'distinct-2':>10} {'repeated-4':>10} {'distance':>9} {'s':>5}")
    print(f"{'human continuation':<24} {h1:>10.3f} {h2:>10.3f} {h4:>10.1%} {0:>9.3f}")
    rows = []
    for name, kw in SETTINGS.items():
        n = 1 if kw["strategy"] in ("greedy", "beam") else args.samples
        cfg = SampleConfig(max_new_tokens=args.max_new_tokens, num_samples=n, seed=0, **kw)
        t = time.perf_counter()
        texts = [g.text for g in engine.generate(prompts, cfg)]
        # distinct-n falls as the pool grows: measure pools of one text per prompt, like the human one, averaged
        groups = [stats(texts[k::n]) for k in range(n)]
        d1, d2, r4 = (sum(g[i] for g in groups) / n for i in range(3))
        dist = abs(r4 - h4) + abs(d2 - h2)
        rows.append((dist, name, texts[0]))
        print(f"{name:<24} {d1:>10.3f} {d2:>10.3f} {r4:>10.1%} {dist:>9.3f} {time.perf_counter() - t:>5.0f}",
              flush=True)
    rows.sort()
    print("\nnearest the human text: " + ", ".join(f"{n} ({d:.3f})" for d, n, _ in rows[:3]))
    for _, name, text in rows[:3] + rows[-1:]:
        print(f"  {name}: {prompts[0]}{text[:60]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
