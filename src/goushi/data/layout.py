"""The data directory format: one owner for the names of what `goushi data build` writes.

    DATA_DIR/
      train.bin, val.bin   flat little-endian token ids (dtype in meta.json), <|endoftext|> after each document
      meta.json            vocabulary, tokenizer hash, token and character counts, per-source shares
      tokenizer.json       the tokenizer the shards were encoded with
      DATA_CARD.md         every source with author, url, licence and share
      report.json          what cleaning dropped and why, and how long each stage took
      sources.toml         a copy of the manifest
      val.jsonl            validation documents, one {"text", "source"} per line
      provenance/          verbatim-copy index (goushi.data.textindex); its index.json holds version, sizes, sources
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from goushi.errors import GoushiError

TRAIN_BIN = "train.bin"
VAL_BIN = "val.bin"
META = "meta.json"
TOKENIZER = "tokenizer.json"
DATA_CARD = "DATA_CARD.md"
BUILD_REPORT = "report.json"  # the build's own account (not a run's report.html, goushi.rundir.HTML_REPORT)
SOURCES = "sources.toml"
VAL_JSONL = "val.jsonl"
PROVENANCE = "provenance"
PROVENANCE_INDEX = "index.json"  # inside PROVENANCE/ (or any index directory): the index's table of contents
# What training needs; a directory without one of these is not (or not yet) a data directory.
REQUIRED = (TRAIN_BIN, VAL_BIN, META, TOKENIZER)

# A corpus this big (training characters) is not seen twice by a budget of minutes on a CPU: the data build caps a
# char vocabulary (goushi.data.build) and `goushi train --time-budget` picks the big-corpus recipes
# (goushi.train.recipe). The corpora measured: 1.3-1.4 M characters (small) and 26-28 M (big), docs/recipe.md.
BIG_CORPUS_CHARS = 10_000_000


def is_data_dir(path: str | Path) -> bool:
    return all((Path(path) / name).is_file() for name in REQUIRED)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """DATA_DIR/meta.json as a dict; GoushiError naming the file and the fix otherwise."""
    path = Path(data_dir) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoushiError(f"{path}: not found; {data_dir} is not a data directory (build one with "
                          "`goushi data build`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{path}: not valid JSON ({e}); rebuild the data directory") from None
    if not isinstance(meta, dict):
        raise GoushiError(f"{path}: expected a JSON object; rebuild the data directory")
    return meta


__all__ = ["TRAIN_BIN", "VAL_BIN", "META", "TOKENIZER", "DATA_CARD", "BUILD_REPORT", "SOURCES", "VAL_JSONL",
           "PROVENANCE", "PROVENANCE_INDEX", "REQUIRED", "is_data_dir", "read_meta"]
