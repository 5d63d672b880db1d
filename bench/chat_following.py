"""Does a chat run follow the instruction? For the demo's review pairs: how many answers to 写一条好评 and to
写一条差评 contain typical positive and negative review words. Prints counts per prompt, and the CPU it ran on.

    python bench/chat_following.py demo_out/chat [--samples 40] [--seed 1]

A word list is a blunt instrument (a review can praise one thing and curse another), so read the two rows
against each other: a run that follows the instruction has more positive words after 好评 than after 差评,
and more negative words after 差评 than after 好评.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from goushi.engine import Engine, SampleConfig

POSITIVE = ("不错", "满意", "喜欢", "好评", "推荐", "值得", "很好", "方便", "干净", "热情")
NEGATIVE = ("差", "失望", "不好", "垃圾", "后悔", "糟糕", "太慢", "退", "不满", "脏")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def follow_counts(engine: Engine, prompt: str, samples: int, seed: int) -> tuple[int, int, list[str]]:
    """(answers with positive words, answers with negative words, the answers) to `prompt`, sampled as the page
    samples chat answers."""
    cfg = SampleConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_new_tokens=60, num_samples=samples,
                       seed=seed)
    texts = [g.text for g in engine.chat([{"role": "user", "content": prompt}], cfg)]
    return sum(any(w in t for w in POSITIVE) for t in texts), sum(any(w in t for w in NEGATIVE) for t in texts), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="chat runs (from `goushi sft`)")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}")
    for run in args.runs:
        engine = Engine.load(run, device="cpu")
        for prompt in ("写一条好评", "写一条差评"):
            pos, neg, texts = follow_counts(engine, prompt, args.samples, args.seed)
            print(f"{run}  {prompt}: {pos}/{len(texts)} answers with positive words, {neg}/{len(texts)} with negative "
                  f"words; first: {texts[0][:40]}")


if __name__ == "__main__":
    main()
