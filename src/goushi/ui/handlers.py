"""What each button does. Every handler takes the shared registry plus this session's values and returns
new values for this session only: no user data is kept anywhere else.

All generation goes through the Engine (goushi.engine): what a run is (engine.record, is_chat,
context_length), prompt token counts, chat templates, copied spans. This module only turns widget values
into a SampleConfig or a list of chat messages, and Engine output into pictures. Gradio's own message
format (content parts) is read here, so goushi.chat never sees it.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.generation.options import fresh_seed
from goushi.run_record import RunRecord
from goushi.ui import card, views
from goushi.ui.models import ModelRegistry

TOP_N = 10  # next-token candidates shown per step
MIN_COPY_CHARS = 8  # shortest verbatim copy worth marking (shorter ones are common phrases)
MEAN_HEAD = -1

FINISH = {
    "eos": "模型自己结束了 the model ended the text (<|endoftext|>)",
    "length": "到达最大长度 reached max new tokens",
    "stop": "遇到停止词 hit a stop string",
}


def engine_for(registry: ModelRegistry, key: str | None) -> Engine:
    if not key:
        raise gr.Error("请先选择一个模型 · pick a model first", title="没有模型 No model")
    try:
        return registry.get(key)
    except GoushiError as e:
        raise gr.Error(f"无法加载模型 cannot load {key}: {e}", title="加载失败 Load failed") from None


def make_config(strategy: str, temperature: float, top_k: float, top_p: float, repetition_penalty: float,
                max_new_tokens: float, num_beams: float, seed: float | None, no_repeat_ngram_size: float = 0,
                stop_text: str = "", *, top_n: int = 0) -> tuple[SampleConfig, int]:
    """SampleConfig from widget values, validated by the engine's own rules; also returns the seed used."""
    # -1 (or empty) means "a new seed each time"; we pick it here so the page can show it for reproducing.
    seed_used = fresh_seed() if seed is None or int(seed) < 0 else int(seed)
    stops = [s.replace("\\n", "\n") for s in (stop_text or "").split("|") if s.strip()]
    try:
        cfg = SampleConfig(
            strategy=str(strategy), temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
            num_beams=int(num_beams), no_repeat_ngram_size=int(no_repeat_ngram_size), seed=seed_used,
            stop=stops, top_n=top_n,
        ).validate()
    except GoushiError as e:
        raise gr.Error(f"设置有误 invalid setting: {e}", title="设置有误 Invalid setting") from None
    return cfg, seed_used


def prompt_cut_notice(engine: Engine, prompt: str) -> str | None:
    """Plain-text notice when the prompt alone is longer than the context (its start is cut), else None."""
    n, ctx = engine.count_prompt_tokens(prompt), engine.context_length
    if n <= ctx:
        return None
    return (f"提示太长：{n} 个 token，超过了模型的上下文 {ctx}，开头的 {n - ctx} 个被截掉了，模型只看到后面的部分。"
            f" · The prompt has {n} tokens, more than the {ctx}-token context: its first {n - ctx} were cut off.")


def truncation_notice(engine: Engine, prompt: str) -> str:
    """Why the model no longer sees all of the text: a prompt longer than the context, or text that grew past it."""
    cut = prompt_cut_notice(engine, prompt)
    if cut:
        return f"**提示被截断 prompt cut:** {cut}"
    ctx = engine.context_length
    return (f"**注意 note:** 文字超过了上下文 {ctx} 个 token，后面写的时候模型已经看不到最开头了（滑动窗口） · "
            f"the text grew past the {ctx}-token context; the model stopped seeing its beginning (sliding window).")


def provenance_spans(engine: Engine, text: str) -> tuple[list[Any] | None, str]:
    """Spans of `text` copied verbatim from the training data, and a note; (None, why) when there is no index."""
    if len(text) < MIN_COPY_CHARS:
        return [], ""
    try:
        spans = engine.copied_spans(text, MIN_COPY_CHARS)
    except GoushiError:
        return None, "（找不到训练数据索引，没检查抄袭 · no provenance index, copying not checked）"
    if not spans:
        return spans, "没有发现照抄训练数据的片段 · no verbatim copies of training data found"
    copied = sum(s.end - s.start for s in spans)
    sources = sorted({s.source_id for s in spans})
    return spans, (f"**黄色部分**（{copied} 个字）是从训练数据原样照抄的，鼠标悬停可看出处 · highlighted text "
                   f"({copied} chars) is copied verbatim from training data ({', '.join(sources)}); hover for source and licence")


