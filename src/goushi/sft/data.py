"""Chat fine-tuning data: a JSONL file of conversations, turned into packed batches with a loss mask.

Each line is one row:

    {"prompt": "讲个笑话", "response": "……", "system": "你是段子手"}          (system optional)
    {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}  (multi-turn; every answer is trained)

Other keys are ignored, except "source", which is counted per value for the model card. A row is rendered
by the run's chat template (goushi.chat) into ids and a mask that is True only on the assistant's tokens
and their end-of-turn token. A row longer than the context keeps its end: the oldest tokens of the prompt
side are cut (the last answer is always whole), and the count is reported. Bad rows are reported with
file and line and skipped, or the run is refused (`strict`); a file that yields no trainable token is refused.

Rows are packed: whole rows, in a shuffled order per epoch, are laid end to end into sequences of at most
context + 1 tokens (each row starts with <|endoftext|>, as every document did in pre-training), and the
rest of a sequence is padding that carries no loss. So no CPU time goes to padding short rows to the context.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from goushi.chat import ChatTemplate, normalize_messages
from goushi.errors import GoushiError
from goushi.model import IGNORE_INDEX
from goushi.run_record import DataRecord, SftRecord
from goushi.tokenizer import Tokenizer
from goushi.train.source import Batch

MAX_REPORTED = 10  # bad rows named one by one; the rest are counted


@dataclass
class ChatRow:
    line: int  # 1-based line in the file
    messages: list[dict[str, str]]
    ids: list[int]
    mask: list[bool]  # mask[i]: ids[i] is a training target
    source: str
    answer_chars: int  # characters of the trained answers (with one per end-of-turn token)
    truncated: bool = False


@dataclass
class ChatFile:
    path: Path
    rows: list[ChatRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: why", one per skipped row
    lines: int = 0

    @property
    def truncated(self) -> int:
        return sum(r.truncated for r in self.rows)


def row_messages(obj: Any) -> list[dict[str, str]]:
    """The conversation of one row, in either format; GoushiError saying what is wrong."""
    if not isinstance(obj, dict):
        raise GoushiError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
    elif "prompt" in obj or "response" in obj:
        for k in ("prompt", "response"):
            if not isinstance(obj.get(k), str):
                raise GoushiError(f"\"{k}\" must be a string (a row is {{\"prompt\", \"response\"}} or {{\"messages\"}})")
        msgs = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]}]
        if obj.get("system") is not None:
            if not isinstance(obj["system"], str):
                raise GoushiError("\"system\" must be a string")
            msgs.insert(0, {"role": "system", "content": obj["system"]})
    else:
        raise GoushiError("no \"messages\" and no \"prompt\"/\"response\" keys")
    msgs = normalize_messages(msgs)
    turns = [m["role"] for m in msgs if m["role"] != "system"]
    for i, role in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise GoushiError(f"roles out of order: turn {i + 1} is {role!r} where {want!r} belongs "
                              "(after an optional system message, user and assistant alternate, user first)")
    if "assistant" not in turns:
        raise GoushiError("no assistant turn: nothing to learn from")
    if turns[-1] != "assistant":
        raise GoushiError("ends with a user message that has no answer")
    return msgs


def fit_context(ids: list[int], mask: list[bool], context: int, eot_id: int) -> tuple[list[int], list[bool], bool]:
    """Cut a row to at most context + 1 ids (inputs and targets of one window) by dropping the oldest tokens
    after the leading <|endoftext|>; the last answer must stay whole. Returns (ids, mask, was cut)."""
    if len(ids) <= context + 1:
        return ids, mask, False
    last = len(mask) - 1
    while last > 0 and not mask[last]:
        last -= 1
    start = last
    while start > 0 and mask[start - 1]:
        start -= 1
    keep = context  # plus the <|endoftext|> put back in front
    if len(ids) - start > keep:
        raise GoushiError(f"the last answer alone is {len(ids) - start} tokens, longer than the context "
                          f"({context}); shorten it")
    return [eot_id, *ids[-keep:]], [False, *mask[-keep:]], True


def read_jsonl(path: Path, parse: Callable[[int, Any], None], *, strict: bool, rows: str) -> tuple[int, list[str]]:
    """Call parse(line number, JSON value) for each non-blank line of a JSONL file; parse raises GoushiError for a
    bad row. Returns (lines read, problems: "FILE:LINE: why" per bad row); with `strict` the first bad row is
    an error. `rows` says what the rows should be, for a missing file's message."""
    if not path.is_file():
        raise GoushiError(f"--data {path}: file not found; give a JSONL file of {rows}")
    lines, problems = 0, []
    try:
        f = open(path, encoding="utf-8-sig")  # noqa: SIM115 - closed below; a BOM from Windows editors is fine
    except OSError as e:
        raise GoushiError(f"--data {path}: cannot read ({e})") from None
    with f:
        try:
            for n, line in enumerate(f, 1):
                lines = n
                if not line.strip():
                    continue
                try:
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise GoushiError(f"not valid JSON ({e.msg} at column {e.colno})") from None
                    parse(n, obj)
                except GoushiError as e:
                    problem = f"{path}:{n}: {e}"
                    if strict:
                        raise GoushiError(f"{problem} (drop --strict to skip bad rows)") from None
                    problems.append(problem)
        except UnicodeDecodeError as e:
            raise GoushiError(f"--data {path}: not UTF-8 (byte {e.start} of line {lines + 1}); save it as UTF-8") from None
    return lines, problems


