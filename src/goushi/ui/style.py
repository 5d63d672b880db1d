"""Look of the page: a theme that needs no web fonts (the page must work offline) and the CSS of our views."""

from __future__ import annotations

from typing import Any

import gradio as gr

# System CJK fonts after the theme's bundled Latin font; Gradio serves LocalFont files itself.
CJK_STACK = ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
             "SimHei", "sans-serif"]


def theme() -> Any:
    return gr.themes.Soft(
        primary_hue="orange",
        secondary_hue="amber",
        neutral_hue="stone",
        # Only the weights Gradio ships (a missing one is a 404 on every page load).
        font=[gr.themes.LocalFont("Montserrat", weights=(400, 700)), *CJK_STACK],
        font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "monospace"],
    )


CSS = """
.gs-header h1 { margin-bottom: 0.1em; }
.gs-header p { margin-top: 0; opacity: 0.8; }
.gs-model-status { min-height: 1.5em; }
.gs-output { font-size: 1.15em; line-height: 1.8; white-space: pre-wrap; word-break: break-all;
  padding: 12px 14px; border-radius: 8px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-secondary); min-height: 5em; }
.gs-prompt { color: var(--body-text-color-subdued); }
.gs-gen { color: var(--body-text-color); }
.gs-output mark.copied, .gs-gen mark.copied { background: #ffe08a; border-bottom: 2px solid #e0a800; cursor: help; }
.gs-tokens { line-height: 2.9; font-size: 1.1em; }
.gs-tok { display: inline-flex; flex-direction: column; align-items: center; margin: 0 2px 4px 0;
  padding: 0 5px; border-radius: 5px; border: 1px solid rgba(0,0,0,0.08); color: #222; vertical-align: top; }
.gs-tok .gs-piece { white-space: pre; line-height: 1.6; }
.gs-tok .gs-id { font-size: 0.62em; color: #555; line-height: 1.2; font-family: monospace; }
.gs-tok.gs-cut { opacity: 0.35; text-decoration: line-through; }
.gs-tok.gs-byte { border: 1px dashed #b45309; }
.gs-tok.gs-special { border: 1px solid #7c3aed; }
.gs-bars { font-size: 1em; }
.gs-bar-caption { font-weight: 600; margin-bottom: 6px; }
.gs-bar-row { display: flex; align-items: center; gap: 8px; margin: 3px 0; padding: 1px 4px; border-radius: 4px; }
.gs-bar-row.gs-chosen { background: rgba(249, 115, 22, 0.12); font-weight: 600; }
.gs-rank { width: 1.6em; text-align: right; color: var(--body-text-color-subdued); font-size: 0.85em; }
.gs-bar-label { width: 4.5em; text-align: center; white-space: pre; overflow: hidden; text-overflow: ellipsis;
  font-size: 1.1em; }
.gs-bar { flex: 1; height: 16px; background: var(--background-fill-secondary); border-radius: 3px;
  overflow: hidden; min-width: 80px; }
.gs-fill { display: block; height: 100%; background: linear-gradient(90deg, #fb923c, #f97316); }
.gs-bar-p { width: 4em; text-align: right; font-family: monospace; }
.gs-chosen-tag { color: #c2410c; font-size: 0.85em; }
.gs-bar-foot { margin-top: 6px; font-size: 0.85em; color: var(--body-text-color-subdued); }
.gs-steptext { font-size: 1.15em; line-height: 1.8; white-space: pre-wrap; word-break: break-all; }
.gs-next { background: #fed7aa; border-radius: 4px; padding: 0 3px; outline: 2px dashed #f97316; }
.gs-placeholder { color: var(--body-text-color-subdued); font-size: 0.9em; }
.gs-empty { color: var(--body-text-color-subdued); }
.gs-empty-page { max-width: 760px; margin: 2em auto; }
.gs-note { border-left: 4px solid #f97316; padding: 8px 12px; background: rgba(249, 115, 22, 0.07);
  border-radius: 4px; }
"""