# ---- model picker -------------------------------------------------------------------------------
def select_model(registry: ModelRegistry, key: str | None) -> tuple:
    """Load the chosen model (once per process) and fill status, chat availability and the model card."""
    none = ("", gr.update(), gr.update(), gr.update(), gr.update(), "", "", None, "")
    if not key:
        return none
    try:
        entry = registry.entry(key)
    except GoushiError as e:
        return (f"**出错 error:** {e}",) + none[1:]
    try:
        engine = registry.get(key)
    except GoushiError as e:
        status = (f"**无法加载 cannot load `{key}`:** {e}\n\n"
                  "其他模型不受影响，可以在上面换一个 · other models still work, pick another one above.")
        try:
            record: RunRecord | GoushiError = registry.record(key)
        except GoushiError as bad:
            record = bad
        chat_off = _chat_updates(False, loaded=False)
        return (status, *chat_off, card.summary_markdown(entry.path, record), card.model_card_markdown(entry.path),
                card.loss_image(entry.path), card.config_json(entry.path, record))
    record = engine.record
    cfg = engine.config
    n = sum(p.numel() for p in engine.model.parameters())
    status = (f"**{key}** · {n / 1e6:.2f}M 参数 params · {cfg.n_layer} 层 layers · {cfg.n_head} 头 heads · "
              f"上下文 context {engine.context_length} · 词表 vocab {cfg.vocab_size} · {engine.device}")
    return (status, *_chat_updates(engine.is_chat), card.summary_markdown(entry.path, record),
            card.model_card_markdown(entry.path), card.loss_image(entry.path), card.config_json(entry.path, record))


BASE_MODEL_NOTE = (
    "**这个模型还不会对话 · this model cannot chat yet.** 它是一个基础模型（base model）：只会接着你的话往下写，"
    "不会回答问题。要和它对话，需要先用问答数据做对话微调（fine-tuning）：`goushi sft 基础模型 --data 对话.jsonl --out 新目录`。"
    "现在可以去「生成 Generate」页让它续写 · A base model only continues text. Chat needs chat fine-tuning first "
    "(`goushi sft BASE_RUN --data chat.jsonl --out RUN_DIR`); meanwhile use the Generate tab."
)
CHAT_NOTE = "这是一个对话微调过的模型 · a chat fine-tuned model. 系统提示告诉它扮演什么角色 · the system prompt sets its role."


def chat_availability(registry: ModelRegistry, key: str | None) -> tuple:
    """Chat note and whether the chat box is enabled, for the chosen model."""
    if not key:
        return _chat_updates(False, loaded=False)
    try:
        return _chat_updates(registry.get(key).is_chat)
    except GoushiError:
        return _chat_updates(False, loaded=False)


def _chat_updates(capable: bool, loaded: bool = True) -> tuple:
    note = CHAT_NOTE if capable else (BASE_MODEL_NOTE if loaded else "**模型没有加载成功** · the model did not load.")
    return (gr.update(value=note), gr.update(interactive=capable), gr.update(interactive=capable),
            gr.update(interactive=capable))