def row_source(obj: dict[str, Any], path: Path) -> str:
    """What a row credits in the model card: its "source" value, else the file's name."""
    return obj["source"] if isinstance(obj.get("source"), str) and obj["source"] else path.stem


def read_chat_file(path: str | Path, tokenizer: Tokenizer, template: ChatTemplate, context: int, *,
                   strict: bool = False) -> ChatFile:
    out = ChatFile(Path(path))

    def parse(n: int, obj: Any) -> None:
        msgs = row_messages(obj)
        ids, mask = template.encode(tokenizer, msgs)
        ids, mask, cut = fit_context(ids, mask, context, tokenizer.eot_id)
        chars = sum(len(m["content"]) + 1 for m in msgs if m["role"] == "assistant")
        out.rows.append(ChatRow(n, msgs, ids, mask, row_source(obj, out.path), chars, cut))

    out.lines, out.problems = read_jsonl(out.path, parse, strict=strict,
                                         rows="{\"prompt\", \"response\"} or {\"messages\"} rows")
    return out


def pack(rows: list[ChatRow], order: list[int], length: int) -> list[list[int]]:
    """Greedily lay whole rows end to end into sequences of at most `length` ids; each sequence is a list
    of row indices, in `order`."""
    seqs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = len(rows[i].ids)
        if current and used + n > length:
            seqs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        seqs.append(current)
    return seqs


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) row indices, each in file order: a seeded share of the rows, at least one, held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def window_batch(seqs: list[tuple[list[int], list[bool]]], length: int, pad_id: int) -> Batch:
    """(x, y) of `length` columns from sequences of (ids, mask): x the ids but the last, y the next id where the
    mask trains it and IGNORE_INDEX elsewhere (the padding after a sequence too)."""
    x = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, mask) in enumerate(seqs):
        t = torch.tensor(ids, dtype=torch.long)
        m = torch.tensor(mask, dtype=torch.bool)
        x[r, : len(ids) - 1] = t[:-1]
        y[r, : len(ids) - 1] = torch.where(m[1:], t[1:], torch.full_like(t[1:], IGNORE_INDEX))
    return x, y


