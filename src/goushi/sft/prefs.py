"""Preference pairs for DPO: a JSONL file of prompts, each with a better and a worse answer, as token ids and
masks, and the batch source that feeds them to the one trainer.

Each line is one row, in any of the formats TRL's DPO trainer reads:

    {"prompt": "写一条好评", "chosen": "……", "rejected": "……", "system": "……"}         (system optional)
    {"messages": [..., {"role": "user", ...}], "chosen": "……", "rejected": "……"}      (the conversation so far)
    {"prompt": [messages], "chosen": [{"role": "assistant", "content": "……"}], "rejected": [...]}
    {"chosen": [whole conversation], "rejected": [whole conversation]}   (the prompt is what the two share)
    {"prompt" | "messages", "completion": "……", "label": true | false}   (one answer rated 👍 / 👎: the page's)
    {"prefix": "今天我终于", "chosen": "……", "rejected": "……"}            (a plain text continued, no chat template:
                                                                          the page's Generate tab; rated too)

Other keys are ignored, except "source" (counted per value for the model card). Rated answers are paired up
per prompt, each 👍 answer with a 👎 one in file order (the pair is named by the first of its two lines); a
rated answer left without a partner is counted, not trained, and not an error: its partner may come later.

Each side is the prompt plus its answer rendered by the run's chat template (goushi.chat), as `goushi sft`
renders a row, but only the final answer and its end-of-turn token are targets: earlier assistant turns are
part of the prompt. A "prefix" row is <|endoftext|>, the prefix and the continuation, each encoded on its own
(no token straddles the boundary), as the engine continues a text; only the continuation is scored. A side longer than the context loses its oldest prompt tokens (sft.data.fit_context).
A bad row (file and line) is skipped and counted, or refuses the run with `strict`; a chosen answer identical
to the rejected one is a bad row (nothing to prefer).

A batch of P pairs is 2P rows, chosen and rejected interleaved (row 2i chosen, 2i+1 its rejected answer), each
padded to the longest row of the batch: the trainer's usual (x, y), so splitting a batch between processes
keeps pairs together. Rows are never packed: each answer's log-probability must depend on its own prompt only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from goushi.chat import ChatTemplate
from goushi.errors import GoushiError
from goushi.model import IGNORE_INDEX
from goushi.run_record import DataRecord, DpoRecord
from goushi.sft.data import (
    credited_sources,
    fit_context,
    read_jsonl,
    row_messages,
    row_source,
    split_rows,
    window_batch,
)
from goushi.tokenizer import Tokenizer
from goushi.train.source import Batch

ROWS = "{\"prompt\" | \"messages\", \"chosen\", \"rejected\"} rows"


@dataclass
class Side:
    """One answer as it is trained: the ids of prompt + answer, and which are targets (the answer's)."""

    text: str
    ids: list[int]
    mask: list[bool]
    truncated: bool = False

    @property
    def answer_ids(self) -> list[int]:
        return [i for i, m in zip(self.ids, self.mask, strict=True) if m]


@dataclass
class PrefRow:
    line: int  # 1-based line in the file (the first of the two for a pair of rated answers)
    prompt: list[dict[str, str]] | str  # the conversation up to the user's last message, or a text to continue
    chosen: Side
    rejected: Side
    source: str

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def chars(self) -> int:
        prompt = len(self.prompt) if isinstance(self.prompt, str) else sum(len(m["content"]) for m in self.prompt)
        return prompt + len(self.chosen.text) + len(self.rejected.text)


@dataclass
class PrefFile:
    path: Path
    rows: list[PrefRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: why", one per skipped row
    lines: int = 0
    unpaired: int = 0  # rated answers without a partner of the other rating for their prompt

    @property
    def truncated(self) -> int:
        return sum(r.truncated for r in self.rows)


def _answer(obj: dict[str, Any], key: str) -> str:
    """A side's answer: a string, or an assistant message (alone, or as the one item of a list)."""
    v = obj[key]
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, dict):
        if v.get("role") != "assistant":
            raise GoushiError(f"\"{key}\": a message answering the prompt must have role \"assistant\", not "
                              f"{v.get('role')!r}")
        v = v.get("content")
    if not isinstance(v, str):
        raise GoushiError(f"\"{key}\" must be a string or one assistant message, not {type(v).__name__}")
    if not v.strip():
        raise GoushiError(f"\"{key}\" is empty")
    return v


def _prompt(obj: dict[str, Any]) -> list[dict[str, str]] | str:
    """The conversation a row's answers answer, from "messages", "prompt" (text or messages) and "system"; or the
    text they continue ("prefix")."""
    if "prefix" in obj:
        if not isinstance(obj["prefix"], str):
            raise GoushiError(f"\"prefix\" must be a string (the text the answers continue), not "
                              f"{type(obj['prefix']).__name__}")
        return obj["prefix"]
    if "messages" in obj:
        msgs = obj["messages"]
    elif isinstance(obj.get("prompt"), str):
        msgs = [{"role": "user", "content": obj["prompt"]}]
    elif isinstance(obj.get("prompt"), list):
        msgs = obj["prompt"]
    elif "prompt" in obj:
        raise GoushiError(f"\"prompt\" must be a string or a list of messages, not {type(obj['prompt']).__name__}")
    else:
        raise GoushiError("no \"prompt\" and no \"messages\" (a row is {\"prompt\" | \"messages\", \"chosen\", "
                          "\"rejected\"})")
    if not isinstance(msgs, list):
        raise GoushiError("\"messages\" must be a list of {\"role\", \"content\"} objects")
    if obj.get("system") is not None:
        if not isinstance(obj["system"], str):
            raise GoushiError("\"system\" must be a string")
        msgs = [{"role": "system", "content": obj["system"]}, *msgs]
    if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
        raise GoushiError("the prompt must end with the user's message (the answers answer it)")
    # The same checks as a chat row's, on the prompt with a stand-in answer.
    return row_messages({"messages": [*msgs, {"role": "assistant", "content": "…"}]})[:-1]


def _implicit(obj: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """TRL's implicit-prompt rows: chosen and rejected are whole conversations; the prompt is what they share."""
    c, r = obj["chosen"], obj["rejected"]
    if not (isinstance(c, list) and isinstance(r, list)):
        raise GoushiError("no \"prompt\" and no \"messages\" (a row is {\"prompt\" | \"messages\", \"chosen\", "
                          "\"rejected\"}, or chosen and rejected are whole conversations)")
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    if len(c) != n + 1 or len(r) != n + 1:
        raise GoushiError("chosen and rejected conversations must differ only in their last (assistant) message")
    return _prompt({"messages": c[:n]}), _answer({"chosen": c[n]}, "chosen"), _answer({"rejected": r[n]}, "rejected")


def encode_side(tokenizer: Tokenizer, template: ChatTemplate, prompt: list[dict[str, str]] | str, answer: str,
                context: int) -> Side:
    """Prompt + answer as the model reads them; targets only on the answer (and its end-of-turn token)."""
    if isinstance(prompt, str):  # a text continued: no template, no end token (the text may go on)
        head, tail = tokenizer.encode(prompt), tokenizer.encode(answer)
        ids, mask = [tokenizer.eot_id, *head, *tail], [False] * (1 + len(head)) + [True] * len(tail)
        ids, mask, cut = fit_context(ids, mask, context, tokenizer.eot_id)
        return Side(answer, ids, mask, cut)
    ids, mask = template.encode(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
    start = len(mask)  # the final answer is the last run of targets; earlier answers are prompt here
    while start > 0 and mask[start - 1]:
        start -= 1
    mask = [False] * start + mask[start:]
    ids, mask, cut = fit_context(ids, mask, context, tokenizer.eot_id)
    return Side(answer, ids, mask, cut)


@dataclass
class _Rated:
    line: int
    prompt: list[dict[str, str]] | str
    text: str
    good: bool
    source: str


def read_pref_file(path: str | Path, tokenizer: Tokenizer, template: ChatTemplate, context: int, *,
                   strict: bool = False) -> PrefFile:
    out = PrefFile(Path(path))
    rated: dict[str, list[_Rated]] = {}

    def pair(line: int, prompt: list[dict[str, str]] | str, chosen: str, rejected: str, source: str) -> None:
        c = encode_side(tokenizer, template, prompt, chosen, context)
        r = encode_side(tokenizer, template, prompt, rejected, context)
        if c.answer_ids == r.answer_ids:
            raise GoushiError("\"chosen\" and \"rejected\" are the same answer" + ("" if chosen == rejected else
                              " to this tokenizer") + ": nothing to prefer; change one or drop the row")
        out.rows.append(PrefRow(line, prompt, c, r, source))

    def parse(n: int, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise GoushiError(f"expected a JSON object, got {type(obj).__name__}")
        if "completion" in obj or "label" in obj:
            if not isinstance(obj.get("label"), bool):
                raise GoushiError("\"label\" must be true (a good answer) or false (a bad one) beside \"completion\"")
            prompt, text = _prompt(obj), _answer(obj, "completion")
            rated.setdefault(json.dumps(prompt, ensure_ascii=False), []).append(
                _Rated(n, prompt, text, obj["label"], row_source(obj, out.path)))
            return
        for k in ("chosen", "rejected"):
            if k not in obj:
                raise GoushiError(f"no \"{k}\" (a row is {{\"prompt\" | \"messages\", \"chosen\", \"rejected\"}})")
        if "messages" in obj or "prompt" in obj or "prefix" in obj:
            prompt, chosen, rejected = _prompt(obj), _answer(obj, "chosen"), _answer(obj, "rejected")
        else:
            prompt, chosen, rejected = _implicit(obj)
        pair(n, prompt, chosen, rejected, row_source(obj, out.path))

    out.lines, out.problems = read_jsonl(out.path, parse, strict=strict, rows=ROWS)
    for answers in rated.values():
        good = [a for a in answers if a.good]
        bad = [a for a in answers if not a.good]
        for g, b in zip(good, bad, strict=False):
            first, second = sorted((g.line, b.line))
            try:
                pair(first, g.prompt, g.text, b.text, g.source)
            except GoushiError as e:
                problem = f"{out.path}:{first}: with line {second}: {e}"
                if strict:
                    raise GoushiError(f"{problem} (drop --strict to skip bad rows)") from None
                out.problems.append(problem)
        out.unpaired += abs(len(good) - len(bad))
    out.rows.sort(key=lambda r: r.line)
    return out


def split_pairs(rows: list[PrefRow], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) pair indices: a seeded share held out, where pairs of the same two answers (one preferred
    for one prompt, the other for another: reviews-prefs asks for both kinds with each pair of reviews) fall on
    the same side. Else a held-out pair's mirror trains, and a model that does not read the prompt scores below
    chance on the held-out pairs rather than at it."""
    groups: dict[frozenset[str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(frozenset((r.chosen.text, r.rejected.text)), []).append(i)
    members = list(groups.values())
    if len(members) < 2:  # one group: nothing to keep apart, split the rows themselves
        return split_rows(len(rows), val_fraction, seed)
    train, val = split_rows(len(members), val_fraction, seed)
    return sorted(i for g in train for i in members[g]), sorted(i for g in val for i in members[g])


class PrefData:
    """A BatchSource (goushi.train.source) over a preference file: held-out pairs for evaluation, the rest in a
    seeded order per epoch. The epoch and the cursor into it are saved with the trainer state for exact resume."""

    tokens_per_char = None  # the DPO loss is no per-character quantity

    def __init__(self, prefs: PrefFile, tokenizer: Tokenizer, template: ChatTemplate, *, context: int,
                 val_fraction: float, seed: int, beta: float, reference: str, credit: dict[str, Any] | None = None,
                 base_data_dir: str | None = None, base_data_card: Path | None = None, rpo_alpha: float = 0.0):
        if not 0 < val_fraction < 1:
            raise GoushiError(f"--val-fraction {val_fraction}: must be in (0, 1); evaluation needs held-out pairs")
        n = len(prefs.rows)
        if n < 2:
            raise GoushiError(f"--data {prefs.path}: {n} usable pair(s) of {prefs.lines} lines; at least 2 are needed "
                              "(one is held out for evaluation)"
                              + (f"; first problem: {prefs.problems[0]}" if prefs.problems else "")
                              + (f"; {prefs.unpaired} rated answer(s) wait for a partner of the other rating"
                                 if prefs.unpaired else ""))
        self.prefs, self.tokenizer, self.template = prefs, tokenizer, template
        self.context, self.seed, self.val_fraction = context, seed, val_fraction
        self.beta, self.reference, self.rpo_alpha = beta, reference, rpo_alpha
        self.vocab_size = tokenizer.vocab_size
        self.credit = dict(credit or {})
        self.base_data_dir, self.base_data_card = base_data_dir, base_data_card
        self.train_pairs, self.val_pairs = split_pairs(prefs.rows, val_fraction, seed)
        self.trained_tokens = sum(sum(s.mask) for i in self.train_pairs
                                  for s in (prefs.rows[i].chosen, prefs.rows[i].rejected))
        self.epoch, self.cursor = 0, 0
        self._order: list[int] | None = None

    def steps_for_epochs(self, epochs: float, batch: int) -> int:
        return max(1, math.ceil(epochs * len(self.train_pairs) / batch))

    def _order_for(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return [self.train_pairs[i] for i in torch.randperm(len(self.train_pairs), generator=g).tolist()]

    def _tensors(self, pairs: list[int]) -> Batch:
        sides = [(s.ids, s.mask) for i in pairs for s in (self.prefs.rows[i].chosen, self.prefs.rows[i].rejected)]
        return window_batch(sides, max(len(ids) for ids, _ in sides) - 1, self.tokenizer.eot_id)

    # ---- BatchSource -----------------------------------------------------------------------------
    def check_context(self, context: int) -> None:
        if context != self.context:
            raise GoushiError(f"preference rows were fitted to context {self.context}, the model has {context}")

    def train_batch(self, batch: int, context: int, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> Batch:
        """This process's share of the next `batch` pairs (2 rows each) of the epoch's order; the next epoch
        begins when one ends. `generator` is not needed: the order is fixed by the seed and the epoch."""
        chosen: list[int] = []
        while len(chosen) < batch:
            if self._order is None:
                self._order = self._order_for(self.epoch)
            take = self._order[self.cursor: self.cursor + batch - len(chosen)]
            chosen += take
            self.cursor += len(take)
            if self.cursor >= len(self._order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        per = batch // world
        return self._tensors(chosen[rank * per: (rank + 1) * per])

    def val_batches(self, n_batches: int, batch: int, context: int, rank: int = 0,
                    world: int = 1) -> Iterator[Batch]:
        pairs = self.val_pairs[: n_batches * batch]
        per = math.ceil(len(pairs) / world)
        mine = pairs[rank * per: (rank + 1) * per]
        for i in range(0, len(mine), batch):
            yield self._tensors(mine[i: i + batch])

    def count_tokens(self, targets: torch.Tensor) -> int:
        return int((targets != IGNORE_INDEX).sum())

    def sample_prompt(self) -> list[dict[str, str]] | str:
        """The first held-out prompt: the sample printed at evaluations is the model's answer to it (or its
        continuation of a prefix)."""
        return self.prefs.rows[self.val_pairs[0]].prompt

    def sources(self) -> dict[str, dict[str, Any]]:
        """Pairs per "source" value (or the file's name), with the credit given for the file."""
        return credited_sources([(r.source, r.chars) for r in self.prefs.rows], self.credit)

    def data_record(self) -> DataRecord:
        meta = {"tokenizer_kind": self.tokenizer.kind, "train_docs": len(self.train_pairs),
                "val_docs": len(self.val_pairs), "train_tokens": self.trained_tokens, "sources": self.sources()}
        # The verbatim-copy index stays the pre-training data's: the answers a tuned model writes come from there.
        return DataRecord(dir=self.base_data_dir, file=str(self.prefs.path.resolve()),
                          tokenizer_hash=self.tokenizer.hash(), meta=meta)

    def record_fields(self) -> dict[str, Any]:
        p = self.prefs
        dpo = DpoRecord(data=str(p.path.resolve()), pairs=len(p.rows), train_pairs=len(self.train_pairs),
                        val_pairs=len(self.val_pairs), skipped_rows=len(p.problems), unpaired_rows=p.unpaired,
                        truncated_rows=p.truncated, trained_tokens=self.trained_tokens, beta=self.beta,
                        reference=self.reference, val_fraction=self.val_fraction, seed=self.seed, credit=self.credit,
                        # DpoRecord has no field for it (goushi.run_record); its extra keys are kept and read back
                        extra={"rpo_alpha": self.rpo_alpha} if self.rpo_alpha else {})
        return {"dpo": dpo, "chat_template": self.template}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state.get("epoch", 0)), int(state.get("cursor", 0))
        self._order = None

    def data_card(self) -> Path | None:
        """The starting run's card: the pre-training sources (the preference data's are in the model card)."""
        return self.base_data_card if self.base_data_card is not None and self.base_data_card.is_file() else None


__all__ = ["Side", "PrefRow", "PrefFile", "PrefData", "encode_side", "read_pref_file", "split_pairs", "ROWS"]
