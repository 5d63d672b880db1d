"""MODEL_CARD.md: what the model is, whose words it learned from (and under which licence), how it did.

The trainer calls `write_model_card(run_dir, model_config=..., train_summary=..., data_meta=...)` at the
end of a run. The inputs are kept in RUN_DIR/model_card.json so that `goushi eval` can rebuild the
card with its results (`refresh_model_card`) without the trainer's help. It depends only on the run format
(goushi.rundir), so it sits below both goushi.train and goushi.eval.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.config import ModelConfig, param_counts
from goushi.data import layout as data_layout
from goushi.errors import GoushiError
from goushi.fsutil import atomic_write_json, atomic_write_text, json_safe
from goushi.run_record import RunRecord

# Licence families, matched on the upper-cased licence string. Order matters: the first match wins,
# so the restrictive families are tried before the permissive ones ("CC-BY-SA" before "CC-BY").
_NC = re.compile(r"\bNC\b|NON-?COMMERCIAL")
_ND = re.compile(r"\bND\b|NO-?DERIV")
_COPYLEFT = re.compile(r"AGPL|(?<!L)GPL|\bSA\b|SHARE-?ALIKE|ODBL|EUPL|\bOSL\b|CECILL(?!-B)")
_WEAK_COPYLEFT = re.compile(r"LGPL|MPL|EPL|\bCDDL\b")
_UNKNOWN = re.compile(r"^\s*(|UNKNOWN|NONE|N/?A|\?+|UNLICENSED|PROPRIETARY|ALL RIGHTS RESERVED|COPYRIGHT(ED)?)\s*$")
_PERMISSIVE = re.compile(r"MIT|BSD|APACHE|ISC|CC0|PUBLIC[ -]DOMAIN|UNLICENSE|CC-?BY|ODC-?BY|PDDL|ZLIB|WTFPL|0BSD|PSF")


def license_class(license: str) -> str:
    """One of: copyleft, weak-copyleft, non-commercial, no-derivatives, unknown, permissive, other."""
    u = (license or "").upper()
    if _UNKNOWN.match(u):
        return "unknown"
    if _NC.search(u):
        return "non-commercial"
    if _ND.search(u):
        return "no-derivatives"
    if _COPYLEFT.search(u):
        return "copyleft"
    if _WEAK_COPYLEFT.search(u):
        return "weak-copyleft"
    if _PERMISSIVE.search(u):
        return "permissive"
    return "other"


def license_warnings(sources: dict[str, dict[str, Any]]) -> list[str]:
    """One warning line per source whose licence needs the user's attention before they share the model."""
    out = []
    for sid, info in sources.items():
        lic = str(info.get("license") or "unknown")
        kind = license_class(lic)
        share = info.get("share")
        part = f" ({share:.1%} of the training text)" if isinstance(share, (int, float)) else ""
        if kind == "copyleft":
            extra = (" AGPL also covers use over a network, so serving the model publicly may count as distribution."
                     if "AGPL" in lic.upper() else "")
            out.append(f"`{sid}`{part} is under **{lic}**, a copyleft licence: if the model or its output counts "
                       f"as a derivative work (unsettled law), sharing it may oblige you to use the same licence and "
                       f"credit the source.{extra} Check before you publish, or rebuild the data without it.")
        elif kind == "weak-copyleft":
            out.append(f"`{sid}`{part} is under **{lic}**, a weak copyleft licence: changes to the covered text "
                       f"must stay under it; credit the source when you share.")
        elif kind == "non-commercial":
            out.append(f"`{sid}`{part} is under **{lic}**: non-commercial only, so the model must not be used "
                       f"commercially.")
        elif kind == "no-derivatives":
            out.append(f"`{sid}`{part} is under **{lic}**: no derivatives allowed; training on it and sharing "
                       f"the model may not be permitted.")
        elif kind == "unknown":
            out.append(f"`{sid}`{part} has an **unknown licence**: you may have no right to train on it or "
                       f"share what the model learned; find its licence (sources.toml `license = ...`) or drop it.")
        elif kind == "other":
            out.append(f"`{sid}`{part} is under **{lic}**, a licence goushi does not recognise: read its "
                       f"conditions before sharing the model.")
    return out


# ---- Markdown helpers ------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        v = f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


# ---- the card --------------------------------------------------------------------------------
_TRAIN_LABELS = {
    "steps": "optimizer steps", "tokens": "tokens seen", "seconds": "wall time", "device": "device",
    "hardware": "hardware", "dtype": "precision", "batch_size": "batch size (sequences)",
    "learning_rate": "peak learning rate", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
    "final_val_bpc": "final val bits/char", "best_val_loss": "best val loss", "best_step": "best step",
    "stop_reason": "stopped because",
}

