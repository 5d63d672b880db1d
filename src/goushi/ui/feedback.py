"""Preferences collected on the page, appended to RUN_DIR/feedback.jsonl in rows `goushi dpo --data` reads
(goushi.sft.prefs): two answers with the better one picked, or one answer rated 👍 / 👎.

    {"messages": [...], "chosen": "...", "rejected": "...", "source": "page-chat", "date": "...", "model": "..."}
    {"prefix": "今天我终于", "completion": "...", "label": true, "source": "page-generate", "date": "...", ...}

Chat answers keep their conversation ("messages", up to the user's message they answer); Generate
continuations their prompt ("prefix", a text continued without a chat template). "date" is the UTC time of the
click; "model" the run the answers came from. Torch- and Gradio-free.

A row is appended with one write of one line to a file opened for appending (O_APPEND), under a lock, and
fsynced: rows from people using one server at once never interleave, and a crash loses at most the row being
written. (Temp-file-and-rename is for files written whole; a log that grows a line at a time is appended.) A
file whose last line was cut off by a crash gets a newline first, so the cut line stays one bad row, reported
by `goushi dpo` with its line number, and the new row is whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.chat import normalize_messages
from goushi.errors import GoushiError

CHAT, GENERATE = "page-chat", "page-generate"  # the rows' "source": the model card counts them apart
_LOCK = threading.Lock()


def feedback_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / rundir.FEEDBACK


def _prompt_fields(prompt: list[dict[str, str]] | str) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prefix": prompt}
    messages = normalize_messages(prompt, for_prompt=True)  # what the answers answer ends with the user's turn
    return {"messages": messages}


def _stamp(row: dict[str, Any], source: str, model: str) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    return {**row, "source": source, "date": now.isoformat().replace("+00:00", "Z"), "model": model}


def pair_row(prompt: list[dict[str, str]] | str, chosen: str, rejected: str, *, source: str,
             model: str = "") -> dict[str, Any]:
    """A preference row: `chosen` was picked over `rejected` as the answer to `prompt` (a conversation ending with
    the user's message, or a text continued)."""
    if chosen == rejected:
        raise GoushiError("the two answers are the same: nothing to prefer")
    return _stamp({**_prompt_fields(prompt), "chosen": chosen, "rejected": rejected}, source, model)


def rating_row(prompt: list[dict[str, str]] | str, completion: str, good: bool, *, source: str,
               model: str = "") -> dict[str, Any]:
    """One answer rated 👍 (good) or 👎; goushi dpo pairs a 👍 and a 👎 answer to the same prompt."""
    return _stamp({**_prompt_fields(prompt), "completion": completion, "label": bool(good)}, source, model)


def append_row(run_dir: str | Path, row: dict[str, Any]) -> int:
    """Append `row` to RUN_DIR/feedback.jsonl; returns how many lines the file then has."""
    path = feedback_path(run_dir)
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with _LOCK:
        try:
            with open(path, "a+b") as f:  # append mode: every write goes to the end (O_APPEND)
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                return sum(1 for _ in f)
        except OSError as e:
            raise GoushiError(f"{path}: cannot write the feedback ({e.strerror or e}); the run directory must be "
                              "writable") from None


__all__ = ["CHAT", "GENERATE", "feedback_path", "pair_row", "rating_row", "append_row"]
