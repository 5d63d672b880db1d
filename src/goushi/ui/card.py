"""The model card tab: what a run is (shape, data, training), from its record (the engine's `record`)
and the files goushi.rundir names, without loading weights. The loss curve is goushi.plots' one picture."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image

from goushi import rundir
from goushi.config import param_counts
from goushi.errors import GoushiError
from goushi.plots import loss_plot_png
from goushi.run_record import RunRecord


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; none when the file is missing or unreadable (the card still shows the rest)."""
    try:
        return rundir.read_metrics(run_dir)
    except (GoushiError, OSError, UnicodeDecodeError):
        return []


def summary_markdown(run_dir: Path, record: RunRecord | GoushiError) -> str:
    """A short table a learner can read: size, context, vocabulary, how far training got; or what is wrong
    with the run's config.json (`record` is the error reading it raised)."""
    lines = [f"**目录 run directory:** `{run_dir}`", ""]
    if isinstance(record, GoushiError):
        return "\n".join(lines + [f"config.json 有问题 · bad config.json: {record}"])
    cfg = record.model
    counts = param_counts(cfg)
    rows = [
        ("参数量 parameters", f"{_human(counts['total'])} ({counts['total']:,})"),
        ("层数 layers × 头数 heads", f"{cfg.n_layer} × {cfg.n_head} (kv heads {cfg.kv_heads})"),
        ("宽度 width (n_embd)", str(cfg.n_embd)),
        ("上下文 context length", f"{cfg.context_length} tokens"),
        ("词表 vocabulary", f"{cfg.vocab_size} tokens"),
        ("结构 family", f"{cfg.family}: {cfg.pos_encoding} positions, {cfg.norm}, {cfg.mlp}"),
    ]
    if record.data.tokenizer_kind:
        rows.append(("分词器 tokenizer", record.data.tokenizer_kind))
    metrics = read_metrics(run_dir)
    step = rundir.last_value(metrics, "step")
    if step is not None:
        rows.append(("训练步数 steps", str(step)))
    tokens = rundir.last_value(metrics, "tokens")
    if tokens is not None:
        rows.append(("训练 token 数 tokens seen", _human(tokens)))
    loss = rundir.last_value(metrics, "loss")
    if loss is not None:
        # The loss of a uniform guess tells a learner whether the model learned anything at all.
        rows.append(("最后的训练损失 last train loss", f"{loss:.3f} (瞎猜 uniform guess = ln {cfg.vocab_size} = "
                     f"{math.log(cfg.vocab_size):.2f})"))
    val = rundir.last_value(metrics, "val_loss")
    if val is not None:
        bpc = rundir.last_value(metrics, "val_bpc")
        rows.append(("验证损失 validation loss", f"{val:.3f}" + (f" · {bpc:.3f} bits/char" if bpc is not None else "")))
    if record.is_chat:
        rows.append(("对话微调 chat fine-tuned", "是 yes"))
    lines += ["| 项目 item | 值 value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def model_card_markdown(run_dir: Path) -> str:
    p = run_dir / rundir.MODEL_CARD
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        name = rundir.MODEL_CARD
        return f"（这个运行没有 {name} · this run has no {name}; `goushi train` writes one at the end of training）"
    except (OSError, UnicodeDecodeError) as e:
        return f"（无法读取 cannot read {p}: {e}）"


def loss_image(run_dir: Path) -> Any:
    """loss.png if training drew one, else a plot from metrics.jsonl; None when there is neither."""
    png = run_dir / rundir.LOSS_PLOT
    data = None
    if png.is_file():
        data = png.read_bytes()
    else:
        metrics = read_metrics(run_dir)
        if metrics:
            data = loss_plot_png(metrics)
    if not data:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except OSError:
        return None


def config_json(run_dir: Path, record: RunRecord | GoushiError) -> str:
    """The record as JSON; config.json's own text when it could not be read as one (so the page shows why)."""
    if isinstance(record, GoushiError):
        try:
            return (run_dir / rundir.CONFIG).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            return f"{run_dir / rundir.CONFIG}: {e}"
    return json.dumps(record.to_dict(), ensure_ascii=False, indent=2)