_EXTRA_LABELS = {"tokens_per_s": "tokens/s", "final_val_ppl": "final val perplexity"}
_SHOWN_ELSEWHERE = {"parameters", "family", "run_dir"}  # already in the Model section


def render_model_card(run_name: str, *, model_config: ModelConfig | dict[str, Any], train_summary: dict[str, Any],
                      data_meta: dict[str, Any], eval_results: dict[str, Any] | None = None) -> str:
    cfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_dict(dict(model_config))
    counts = param_counts(cfg)
    L: list[str] = [f"# Model card: {run_name}", ""]
    L += [f"A small {cfg.family} decoder-only language model trained with Goushi GPT (狗屎GPT). "
          f"Card written {_dt.date.today().isoformat()}.", ""]

    L += ["## Model", ""]
    L += _table(["field", "value"], [
        ["parameters", f"{counts['total']:,} ({_human(counts['total'])}; {counts['non_embedding']:,} outside embeddings)"],
        ["layers × heads × width", f"{cfg.n_layer} × {cfg.n_head} × {cfg.n_embd}"
         + (f" (key/value heads {cfg.kv_heads})" if cfg.kv_heads != cfg.n_head else "")],
        ["context length", f"{cfg.context_length} tokens"],
        ["vocabulary", f"{cfg.vocab_size} ({data_meta.get('tokenizer_kind', '?')} tokenizer)"],
        ["positions / norm / MLP", f"{cfg.pos_encoding} / {cfg.norm} / {cfg.mlp}"],
    ])

    L += ["", "## Training data", ""]
    sources = data_meta.get("sources") or {}
    if sources:
        rows = [[sid, s.get("docs"), s.get("chars"), f"{s['share']:.1%}" if isinstance(s.get("share"), (int, float)) else s.get("share"),
                 s.get("license") or "unknown", s.get("author"), s.get("url")] for sid, s in sources.items()]
        L += _table(["source", "documents", "characters", "share", "licence", "author", "url"], rows)
        facts = [f"{k.replace('_', ' ')}: {_human(data_meta[k]) if isinstance(data_meta[k], int) else _cell(data_meta[k])}"
                 for k in ("train_tokens", "val_tokens", "train_chars", "chars_per_token") if k in data_meta]
        if facts:
            L += ["", "; ".join(facts) + "."]
    else:
        L += ["No data sources recorded (the data directory's meta.json was not found). Credit your sources "
              "before sharing this model."]

    base = data_meta.get("base") if isinstance(data_meta.get("base"), dict) else None
    base_sources: dict[str, Any] = {}
    level = base
    while isinstance(level, dict):  # down the chain: a DPO run's base is a chat run, whose base was pre-trained
        for sid, s in (level.get("sources") or {}).items():
            base_sources.setdefault(sid, s)
        level = level.get("base")
    if base is not None:
        L += ["", "### Started from another model", "",
              f"This model continued from the weights of `{base.get('run_dir')}`, so it also carries what that model "
              "learned, from these sources:", ""]
        rows = [[sid, s.get("docs"), s.get("chars"), s.get("license") or "unknown", s.get("author"), s.get("url")]
                for sid, s in base_sources.items()]
        L += _table(["source", "documents", "characters", "licence", "author", "url"], rows) if rows else \
            ["(the base run recorded no sources: check them before sharing this model)"]
    sources = {**{f"{sid} (base)": s for sid, s in base_sources.items()}, **sources}

    L += ["", "## Licence warnings", ""]
    warnings = license_warnings(sources)
    if warnings:
        L += [f"- {w}" for w in warnings]
    elif sources:
        L += ["None: every source is under a permissive licence. Keep the credits above when you share the model."]
    else:
        L += ["- Sources unknown, so licences are unknown: check them before sharing the model."]

    L += ["", "## Training", ""]
    rows = []
    for k, label in _TRAIN_LABELS.items():
        if train_summary.get(k) is None:
            continue
        v = train_summary[k]
        if k == "seconds":
            v = _duration(float(v))
        elif k == "tokens" and isinstance(v, (int, float)):
            v = f"{int(v):,} ({_human(v)})"
        rows.append([label, v])
    rows += [[_EXTRA_LABELS.get(k, k.replace("_", " ")), v] for k, v in train_summary.items()
             if k not in _TRAIN_LABELS and k not in _SHOWN_ELSEWHERE and isinstance(v, (str, int, float, bool))]
    L += _table(["field", "value"], rows) if rows else ["No training summary recorded."]

    L += ["", "## Evaluation", ""]
    L += eval_section(eval_results)

    L += ["", "## Intended use and limits", ""]
    L += [
        "- For fun, learning and experiments: it imitates the **style** of its training text. It does not know "
        "facts; what it writes is often false, nonsensical or off-topic, stated with confidence.",
        "- It can repeat its training text word for word. Check any output you publish with "
        "`goushi provenance RUN_DIR --text \"...\"`, which names the source and licence of copied spans.",
        "- It repeats whatever biases and offensive content its sources contain, and has no safety tuning.",
        "- Not for decisions about people, medical, legal or financial advice, or anything that must be true.",
        "- Credit the sources above, and respect the licence warnings, when you share the model or its output.",
    ]
    return "\n".join(L) + "\n"


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else _cell(v)


