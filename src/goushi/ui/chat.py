"""Turning a conversation into the text a chat-tuned model continues.

Seam for the fine-tuning issue: a run's config.json may carry the chat template the model was tuned
with (`info["chat_template"]`, a dict of the strings below); until then the ChatML layout over the
tokenizer's reserved role tokens is used. The web page never guesses further than this.
"""

from __future__ import annotations

from typing import Any

# ChatML, written with the special tokens every goushi tokenizer reserves (see goushi.tokenizer.SPECIAL_TOKENS).
DEFAULT_TEMPLATE = {
    "turn_start": "<|im_start|>",
    "turn_end": "<|im_end|>\n",
    "role_sep": "\n",
    "stop": "<|im_end|>",
}


def is_chat_run(info: dict[str, Any]) -> bool:
    """A run answers chats only after chat fine-tuning (`goushi sft` marks it in config.json)."""
    return bool(info.get("sft"))


def message_text(msg: Any) -> str:
    """Text of one chat message: Gradio 6 hands messages back as lists of content parts."""
    if isinstance(msg, dict) and "content" not in msg:  # one content part: {"type": "text", "text": ...}
        return str(msg.get("text") or "")
    content = msg.get("content") if isinstance(msg, dict) else msg
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    if isinstance(content, dict):
        return message_text(content)
    return ""


def template_for(info: dict[str, Any]) -> dict[str, str]:
    tpl = dict(DEFAULT_TEMPLATE)
    custom = info.get("chat_template")
    if isinstance(custom, dict):
        tpl.update({k: v for k, v in custom.items() if k in DEFAULT_TEMPLATE and isinstance(v, str)})
    return tpl


def chat_prompt(info: dict[str, Any], system: str, history: list[Any], message: str) -> tuple[str, str]:
    """(prompt ending where the assistant's answer starts, the string that ends an answer)."""
    tpl = template_for(info)

    def turn(role: str, text: str) -> str:
        return f"{tpl['turn_start']}{role}{tpl['role_sep']}{text}{tpl['turn_end']}"

    parts = []
    if system.strip():
        parts.append(turn("system", system.strip()))
    for msg in history:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("user", "assistant"):
            parts.append(turn(role, message_text(msg)))
    parts.append(turn("user", message))
    parts.append(f"{tpl['turn_start']}assistant{tpl['role_sep']}")
    return "".join(parts), tpl["stop"]
