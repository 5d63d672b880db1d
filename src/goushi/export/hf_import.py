"""`goushi import HF_DIR --out RUN_DIR`: a Hugging Face GPT-2 or Llama checkpoint as a normal goushi run, which
`goushi sample`, `goushi train --init-from` and `goushi sft` accept.

Every option of the checkpoint must have an exact place in our model; one that has none is refused by
name (the single exception, GPT-2's tanh-approximated GELU, is recorded in config.json and the card).
The run directory is built under a temporary name beside RUN_DIR and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

import goushi
from goushi import rundir
from goushi.checkpoint import save_weights
from goushi.config import ModelConfig, param_counts
from goushi.errors import GoushiError
from goushi.export.common import check_out
from goushi.export.hf_export import GOUSHI_RUN
from goushi.export.hf_vocab import VocabMap, convert_vocab
from goushi.fsutil import atomic_dir, json_safe
from goushi.hf import from_hf_state_dict
from goushi.model import GPT
from goushi.model_card import render_model_card
from goushi.run_record import DataRecord, ImportRecord, RunRecord

SUPPORTED = "gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM)"
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _refuse(path: Path, what: str) -> GoushiError:
    return GoushiError(f"{path}: {what}; goushi imports {SUPPORTED} checkpoints whose every option it can hold")


def _gpt2_config(c: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    act = c.activation_function
    if act in _TANH_GELU:
        notes.append(f"activation_function={act!r} (tanh-approximated GELU) runs as exact GELU here: logits "
                     "differ slightly from the original (about 1e-3); training continues from these weights")
    elif act != "gelu":
        raise _refuse(path, f"activation_function={act!r} (goushi's GPT-2 uses gelu)")
    for name, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
        if getattr(c, name, want) != want:
            raise _refuse(path, f"{name}={getattr(c, name)!r} (supported: {want})")
    return dict(family="gpt2", pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True,
                n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, mlp_hidden=c.n_inner or 4 * c.n_embd,
                context_length=c.n_positions, norm_eps=c.layer_norm_epsilon)


def _llama_config(c: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    if c.hidden_act != "silu":
        raise _refuse(path, f"hidden_act={c.hidden_act!r} (supported: silu)")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise _refuse(path, f"rope_parameters.rope_type={rope.get('rope_type')!r} (rope scaling; supported: default)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise _refuse(path, f"head_dim={head_dim} with num_attention_heads={c.num_attention_heads} and hidden_size="
                      f"{c.hidden_size} (supported: head_dim = hidden_size / num_attention_heads)")
    if bool(c.attention_bias) != bool(getattr(c, "mlp_bias", False)):
        raise _refuse(path, f"attention_bias={c.attention_bias} with mlp_bias={c.mlp_bias} (supported: both or neither)")
    return dict(family="llama", pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=bool(c.attention_bias),
                n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size,
                n_kv_head=c.num_key_value_heads or c.num_attention_heads, mlp_hidden=c.intermediate_size,
                context_length=c.max_position_embeddings, norm_eps=c.rms_norm_eps,
                rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))


def _read_config(hf_dir: Path) -> tuple[dict[str, Any], Any]:
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise GoushiError(f"{hf_dir}: no such directory; give a Hugging Face model directory (config.json, weights, "
                          "tokenizer.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoushiError(f"{path}: missing; {hf_dir} is not a Hugging Face model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{path}: not valid JSON ({e})") from None
    mt = raw.get("model_type")
    if mt not in ("gpt2", "llama"):
        archs = ", ".join(raw.get("architectures") or []) or "no architectures listed"
        raise _refuse(path, f"model_type {mt!r} ({archs}) is not supported")
    import transformers  # seconds to import; only export, import and the benchmarks need it

    return raw, transformers.AutoConfig.from_pretrained(hf_dir)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def model_config_from_hf(hf_dir: Path, context: int | None = None) -> tuple[ModelConfig, Any, list[str]]:
    """Our ModelConfig for the checkpoint in `hf_dir` (vocab_size = the model's embedding rows), its
    transformers config, and notes on anything that is not carried over bit for bit."""
    raw, c = _read_config(hf_dir)
    path, notes = hf_dir / "config.json", []
    fields = _gpt2_config(c, path, notes) if raw["model_type"] == "gpt2" else _llama_config(c, path, notes)
    if context is not None:
        if not 0 < context <= fields["context_length"]:
            raise GoushiError(f"--context {context}: must be between 1 and the model's {fields['context_length']}")
        fields["context_length"] = context
    fields.update(vocab_size=c.vocab_size, tie_embeddings=bool(c.tie_word_embeddings), dropout=0.0)
    if fields["n_embd"] % fields["n_head"]:
        raise _refuse(path, f"hidden size {fields['n_embd']} is not divisible by {fields['n_head']} heads")
    cfg = ModelConfig(**fields).validate()
    params = int(param_counts(cfg)["total"])
    mem = _memory_bytes()
    if mem and params * 4 * 3 > mem:
        raise _refuse(path, f"{params / 1e9:.1f}B parameters need ~{params * 12 / 2**30:.0f} GiB in float32 to import "
                      f"and train, this machine has {mem / 2**30:.0f} GiB")
    return cfg, c, notes


def _readme_license(hf_dir: Path) -> str:
    readme = hf_dir / "README.md"
    if readme.is_file():
        m = re.search(r"^license:\s*(\S+)", readme.read_text(encoding="utf-8", errors="replace"), re.M)
        if m:
            return m.group(1).strip("'\"")
    return "unknown"


def _record(hf_dir: Path, raw: dict[str, Any], cfg: ModelConfig, vm: VocabMap, notes: list[str]) -> RunRecord:
    """The imported run's record; a goushi export brings back the run it came from (sources, chat, base)."""
    origin: RunRecord | None = None
    path = hf_dir / GOUSHI_RUN
    if path.is_file():
        try:
            origin = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GoushiError(f"{path}: not valid JSON ({e}); delete it to import without it") from None
        except GoushiError as e:
            raise GoushiError(f"{e}; delete {path} to import without it") from None
    name = str(raw.get("_name_or_path") or hf_dir.resolve().name)
    meta = dict(origin.data.meta) if origin is not None else {}
    if not meta.get("sources"):
        meta["sources"] = {hf_dir.resolve().name: {"license": _readme_license(hf_dir), "author": None, "url": None,
                                                   "note": f"pretrained weights imported from {name}"}}
    meta["tokenizer_kind"] = vm.tokenizer.kind
    imported = ImportRecord(source=str(hf_dir.resolve()), model_type=raw.get("model_type"),
                            architectures=raw.get("architectures"), document_token=vm.doc_token, notes=notes + vm.notes)
    return RunRecord(model=cfg, data=DataRecord(tokenizer_hash=vm.tokenizer.hash(), meta=meta), imported=imported,
                     sft=origin.sft if origin else None, dpo=origin.dpo if origin else None,
                     chat_template=origin.chat_template if origin else None,
                     base=origin.base if origin else None, goushi_version=goushi.__version__)


def import_hf(hf_dir: str | Path, out: str | Path, *, force: bool = False, context: int | None = None) -> tuple[Path, list[str]]:
    """Write the Hugging Face checkpoint in `hf_dir` as a goushi run at `out`; returns (out, notes)."""
    hf_dir, out = Path(hf_dir), Path(out)
    cfg, c, notes = model_config_from_hf(hf_dir, context)
    check_out(out, force=force, kind="directory")
    raw = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    tcfg = _tokenizer_config(hf_dir)
    bos = tcfg.get("bos_token") or _token_text(c, "bos_token_id", hf_dir)
    eos = tcfg.get("eos_token") or _token_text(c, "eos_token_id", hf_dir)
    vm = convert_vocab(hf_dir / "tokenizer.json", bos=_content(bos), eos=_content(eos), model_rows=cfg.vocab_size)
    import transformers  # seconds to import; only export, import and the benchmarks need it

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    sd = from_hf_state_dict(cfg, {k: v.detach() for k, v in hf.state_dict().items()})
    del hf
    ours = ModelConfig(**{**cfg.to_dict(), "vocab_size": len(vm.new_to_old)}).validate()
    sd["wte.weight"] = vm.rows(sd["wte.weight"])
    sd["lm_head.weight"] = sd["wte.weight"] if ours.tie_embeddings else vm.rows(sd["lm_head.weight"])
    if "wpe.weight" in sd:
        sd["wpe.weight"] = sd["wpe.weight"][: ours.context_length]
    model = GPT(ours)
    model.load_state_dict(sd, strict=True)
    record = _record(hf_dir, raw, ours, vm, notes)
    with atomic_dir(out, force=force) as tmp:
        save_weights(tmp / rundir.WEIGHTS, model)
        rundir.write_run(tmp, record)
        vm.tokenizer.save(tmp / rundir.TOKENIZER)
        _write_card(tmp, out.name, record)
    return out, notes + vm.notes


def _write_card(tmp: Path, name: str, record: RunRecord) -> None:
    cfg = record.model
    summary = {"imported_from": record.imported.source if record.imported else ""}
    meta = record.card_data()
    text = render_model_card(name, model_config=cfg, train_summary=summary, data_meta=meta)
    (tmp / rundir.MODEL_CARD).write_text(text, encoding="utf-8")
    (tmp / rundir.CARD_INPUTS).write_text(json.dumps(json_safe({"model_config": cfg.to_dict(), "train_summary": summary,
                                                                "data_meta": meta}), ensure_ascii=False, indent=2) + "\n",
                                          encoding="utf-8")


def _tokenizer_config(hf_dir: Path) -> dict[str, Any]:
    p = hf_dir / "tokenizer_config.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{p}: not valid JSON ({e})") from None


def _content(tok: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _token_text(c: Any, attr: str, hf_dir: Path) -> str | None:
    """A special token named only by id in config.json, looked up in tokenizer.json."""
    i = getattr(c, attr, None)
    if isinstance(i, list):
        i = i[0] if i else None
    if i is None:
        return None
    try:
        spec = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    for a in spec.get("added_tokens") or []:
        if a.get("id") == i:
            return a.get("content")
    return {v: k for k, v in (spec.get("model") or {}).get("vocab", {}).items()}.get(i)


__all__ = ["SUPPORTED", "import_hf", "model_config_from_hf"]