def eval_section(ev: dict[str, Any] | None) -> list[str]:
    if not ev or not (ev.get("text") or ev.get("generate")):
        return ["Not evaluated yet: run `goushi eval RUN_DIR --text FILE` (bits per character on held-out text) "
                "and `goushi eval RUN_DIR --generate --prompts FILE --samples N`."]
    L: list[str] = []
    text = ev.get("text")
    if text:
        rows = [[Path(f).name, _fmt(r.get("bpc")), _fmt(r.get("bpb")), _fmt(r.get("loss")), _fmt(r.get("ppl"), 2),
                 r.get("tokens"), r.get("chars")] for f, r in text.get("files", {}).items()]
        o = text.get("overall", {})
        rows.append(["**overall**", _fmt(o.get("bpc")), _fmt(o.get("bpb")), _fmt(o.get("loss")), _fmt(o.get("ppl"), 2),
                     o.get("tokens"), o.get("chars")])
        L += _table(["held-out text", "bits/char", "bits/byte", "loss", "perplexity", "tokens", "characters"], rows)
        if "uniform_loss" in text:
            L += ["", f"For scale: a model guessing uniformly over the vocabulary has loss {text['uniform_loss']:.3f}."]
    gen = ev.get("generate")
    if gen:
        m = gen.get("metrics", gen)
        if L:
            L.append("")
        keys = [k for k in m if isinstance(m[k], (int, float)) and not isinstance(m[k], bool)]
        L += _table(["generation metric", "value"], [[k.replace("_", " "), _fmt(m[k])] for k in keys])
    return L


def write_model_card(run_dir: str | Path, *, model_config: ModelConfig | dict[str, Any], train_summary: dict[str, Any],
                     data_meta: dict[str, Any], eval_results: dict[str, Any] | None = None) -> Path:
    """Write RUN_DIR/MODEL_CARD.md (and its inputs to RUN_DIR/model_card.json); returns the card's path.

    model_config: ModelConfig or its dict. train_summary: any of steps, tokens, seconds, device, hardware,
    dtype, batch_size, learning_rate, final_train_loss, final_val_loss, final_val_bpc, best_val_loss,
    best_step, stop_reason (other scalar keys are listed as they are). data_meta: DATA_DIR/meta.json.
    eval_results: RUN_DIR/eval.json's content; None reads that file if it exists.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GoushiError(f"{run_dir}: not a directory; write the model card into an existing run directory")
    cfg = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)
    if eval_results is None:
        eval_results = rundir.read_eval(run_dir)
    summary = dict(train_summary or {})
    text = render_model_card(run_dir.resolve().name, model_config=cfg, train_summary=summary,
                             data_meta=dict(data_meta or {}), eval_results=eval_results)
    atomic_write_json(run_dir / rundir.CARD_INPUTS, json_safe({"model_config": cfg, "train_summary": summary,
                                                               "data_meta": data_meta or {}}))
    atomic_write_text(run_dir / rundir.MODEL_CARD, text)
    return run_dir / rundir.MODEL_CARD


def refresh_model_card(run_dir: str | Path) -> Path | None:
    """Rebuild MODEL_CARD.md with the current eval.json; None when the run has no card inputs to rebuild from."""
    run_dir = Path(run_dir)
    inputs_path = run_dir / rundir.CARD_INPUTS
    if inputs_path.exists():
        try:
            inputs = json.loads(inputs_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GoushiError(f"{inputs_path}: not valid JSON ({e}); delete it to rebuild the card from config.json") from None
    else:
        if not (run_dir / rundir.CONFIG).exists():
            return None
        inputs = record_card_inputs(run_dir, rundir.read_run(run_dir))
    return write_model_card(run_dir, model_config=inputs["model_config"], train_summary=inputs.get("train_summary") or {},
                            data_meta=inputs.get("data_meta") or {})


def record_card_inputs(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    """The card's inputs for a run that has no model_card.json, from its record: the model, no training summary
    (only the trainer has one), and the data's credit with the base runs' (the data directory's meta when the
    record has none)."""
    meta = record.card_data()
    data_dir = rundir.data_dir_for_run(run_dir, record)
    if not record.data.meta and data_dir and data_layout.is_data_dir(data_dir):
        meta = {**data_layout.read_meta(data_dir), **meta}
    return {"model_config": record.model.to_dict(), "train_summary": {}, "data_meta": meta}


__all__ = ["license_class", "license_warnings", "render_model_card", "write_model_card", "refresh_model_card",
           "record_card_inputs"]
