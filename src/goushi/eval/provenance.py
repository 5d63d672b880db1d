"""Which parts of a text did the model copy, and from whom? The query API for CLI, UI and engine users.

How a run finds its provenance index (the index lives with the data, not the run, so many runs on
one DATA_DIR share it and it is never copied):

1. an explicit `data_dir` argument (`--data DATA_DIR` on the command line) wins;
2. else `RUN_DIR/config.json["data"]["dir"]`, recorded by the trainer (absolute, or relative to the
   current directory, or to RUN_DIR);
3. else `RUN_DIR/provenance/`, for a run directory someone packed together with its index.

The index is `DATA_DIR/provenance/` (see goushi.data.textindex). Loaded indexes are cached per
process, so a web page can ask about every generation without reloading.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

from goushi.checkpoint import read_config
from goushi.data.textindex import INDEX_DIRNAME, Span, TextIndex, copied_char_mask
from goushi.errors import GoushiError


def run_data_dir(run_dir: str | Path) -> Path | None:
    """The DATA_DIR a run was trained on, from config.json["data"]["dir"], or None if not recorded/found."""
    run_dir = Path(run_dir)
    info = read_config(run_dir)
    data = info.get("data")
    recorded = data.get("dir") if isinstance(data, dict) else None
    if not recorded:
        return None
    for cand in (Path(recorded), run_dir / recorded):
        if cand.is_dir():
            return cand
    return Path(recorded)  # recorded but gone: the caller names it in the error


def index_dir_for_run(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Where the provenance index of `run_dir` is, following the order in the module docstring."""
    run_dir = Path(run_dir)
    if data_dir is not None:
        p = Path(data_dir)
        idx = p if (p / "index.json").exists() else p / INDEX_DIRNAME
        if not (idx / "index.json").exists():
            raise GoushiError(f"--data {p}: no provenance index at {idx}; rebuild it with `goushi data build`")
        return idx
    if not (run_dir / "config.json").exists():
        # Not a run: a DATA_DIR (or the index itself) is fine too, for checking text against any data.
        for idx in (run_dir / INDEX_DIRNAME, run_dir):
            if (idx / "index.json").exists():
                return idx
        raise GoushiError(f"{run_dir}: neither a run directory (no config.json) nor a data directory with a "
                          f"provenance index; pass a RUN_DIR from `goushi train` or a DATA_DIR from `goushi data build`")
    recorded = run_data_dir(run_dir)
    if recorded is not None and (recorded / INDEX_DIRNAME / "index.json").exists():
        return recorded / INDEX_DIRNAME
    if (run_dir / INDEX_DIRNAME / "index.json").exists():
        return run_dir / INDEX_DIRNAME
    if recorded is None:
        raise GoushiError(f"{run_dir / 'config.json'}: no data.dir recorded; pass --data DATA_DIR "
                          "(the directory `goushi data build` wrote)")
    raise GoushiError(f"{recorded / INDEX_DIRNAME}: provenance index not found (config.json data.dir={str(recorded)!r}); "
                      "pass --data DATA_DIR if the data moved, or rebuild it with `goushi data build`")


@lru_cache(maxsize=4)
def _cached_index(path: str, stamp: float) -> TextIndex:
    return TextIndex.load(path)


def load_index(path: str | Path) -> TextIndex:
    """A loaded index, reused while its files are unchanged (a rebuilt index is reloaded)."""
    p = Path(path)
    if not (p / "index.json").exists() and (p / INDEX_DIRNAME / "index.json").exists():
        p = p / INDEX_DIRNAME
    try:
        stamp = (p / "index.json").stat().st_mtime_ns
    except FileNotFoundError:
        raise GoushiError(f"{p}: provenance index not found; build it with `goushi data build`") from None
    return _cached_index(str(p.resolve()), stamp)


def index_for_run(run_dir: str | Path, data_dir: str | Path | None = None) -> TextIndex:
    return load_index(index_dir_for_run(run_dir, data_dir))


def provenance_for_run(run_dir: str | Path, text: str, min_chars: int = 8, *,
                       data_dir: str | Path | None = None) -> list[Span]:
    """Every maximal span of `text` (>= min_chars characters) copied verbatim from the run's training data."""
    return index_for_run(run_dir, data_dir).find_copied_spans(text, min_chars)


def summarize(text: str, spans: list[Span]) -> dict[str, Any]:
    """Copied characters overall and per source, with each source's licence."""
    mask = copied_char_mask(len(text), spans)
    by_source: dict[str, dict[str, Any]] = {}
    for s in spans:
        e = by_source.setdefault(s.source_id, {"spans": 0, "chars": 0, "license": s.license, "author": s.author,
                                               "url": s.url})
        e["spans"] += 1
        e["chars"] += s.end - s.start
    return {
        "chars": len(text),
        "copied_chars": int(mask.sum()),
        "copied_share": float(mask.mean()) if len(text) else 0.0,
        "sources": by_source,
    }


def highlight_html(text: str, spans: list[Span]) -> str:
    """`text` as HTML with every copied stretch in <mark>, its tooltip naming source, author and licence."""
    # Where spans overlap, the longest one covering a character names it.
    owner: list[Span | None] = [None] * len(text)
    for s in sorted(spans, key=lambda s: s.end - s.start):
        for i in range(s.start, s.end):
            owner[i] = s
    out, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and owner[j] is owner[i]:
            j += 1
        chunk = html.escape(text[i:j])
        s = owner[i]
        if s is None:
            out.append(chunk)
        else:
            who = " · ".join(x for x in (s.source_id, s.author, s.license) if x)
            tip = html.escape(f"copied from {who} (×{s.count}) {s.url}".strip(), quote=True)
            out.append(f'<mark class="copied" title="{tip}">{chunk}</mark>')
        i = j
    return "".join(out)


def format_spans(text: str, spans: list[Span]) -> str:
    """Plain-text report for the terminal."""
    if not spans:
        return "no copied spans found"
    info = summarize(text, spans)
    lines = [f"{info['copied_chars']}/{info['chars']} characters ({info['copied_share']:.0%}) "
             f"are in {len(spans)} span(s) copied verbatim from the training data:"]
    for s in spans:
        where = ", ".join(x for x in (f"author {s.author}" if s.author else "", f"licence {s.license}",
                                      s.url) if x)
        lines.append(f"  [{s.start}:{s.end}] 「{s.text}」 ← {s.source_id} ({where}); occurs {s.count}×")
    return "\n".join(lines)


__all__ = [
    "run_data_dir",
    "index_dir_for_run",
    "load_index",
    "index_for_run",
    "provenance_for_run",
    "summarize",
    "highlight_html",
    "format_spans",
]
