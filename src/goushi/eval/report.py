"""`goushi report RUN_DIR`: one self-contained HTML page (no external files, no network) about a run.

Sections: loss curves (from metrics.jsonl, drawn with matplotlib and embedded as a base64 PNG), the
evaluation table (eval.json), samples with copied spans highlighted, and the model card.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.data.textindex import Span
from goushi.errors import GoushiError
from goushi.eval.provenance import highlight_html
from goushi.fsutil import atomic_write_text
from goushi.model_card import eval_section
from goushi.plots import loss_plot_png


# ---- a small Markdown renderer for the model card --------------------------------------------
def _inline(s: str) -> str:
    s = html.escape(s, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"(https?://[^\s<|]+)", r'<a href="\1">\1</a>', s)


def markdown_to_html(md: str) -> str:
    """Headings, paragraphs, bullet lists, tables, `code` and **bold**: the Markdown MODEL_CARD.md uses."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(len(m.group(1)) + 1, 6)  # the card's "#" becomes a section (h2) under the page's h1
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]]
                if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, body = rows[0], rows[1:]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#|\s*\||\s*[-*]\s)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a line the branches above did not take (cannot happen, but never loop forever)
                para, i = [line.strip()], i + 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


# ---- the page ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,"PingFang SC","Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;line-height:1.55;color:#222}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}code{background:#f4f4f4;padding:0 .2em}img{max-width:100%}
mark.copied{background:#ffd54f}.sample{border-left:4px solid #ddd;padding:.3em .8em;margin:.8em 0;white-space:pre-wrap}
.prompt{color:#666}.muted{color:#777}section{margin-bottom:2em}
"""


def _eval_html(ev: dict[str, Any] | None) -> str:
    return markdown_to_html("\n".join(eval_section(ev)))


def _samples_html(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return '<p class="muted">No samples: run <code>goushi eval RUN_DIR --generate --prompts FILE --samples N</code>.</p>'
    parts = []
    for s in samples:
        spans = [Span(**d) for d in s.get("copied") or []]
        body = highlight_html(s.get("text", ""), spans)
        note = f'<div class="muted">{len(spans)} copied span(s), highlighted; hover for the source</div>' if spans else ""
        parts.append(f'<div class="sample"><span class="prompt">{html.escape(s.get("prompt", ""))}</span>{body}</div>{note}')
    return "\n".join(parts)


def render_report(run_dir: str | Path, *, samples: list[dict[str, Any]] | None = None) -> str:
    """The report page as a string. `samples` ({prompt, text, copied}) default to those in eval.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GoushiError(f"{run_dir}: no such run directory")
    ev = rundir.read_eval(run_dir)
    if samples is None:
        samples = ((ev or {}).get("generate") or {}).get("samples") or []
    png = loss_plot_png(rundir.read_metrics(run_dir))
    curves = (f'<img alt="loss curves" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
              if png else '<p class="muted">No metrics.jsonl with loss values in this run.</p>')
    card_path = run_dir / rundir.MODEL_CARD
    card = (markdown_to_html(card_path.read_text(encoding="utf-8")) if card_path.exists()
            else '<h2>Model card</h2><p class="muted">No MODEL_CARD.md in this run.</p>')
    name = html.escape(run_dir.resolve().name)
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>{name} · Goushi GPT report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><h1>Goushi GPT (狗屎GPT) run report: {name}</h1>
<section><h2>Loss curves</h2>{curves}</section>
<section><h2>Evaluation</h2>{_eval_html(ev)}</section>
<section><h2>Samples</h2>{_samples_html(samples)}</section>
<section>{card}</section>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 samples: list[dict[str, Any]] | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    out = Path(out) if out is not None else Path(run_dir) / rundir.HTML_REPORT
    atomic_write_text(out, render_report(run_dir, samples=samples))
    return out


__all__ = ["markdown_to_html", "render_report", "write_report"]
