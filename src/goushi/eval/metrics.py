"""How good is a model on text, and how varied (and how copied) is what it writes?

Text metrics: every document is scored token by token with a sliding window, so a document longer
than the model's context is never cut off and every token is scored exactly once. Losses are summed
in nats and converted at the end:

    loss = nats / tokens            (per token, what training prints)
    ppl  = exp(loss)
    bpc  = nats / ln 2 / characters (compare across tokenizers with this, or with bpb)
    bpb  = nats / ln 2 / UTF-8 bytes

Generation metrics work on characters, the natural unit for Chinese.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from goushi.data.textindex import copied_char_mask
from goushi.errors import GoushiError

DOC_SPLITS = ("blank", "line", "none")
# Tokens per forward batch; bounds the (batch, T, vocab) logits tensor on small machines.
BATCH_TOKENS = 8192


# ---- reading held-out text -----------------------------------------------------------------
def read_documents(path: str | Path, split: str = "blank") -> list[str]:
    """Documents of a text file: paragraphs (`blank`), lines (`line`) or the whole file (`none`).

    A `.jsonl` file holds one `{"text": ...}` per line (the DATA_DIR/val.jsonl format) and ignores `split`.
    """
    p = Path(path)
    if split not in DOC_SPLITS:
        raise GoushiError(f"--doc-split {split!r}: choose one of {', '.join(DOC_SPLITS)}")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise GoushiError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise GoushiError(f"{p}: is a directory; pass text files") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GoushiError(
            f"{p}: not UTF-8 (byte {e.start}); convert it, e.g. `iconv -f GBK -t UTF-8 {p.name} > new.txt`"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if p.suffix.lower() == ".jsonl":
        docs = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GoushiError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise GoushiError(f"{p}:{n}: needs a string field \"text\" (one {{\"text\": ...}} per line)")
            if obj["text"].strip():
                docs.append(obj["text"])
        return docs
    if split == "none":
        parts = [text]
    elif split == "line":
        parts = text.split("\n")
    else:
        parts = re.split(r"\n[ \t\u3000]*\n", text)
    return [d.strip() for d in parts if d.strip()]


# ---- sliding-window scoring ----------------------------------------------------------------
def window_plan(n_targets: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence s[0..n_targets] whose targets are s[1..n_targets].

    Returns (a, b, first): feed s[a:b], predict s[a+1:b+1], and score only target positions
    first..b (1-based in s). Every target is scored once; after the first window each scored token has at
    least `context - stride` tokens of left context, and the last window ends at the document's end.
    """
    if context < 1:
        raise GoushiError(f"context_length={context}: must be at least 1")
    if not 1 <= stride <= context:
        raise GoushiError(f"--context-stride {stride}: must be between 1 and the context length {context}")
    plan: list[tuple[int, int, int]] = []
    if n_targets <= 0:
        return plan
    b = min(context, n_targets)
    plan.append((0, b, 1))
    while b < n_targets:
        nb = min(b + stride, n_targets)
        plan.append((max(0, nb - context), nb, b + 1))
        b = nb
    return plan


@dataclass
class TextScore:
    """Summed loss over some documents; add two together with `+`."""

    nats: float = 0.0
    tokens: int = 0
    chars: int = 0
    bytes: int = 0
    docs: int = 0

    def __add__(self, other: TextScore) -> TextScore:
        return TextScore(self.nats + other.nats, self.tokens + other.tokens, self.chars + other.chars,
                         self.bytes + other.bytes, self.docs + other.docs)

    def to_dict(self) -> dict[str, Any]:
        loss = self.nats / self.tokens if self.tokens else float("nan")
        bits = self.nats / math.log(2)
        return {
            "loss": loss,
            "ppl": math.exp(loss) if self.tokens else float("nan"),
            "bpc": bits / self.chars if self.chars else float("nan"),
            "bpb": bits / self.bytes if self.bytes else float("nan"),
            "tokens": self.tokens,
            "chars": self.chars,
            "bytes": self.bytes,
            "docs": self.docs,
            "chars_per_token": self.chars / self.tokens if self.tokens else float("nan"),
        }


@torch.no_grad()
def score_documents(model: torch.nn.Module, tokenizer: Any, docs: Iterable[str], *, context_length: int,
                    stride: int | None = None, eot_id: int | None = None, batch_tokens: int = BATCH_TOKENS) -> TextScore:
    """Sum of next-token losses over `docs`, each scored on its own.

    Each document is preceded by `<|endoftext|>` (as in train.bin, where every document follows one), so
    its first token is scored too and the characters counted are exactly the document's. The closing
    `<|endoftext|>` is not scored: it stands for no character of the text.
    `stride` defaults to half the context; `stride=1` gives every token the most context, at most cost.
    """
    stride = max(1, context_length // 2) if stride is None else stride
    eot = tokenizer.eot_id if eot_id is None else eot_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    score = TextScore()
    pending: list[tuple[list[int], list[int]]] = []  # (inputs, targets with -100 where not scored)
    batch = max(1, batch_tokens // context_length)

    def flush() -> None:
        if not pending:
            return
        width = max(len(x) for x, _ in pending)
        # Right padding is harmless under a causal mask: real positions never see the pad after them.
        x = torch.tensor([xs + [eot] * (width - len(xs)) for xs, _ in pending], dtype=torch.long, device=device)
        y = torch.tensor([ys + [-100] * (width - len(ys)) for _, ys in pending], dtype=torch.long, device=device)
        logits, _ = model(x)
        if logits.shape[:2] != x.shape:
            raise GoushiError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}")
        score.nats += float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                            ignore_index=-100, reduction="sum"))
        pending.clear()

    for doc in docs:
        ids = tokenizer.encode(doc)
        if not ids:
            continue
        seq = [eot, *ids]
        score.docs += 1
        score.chars += len(doc)
        score.bytes += len(doc.encode("utf-8"))
        score.tokens += len(ids)
        for a, b, first in window_plan(len(ids), context_length, stride):
            targets = seq[a + 1:b + 1]
            skip = first - (a + 1)  # targets before `first` were scored by an earlier window
            pending.append((seq[a:b], [-100] * skip + targets[skip:]))
            if len(pending) >= batch:
                flush()
    flush()
    model.train(was_training)
    return score


