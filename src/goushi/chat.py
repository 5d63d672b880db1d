"""Chat conversations and the template that turns them into token ids: one owner for chat fine-tuning,
the engine (and through it the web page and an API server) alike. Torch-free.

    messages = [{"role": "system", "content": "你是段子手"}, {"role": "user", "content": "讲个笑话"}]
    tpl = record.template                            # a run's (goushi.run_record), ChatML when it has none
    tpl.render(messages)                             # "<|im_start|>system\\n你是段子手<|im_end|>\\n<|im_start|>user\\n..."
    ids, mask = tpl.encode(tokenizer, messages)      # mask[i]: ids[i] is a training target (assistant text)

ChatML layout, turn by turn (turn_sep only between turns):

    <|endoftext|><|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

The ids start with <|endoftext|>, as every prompt the engine feeds the model does. The markers are the
tokenizer's reserved special tokens (one id each, for char and BPE tokenizers alike); a message may not
contain a marker, so nobody can open or close a turn from inside one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from goushi.errors import GoushiError
from goushi.tokenizer import EOT, SPECIAL_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant")
_SPECIAL = frozenset(SPECIAL_TOKENS)


def normalize_messages(messages: Any, *, for_prompt: bool = False) -> list[dict[str, str]]:
    """[{"role", "content"}] checked and copied (other keys dropped). A system message may only come first;
    content must be a non-blank string. `for_prompt`: the conversation asks for the next answer, so its last
    message must be the user's. GoushiError naming the message index and the problem."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GoushiError("messages: give a non-empty list of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise GoushiError(f"messages[{i}]: must be an object with \"role\" and \"content\", not {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise GoushiError(f"messages[{i}]: role {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise GoushiError(f"messages[{i}]: a system message may only come first")
        if not isinstance(content, str):
            raise GoushiError(f"messages[{i}] ({role}): content must be a string, not {type(content).__name__}")
        if not content.strip():
            raise GoushiError(f"messages[{i}] ({role}): content is empty")
        out.append({"role": role, "content": content})
    if for_prompt and out[-1]["role"] != "user":
        raise GoushiError(f"messages[{len(out) - 1}]: the last message must be the user's "
                          f"(the model answers it), not {out[-1]['role']!r}")
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """How turns are written. turn_sep goes after turn_end between two turns and is never a target."""

    turn_start: str = "<|im_start|>"
    role_sep: str = "\n"
    turn_end: str = "<|im_end|>"
    turn_sep: str = "\n"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, str):
                raise GoushiError(f"chat_template.{f.name}: must be a string, not {type(v).__name__}")
        for name in ("turn_start", "turn_end"):
            if not getattr(self, name):
                raise GoushiError(f"chat_template.{name}: must not be empty (it marks where a turn {name[5:]}s)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChatTemplate:
        """A template as config.json's "chat_template" holds it (goushi.run_record reads it), checked."""
        known = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(raw, dict):
            raise GoushiError(f"config.json chat_template: must be an object with keys {', '.join(known)}")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise GoushiError(f"config.json chat_template: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def stops(self) -> tuple[str, ...]:
        """What ends an answer, for the engine and every export alike: turn_end, and a turn_start (a model that
        opens the next turn itself has finished its answer). Generation stops at either, and the answer's
        text contains neither, so it can go back into the conversation."""
        return tuple(dict.fromkeys((self.turn_end, self.turn_start)))

    def render(self, messages: Any, add_generation_prompt: bool = True) -> str:
        """The conversation as text (without the leading <|endoftext|> of `encode`), for display or export."""
        return "".join(text for text, _ in self._segments(messages, add_generation_prompt))

    def encode(self, tokenizer: Tokenizer, messages: Any, *,
               add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """(ids, mask): ids start with <|endoftext|>; mask[i] is True where ids[i] is a training target,
        i.e. the content of an assistant turn and its turn_end. Encoded segment by segment, so no token
        straddles a boundary; with add_generation_prompt the ids end with turn_start + "assistant" + role_sep."""
        ids, mask = [tokenizer.eot_id], [False]
        for text, target in self._segments(messages, add_generation_prompt):
            piece = [tokenizer.token_to_id(text)] if text in _SPECIAL and tokenizer.token_to_id(text) is not None \
                else tokenizer.encode(text)
            ids.extend(piece)
            mask.extend([target] * len(piece))
        return ids, mask

    def _segments(self, messages: Any, add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """(text, is a target) pieces in order; empty pieces left out."""
        msgs = normalize_messages(messages, for_prompt=add_generation_prompt)
        markers = [m for m in dict.fromkeys((self.turn_start, self.turn_end, EOT)) if m]
        for i, m in enumerate(msgs):
            for marker in markers:
                if marker in m["content"]:
                    raise GoushiError(f"messages[{i}] ({m['role']}): content contains {marker!r}, which marks turns "
                                      "in the chat template; remove it")
        out: list[tuple[str, bool]] = []
        for i, m in enumerate(msgs):
            if i:
                out.append((self.turn_sep, False))
            answer = m["role"] == "assistant"
            out += [(self.turn_start, False), (m["role"], False), (self.role_sep, False),
                    (m["content"], answer), (self.turn_end, answer)]
        if add_generation_prompt:
            out += [(self.turn_sep, False), (self.turn_start, False), ("assistant", False), (self.role_sep, False)]
        return [(t, target) for t, target in out if t]


CHATML = ChatTemplate()

__all__ = ["ROLES", "ChatTemplate", "CHATML", "normalize_messages"]
