"""The run directory format: one owner for its file names, config.json, metrics.jsonl, eval.json, and
where a run's training data and verbatim-copy index live. Torch-free, so the web page, the model card
and the report read runs through it without loading a model.

    RUN_DIR/
      model.safetensors   weights (goushi.checkpoint writes and loads them)
      config.json         the run's record: model, training settings, data, base run, chat tuning
                          (goushi.run_record, its one reader and writer; read_run / write_run here)
      tokenizer.json      the tokenizer the model was trained with
      trainer_state.pt    optimiser, schedule, data order and RNG states (goushi.train.checkpoint)
      metrics.jsonl       one JSON object per logged step and per evaluation
      loss.png, tb/       the loss curve; TensorBoard events when tensorboard is installed
      DATA_CARD.md        copy of the data's card; MODEL_CARD.md and its inputs model_card.json
      eval.json           results of `goushi eval`; report.html from `goushi report`
      feedback.jsonl      preferences collected on the web page (`goushi dpo RUN_DIR --data` reads it); a
                          person's work, so `--force` leaves it where it is
      best/               the same layout (no trainer state) for the best validation loss
      .saving/            a `last` checkpoint being written (finished or discarded on --resume)
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from goushi.data import layout as data_layout
from goushi.errors import GoushiError
from goushi.fsutil import atomic_write_json, atomic_write_text, json_safe
from goushi.run_record import RunRecord

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = data_layout.TOKENIZER  # a run keeps the tokenizer and the data card of its data, by the same names
STATE = "trainer_state.pt"
LAST_WEIGHTS = "last.safetensors"  # the last step's weights while model.safetensors serves best/'s (--serve best)
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
TENSORBOARD = "tb"
DATA_CARD = data_layout.DATA_CARD
MODEL_CARD = "MODEL_CARD.md"
CARD_INPUTS = "model_card.json"
EVAL = "eval.json"
HTML_REPORT = "report.html"  # `goushi report` (not the data build's report.json, data.layout.BUILD_REPORT)
FEEDBACK = "feedback.jsonl"  # the page's preference rows (goushi.ui.feedback); not a RUN_FILE: --force keeps it
BEST = "best"
SAVING = ".saving"
REQUIRED = (CONFIG, WEIGHTS, TOKENIZER)
# What a previous run leaves in RUN_DIR; `--force` removes exactly these and nothing else.
RUN_FILES = (WEIGHTS, LAST_WEIGHTS, CONFIG, TOKENIZER, STATE, METRICS, LOSS_PLOT, DATA_CARD, MODEL_CARD, CARD_INPUTS, EVAL,
             HTML_REPORT)
RUN_DIRS = (BEST, TENSORBOARD, SAVING)


# ---- the directory ---------------------------------------------------------------------------------
def looks_like_run(path: str | Path) -> bool:
    """A (possibly broken) run: a DATA_DIR has tokenizer.json too, but never config.json or weights."""
    p = Path(path)
    return (p / CONFIG).is_file() or (p / WEIGHTS).is_file()


def check_run_dir(run_dir: str | Path) -> Path:
    """The path, if it holds everything a loader needs; GoushiError naming what is missing otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GoushiError(f"{run_dir}: no such run directory (train one with `goushi train --out {run_dir}`)")
    missing = [n for n in REQUIRED if not (run_dir / n).is_file()]
    if missing:
        raise GoushiError(f"{run_dir}: not a run directory, missing {', '.join(missing)}")
    return run_dir


def prepare_out_dir(out: str | Path, *, resume: bool, force: bool) -> Path:
    """Make `out` ready for a run: it must exist for --resume, be empty or absent otherwise, and --force
    clears a previous run's files (only those: a user's other files in the folder stay)."""
    out = Path(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise GoushiError(f"--resume: {out} is not a run directory (no {CONFIG}); drop --resume to start a run")
        return out
    if out.exists() and not out.is_dir():
        raise GoushiError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GoushiError(f"--out {out}: directory is not empty; pass --resume to continue that run, "
                              f"--force to replace it, or choose another --out")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- config.json: the run's record (goushi.run_record types it) ------------------------------------
def read_run(run_dir: str | Path) -> RunRecord:
    """RUN_DIR/config.json as a RunRecord; errors name the file and say what to do."""
    path = Path(run_dir) / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoushiError(f"{path}: missing; {run_dir} is not a run directory (train one with `goushi train`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{path}: not valid JSON ({e})") from None
    return RunRecord.from_dict(raw, source=str(path))


def write_run(run_dir: str | Path, record: RunRecord) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, json_safe(record.to_dict()))


