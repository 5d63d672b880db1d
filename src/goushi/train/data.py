"""The token shards of a DATA_DIR as a batch source (goushi.train.source.BatchSource): memory-mapped
train.bin / val.bin, random windows from a seeded generator.

Where a training window starts (`windows`): "any" token, or, with "docs", at the <|endoftext|> before the
document it falls in when that document began less than a window earlier. Generation and evaluation read a
document from its start, right after <|endoftext|> at position 0; windows from anywhere show the model that
only one time in a window's length. A window in a long document (past its first window) still starts anywhere
in it, so every token is trained on.

Every rank draws the same global batch from the same generator and keeps its own slice of rows, so
ranks see disjoint sequences, the global batch equals the single-process batch, and the generator
state (saved in the trainer state) is the same everywhere: resume continues the data order exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goushi.data import layout
from goushi.errors import GoushiError
from goushi.run_record import DataRecord
from goushi.tokenizer import Tokenizer
from goushi.train.source import Batch

WINDOWS = ("any", "docs")
SCAN_CHUNK = 1 << 22  # tokens read at a time when finding the documents' starts: memory stays flat
META_KEYS = ("dtype", "vocab_size", "tokenizer_hash")
# meta.json fields copied into RUN_DIR/config.json ("data": {"meta": ...}); the per-source table goes too,
# so the model card can credit sources without the data directory.
META_FIELDS = ("version", "vocab_size", "tokenizer_hash", "tokenizer_kind", "dtype", "train_tokens", "val_tokens",
               "train_docs", "val_docs", "train_chars", "val_chars", "chars_per_token", "sources")


class TokenData:
    """Next-token batches over whole documents: every target carries loss."""

    def __init__(self, data_dir: str | Path, windows: str = "any"):
        if windows not in WINDOWS:
            raise GoushiError(f"windows={windows!r} is not one of {', '.join(WINDOWS)}")
        self.windows = windows
        self._anchors: dict[str, np.ndarray] = {}
        self.dir = Path(data_dir)
        if not self.dir.is_dir():
            raise GoushiError(f"{self.dir}: no such data directory; build one with `goushi data build --out {self.dir}`")
        missing = [n for n in layout.REQUIRED if not (self.dir / n).is_file()]
        if missing:
            raise GoushiError(f"{self.dir}: not a data directory, missing {', '.join(missing)} "
                              f"(build it with `goushi data build`)")
        meta_path = self.dir / layout.META
        meta = layout.read_meta(self.dir)
        for k in META_KEYS:
            if k not in meta:
                raise GoushiError(f"{meta_path}: missing {k!r}; rebuild the data directory with `goushi data build`")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise GoushiError(f"{meta_path}: dtype={meta['dtype']!r} should be uint16 or uint32")
        self.meta: dict[str, Any] = meta
        self.vocab_size = int(meta["vocab_size"])
        self.tokenizer_hash = str(meta["tokenizer_hash"])
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        self.tokenizer = Tokenizer.from_file(self.dir / layout.TOKENIZER)
        if self.tokenizer.hash() != self.tokenizer_hash:
            raise GoushiError(f"{self.dir / layout.TOKENIZER}: hash differs from meta.json tokenizer_hash; the data "
                              f"directory is inconsistent, rebuild it with `goushi data build`")
        self.train = self._open("train")
        self.val = self._open("val")

    def _open(self, split: str) -> np.ndarray:
        path = self.dir / (layout.TRAIN_BIN if split == "train" else layout.VAL_BIN)
        size = path.stat().st_size
        if size % self.dtype.itemsize:
            raise GoushiError(f"{path}: {size} bytes is not a whole number of {self.dtype.name} tokens; "
                              f"the file is truncated, rebuild the data directory")
        n = size // self.dtype.itemsize
        expect = self.meta.get(f"{split}_tokens")
        if isinstance(expect, int) and expect != n:
            raise GoushiError(f"{path}: holds {n} tokens but meta.json says {split}_tokens={expect}; "
                              f"the file is truncated or from another build, rebuild the data directory")
        if n == 0:
            raise GoushiError(f"{path}: empty; {self._empty_hint(split)}")
        arr = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
        # A cheap check on a prefix: a token id past the vocabulary means the shards and meta.json disagree.
        head = int(np.asarray(arr[: 1 << 16]).max())
        if head >= self.vocab_size:
            raise GoushiError(f"{path}: token id {head} >= vocab_size={self.vocab_size} in meta.json; "
                              f"rebuild the data directory")
        return arr

    def _empty_hint(self, split: str) -> str:
        fraction = (self.meta.get("options") or {}).get("val_fraction")
        if split == "val":
            why = ("it was built with --val-fraction 0" if fraction == 0 else
                   f"it holds {self.meta.get('val_docs', 0)} validation documents")
            return (f"{why}; rebuild it with `goushi data build` and the default --val-fraction 0.05 (the corpus needs "
                    "at least 2 documents: `--split-docs line` makes each line of a text file one)")
        return "every document went to validation or has weight 0; rebuild it with more text or a lower --val-fraction"

    def check_context(self, context: int) -> None:
        for name, arr in ((layout.TRAIN_BIN, self.train), (layout.VAL_BIN, self.val)):
            if len(arr) < context + 2:
                split = "val" if name == layout.VAL_BIN else "train"
                docs = self.meta.get(f"{split}_docs")
                held = f" ({docs} documents)" if isinstance(docs, int) else ""
                fix = ("rebuild the data with a larger --val-fraction (or more text)" if split == "val"
                       else "add more text")
                raise GoushiError(f"{self.dir / name}: {len(arr)} tokens{held} is too few for context {context} "
                                  f"(a window needs {context + 2}); train with --context {max(1, len(arr) - 2)} or "
                                  f"less, or {fix}")

    @property
    def tokens_per_char(self) -> float | None:
        """Of the validation split; turns nats per token into bits per character."""
        tok, ch = self.meta.get("val_tokens"), self.meta.get("val_chars")
        if isinstance(tok, (int, float)) and isinstance(ch, (int, float)) and ch > 0:
            return tok / ch
        return None

    def data_record(self) -> DataRecord:
        meta = {k: self.meta[k] for k in META_FIELDS if k in self.meta}
        return DataRecord(dir=str(self.dir.resolve()), tokenizer_hash=self.tokenizer_hash, meta=meta)

    def record_fields(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # random windows: the generator alone is the position

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def data_card(self) -> Path | None:
        card = self.dir / layout.DATA_CARD
        return card if card.is_file() else None

    def count_tokens(self, targets: torch.Tensor) -> int:
        return targets.numel()  # whole documents: every position is a target

    def sample_prompt(self) -> str:
        """The first few tokens of the first validation document."""
        head = np.asarray(self.val[:64]).astype(np.int64).tolist()
        eot = self.tokenizer.eot_id
        head = head[: head.index(eot)] if eot in head else head
        return self.tokenizer.decode(head[:6])

    # ---- batches ---------------------------------------------------------------------------
    def _windows(self, arr: np.ndarray, starts: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([np.asarray(arr[s: s + T + 1]) for s in starts.tolist()]).astype(np.int64)
        xy = torch.from_numpy(rows)
        return xy[:, :-1], xy[:, 1:]

    def doc_anchors(self, split: str = "train") -> np.ndarray:
        """Sorted positions in a split where a document's window may start: 0 and every <|endoftext|> (each
        document is followed by one, so it precedes the next). Found once, a chunk at a time."""
        if split not in self._anchors:
            arr, eot = (self.train if split == "train" else self.val), self.tokenizer.eot_id
            parts = [np.zeros(1, dtype=np.int64)]
            for i in range(0, len(arr), SCAN_CHUNK):
                parts.append(np.flatnonzero(np.asarray(arr[i: i + SCAN_CHUNK]) == eot).astype(np.int64) + i)
            self._anchors[split] = np.unique(np.concatenate(parts))
        return self._anchors[split]

    def snap_to_docs(self, starts: torch.Tensor, T: int, split: str = "train") -> torch.Tensor:
        """Each start moved back to its document's <|endoftext|> when that is less than T tokens before it."""
        anchors = self.doc_anchors(split)
        p = starts.numpy()
        a = anchors[np.searchsorted(anchors, p, side="right") - 1]
        return torch.from_numpy(np.where(p - a < T, a, p))

    def train_batch(self, batch: int, T: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> Batch:
        """Random windows of T+1 tokens (where `windows` lets them start); this rank's share of the global batch."""
        starts = torch.randint(0, len(self.train) - T, (batch,), generator=generator)
        if self.windows == "docs":
            starts = self.snap_to_docs(starts, T)
        per = batch // world
        return self._windows(self.train, starts[rank * per: (rank + 1) * per], T)

    def val_batches(self, n_batches: int, batch: int, T: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """The same evenly spaced validation windows at every evaluation, so losses compare across steps. A split
        shorter than the windows asked for is read once, end to end: a fine-tune's 5,900 validation tokens were
        read 14 times over by 20 overlapping batches, a quarter of its training time at an evaluation every 25
        steps, for the same targets."""
        last = len(self.val) - T - 1
        n = n_batches * batch
        if len(self.val) < n * (T + 1):
            n = math.ceil(last / T) + 1  # windows end to end, the last flush with the split's end
        starts = torch.linspace(0, last, n).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)
        if self.windows == "docs":  # two windows may move to one document's start: do not count one twice
            starts = torch.unique(self.snap_to_docs(starts, T, "val"))
        per = math.ceil(len(starts) / world)
        mine = starts[rank * per: (rank + 1) * per]
        for i in range(0, len(mine), batch):
            yield self._windows(self.val, mine[i: i + batch], T)


def new_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


__all__ = ["TokenData", "new_generator", "META_FIELDS", "WINDOWS"]
