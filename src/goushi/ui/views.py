"""Pictures of what the model does, as HTML and matplotlib figures: tokens, next-token bars, attention.

Pure functions of data the Engine returned; nothing here tokenises or samples. Every piece of text
from a user or a model is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Sequence
from typing import Any

from goushi.eval.provenance import highlight_html

# Pastel backgrounds, dark text: neighbouring tokens differ, and all stay readable.
PALETTE = ("#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f3e3", "#fce1c8", "#dbeffa")
CJK_FONTS = ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "Source Han Sans SC", "SimHei", "Microsoft YaHei",
             "PingFang SC", "Heiti SC", "Droid Sans Fallback"]
_CJK_FILE_HINTS = ("wqy", "notosanscjk", "sourcehansans", "droidsansfallback", "simhei", "msyh", "pingfang")


@functools.lru_cache(maxsize=1)
def plot_fonts() -> tuple[str, ...]:
    """Font families matplotlib can use for Chinese labels (else they render as boxes)."""
    from matplotlib import font_manager as fm

    def available() -> list[str]:
        names = {f.name for f in fm.fontManager.ttflist}
        return [n for n in CJK_FONTS if n in names]

    found = available()
    if not found:
        # matplotlib caches the font list once; a CJK font installed later is missing from it.
        for path in fm.findSystemFonts():
            if any(h in os.path.basename(path).lower() for h in _CJK_FILE_HINTS):
                try:
                    fm.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        found = available()
    return (*found, "DejaVu Sans")


def visible(piece: str) -> str:
    """Make invisible pieces visible: a learner must see that a space or a newline is a token too."""
    if piece == "":
        return "∅"
    return piece.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _is_special(piece: str) -> bool:
    return piece.startswith("<|") and piece.endswith("|>")


def token_spans_html(tokens: Sequence[tuple[int, str]], *, cut: int = 0) -> str:
    """The text as coloured token chips, each with its id underneath; the first `cut` tokens are greyed (cut off)."""
    if not tokens:
        return '<div class="gs-tokens gs-empty">（没有 token · no tokens）</div>'
    chips = []
    for i, (tid, piece) in enumerate(tokens):
        classes = ["gs-tok"]
        tip = f"token #{i} · id {tid}"
        if i < cut:
            classes.append("gs-cut")
            tip += " · 超出上下文，被截掉 cut: beyond the context window"
        if _is_byte_piece(piece):
            classes.append("gs-byte")
            tip += " · 字节回退 byte fallback: 这个字不在词表里，拆成了 UTF-8 字节 (character not in the vocabulary)"
        elif _is_special(piece):
            classes.append("gs-special")
            tip += " · 特殊 token special token"
        color = PALETTE[i % len(PALETTE)]
        chips.append(
            f'<span class="{" ".join(classes)}" style="background:{color}" title="{html.escape(tip, quote=True)}">'
            f'<span class="gs-piece">{html.escape(visible(piece))}</span>'
            f'<span class="gs-id">{tid}</span></span>'
        )
    return f'<div class="gs-tokens">{"".join(chips)}</div>'


def prob_bars_html(top: Sequence[tuple[str, float, int]] | None, *, chosen_id: int | None = None,
                   caption: str = "") -> str:
    """Top next tokens as horizontal bars: the probability vector of one prediction step, its largest entries."""
    if not top:
        return '<div class="gs-bars gs-empty">（没有概率数据 · no probabilities）</div>'
    rows = []
    scale = max(p for _, p, _ in top) or 1.0
    for rank, (piece, p, tid) in enumerate(top, 1):
        chosen = tid == chosen_id
        width = max(0.5, 100.0 * p / scale)
        mark = ' <span class="gs-chosen-tag">← 选中 chosen</span>' if chosen else ""
        rows.append(
            f'<div class="gs-bar-row{" gs-chosen" if chosen else ""}" title="id {tid} · p = {p:.6f}">'
            f'<span class="gs-rank">{rank}</span>'
            f'<span class="gs-bar-label">{html.escape(visible(piece))}</span>'
            f'<span class="gs-bar"><span class="gs-fill" style="width:{width:.1f}%"></span></span>'
            f'<span class="gs-bar-p">{100 * p:.1f}%</span>{mark}</div>'
        )
    total = sum(p for _, p, _ in top)
    foot = (f'<div class="gs-bar-foot">前 {len(top)} 个合计 {100 * total:.1f}%，其余 {100 * max(0.0, 1 - total):.1f}% '
            f'分给词表里其他 token · top {len(top)} hold {100 * total:.1f}% of the probability</div>')
    cap = f'<div class="gs-bar-caption">{html.escape(caption)}</div>' if caption else ""
    return f'<div class="gs-bars">{cap}{"".join(rows)}{foot}</div>'


def step_text_html(prompt: str, pieces: Sequence[str], step: int) -> str:
    """Prompt plus the first `step` generated tokens, the token about to be chosen shown as a gap."""
    done = "".join(html.escape(visible(p)) for p in pieces[:step])
    nxt = (f'<span class="gs-next">{html.escape(visible(pieces[step]))}</span>' if step < len(pieces)
           else '<span class="gs-next">（结束 end）</span>')
    return (f'<div class="gs-steptext"><span class="gs-prompt">{html.escape(prompt)}</span>'
            f'<span class="gs-gen">{done}</span>{nxt}</div>')


def output_html(prompt: str, text: str, *, spans: Sequence[Any] | None = None, running: bool = False) -> str:
    """Prompt (grey) and generated text; spans copied verbatim from training data are marked with their source."""
    if not prompt and not text:
        return ('<div class="gs-output"><span class="gs-placeholder">模型写的字会出现在这里 · '
                'the generated text appears here</span></div>')
    body = html.escape(text)
    if spans:
        body = highlight_html(text, list(spans))  # escapes the text itself
    cursor = '<span class="gs-cursor">▌</span>' if running else ""
    return (f'<div class="gs-output"><span class="gs-prompt">{html.escape(prompt)}</span>'
            f'<span class="gs-gen">{body}</span>{cursor}</div>')


def attention_figure(pieces: Sequence[str], att: Any, layer: int, head: int | None) -> Any:
    """Heat map of one layer's attention: row = the token looking, column = the token looked at.

    `att` is (layers, heads, T, T); head None averages the heads. Returns a matplotlib Figure built
    without pyplot, so concurrent sessions never share drawing state.
    """
    import numpy as np
    from matplotlib.figure import Figure

    a = np.asarray(att, dtype=np.float32)[layer]
    m = a.mean(axis=0) if head is None else a[head]
    T = m.shape[-1]
    labels = [visible(p) for p in pieces][-T:]
    size = min(9.0, max(4.0, 0.28 * T + 2.0))
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(m.max()), 1e-6), interpolation="nearest")
    every = max(1, (T + 39) // 40)  # at most ~40 labels per axis, or they overlap into a black band
    ticks = list(range(0, T, every))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    fonts = list(plot_fonts())
    font = {"family": fonts, "size": 9}
    ax.set_xticklabels([labels[i] for i in ticks], fontdict=font, rotation=90)
    ax.set_yticklabels([labels[i] for i in ticks], fontdict=font)
    who = "所有头平均 mean of heads" if head is None else f"head {head}"
    ax.set_title(f"layer {layer} · {who}", fontdict={"family": fonts, "size": 11})
    ax.set_xlabel("被关注的 token (key, looked at)", fontdict=font)
    ax.set_ylabel("正在预测的位置 (query, looking)", fontdict=font)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
