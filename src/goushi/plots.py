"""The loss curve of a run, drawn from its metrics.jsonl rows: one picture for loss.png, the web page and
the HTML report. Built on matplotlib's Figure (not pyplot), so concurrent page sessions share no state
and no display is ever needed."""

from __future__ import annotations

import io
from typing import Any


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            xs.append(r.get("step", i))
            ys.append(float(v))
    return xs, ys


def loss_plot_png(rows: list[dict[str, Any]]) -> bytes | None:
    """PNG of every *loss* series against step (and the *bpc* series, or the learning rate, beside it);
    None when the rows hold no loss."""
    from matplotlib.figure import Figure

    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    loss_keys = [k for k in keys if "loss" in k]
    side_keys = [k for k in keys if "bpc" in k] or [k for k in keys if k in ("lr", "learning_rate")]
    if not loss_keys:
        return None
    fig = Figure(figsize=(10 if side_keys else 6, 3.6))
    axes = fig.subplots(1, 2 if side_keys else 1, squeeze=False)[0]
    panels = [(axes[0], loss_keys, "loss (nats/token)")]
    if side_keys:
        side = "bits per character" if any("bpc" in k for k in side_keys) else "learning rate"
        panels.append((axes[1], side_keys, side))
    for ax, names, ylabel in panels:
        for k in names:
            xs, ys = _series(rows, k)
            sparse = len(xs) < 0.5 * len(rows)  # validation is logged rarely: show its points
            ax.plot(xs, ys, marker="o" if sparse else None, markersize=3, label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


__all__ = ["loss_plot_png"]
