"""The Gradio page: model picker, then tabs to generate, chat, look inside the model, and read its card.

Layout and wiring only; what each button does is in goushi.ui.handlers. Per-user values live in
components and gr.State, never in module globals, so people using one server never see each other's text.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from goushi.generation.options import FRESH_SEED_LIMIT
from goushi.ui import handlers, preferences, views
from goushi.ui.models import ModelRegistry

EXAMPLES = ["今天我终于", "这家店的", "说实话", "我宣布，从今天起", "疯狂星期四"]
MAX_NEW_TOKENS = 1000
MAX_INSPECT_STEPS = 64
DEFAULT_RUNS_DIR = "runs"
ENGINE_QUEUE = "engine"  # generation, chat and inspect share one queue...
ENGINE_CONCURRENCY = 2  # ...and run two at a time: more only fight over the CPU cores


def empty_page_markdown(runs_dir: str | Path | None, run_dirs: list[str | Path] | None) -> str:
    where = f"`{runs_dir}/`" if runs_dir is not None else "给定的目录 the given directories"
    given = "".join(f"\n- `{d}`" for d in run_dirs or [])
    return f"""## 还没有找到训练好的模型 · No trained model found yet

在 {where} 里没有找到模型。一个模型就是一个「运行目录 run directory」：里面有 `config.json`、`model.safetensors`
和 `tokenizer.json`，由 `goushi train` 写出来。
We looked for run directories (a folder with `config.json`, `model.safetensors` and `tokenizer.json`, written by
`goushi train`) and found none.{given}

### 最快的办法 · The quickest way

准备示例语料，在 CPU 上训练几分钟，然后打开这个页面 · sample corpus, a few CPU minutes of training, then this page:

```bash
make demo
```

### 用你自己的文字 · With your own text

登记来源（会写进数据卡）→ 清洗、去重、分词 → 训练 → 打开页面 ·
register the source (credited in the data card) → clean, de-duplicate, tokenize → train → serve:

```bash
goushi data add my_texts/ --id mine --license CC-BY-4.0
goushi data build --out data/mine
goushi train --data data/mine --out runs/mine --time-budget 10m
goushi ui --runs-dir runs
```