def credited_sources(rows: list[tuple[str, int]], credit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model card's sources from (source, characters) per row, with the credit given for the whole file."""
    counts, chars = Counter(s for s, _ in rows), Counter()
    for s, n in rows:
        chars[s] += n
    total = sum(chars.values()) or 1
    return {s: {"docs": counts[s], "chars": chars[s], "share": chars[s] / total,
                "license": credit.get("license") or "", "author": credit.get("author") or "",
                "url": credit.get("url") or "", "note": credit.get("note") or ""}
            for s in sorted(counts, key=lambda s: -counts[s])}


class ChatData:
    """A BatchSource (goushi.train.source) over a chat JSONL file: held-out rows for validation, the rest
    packed per epoch. Every process builds the same packing (same seed) and keeps its rows of each global
    batch; the epoch and the cursor into it are saved with the trainer state for exact resume."""

    def __init__(self, chat: ChatFile, tokenizer: Tokenizer, template: ChatTemplate, *, context: int,
                 val_fraction: float, seed: int, credit: dict[str, Any] | None = None,
                 base_data_dir: str | None = None, base_data_card: Path | None = None):
        if not 0 < val_fraction < 1:
            raise GoushiError(f"--val-fraction {val_fraction}: must be in (0, 1); validation loss needs held-out rows")
        n = len(chat.rows)
        if n < 2:
            raise GoushiError(f"--data {chat.path}: {n} usable row(s) of {chat.lines} lines; at least 2 are needed "
                              "(one is held out for validation)" + (f"; first problem: {chat.problems[0]}"
                                                                    if chat.problems else ""))
        self.chat, self.tokenizer, self.template = chat, tokenizer, template
        self.context, self.seed = context, seed
        self.vocab_size = tokenizer.vocab_size
        self.credit = dict(credit or {})
        self.base_data_dir = base_data_dir
        self.base_data_card = base_data_card
        self.val_fraction = val_fraction
        self.train_rows, self.val_rows = split_rows(n, val_fraction, seed)
        self.val_seqs = pack(chat.rows, self.val_rows, context + 1)
        self.epoch, self.cursor = 0, 0
        self._epoch_seqs: list[list[int]] | None = None
        trained = sum(sum(chat.rows[i].mask) for i in self.train_rows)
        if trained == 0:
            raise GoushiError(f"--data {chat.path}: no trainable token (no assistant text in the training rows)")
        val_targets = sum(sum(chat.rows[i].mask) for i in self.val_rows)
        val_chars = sum(chat.rows[i].answer_chars for i in self.val_rows)
        self.tokens_per_char = val_targets / val_chars if val_chars else None
        self.trained_tokens = trained

    # ---- sizes -----------------------------------------------------------------------------------
    def sequences_per_epoch(self) -> int:
        return len(self._seqs_for(0))

    def steps_for_epochs(self, epochs: float, batch: int) -> int:
        return max(1, math.ceil(epochs * self.sequences_per_epoch() / batch))

    def _seqs_for(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = [self.train_rows[i] for i in torch.randperm(len(self.train_rows), generator=g).tolist()]
        return pack(self.chat.rows, order, self.context + 1)

    # ---- BatchSource -----------------------------------------------------------------------------
    def check_context(self, context: int) -> None:
        if context != self.context:
            raise GoushiError(f"chat rows were fitted to context {self.context}, the model has {context}")

    def _tensors(self, seqs: list[list[int]], context: int) -> Batch:
        rows = self.chat.rows
        return window_batch([([t for i in seq for t in rows[i].ids], [m for i in seq for m in rows[i].mask])
                             for seq in seqs], context, self.tokenizer.eot_id)

    def train_batch(self, batch: int, context: int, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> Batch:
        """The next `batch` packed sequences of this epoch (the next epoch begins when one ends); `generator`
        is not needed: the order is fixed by the seed and the epoch."""
        chosen: list[list[int]] = []
        while len(chosen) < batch:
            if self._epoch_seqs is None:
                self._epoch_seqs = self._seqs_for(self.epoch)
            take = self._epoch_seqs[self.cursor: self.cursor + batch - len(chosen)]
            chosen += take
            self.cursor += len(take)
            if self.cursor >= len(self._epoch_seqs):
                self.epoch, self.cursor, self._epoch_seqs = self.epoch + 1, 0, None
        per = batch // world
        return self._tensors(chosen[rank * per: (rank + 1) * per], context)

    def val_batches(self, n_batches: int, batch: int, context: int, rank: int = 0,
                    world: int = 1) -> Iterator[Batch]:
        seqs = self.val_seqs[: n_batches * batch]
        per = math.ceil(len(seqs) / world)
        mine = seqs[rank * per: (rank + 1) * per]
        for i in range(0, len(mine), batch):
            yield self._tensors(mine[i: i + batch], context)

    def count_tokens(self, targets: torch.Tensor) -> int:
        return int((targets != IGNORE_INDEX).sum())

    def sample_prompt(self) -> list[dict[str, str]]:
        """The first held-out conversation up to its last question."""
        msgs = self.chat.rows[self.val_rows[0]].messages
        return msgs[:-1]

    def sources(self) -> dict[str, dict[str, Any]]:
        """Rows per "source" value (or the file's name), with the credit given for the file."""
        return credited_sources([(r.source, sum(len(m["content"]) for m in r.messages)) for r in self.chat.rows],
                                self.credit)

    def data_record(self) -> DataRecord:
        meta = {"tokenizer_kind": self.tokenizer.kind, "train_docs": len(self.train_rows), "val_docs": len(self.val_rows),
                "train_tokens": self.trained_tokens, "sources": self.sources()}
        # The verbatim-copy index stays the base run's: most of what a chat model writes comes from pre-training.
        return DataRecord(dir=self.base_data_dir, file=str(self.chat.path.resolve()),
                          tokenizer_hash=self.tokenizer.hash(), meta=meta)

    def record_fields(self) -> dict[str, Any]:
        sft = SftRecord(data=str(self.chat.path.resolve()), rows=len(self.chat.rows), train_rows=len(self.train_rows),
                        val_rows=len(self.val_rows), skipped_rows=len(self.chat.problems),
                        truncated_rows=self.chat.truncated, trained_tokens=self.trained_tokens,
                        val_fraction=self.val_fraction, seed=self.seed, credit=self.credit)
        return {"sft": sft, "chat_template": self.template}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state.get("epoch", 0)), int(state.get("cursor", 0))
        self._epoch_seqs = None

    def data_card(self) -> Path | None:
        """The base run's card: the pre-training sources (the chat data's are in the model card)."""
        return self.base_data_card if self.base_data_card is not None and self.base_data_card.is_file() else None


__all__ = ["ChatRow", "ChatFile", "ChatData", "row_messages", "fit_context", "read_jsonl", "row_source", "read_chat_file",
           "pack", "split_rows", "window_batch", "credited_sources"]
