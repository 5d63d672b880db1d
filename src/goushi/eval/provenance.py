"""Which parts of a text did the model copy, and from whom? The query API for the CLI, the report and the page.

A run's index is found by goushi.rundir.provenance_index_dir (the one lookup: an explicit --data, the
run's recorded data directory, or RUN_DIR/provenance/). Loaded indexes are cached per process, so a page
can ask about every generation without reloading; a rebuilt index is reloaded.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.data import layout
from goushi.data.textindex import Span, TextIndex, copied_char_mask, index_dir
from goushi.errors import GoushiError


@lru_cache(maxsize=4)
def _cached_index(path: str, stamp: float) -> TextIndex:
    return TextIndex.load(path)


def load_index(path: str | Path) -> TextIndex:
    """A loaded index, reused while its files are unchanged (a rebuilt index is reloaded)."""
    p = index_dir(path)
    try:
        stamp = (p / layout.PROVENANCE_INDEX).stat().st_mtime_ns
    except FileNotFoundError:
        raise GoushiError(f"{p}: provenance index not found; build it with `goushi data build`") from None
    return _cached_index(str(p.resolve()), stamp)


def index_for_run(run_dir: str | Path, data_dir: str | Path | None = None) -> TextIndex:
    return load_index(rundir.provenance_index_dir(run_dir, data_dir))


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
    "load_index",
    "index_for_run",
    "provenance_for_run",
    "summarize",
    "highlight_html",
    "format_spans",
]