def evaluate_files(model: torch.nn.Module, tokenizer: Any, paths: Sequence[str | Path], *, context_length: int,
                   stride: int | None = None, split: str = "blank") -> dict[str, Any]:
    """Per-file and overall {loss, ppl, bpc, bpb, tokens, chars, ...} for held-out text files."""
    if not paths:
        raise GoushiError("--text: give at least one text file to evaluate")
    files: dict[str, Any] = {}
    total = TextScore()
    for p in paths:
        docs = read_documents(p, split)
        if not docs:
            raise GoushiError(f"{p}: no text to evaluate (the file is empty)")
        s = score_documents(model, tokenizer, docs, context_length=context_length, stride=stride)
        files[str(p)] = s.to_dict()
        total = total + s
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or tokenizer.vocab_size
    return {
        "overall": total.to_dict(),
        "files": files,
        "context_length": context_length,
        "stride": max(1, context_length // 2) if stride is None else stride,
        # "Is my loss normal?": what a model guessing uniformly over the vocabulary would score.
        "uniform_loss": math.log(vocab),
    }


# ---- generation metrics --------------------------------------------------------------------
def _ngrams(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(len(text) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct character n-grams / all character n-grams, over all texts together (0 when there are none)."""
    if n < 1:
        raise GoushiError(f"distinct-n: n={n} must be at least 1")
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(_ngrams(t, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float:
    """Share of character n-grams that repeat an earlier n-gram of the same text (loops score high)."""
    repeats = total = 0
    for t in texts:
        seen: set[str] = set()
        for g in _ngrams(t, n):
            total += 1
            if g in seen:
                repeats += 1
            seen.add(g)
    return repeats / total if total else 0.0


def memorisation_rate(texts: Sequence[str], index: Any, min_chars: int = 8) -> tuple[float, list[list[Any]]]:
    """Share of generated characters inside spans copied verbatim from the training data, and the spans."""
    copied = total = 0
    spans_per_text = []
    for t in texts:
        spans = index.find_copied_spans(t, min_chars)
        spans_per_text.append(spans)
        copied += int(copied_char_mask(len(t), spans).sum())
        total += len(t)
    return (copied / total if total else 0.0), spans_per_text


def generation_metrics(texts: Sequence[str], *, index: Any = None, min_chars: int = 8,
                       repeat_n: int = 4) -> dict[str, Any]:
    """distinct-1/2, repeated-n-gram rate, mean length and (with a provenance index) the memorisation rate."""
    out: dict[str, Any] = {
        "samples": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        f"repeated_{repeat_n}gram_rate": repeated_ngram_rate(texts, repeat_n),
        "mean_chars": sum(map(len, texts)) / len(texts) if texts else 0.0,
    }
    if index is not None:
        rate, _ = memorisation_rate(texts, index, min_chars)
        out["memorisation_rate"] = rate
        out["memorisation_min_chars"] = min_chars
    return out


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line; `\\n` inside a line stands for a newline in the prompt."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GoushiError(f"--prompts {p}: file not found") from None
    except UnicodeDecodeError:
        raise GoushiError(f"--prompts {p}: not UTF-8; save it as UTF-8") from None
    prompts = [line.rstrip("\r").replace("\\n", "\n") for line in text.split("\n") if line.strip()]
    if not prompts:
        raise GoushiError(f"--prompts {p}: no prompts (write one per line)")
    return prompts


def evaluate_generation(engine: Any, prompts: Sequence[str], sample_cfg: Any, *, index: Any = None,
                        min_chars: int = 8, keep_samples: int = 20) -> dict[str, Any]:
    """Generate `sample_cfg.num_samples` continuations per prompt with `engine` and measure them.

    Metrics are computed on the generated continuations only (the prompt is the user's text, not the
    model's). Returns {"metrics": {...}, "samples": [{prompt, text, finish_reason, copied: [span dicts]}]}
    with at most `keep_samples` samples kept for the report.
    """
    gens = engine.generate(list(prompts), sample_cfg)
    texts = [g.text for g in gens]
    metrics = generation_metrics(texts, index=index, min_chars=min_chars)
    metrics["mean_tokens"] = sum(len(g.token_ids) for g in gens) / len(gens) if gens else 0.0
    metrics["prompts"] = len(prompts)
    spans = memorisation_rate(texts, index, min_chars)[1] if index is not None else [[] for _ in gens]
    samples = [{"prompt": g.prompt, "text": g.text, "finish_reason": g.finish_reason,
                "copied": [s.to_dict() for s in sp]} for g, sp in zip(gens, spans, strict=True)]
    settings = {k: getattr(sample_cfg, k) for k in ("strategy", "temperature", "top_k", "top_p", "repetition_penalty",
                                                    "max_new_tokens", "num_samples", "seed") if hasattr(sample_cfg, k)}
    return {"metrics": metrics, "settings": settings, "samples": samples[:keep_samples]}


__all__ = [
    "DOC_SPLITS",
    "TextScore",
    "read_documents",
    "window_plan",
    "score_documents",
    "evaluate_files",
    "distinct_n",
    "repeated_ngram_rate",
    "memorisation_rate",
    "generation_metrics",
    "read_prompts",
    "evaluate_generation",
]