# ---- generate -----------------------------------------------------------------------------------
def generate(registry: ModelRegistry, key: str, prompt: str, strategy: str, temperature: float, top_k: float,
             top_p: float, repetition_penalty: float, max_new_tokens: float, num_beams: float, seed: float | None,
             no_repeat_ngram_size: float, stop_text: str):
    """Stream the continuation of `prompt`; yields (output HTML, status Markdown)."""
    engine = engine_for(registry, key)
    cfg, seed_used = make_config(strategy, temperature, top_k, top_p, repetition_penalty, max_new_tokens,
                                 num_beams, seed, no_repeat_ngram_size, stop_text)
    prompt = prompt or ""
    cut = prompt_cut_notice(engine, prompt)
    if cut:
        gr.Warning(cut, title="提示被截断 Prompt cut")
    yield views.output_html(prompt, ""), "**生成中 generating…**"
    text, n_tokens, finish, truncated = "", 0, None, False
    started = time.perf_counter()
    try:
        # Beam search only knows the winner at the end: its one event holds the whole text.
        events = engine.stream(prompt, cfg)
        try:
            for ev in events:
                text += ev.delta
                truncated = truncated or ev.truncated_prompt
                if ev.result is not None:  # the last event: the exact count (<|endoftext|> is not text)
                    n_tokens, finish = len(ev.result.token_ids), ev.finish_reason
                else:
                    n_tokens += 1
                yield views.output_html(prompt, text), f"**生成中 generating…** {n_tokens} tokens"
        finally:
            events.close()  # a stopped event must not leave the engine's generator running
    except GoushiError as e:
        raise gr.Error(str(e), title="生成失败 Generation failed") from None
    seconds = time.perf_counter() - started
    spans, copy_note = provenance_spans(engine, text)
    lines = [f"**完成 done** · {n_tokens} 个 token · {seconds:.1f}s · "
             f"结束原因 finish: {FINISH.get(finish or '', finish or '?')} · 种子 seed {seed_used}"]
    if truncated:
        lines.insert(0, truncation_notice(engine, prompt))
    if copy_note:
        lines.append(copy_note)
    yield views.output_html(prompt, text, spans=spans), "\n\n".join(lines)


def stopped() -> str:
    return "**已停止 stopped:** 停在了这里，上面是已经生成的部分 · generation cancelled, the text above is what was written so far"


# ---- chat ---------------------------------------------------------------------------------------
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


def chat_messages(system: str, history: list[Any]) -> list[dict[str, str]]:
    """The conversation for the engine: the system prompt (if any), then the chatbot's turns as plain text.
    An empty answer (the model ended its turn at once) is left out: there is nothing to show it again."""
    messages = [{"role": "system", "content": system.strip()}] if (system or "").strip() else []
    for msg in history:
        role = msg.get("role") if isinstance(msg, dict) else None
        text = message_text(msg)
        if role in ("user", "assistant") and text.strip():
            messages.append({"role": role, "content": text})
    return messages


def chat_submit(message: str, history: list[Any]) -> tuple:
    """Show the user's message at once and clear the box; the reply streams in the next step."""
    if not (message or "").strip():
        raise gr.Error("请输入消息 · type a message", title="空消息 Empty message")
    history = list(history or []) + [{"role": "user", "content": message}]
    return history, ""


def chat_reply(registry: ModelRegistry, key: str, system: str, history: list[Any], temperature: float,
               top_p: float, repetition_penalty: float, max_new_tokens: float):
    engine = engine_for(registry, key)
    if not engine.is_chat:
        raise gr.Error("这个模型没有做过对话微调 · this model is not chat fine-tuned (`goushi sft`)", title="不能对话 Cannot chat")
    history = list(history or [])
    if not history or history[-1].get("role") != "user":
        return
    cfg, _ = make_config("sample", temperature, 0, top_p, repetition_penalty, max_new_tokens, 1, -1)
    try:
        events = engine.stream_chat(chat_messages(system, history), cfg)
    except GoushiError as e:
        raise gr.Error(str(e), title="对话有误 Bad conversation") from None
    history.append({"role": "assistant", "content": ""})
    reply = ""
    try:
        for ev in events:
            reply += ev.delta  # never holds the template's markers: the engine stops before them
            history[-1] = {"role": "assistant", "content": reply}
            yield history
    except GoushiError as e:
        raise gr.Error(str(e), title="生成失败 Generation failed") from None
    finally:
        events.close()


# ---- inspect ------------------------------------------------------------------------------------
RAW = "raw"
SETTINGS = "settings"


