"""A Hugging Face tokenizer as a goushi tokenizer: our special tokens must hold ids 0-6, so the vocabulary is
renumbered (text still splits into the same pieces) and the model's embedding rows follow the new numbers.

Supported: byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen style) and goushi's own tokenizers (exported
here earlier, kept as they are). SentencePiece-style tokenizers (Metaspace + byte fallback with merges, as
in Llama 1/2) and Unigram/WordPiece models have no goushi kind and are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer

from goushi.errors import GoushiError
from goushi.tokenizer import EOT, SPECIAL_TOKENS, Tokenizer

_SAMPLE = "今天我终于学会了做饭，味道还不错。Hello world! 123 疯狂星期四 V我50\n第二行"


@dataclass
class VocabMap:
    tokenizer: Tokenizer
    new_to_old: list[int | None]  # per new id: the old row it takes, or None (a special token the model lacks)
    doc_token: str  # the old token that became <|endoftext|>
    notes: list[str] = field(default_factory=list)

    def rows(self, old: torch.Tensor) -> torch.Tensor:
        """Embedding (or LM head) rows renumbered; a new special token starts at the mean row."""
        mean = old.mean(0)
        return torch.stack([old[o] if o is not None else mean for o in self.new_to_old])

    def old_to_new(self) -> dict[int, int]:
        return {o: n for n, o in enumerate(self.new_to_old) if o is not None}


def _kind(spec: dict[str, Any], path: Path) -> None:
    model = spec.get("model") or {}
    dec = json.dumps(spec.get("decoder") or {})
    if model.get("type") == "BPE" and '"ByteLevel"' in dec:
        return
    what = model.get("type") or "unknown"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        what = "SentencePiece-style BPE with byte fallback (as in Llama 1/2, TinyLlama)"
    raise GoushiError(f"{path}: a {what} tokenizer cannot be imported; goushi holds byte-level BPE tokenizers "
                      "(GPT-2, Llama 3, SmolLM, Qwen style) and its own char tokenizers")


def _old_tokens(spec: dict[str, Any]) -> dict[int, str]:
    toks = {i: t for t, i in (spec.get("model") or {}).get("vocab", {}).items()}
    for a in spec.get("added_tokens") or []:
        toks[a["id"]] = a["content"]
    return toks


def _doc_token(toks: dict[int, str], bos: str | None, eos: str | None, path: Path) -> int:
    """The old token that separates documents for us: <|endoftext|> itself, else BOS (what prompts start
    with), else EOS."""
    by_text = {t: i for i, t in toks.items()}
    for cand in (EOT, bos, eos):
        if cand and cand in by_text:
            return by_text[cand]
    raise GoushiError(f"{path}: no <|endoftext|>, BOS or EOS token found; goushi needs one to separate documents "
                      "(set bos_token or eos_token in tokenizer_config.json)")


def convert_vocab(tok_path: Path, *, bos: str | None, eos: str | None, model_rows: int) -> VocabMap:
    """Our tokenizer for the Hugging Face `tokenizer.json` at `tok_path`, and where each row comes from."""
    try:
        spec = json.loads(tok_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoushiError(f"{tok_path}: missing; goushi imports models with a fast tokenizer file (tokenizer.json); "
                          "save one with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GoushiError(f"{tok_path}: not valid JSON ({e})") from None
    toks = _old_tokens(spec)
    if toks and max(toks) >= model_rows:
        raise GoushiError(f"{tok_path}: token id {max(toks)} but the model has only {model_rows} embedding rows")
    if all(toks.get(i) == s for i, s in enumerate(SPECIAL_TOKENS)):
        return _own_tokenizer(spec, tok_path, model_rows)
    _kind(spec, tok_path)
    doc = _doc_token(toks, bos, eos, tok_path)
    by_text = {t: i for i, t in toks.items()}
    specials: list[int | None] = [doc] + [by_text.get(s) for s in SPECIAL_TOKENS[1:]]
    taken = {o for o in specials if o is not None}
    new_to_old = specials + [i for i in range(model_rows) if i not in taken]
    new_id = {o: n for n, o in enumerate(new_to_old) if o is not None}
    renamed = {doc: EOT}
    vocab = (spec.get("model") or {}).get("vocab", {})
    spec["model"]["vocab"] = {renamed.get(i, t): new_id[i] for t, i in vocab.items()}
    old_added = {a["id"]: a for a in spec.get("added_tokens") or []}
    added = [{"id": n, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for n, s in enumerate(SPECIAL_TOKENS)]
    added += [{**a, "id": new_id[i]} for i, a in sorted(old_added.items()) if i not in taken]
    spec["added_tokens"] = added
    # tokenizers honours an added token's id only when the model's vocabulary holds it at that id
    spec["model"]["vocab"].update({a["content"]: a["id"] for a in added})
    spec["post_processor"] = None  # the engine puts <|endoftext|> in front of every prompt itself
    tok = _load(spec, tok_path)
    notes = []
    if toks[doc] != EOT:
        notes.append(f"{toks[doc]!r} (id {doc}) became <|endoftext|> (id 0): every prompt starts with it and "
                     "generation stops at it")
    fresh = [s for s, o in zip(SPECIAL_TOKENS, specials, strict=True) if o is None]
    if fresh:
        notes.append(f"added {', '.join(fresh)} (rows start at the mean embedding)")
    vm = VocabMap(tok, new_to_old, toks[doc], notes)
    _check_same_pieces(spec_old=json.loads(tok_path.read_text(encoding="utf-8")), vm=vm, path=tok_path)
    return vm


def _own_tokenizer(spec: dict[str, Any], path: Path, model_rows: int) -> VocabMap:
    """A tokenizer goushi exported: drop the BOS post-processor export added, keep every id."""
    spec["post_processor"] = None
    tok = _load(spec, path)
    return VocabMap(tok, list(range(model_rows)), EOT)


def _load(spec: dict[str, Any], path: Path) -> Tokenizer:
    try:
        return Tokenizer(HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False)), source=str(path))
    except GoushiError:
        raise
    except Exception as e:  # tokenizers raises plain Exception on a malformed spec
        raise GoushiError(f"{path}: cannot be loaded as a tokenizer ({str(e).splitlines()[0][:200]})") from None


def _check_same_pieces(*, spec_old: dict[str, Any], vm: VocabMap, path: Path) -> None:
    """Renumbering must not change how text splits: compare on a sample, id for id."""
    spec_old["post_processor"] = None
    old = HFTokenizer.from_str(json.dumps(spec_old, ensure_ascii=False))
    want = [vm.old_to_new()[i] for i in old.encode(_SAMPLE, add_special_tokens=False).ids]
    if vm.tokenizer.encode(_SAMPLE) != want:
        raise GoushiError(f"{path}: renumbered tokenizer splits text differently from the original; this tokenizer "
                          "is not supported (please report it)")


__all__ = ["VocabMap", "convert_vocab"]
