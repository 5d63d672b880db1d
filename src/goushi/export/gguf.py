"""`goushi export RUN_DIR --format gguf --out FILE.gguf [--type f32|f16|q8_0]`: one file llama.cpp (and so
Ollama, LM Studio, llama-cpp-python) loads unpatched, plus an Ollama Modelfile beside it.

- gpt2 family -> llama.cpp arch "gpt2" (fused q/k/v); llama family -> arch "llama", whose rope rotates
  adjacent pairs where ours (and Hugging Face's) rotates halves, so q/k rows are permuted exactly as
  llama.cpp's convert_hf_to_gguf.py does.
- char tokenizer -> llama.cpp's SentencePiece tokenizer ("llama"): one token per character, `<0xXX>` byte
  tokens for byte fallback, the space written as "▁" (llama.cpp escapes spaces), no space prefix. SPM merges
  adjacent pieces only into tokens that exist; the char vocabulary has no multi-character piece, so none.
- bpe tokenizer -> llama.cpp's byte-level BPE ("gpt2") with our merges, and as `tokenizer.ggml.pre` the
  pre-tokenizer the tokenizer.json holds (goushi.tokenizer.BPE_PRES): "deepseek-v3" is llama.cpp's own, so
  prompts split exactly as ours (tests/test_gguf.py checks ids on varied text). The two-character rule
  ("han2") is not: llama.cpp has a fixed list of pre-tokenizers and none splits Chinese into runs of at most
  2 characters, so a prompt with 3+ Chinese characters in a row is often split into other (valid) tokens than
  ours: only 227 of 2,000 review texts tokenized identically with the best candidates ("llama-bpe",
  "kimi-k2"). The model still runs and the text it generates decodes exactly, but prompts read differently,
  so this is refused unless the user accepts it (`approximate_tokenizer`); "llama-bpe" is then written:
  every llama.cpp build (and Ollama's) knows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goushi.checkpoint import Run, load_run
from goushi.errors import GoushiError
from goushi.export.common import check_out, hf_license
from goushi.export.tokenizer_files import chat_jinja, ollama_template, stop_ids
from goushi.fsutil import atomic_path, atomic_write_text
from goushi.hf import hf_family
from goushi.tokenizer import BPE_PRES, BYTE_TOKENS, SPECIAL_TOKENS, Tokenizer

GGUF_TYPES = ("f32", "f16", "q8_0")
BPE_PRE = "llama-bpe"  # for a BPE whose pre-tokenizer llama.cpp lacks (with approximate_tokenizer)
# our BPE pre-tokenizers llama.cpp has built in -> its name for them (tokenizer.ggml.pre)
EXACT_PRES = {"deepseek-v3": "deepseek-v3"}
_SPACE = "\u2581"  # how SentencePiece (and llama.cpp's SPM tokenizer) spells a space


def _gguf():
    try:
        import gguf  # optional extra `export`; only this command needs it
    except ImportError:
        raise GoushiError("GGUF export needs the gguf package: pip install 'goushi[export]'") from None
    return gguf


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half rows -> llama.cpp's adjacent-pair rows (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(run: Run) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's tensor names, in PyTorch (out, in) layout."""
    cfg = run.config
    sd = {k: v.detach().float().cpu() for k, v in run.model.state_dict().items()}
    out = {"token_embd.weight": sd["wte.weight"], "output_norm.weight": sd["ln_f.weight"]}
    gpt2 = hf_family(cfg) == "gpt2"
    if gpt2:
        out["position_embd.weight"] = sd["wpe.weight"]
        out["output_norm.bias"] = sd["ln_f.bias"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"blk.{i}."
        norms = {"attn_norm": "ln_1", "ffn_norm": "ln_2"}
        lin = {"attn_output": "attn.o_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
        if gpt2:
            for s in ("weight", "bias"):
                out[f"{q}attn_qkv.{s}"] = torch.cat([sd[f"{p}attn.{n}_proj.{s}"] for n in "qkv"], 0)
        else:
            lin.update(attn_v="attn.v_proj", ffn_gate="mlp.gate_proj")
            for name, ours, heads in (("attn_q", "attn.q_proj", cfg.n_head), ("attn_k", "attn.k_proj", cfg.kv_heads)):
                for s in ("weight", "bias") if cfg.bias else ("weight",):
                    out[f"{q}{name}.{s}"] = permute_rope(sd[f"{p}{ours}.{s}"], heads)
        for name, ours in norms.items():
            out[f"{q}{name}.weight"] = sd[f"{p}{ours}.weight"]
            if gpt2:
                out[f"{q}{name}.bias"] = sd[f"{p}{ours}.bias"]
        for name, ours in lin.items():
            out[f"{q}{name}.weight"] = sd[f"{p}{ours}.weight"]
            if cfg.bias:
                out[f"{q}{name}.bias"] = sd[f"{p}{ours}.bias"]
    return out


def _qtype(gguf: Any, name: str, data: np.ndarray, kind: str):
    """What each tensor is stored as: norms, biases and positions stay f32 (as llama.cpp's converter does);
    q8_0 needs rows in blocks of 32 values and falls back to f16 otherwise."""
    Q = gguf.GGMLQuantizationType
    if kind == "f32" or data.ndim < 2 or name.startswith("position_embd"):
        return Q.F32
    if kind == "q8_0" and data.shape[-1] % 32 == 0:
        return Q.Q8_0
    return Q.F16


def _char_vocab(tok: Tokenizer, n_rows: int, gguf: Any) -> tuple[list[str], list[int]]:
    T = gguf.TokenType
    # llama.cpp turns every space into "▁" before it looks anything up; without a " " token we spell a space
    # as the byte <0x20>, so that byte token becomes "▁" (a space never reaches byte fallback in llama.cpp).
    space_is_byte = tok.token_to_id(" ") is None
    tokens, types = [], []
    for i in range(n_rows):
        piece = tok.hf.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        elif i < len(SPECIAL_TOKENS):
            tokens.append(piece)
            types.append(T.UNKNOWN if i == 1 else T.CONTROL)
        elif piece == "<0x20>" and space_is_byte:
            tokens.append(_SPACE)
            types.append(T.NORMAL)
        elif piece in BYTE_TOKENS:
            tokens.append(piece)
            types.append(T.BYTE)
        else:
            if _SPACE in piece:
                raise GoushiError(f"tokenizer.json: the character {_SPACE!r} (U+2581) is in the vocabulary, and llama.cpp "
                                  "writes spaces as that character, so the two cannot be told apart; GGUF export "
                                  "of this char tokenizer is not possible (rebuild the data without U+2581)")
            tokens.append(piece.replace(" ", _SPACE))
            types.append(T.NORMAL)
    return tokens, types


def _bpe_vocab(tok: Tokenizer, n_rows: int, gguf: Any) -> tuple[list[str], list[int], list[str]]:
    T = gguf.TokenType
    spec = json.loads(tok.hf.to_str())
    added = {a["id"]: a for a in spec.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(n_rows):
        piece = tok.hf.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        tokens.append(piece)
        if i == 1:
            types.append(T.UNKNOWN)
        elif i in added:
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    return tokens, types, merges


def _write_tokenizer(w: Any, gguf: Any, run: Run) -> None:
    tok, record = run.tokenizer, run.record
    n_rows = run.config.vocab_size
    if tok.kind == "char":
        tokens, types = _char_vocab(tok, n_rows, gguf)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types(types)
        w.add_add_space_prefix(False)
    else:
        tokens, types, merges = _bpe_vocab(tok, n_rows, gguf)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(EXACT_PRES.get(tok.pre or "", BPE_PRE))
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    # Every prompt starts with <|endoftext|> (add_bos), and generation ends there or, in a chat, at the turn's end.
    w.add_bos_token_id(tok.eot_id)
    w.add_eos_token_id(tok.eot_id)
    w.add_pad_token_id(tok.eot_id)
    w.add_unk_token_id(1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if record.is_chat:
        tpl = record.template
        end = tok.token_to_id(tpl.turn_end)  # GGUF's end-of-turn token: llama.cpp stops there as at EOS
        if end is not None and end != tok.eot_id:
            w.add_eot_token_id(end)
        w.add_chat_template(chat_jinja(tpl))


def _write_hparams(w: Any, gguf: Any, run: Run, kind: str) -> None:
    cfg = run.config
    w.add_name(run.run_dir.resolve().name)
    w.add_license(hf_license(run.record))
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.hidden)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    if hf_family(cfg) == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        w.add_head_count_kv(cfg.kv_heads)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_vocab_size(cfg.vocab_size)
    ft = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(ft[kind])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def modelfile_text(run: Run, gguf_name: str) -> str:
    """An Ollama Modelfile for the GGUF file beside it."""
    tok, record = run.tokenizer, run.record
    lines = [f"# Ollama: ollama create NAME -f {Path(gguf_name).with_suffix('.Modelfile').name}", f"FROM ./{gguf_name}"]
    if record.is_chat:
        lines.append(f'TEMPLATE """{ollama_template(record.template)}"""')
    else:  # a base model continues the text it is given
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    eot, *markers = stop_ids(tok, record)
    for i in [*markers, eot]:  # the chat's markers first, <|endoftext|> last
        lines.append(f"PARAMETER stop {json.dumps(tok.hf.id_to_token(i), ensure_ascii=False)}")
    lines.append(f"PARAMETER num_ctx {run.config.context_length}")
    credits = [f"{sid}: {s.get('license') or 'unknown'}" + (f" ({s['url']})" if s.get("url") else "")
               for sid, s in record.all_sources().items()]
    lines.append('LICENSE """Trained with goushi on these sources (source: licence):\n'
                 + ("\n".join(credits) if credits else "no sources recorded") + '\n"""')
    return "\n".join(lines) + "\n"


def modelfile_path(out: Path) -> Path:
    return out.with_suffix(".Modelfile")


def export_gguf(run_dir: str | Path, out: str | Path, *, kind: str = "f32", force: bool = False,
                approximate_tokenizer: bool = False) -> tuple[Path, Path]:
    """Write RUN_DIR as one GGUF file at `out` and an Ollama Modelfile beside it; returns both paths.
    `approximate_tokenizer`: accept that llama.cpp splits a BPE run's prompts differently (see above)."""
    out = Path(out)
    if kind not in GGUF_TYPES:
        raise GoushiError(f"--type {kind}: not one of {', '.join(GGUF_TYPES)}")
    if out.suffix != ".gguf":
        raise GoushiError(f"--out {out}: give a file name ending in .gguf (llama.cpp and Ollama look for it)")
    modelfile = modelfile_path(out)
    check_out(out, force=force, kind="file")
    check_out(modelfile, force=force, kind="file")
    gguf = _gguf()
    run = load_run(run_dir)
    arch = hf_family(run.config)  # refuses options llama.cpp's gpt2/llama graphs cannot express, by name
    tok = run.tokenizer
    if tok.kind == "bpe" and tok.pre not in EXACT_PRES and not approximate_tokenizer:
        what = ("splits Chinese into runs of at most 2 characters (pre-tokenizer han2)" if tok.pre == "han2"
                else "has a pre-tokenizer that is none of " + ", ".join(BPE_PRES))
        raise GoushiError(f"{Path(run_dir) / 'tokenizer.json'}: this BPE tokenizer {what}, which llama.cpp cannot "
                          "reproduce, so prompts would be tokenized differently (generated text still decodes "
                          "exactly); pass --approximate-tokenizer to export anyway, or rebuild the data with "
                          "`goushi data build --bpe-pre deepseek-v3` (or --tokenizer char) and retrain for an exact GGUF")
    tensors = {name: t.numpy() for name, t in gguf_tensors(run).items()}
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        _write_hparams(w, gguf, run, kind)
        _write_tokenizer(w, gguf, run)
        for name, data in tensors.items():
            qt = _qtype(gguf, name, data, kind)
            w.add_tensor(name, gguf.quants.quantize(data, qt), raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    atomic_write_text(modelfile, modelfile_text(run, out.name))
    return out, modelfile


__all__ = ["GGUF_TYPES", "BPE_PRE", "EXACT_PRES", "export_gguf", "gguf_tensors", "modelfile_text", "modelfile_path",
           "permute_rope"]