训练完以后点下面的按钮，或者刷新页面 · When training is done, press the button below or reload the page.
"""


INTRO = ("# 狗屎GPT · Goushi GPT\n"
         "一个你自己训练的小中文 GPT：让它写字、和它聊天、看看它脑子里在想什么。 · "
         "A small Chinese GPT you trained yourself: make it write, chat with it, and look inside.")

INSPECT_INTRO = (
    "GPT 每次只做一件事：**看着前面的 token，给词表里每个 token 打一个概率，再从中挑一个**，然后重复。"
    "这里把这三步摊开给你看。 · A GPT does one thing over and over: look at the tokens so far, give every token in "
    "the vocabulary a probability, pick one. Here are those steps, laid open."
)


FEEDBACK_NOTE = (
    "教它你喜欢什么：看两个回答选更好的，或者给一个回答点 👍 / 👎。每次点击都会记到模型目录下的 `feedback.jsonl`"
    "（带日期），之后用 `goushi dpo 模型目录 --data 模型目录/feedback.jsonl --out 新目录` 训练（DPO）。 · Teach it what "
    "you prefer: pick the better of two answers, or rate one 👍 / 👎. Every click appends a row, with the date, to "
    "`feedback.jsonl` in the run's folder, which `goushi dpo RUN_DIR --data RUN_DIR/feedback.jsonl --out NEW_DIR` "
    "trains on.")


class ComparePanel:
    """Two answers side by side, each with "this one is better" and 👍 / 👎, and where the feedback went."""

    def __init__(self, prefix: str, what: str):
        with gr.Row():
            self.boxes, self.picks, self.rates = [], [], []
            for name in "AB":
                with gr.Column():
                    self.boxes.append(gr.Textbox(label=f"{what} {name}", lines=4, interactive=False,
                                                 elem_id=f"{prefix}-{name.lower()}"))
                    with gr.Row():
                        self.picks.append(gr.Button(f"{name} 更好 {name} is better", variant="primary",
                                                    elem_id=f"{prefix}-pick-{name.lower()}"))
                        self.rates.append([gr.Button(icon, min_width=60, elem_id=f"{prefix}-{kind}-{name.lower()}")
                                           for icon, kind in (("👍", "up"), ("👎", "down"))])
        self.status = gr.Markdown(elem_id=f"{prefix}-feedback-status")
        self.pending = gr.State(None)

    def wire_rates(self, registry: ModelRegistry) -> None:
        for which, (up, down) in enumerate(self.rates):
            for button, good in ((up, True), (down, False)):
                button.click(functools.partial(preferences.rate, registry, which=which, good=good), [self.pending],
                             [self.status], api_visibility="undocumented")


def build_app(run_dirs: list[str | Path] | None = None, runs_dir: str | Path | None = None, *,
              registry: ModelRegistry | None = None) -> gr.Blocks:
    """The whole page. Models are found now and loaded when first chosen; pass `registry` to share one."""
    if registry is None:
        if runs_dir is None and not run_dirs:
            runs_dir = DEFAULT_RUNS_DIR
        registry = ModelRegistry(run_dirs, runs_dir)
    keys = registry.keys()
    bind = functools.partial
    heavy = dict(concurrency_limit=ENGINE_CONCURRENCY, concurrency_id=ENGINE_QUEUE)

    with gr.Blocks(title="狗屎GPT · Goushi GPT", analytics_enabled=False) as demo:
        gr.Markdown(INTRO, elem_classes="gs-header")

        with gr.Column(visible=not keys, elem_id="empty-page") as empty_page:
            with gr.Column(elem_classes="gs-empty-page"):
                gr.Markdown(empty_page_markdown(registry.runs_dir, registry.run_dirs))
                rescan_empty = gr.Button("重新查找 Look again", variant="primary", elem_id="rescan-empty")

        with gr.Column(visible=bool(keys), elem_id="main-page") as main_page:
            with gr.Row():
                model = gr.Dropdown(
                    choices=keys, value=keys[0] if keys else None, label="模型 Model", scale=5, elem_id="model-picker",
                    info="选一个训练好的模型（第一次选会加载几秒） · pick a trained run (loads on first use)")
                rescan = gr.Button("刷新列表 Refresh", scale=1, min_width=120, elem_id="rescan")
            model_status = gr.Markdown(elem_classes="gs-model-status", elem_id="model-status")

            with gr.Tabs():
                # ---- 1. generate -------------------------------------------------------------------
                with gr.Tab("生成 Generate", id="generate", elem_id="tab-generate"):
                    with gr.Row():
                        with gr.Column(scale=3):
                            prompt = gr.Textbox(label="提示 Prompt", lines=3, elem_id="gen-prompt",
                                                placeholder="写一个开头，模型会接着往下写 · type a beginning, the model continues")
                            with gr.Row():
                                gen_btn = gr.Button("生成 Generate ▶", variant="primary", elem_id="gen-btn")
                                stop_btn = gr.Button("停止 Stop ■", variant="stop", elem_id="gen-stop")
                            gr.Examples(examples=[[e] for e in EXAMPLES], inputs=[prompt],
                                        label="试试这些开头 · example prompts")
                            output = gr.HTML(views.output_html("", ""), elem_id="gen-output")
                            gen_status = gr.Markdown(elem_id="gen-status")
                            with gr.Accordion("哪个更好？· which is better? (feedback for `goushi dpo`)", open=False,
                                              elem_id="gen-feedback"):
                                gr.Markdown(FEEDBACK_NOTE)
                                gen_two_btn = gr.Button("两个续写 Two continuations ▶", elem_id="gen-two")
                                gen_cmp = ComparePanel("gen", "续写 continuation")
                        with gr.Column(scale=2):
                            gr.Markdown("### 怎么挑下一个 token · how the next token is picked")
                            strategy = gr.Radio(
                                [("贪心 greedy", "greedy"), ("采样 sample", "sample"), ("束搜索 beam", "beam")],
                                value="sample", label="解码策略 strategy", elem_id="strategy",
                                info="贪心：总选最可能的；采样：按概率抽签；束搜索：同时追几条候选 · "
                                     "greedy: always the likeliest; sample: draw by probability; beam: follow several candidates")
                            temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="温度 temperature",
                                                    info="越高越随机越疯，越低越保守；0 = 贪心 · higher = wilder, 0 = greedy")
                            top_k = gr.Slider(0, 200, value=0, step=1, label="top-k",
                                              info="只在最可能的 k 个里抽；0 = 不限 · draw among the k likeliest; 0 = off")
                            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p（核采样 nucleus）",
                                              info="只在累计概率达到 p 的那几个里抽 · draw among the fewest tokens holding probability p")
                            repetition = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="重复惩罚 repetition penalty",
                                                   info="大于 1 会压低已经出现过的 token，少复读 · >1 makes repeats less likely")
                            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=120, step=1, label="最多生成 max new tokens",
                                                elem_id="max-new")
                            beams = gr.Slider(1, 8, value=4, step=1, label="束宽 beams",
                                              info="只对束搜索有效 · beam search only")
                            seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=FRESH_SEED_LIMIT - 1,
                                             label="随机种子 seed",
                                             info="同样的种子和设置 = 同样的结果；-1 = 每次不同 · same seed = same text; -1 = new each time")
                            with gr.Accordion("更多设置 · more", open=False):
                                no_repeat = gr.Slider(0, 8, value=0, step=1, label="禁止重复 n-gram · no-repeat n-gram size",
                                                      info="n 个 token 的片段最多出现一次；0 = 关 · 0 = off")
                                stop_text = gr.Textbox(label="停止词 stop strings",
                                                       placeholder="例如 。|！   用 | 分隔，\\n 表示换行 · separate with |")

                # ---- 2. chat -----------------------------------------------------------------------
                with gr.Tab("对话 Chat", id="chat", elem_id="tab-chat") as chat_tab:
                    chat_note = gr.Markdown(elem_classes="gs-note", elem_id="chat-note")
                    system = gr.Textbox(label="系统提示 System prompt", lines=1,
                                        value="你是一个说话抽象、爱发疯的段子手。")
                    chatbot = gr.Chatbot(label="对话 Chat", height=380, render_markdown=False, elem_id="chatbot")
                    with gr.Row():
                        chat_msg = gr.Textbox(show_label=False, scale=5, placeholder="说点什么 · say something",
                                              elem_id="chat-msg")
                        chat_send = gr.Button("发送 Send", variant="primary", scale=1, min_width=90)
                        chat_stop = gr.Button("停止 Stop", variant="stop", scale=1, min_width=90)
                        chat_clear = gr.Button("清空 Clear", scale=1, min_width=90)
                        chat_two_btn = gr.Button("两个回答 Two answers", scale=1, min_width=120, elem_id="chat-two")
                    chat_feedback = gr.Markdown(elem_id="chat-like-status")
                    with gr.Accordion("两个回答选一个 · two answers, pick the better (feedback for `goushi dpo`)",
                                      open=False, elem_id="chat-compare") as chat_compare:
                        gr.Markdown(FEEDBACK_NOTE + " 对话里的每个回答也可以点 👍 / 👎 · every answer in the chat can "
                                    "be rated 👍 / 👎 too.")
                        chat_cmp = ComparePanel("chat", "回答 answer")
                    with gr.Accordion("采样设置 · sampling", open=False):
                        chat_temp = gr.Slider(0, 2, value=0.7, step=0.05, label="温度 temperature")
                        chat_top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
                        chat_rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="重复惩罚 repetition penalty")
                        chat_max = gr.Slider(1, 500, value=150, step=1, label="最多生成 max new tokens")

                # ---- 3. inspect --------------------------------------------------------------------
                with gr.Tab("透视 Inspect", id="inspect", elem_id="tab-inspect"):
                    gr.Markdown(INSPECT_INTRO)
                    with gr.Row(equal_height=True):
                        ins_prompt = gr.Textbox(label="文本 Text", value=EXAMPLES[0], lines=2, scale=4,
                                                elem_id="ins-prompt")
                        with gr.Column(scale=2):
                            ins_steps = gr.Slider(1, MAX_INSPECT_STEPS, value=12, step=1,
                                                  label="往后生成几步 steps to generate")
                            ins_btn = gr.Button("分析 Analyze ▶", variant="primary", elem_id="ins-btn")
                    ins_mode = gr.Radio(
                        [("模型原始概率（每步选最可能的） · the model's own probabilities, greedy", handlers.RAW),
                         ("用「生成」页的采样设置 · with the Generate tab's sampling settings", handlers.SETTINGS)],
                        value=handlers.RAW, label="每一步怎么选 how each step is chosen", elem_id="ins-mode")
                    ins_summary = gr.Markdown(elem_id="ins-summary")
                    gr.Markdown("### ① 切成 token · the text cut into tokens\n"
                                "每块是一个 token，下面的小数字是它在词表里的编号（id）。 · Each chip is a token; "
                                "the small number is its id in the vocabulary.")
                    ins_tokens = gr.HTML(elem_id="ins-tokens")
                    gr.Markdown("### ② 下一个 token 的概率 · next-token probabilities\n"
                                "模型输出的是一个概率向量：词表里每个 token 一个数，加起来是 1。这里画出最大的几个。"
                                "拖动滑块看每一步。 · The model outputs a probability for every token in the "
                                "vocabulary; here are the largest. Drag the slider through the steps.")
                    with gr.Row():
                        with gr.Column():
                            ins_step = gr.Slider(0, 1, value=0, step=1, interactive=False, elem_id="ins-step",
                                                 label="第几步 step（0 = 紧接着提示 right after the prompt）")
                            ins_steptext = gr.HTML(elem_id="ins-steptext")
                        with gr.Column():
                            ins_bars = gr.HTML(views.prob_bars_html(None), elem_id="ins-bars")
                    gr.Markdown("### ③ 注意力 · attention\n"
                                "每一行是一个位置在「看」前面哪些 token：越亮看得越多。右上角是空的，因为不能偷看未来（因果遮罩）。 · "
                                "Each row shows where one position looks; brighter = more. The upper right is empty: "
                                "a token cannot see the future (causal mask).")
                    with gr.Row():
                        ins_layer = gr.Radio(choices=[], label="层 layer", elem_id="ins-layer")
                        ins_head = gr.Radio(choices=[], label="头 head", elem_id="ins-head")
                    ins_heat = gr.Plot(label="注意力热图 attention heat map", elem_id="ins-heat")
                    ins_state = gr.State(None)

                # ---- 4. model card -----------------------------------------------------------------
                with gr.Tab("模型卡 Model card", id="card", elem_id="tab-card"):
                    card_summary = gr.Markdown(elem_id="card-summary")
                    card_loss = gr.Image(label="损失曲线 loss curve", type="pil", interactive=False, height=320,
                                         elem_id="card-loss")
                    with gr.Accordion("MODEL_CARD.md（数据来源与许可 · sources and licences）", open=True):
                        card_md = gr.Markdown(elem_id="card-md")
                    with gr.Accordion("config.json", open=False):
                        card_cfg = gr.Code(language="json", interactive=False, elem_id="card-config")

        # ---- wiring -------------------------------------------------------------------------------
        select_outputs = [model_status, chat_note, chat_msg, chat_send, system, card_summary, card_md, card_loss,
                          card_cfg]
        select = bind(handlers.select_model, registry)
        gr.on([demo.load, model.change], select, inputs=[model], outputs=select_outputs, api_name="select_model")

        def refresh(current: str | None):
            registry.refresh()
            keys = registry.keys()
            value = current if current in keys else (keys[0] if keys else None)
            return gr.update(choices=keys, value=value), gr.update(visible=not keys), gr.update(visible=bool(keys))

        rescan.click(refresh, [model], [model, empty_page, main_page], api_name="refresh")
        rescan_empty.click(refresh, [model], [model, empty_page, main_page], api_visibility="undocumented")

        sampling = [strategy, temperature, top_k, top_p, repetition]
        gen_event = gen_btn.click(
            bind(handlers.generate, registry),
            [model, prompt, *sampling, max_new, beams, seed, no_repeat, stop_text], [output, gen_status],
            api_name="generate", **heavy)
        # Cancel first, then say so: a status written together with the cancel can be overtaken by the
        # stream's last in-flight update and vanish.
        stop_btn.click(None, None, None, cancels=[gen_event], queue=False).then(
            handlers.stopped, None, [gen_status], queue=False, api_name="stop")

        # Gradio 6 builds a tab's widgets when it is first opened, and an update sent to them before that
        # (enabling chat after a switch to a chat model) was lost: set them again whenever the tab opens.
        chat_tab.select(bind(handlers.chat_availability, registry), [model],
                        [chat_note, chat_msg, chat_send, system], api_visibility="undocumented")
        chat_events = []
        for trigger in (chat_send.click, chat_msg.submit):
            ev = trigger(handlers.chat_submit, [chat_msg, chatbot], [chatbot, chat_msg], queue=False,
                         api_visibility="undocumented")
            chat_events.append(ev.then(bind(handlers.chat_reply, registry),
                                       [model, system, chatbot, chat_temp, chat_top_p, chat_rep, chat_max], [chatbot],
                                       api_visibility="undocumented", **heavy))
        chat_stop.click(None, None, None, cancels=chat_events, queue=False)

        # ---- feedback for DPO: each click appends a row to RUN_DIR/feedback.jsonl (goushi.ui.preferences)
        def on_like(key: str, system_prompt: str, history: list, data: gr.LikeData) -> str:
            return preferences.chat_like(registry, key, system_prompt, history, data.index, data.liked)

        chatbot.like(on_like, [model, system, chatbot], [chat_feedback], api_visibility="undocumented")
        chat_two_btn.click(
            bind(preferences.chat_two, registry), [model, system, chat_msg, chatbot, chat_temp, chat_top_p, chat_rep,
                                                   chat_max],
            [chatbot, chat_msg, *chat_cmp.boxes, chat_cmp.pending, chat_cmp.status], api_name="chat_two",
            **heavy).then(lambda: gr.update(open=True), None, [chat_compare], api_visibility="undocumented")
        for which, button in enumerate(chat_cmp.picks):
            button.click(functools.partial(preferences.chat_pick, registry, which=which),
                         [chat_cmp.pending, chatbot], [chatbot, *chat_cmp.boxes, chat_cmp.pending, chat_cmp.status],
                         api_visibility="undocumented")
        chat_cmp.wire_rates(registry)
        gen_two_btn.click(
            bind(preferences.generate_two, registry),
            [model, prompt, *sampling, max_new, beams, seed, no_repeat, stop_text],
            [*gen_cmp.boxes, gen_cmp.pending, gen_cmp.status], api_name="generate_two", **heavy)
        for which, button in enumerate(gen_cmp.picks):
            button.click(functools.partial(preferences.pick, registry, which=which), [gen_cmp.pending],
                         [gen_cmp.pending, gen_cmp.status], api_visibility="undocumented")
        gen_cmp.wire_rates(registry)
        chat_clear.click(lambda: [], None, [chatbot], queue=False, api_visibility="undocumented")

        ins_btn.click(
            bind(handlers.inspect, registry),
            [model, ins_prompt, ins_steps, ins_mode, *sampling, seed],
            [ins_tokens, ins_summary, ins_step, ins_steptext, ins_bars, ins_layer, ins_head, ins_heat, ins_state],
            api_name="inspect", **heavy)
        ins_step.change(handlers.render_step, [ins_state, ins_step], [ins_steptext, ins_bars],
                        api_visibility="undocumented")
        gr.on([ins_layer.change, ins_head.change], handlers.render_attention, [ins_state, ins_layer, ins_head],
              [ins_heat], api_visibility="undocumented")
    return demo