def inspect(registry: ModelRegistry, key: str, prompt: str, n_steps: float, mode: str, strategy: str,
            temperature: float, top_k: float, top_p: float, repetition_penalty: float, seed: float | None) -> tuple:
    """Tokens, the next-token distribution at every generated step, and attention, all from the Engine.

    mode RAW: greedy decoding without penalties, so each step shows the model's own probabilities;
    mode SETTINGS: the Generate tab's settings, so each step shows the filtered distribution drawn from.
    """
    engine = engine_for(registry, key)
    if not (prompt or "").strip():
        raise gr.Error("请先输入一段文字 · type some text first", title="空输入 Empty input")
    note = []
    if mode != SETTINGS:
        strategy, repetition_penalty = "greedy", 1.0
    if strategy == "beam":
        strategy = "greedy"
        note.append("束搜索没有单一的逐步分布，这里用贪心 · beam search has no single per-step distribution; "
                    "showing greedy decoding instead.")
    cfg, seed_used = make_config(strategy, temperature, top_k, top_p, repetition_penalty, n_steps, 1, seed,
                                 top_n=TOP_N)
    try:
        tokens = engine.tokenize(prompt)
        g = engine.generate([prompt], cfg)[0]
        att_pieces, att = engine.attention(prompt)
    except GoushiError as e:
        raise gr.Error(str(e), title="分析失败 Inspect failed") from None
    cut = max(0, engine.count_prompt_tokens(prompt) - engine.context_length)
    if g.truncated_prompt or cut:
        note.insert(0, truncation_notice(engine, prompt))
    gen_pieces = [engine.tokenizer.id_to_piece(i) for i in g.token_ids]
    steps = [list(s) for s in (g.steps or [])]
    if not steps:
        steps = [list(engine.next_token_probs(prompt, TOP_N))]
    att_np = att.detach().float().cpu().numpy().astype("float16")  # half the memory; plenty for a picture
    layers, heads = int(att_np.shape[0]), int(att_np.shape[1])
    ids = list(g.token_ids)
    if g.finish_reason == "eos":  # the last step chose <|endoftext|>, which the text leaves out
        gen_pieces.append(engine.tokenizer.id_to_piece(engine.tokenizer.eot_id))
        ids.append(engine.tokenizer.eot_id)
    state = {"prompt": prompt, "pieces": gen_pieces, "ids": ids, "steps": steps,
             "att_pieces": list(att_pieces), "att": att_np,
             "filtered": cfg.strategy == "sample" and not cfg.is_greedy}
    n_chars = len(prompt)
    summary = (f"**{n_chars} 个字符 → {len(tokens)} 个 token** · {n_chars} characters → {len(tokens)} tokens "
               f"(每个 token 平均 {n_chars / max(1, len(tokens)):.2f} 个字 chars per token)")
    if not cfg.is_greedy:
        summary += f" · 种子 seed {seed_used}"
    if note:
        summary = "\n\n".join(note + [summary])
    step_text, bars = render_step(state, 0)
    layer_choices = [(f"第 {i} 层 layer {i}", i) for i in range(layers)]
    head_choices = [("平均 mean", MEAN_HEAD)] + [(f"头 head {h}", h) for h in range(heads)]
    return (
        views.token_spans_html(tokens, cut=cut),
        summary,
        gr.update(minimum=0, maximum=max(0, len(steps) - 1), value=0, step=1, interactive=len(steps) > 1),
        step_text,
        bars,
        gr.update(choices=layer_choices, value=0),
        gr.update(choices=head_choices, value=MEAN_HEAD),
        views.attention_figure(att_pieces, att_np, 0, None),
        state,
    )


def render_step(state: dict[str, Any] | None, step: float) -> tuple[str, str]:
    if not state:
        return "", views.prob_bars_html(None)
    steps = state["steps"]
    k = max(0, min(int(step or 0), len(steps) - 1))
    ids = state["ids"]
    chosen = ids[k] if k < len(ids) else None
    where = "提示之后的第一个 token · the first token after the prompt" if k == 0 else f"第 {k + 1} 个新 token · new token {k + 1}"
    caption = f"第 {k} 步：预测{where}"
    if state.get("filtered"):
        caption += "（温度、top-k、top-p 之后的分布，也就是真正抽签用的 · after temperature / top-k / top-p: what was drawn from）"
    return views.step_text_html(state["prompt"], state["pieces"], k), views.prob_bars_html(
        steps[k], chosen_id=chosen, caption=caption)


def render_attention(state: dict[str, Any] | None, layer: int | None, head: int | None) -> Any:
    if not state:
        return None
    att = state["att"]
    layer = max(0, min(int(layer or 0), att.shape[0] - 1))
    h = None if head is None or int(head) == MEAN_HEAD else max(0, min(int(head), att.shape[1] - 1))
    return views.attention_figure(state["att_pieces"], att, layer, h)
