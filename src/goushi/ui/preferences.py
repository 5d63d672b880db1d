"""The page's feedback buttons: two answers side by side to pick the better of, 👍 / 👎 on one answer, on the Chat
and Generate tabs. Each click appends a row to RUN_DIR/feedback.jsonl (goushi.ui.feedback) that
`goushi dpo RUN_DIR --data RUN_DIR/feedback.jsonl` trains on.

The two answers wait in this session's gr.State ("pending": what was asked, the two answers, which run answered)
until one is picked; nothing is kept anywhere else. Answers come from the Engine like every other on the page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gradio as gr

from goushi.errors import GoushiError
from goushi.ui import feedback
from goushi.ui.handlers import chat_messages, engine_for, make_config, message_text
from goushi.ui.models import ModelRegistry

NO_PENDING = "先点「两个回答」得到两个回答 · first press Two answers to get two answers to compare"
TRIES = 4  # draws of two answers before showing two equal ones (a model that learned a text by heart repeats it)
SAME = ("两个回答一样，调高温度再试 · the model wrote the same answer twice; raise the temperature and try again")


def _distinct(answer: Callable[[Any], list[Any]], cfg: Any) -> tuple[str, str, str]:
    """Two different answers if a few draws (other seeds) give them: (A, B, a note when they are still equal)."""
    for k in range(TRIES):
        try:
            a, b = (r.text for r in answer(dataclasses.replace(cfg, seed=cfg.seed + 1000 * k)))
        except GoushiError as e:
            raise gr.Error(str(e), title="生成失败 Generation failed") from None
        if a != b:
            return a, b, ""
    return a, b, f" · **{SAME}**"


def _two(cfg_args: tuple, strategy: str) -> Any:
    """The sampling settings for two different answers: two samples (greedy would give the same text twice)."""
    cfg, seed_used = make_config(strategy, *cfg_args)
    if cfg.strategy == "greedy" or cfg.temperature == 0:
        cfg = dataclasses.replace(cfg, strategy="sample", temperature=0.8)
    try:
        return dataclasses.replace(cfg, num_samples=2).validate(), seed_used
    except GoushiError as e:
        raise gr.Error(f"设置有误 invalid setting: {e}", title="设置有误 Invalid setting") from None


def _saved(registry: ModelRegistry, key: str, row: dict[str, Any], what: str) -> str:
    path = feedback.feedback_path(registry.entry(key).path)
    try:
        n = feedback.append_row(path.parent, row)
    except GoushiError as e:
        raise gr.Error(str(e), title="没有记下 Not saved") from None
    return (f"**记下了 saved:** {what} → `{path}`（{n} 行 rows）· 用它训练 train on it: "
            f"`goushi dpo {path.parent} --data {path} --out {path.parent}-dpo`")


# ---- chat ---------------------------------------------------------------------------------------
def chat_two(registry: ModelRegistry, key: str, system: str, message: str, history: list[Any], temperature: float,
             top_p: float, repetition_penalty: float, max_new_tokens: float) -> tuple:
    """Two answers to the message typed (or to the last unanswered one): (history, cleared box, answer A,
    answer B, pending, status)."""
    engine = engine_for(registry, key)
    if not engine.is_chat:
        raise gr.Error("这个模型没有做过对话微调 · this model is not chat fine-tuned (`goushi sft`)", title="不能对话 Cannot chat")
    history = list(history or [])
    if (message or "").strip():
        history.append({"role": "user", "content": message})
    elif not history or history[-1].get("role") != "user":
        raise gr.Error("请输入消息 · type a message", title="空消息 Empty message")
    messages = chat_messages(system, history)
    cfg, _ = _two((temperature, 0, top_p, repetition_penalty, max_new_tokens, 1, -1), "sample")
    a, b, note = _distinct(lambda c: engine.chat(messages, c), cfg)
    pending = {"prompt": messages, "answers": [a, b], "model": key, "source": feedback.CHAT}
    return history, "", a, b, pending, "选一个更好的 · pick the better answer (it joins the conversation), or rate one" + note


def chat_pick(registry: ModelRegistry, pending: dict[str, Any] | None, history: list[Any], which: int) -> tuple:
    """Keep answer `which` (0 = A, 1 = B) as the better one: a preference row, and the answer joins the
    conversation. (history, A, B, pending, status)."""
    if not pending:
        raise gr.Error(NO_PENDING, title="没有可选的回答 Nothing to pick")
    chosen, rejected = pending["answers"][which], pending["answers"][1 - which]
    status = _pick_row(registry, pending, chosen, rejected, "AB"[which])
    history = list(history or []) + [{"role": "assistant", "content": chosen}]
    return history, "", "", None, status


def chat_like(registry: ModelRegistry, key: str, system: str, history: list[Any], index: Any, liked: Any) -> str:
    """👍 / 👎 on one of the chatbot's answers (Gradio's like buttons): a rating row for it, with the conversation
    before it."""
    i = index[0] if isinstance(index, (list, tuple)) else index
    history = list(history or [])
    if not isinstance(i, int) or not 0 <= i < len(history) or history[i].get("role") != "assistant":
        raise gr.Error("只能给模型的回答打分 · only the model's answers can be rated", title="不能打分 Cannot rate")
    answer = message_text(history[i])
    good = liked is True or liked == "like"
    try:
        row = feedback.rating_row(chat_messages(system, history[:i]), answer, good, source=feedback.CHAT, model=key)
    except GoushiError as e:
        raise gr.Error(f"没有记下 not saved: {e}", title="没有记下 Not saved") from None
    return _saved(registry, key, row, "👍" if good else "👎")


# ---- generate -----------------------------------------------------------------------------------
def generate_two(registry: ModelRegistry, key: str, prompt: str, strategy: str, temperature: float, top_k: float,
                 top_p: float, repetition_penalty: float, max_new_tokens: float, num_beams: float,
                 seed: float | None, no_repeat_ngram_size: float, stop_text: str) -> tuple:
    """Two continuations of the prompt with the tab's settings (sampled: greedy would write the same twice):
    (A, B, pending, status)."""
    engine = engine_for(registry, key)
    prompt = prompt or ""
    cfg, seed_used = _two((temperature, top_k, top_p, repetition_penalty, max_new_tokens, num_beams, seed,
                           no_repeat_ngram_size, stop_text), strategy)
    a, b, note = _distinct(lambda c: engine.generate([prompt], c), cfg)
    pending = {"prompt": prompt, "answers": [a, b], "model": key, "source": feedback.GENERATE}
    return a, b, pending, f"选一个更好的 · pick the better continuation, or rate one · 种子 seed {seed_used}{note}"


# ---- both tabs ----------------------------------------------------------------------------------
def _pick_row(registry: ModelRegistry, pending: dict[str, Any], chosen: str, rejected: str, name: str) -> str:
    try:
        row = feedback.pair_row(pending["prompt"], chosen, rejected, source=pending["source"], model=pending["model"])
    except GoushiError as e:
        raise gr.Error(f"没有记下 not saved: {e}", title="没有记下 Not saved") from None
    return _saved(registry, pending["model"], row, f"{name} 更好 {name} is better")


def pick(registry: ModelRegistry, pending: dict[str, Any] | None, which: int) -> tuple:
    """Generate tab: keep continuation `which` as the better one. (pending, status): the pair is done."""
    if not pending:
        raise gr.Error(NO_PENDING, title="没有可选的回答 Nothing to pick")
    status = _pick_row(registry, pending, pending["answers"][which], pending["answers"][1 - which], "AB"[which])
    return None, status


def rate(registry: ModelRegistry, pending: dict[str, Any] | None, which: int, good: bool) -> str:
    """👍 / 👎 on answer `which` of the two shown (they stay, to be picked from or rated again)."""
    if not pending:
        raise gr.Error(NO_PENDING, title="没有可打分的回答 Nothing to rate")
    try:
        row = feedback.rating_row(pending["prompt"], pending["answers"][which], good, source=pending["source"],
                                  model=pending["model"])
    except GoushiError as e:
        raise gr.Error(f"没有记下 not saved: {e}", title="没有记下 Not saved") from None
    return _saved(registry, pending["model"], row, f"{'👍' if good else '👎'} {'AB'[which]}")


__all__ = ["chat_two", "chat_pick", "chat_like", "generate_two", "pick", "rate", "NO_PENDING"]
