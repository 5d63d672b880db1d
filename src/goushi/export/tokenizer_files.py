"""Our tokenizer and chat template in the forms other programs read: `tokenizer.json` + `tokenizer_config.json`
for `transformers.AutoTokenizer`, a Jinja chat template (Hugging Face and GGUF) and an Ollama template.

Every prompt our engine feeds starts with <|endoftext|>; the exported tokenizer adds it as its BOS token
(`tok(text)` gives the same ids the engine feeds, `add_special_tokens=False` gives our `encode`), and the
chat template writes it itself because `apply_chat_template` tokenizes without special tokens.
"""

from __future__ import annotations

import json
from typing import Any

from goushi.chat import ChatTemplate
from goushi.run_record import RunRecord
from goushi.tokenizer import EOT, UNK, Tokenizer


def _lit(s: str) -> str:
    """A Jinja string literal (JSON escapes are Python escapes, which Jinja's lexer understands)."""
    return json.dumps(s)


def chat_jinja(tpl: ChatTemplate) -> str:
    """A Jinja template that renders exactly what `tpl.render` renders, after `bos_token` (our <|endoftext|>)."""
    sep, start, role_sep, end = (_lit(s) for s in (tpl.turn_sep, tpl.turn_start, tpl.role_sep, tpl.turn_end))
    return ("{{ bos_token }}{% for message in messages %}{% if not loop.first %}{{ " + sep + " }}{% endif %}"
            "{{ " + start + " + message['role'] + " + role_sep + " + message['content'] + " + end + " }}"
            "{% endfor %}{% if add_generation_prompt %}{{ " + sep + " + " + start + " + 'assistant' + " + role_sep
            + " }}{% endif %}")


def ollama_template(tpl: ChatTemplate) -> str:
    """The same conversation layout as an Ollama (Go text/template) TEMPLATE."""
    def go(s: str) -> str:  # a Go template string literal
        return "{{ " + json.dumps(s) + " }}" if s else ""
    return ("{{- range $i, $m := .Messages }}{{ if $i }}" + go(tpl.turn_sep) + "{{ end }}" + go(tpl.turn_start)
            + "{{ $m.Role }}" + go(tpl.role_sep) + "{{ $m.Content }}" + go(tpl.turn_end) + "{{ end }}"
            + go(tpl.turn_sep) + go(tpl.turn_start) + "assistant" + go(tpl.role_sep))


def hf_tokenizer_json(tok: Tokenizer) -> str:
    """tokenizer.json that adds <|endoftext|> in front of every text, as the engine does."""
    spec = json.loads(tok.hf.to_str())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": EOT, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": EOT, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": EOT, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {EOT: {"id": EOT, "ids": [tok.eot_id], "tokens": [EOT]}},
    }
    return json.dumps(spec, ensure_ascii=False, indent=2) + "\n"


def hf_tokenizer_config(tok: Tokenizer, record: RunRecord, context_length: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "unk_token": UNK,
        "model_max_length": context_length,
        # transformers would otherwise glue " ," and similar on decode; our text must round-trip exactly
        "clean_up_tokenization_spaces": False,
        "goushi_tokenizer_kind": tok.kind,
    }
    if record.is_chat:
        cfg["chat_template"] = chat_jinja(record.template)
    return cfg


def stop_ids(tok: Tokenizer, record: RunRecord) -> list[int]:
    """Token ids that end a generation: <|endoftext|>, and for chat runs each of the template's stop markers
    (ChatTemplate.stops, where the engine ends an answer) that is one token, in the template's order."""
    ids = [tok.eot_id]
    if record.is_chat:
        for marker in record.template.stops:
            i = tok.token_to_id(marker)
            if i is not None and i not in ids:
                ids.append(i)
    return ids


__all__ = ["chat_jinja", "ollama_template", "hf_tokenizer_json", "hf_tokenizer_config", "stop_ids"]