# ---- where the data is -------------------------------------------------------------------------------
def data_dir_for_run(run_dir: str | Path, record: RunRecord | None = None) -> Path | None:
    """The DATA_DIR a run was trained on (config.json data.dir: absolute, or relative to the current
    directory or to RUN_DIR), or None if none is recorded. A recorded directory that is gone is returned
    as recorded, so the caller can name it."""
    run_dir = Path(run_dir)
    recorded = (record if record is not None else read_run(run_dir)).data.dir
    if not recorded:
        return None
    for cand in (Path(recorded), run_dir / recorded):
        if cand.is_dir():
            return cand
    return Path(recorded)


def _index_in(path: Path) -> Path | None:
    for cand in (path / data_layout.PROVENANCE, path):
        if (cand / data_layout.PROVENANCE_INDEX).is_file():
            return cand
    return None


def provenance_index_dir(run_dir: str | Path | None, data_dir: str | Path | None = None, *,
                         record: RunRecord | None = None) -> Path:
    """Where the verbatim-copy index for a run is. The index lives with the data (many runs share one
    DATA_DIR), so: an explicit `data_dir` (`--data`) wins; else the run's recorded data directory; else
    RUN_DIR/provenance/ (a run packed with its index). `run_dir` may also be a DATA_DIR or an index.
    `record`: the run's record when the caller already holds it."""
    if data_dir is not None:
        p = Path(data_dir)
        found = _index_in(p)
        if found is None:
            raise GoushiError(f"--data {p}: no provenance index at {p / data_layout.PROVENANCE}; rebuild it with "
                              "`goushi data build` (without --no-provenance)")
        return found
    if run_dir is None:
        raise GoushiError("no run or data directory known, so no verbatim-copy index; pass --data DATA_DIR")
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        found = _index_in(run_dir)
        if found is None:
            raise GoushiError(f"{run_dir}: neither a run directory (no {CONFIG}) nor a data directory with a "
                              "provenance index; pass a RUN_DIR from `goushi train` or a DATA_DIR from `goushi data build`")
        return found
    recorded = data_dir_for_run(run_dir, record)
    if recorded is not None and (recorded / data_layout.PROVENANCE / data_layout.PROVENANCE_INDEX).is_file():
        return recorded / data_layout.PROVENANCE
    if (run_dir / data_layout.PROVENANCE / data_layout.PROVENANCE_INDEX).is_file():
        return run_dir / data_layout.PROVENANCE
    if recorded is None:
        raise GoushiError(f"{run_dir / CONFIG}: no data.dir recorded; pass --data DATA_DIR "
                          "(the directory `goushi data build` wrote)")
    raise GoushiError(f"{recorded / data_layout.PROVENANCE}: provenance index not found (config.json data.dir="
                      f"{str(recorded)!r}); pass --data DATA_DIR if the data moved, or rebuild it with `goushi data build`")


def val_jsonl_for_run(run_dir: str | Path) -> Path | None:
    """The run's held-out documents (DATA_DIR/val.jsonl), if its data directory is still there."""
    d = data_dir_for_run(run_dir)
    p = d / data_layout.VAL_JSONL if d is not None else None
    return p if p is not None and p.is_file() else None


# ---- metrics.jsonl -----------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of RUN_DIR/metrics.jsonl; a last line cut off by a crash is skipped, other bad lines are errors."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise GoushiError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def append_metrics(run_dir: str | Path, row: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def truncate_metrics(run_dir: str | Path, after_step: int) -> None:
    """Drop rows logged after `after_step` (a resumed run repeats those steps), atomically."""
    p = Path(run_dir) / METRICS
    if p.is_file():
        keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
        atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def last_value(rows: list[dict[str, Any]], key: str) -> Any:
    """The most recent numeric value of `key` in metrics rows, or None."""
    for r in reversed(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


# ---- eval.json ---------------------------------------------------------------------------------------
def read_eval(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / EVAL
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{p}: not valid JSON ({e}); delete it and run `goushi eval` again") from None


def save_eval(run_dir: str | Path, section: str, results: dict[str, Any]) -> Path:
    """Merge `results` into RUN_DIR/eval.json under `section` ("text" or "generate"), atomically."""
    run_dir = Path(run_dir)
    ev = read_eval(run_dir) or {}
    ev[section] = {**results, "when": _dt.datetime.now().isoformat(timespec="seconds")}
    atomic_write_json(run_dir / EVAL, json_safe(ev))
    return run_dir / EVAL


__all__ = [
    "WEIGHTS", "LAST_WEIGHTS", "CONFIG", "TOKENIZER", "STATE", "METRICS", "LOSS_PLOT", "TENSORBOARD", "DATA_CARD", "MODEL_CARD",
    "CARD_INPUTS", "EVAL", "HTML_REPORT", "BEST", "SAVING", "REQUIRED", "RUN_FILES", "RUN_DIRS",
    "looks_like_run", "check_run_dir", "prepare_out_dir", "read_run", "write_run", "data_dir_for_run", "provenance_index_dir", "val_jsonl_for_run", "read_metrics",
    "append_metrics", "truncate_metrics", "last_value", "read_eval", "save_eval",
]
