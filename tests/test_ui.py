"""The web page without a browser: model discovery and loading, the views, and the app driven through gradio_client."""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

import gradio as gr  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from goushi.engine import Engine  # noqa: E402
from goushi.errors import GoushiError  # noqa: E402
from goushi.ui import card, handlers, views  # noqa: E402
from goushi.ui.models import ModelRegistry, discover  # noqa: E402

pytest_plugins = ["ui_fixtures"]
pytestmark = pytest.mark.usefixtures("ui_threads")

CJK = re.compile(r"[\u4e00-\u9fff]")


def _touch_run(d: Path, files=("config.json", "model.safetensors", "tokenizer.json")) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_text("{}", encoding="utf-8")
    return d


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


# ---- discovery and loading -----------------------------------------------------------------------
def test_discover_finds_runs_nested_and_skips_data_and_hidden_dirs(tmp_path):
    runs = tmp_path / "runs"
    _touch_run(runs / "a")
    _touch_run(runs / "a" / "best")
    _touch_run(runs / "group" / "b")
    _touch_run(runs / "half", files=("config.json",))  # broken, but shown so the page can say why
    _touch_run(runs / "data", files=("tokenizer.json", "meta.json"))  # a DATA_DIR is not a run
    _touch_run(runs / ".saving")
    _touch_run(runs / "x" / "y" / "too_deep")
    explicit = tmp_path / "elsewhere"
    keys = [e.key for e in discover([explicit, runs / "a"], runs)]
    assert keys == [str(explicit), str(runs / "a"), "a/best", "group/b", "half"]


def test_discover_missing_runs_dir_is_empty(tmp_path):
    assert discover(None, tmp_path / "nope") == []


def test_registry_loads_lazily_once_and_reports_broken_runs(ui_runs):
    calls = []

    def loader(path):
        calls.append(path.name)
        return Engine.load(path, device="cpu")

    reg = ModelRegistry(None, ui_runs, loader=loader)
    assert reg.keys() == ["alpha", "beta", "broken", "chatty", "slow"]
    assert calls == []  # nothing loads until asked
    with pytest.raises(GoushiError, match="safetensors"):
        reg.get("broken")
    with pytest.raises(GoushiError, match="safetensors"):
        reg.get("broken")  # the same broken files are not retried on every click
    assert calls == ["broken"]

    results = []
    threads = [threading.Thread(target=lambda: results.append(reg.get("alpha"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in results}) == 1 and calls == ["broken", "alpha"]
    assert reg.get("beta") is not results[0]
    with pytest.raises(GoushiError, match="not in the list"):
        reg.get("gone")


def test_registry_reloads_a_run_whose_files_changed(tmp_path):
    run = _touch_run(tmp_path / "runs" / "r")
    reg = ModelRegistry(None, tmp_path / "runs", loader=lambda p: object())
    first = reg.get("r")
    assert reg.get("r") is first
    os.utime(run / "model.safetensors", ns=(1, 1))  # retrained: new weights on disk
    assert reg.get("r") is not first


def test_registry_keeps_a_bounded_number_of_engines(tmp_path):
    for name in "abc":
        _touch_run(tmp_path / "runs" / name)
    reg = ModelRegistry(None, tmp_path / "runs", loader=lambda p: object(), max_loaded=2)
    for name in "abc":
        reg.get(name)
    assert [reg.loaded(n) for n in "abc"] == [False, True, True]


# ---- views -------------------------------------------------------------------------------------
def test_token_spans_escape_text_and_show_ids_cut_and_byte_pieces():
    out = views.token_spans_html([(5, "<b>"), (6, " "), (7, "<0xE4>"), (8, "好")], cut=1)
    assert "<b>" not in out.replace('<span class="gs-piece">', "") and "&lt;b&gt;" in out
    chips = re.findall(r'class="(gs-tok(?: [^"]*)?)"', out)
    assert chips == ["gs-tok gs-cut", "gs-tok", "gs-tok gs-byte", "gs-tok"]
    assert re.findall(r'gs-id">(\d+)<', out) == ["5", "6", "7", "8"]
    assert "␣" in out


def test_prob_bars_mark_the_chosen_token_and_scale_to_the_largest():
    out = views.prob_bars_html([("我", 0.5, 10), ("你", 0.25, 11)], chosen_id=11)
    rows = out.split('class="gs-bar-row')[1:]
    assert "width:100.0%" in rows[0] and "width:50.0%" in rows[1]
    assert "gs-chosen" in rows[1] and "gs-chosen" not in rows[0].split(">")[0]
    assert "50.0%" in out and "75.0%" in out  # the top two hold 75%


def test_attention_figure_uses_a_chinese_font_when_one_is_installed():
    import numpy as np

    att = np.tril(np.ones((2, 3, 4, 4), dtype=np.float32)) / np.arange(1, 5)[:, None]
    fig = views.attention_figure(["<|endoftext|>", "今", "天", " "], att, 1, None)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["<|endoftext|>", "今", "天", "␣"]
    if not Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc").exists():
        pytest.skip("fonts-wqy-microhei not installed")
    assert views.plot_fonts()[0] == "WenQuanYi Micro Hei"


def test_chat_messages_read_gradio6_message_parts():
    history = [{"role": "user", "content": [{"type": "text", "text": "你好"}]},
               {"role": "assistant", "content": ""},  # the model ended its turn at once: nothing to send back
               {"role": "user", "content": "在吗"},
               {"role": "assistant", "content": [{"type": "text", "text": "在"}, {"type": "text", "text": "呢"}],
                "metadata": None},
               {"role": "user", "content": {"type": "text", "text": "讲个笑话"}}]
    assert handlers.chat_messages(" 你是段子手 ", history) == [
        {"role": "system", "content": "你是段子手"}, {"role": "user", "content": "你好"},
        {"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在呢"},
        {"role": "user", "content": "讲个笑话"}]
    assert handlers.chat_messages("", history[:1]) == [{"role": "user", "content": "你好"}]
    assert handlers.message_text({"type": "text", "text": "x"}) == "x" and handlers.message_text(None) == ""


class FakeEngine:
    """What the handlers may ask of an engine, and nothing else."""

    def __init__(self, spans=None, error=None):
        self.spans, self.error = spans, error

    def copied_spans(self, text, min_chars):
        if self.error:
            raise self.error
        return self.spans


def test_copied_spans_come_from_the_engine():
    assert handlers.provenance_spans(FakeEngine(error=GoushiError("no index")), "今天我终于买了矿泉水")[0] is None
    spans, note = handlers.provenance_spans(FakeEngine(error=GoushiError("no index")), "今天我终于买了矿泉水")
    assert "no provenance index" in note
    assert handlers.provenance_spans(FakeEngine(spans=[]), "今天我终于买了矿泉水") == (
        [], "没有发现照抄训练数据的片段 · no verbatim copies of training data found")
    assert handlers.provenance_spans(FakeEngine(error=AssertionError("not called")), "短") == ([], "")


def test_handlers_use_the_loaded_engine_not_config_json(ui_runs, monkeypatch):
    reg = ModelRegistry(None, ui_runs, loader=lambda p: Engine.load(p, device="cpu"))
    engine = reg.get("chatty")
    assert engine.is_chat and not reg.get("alpha").is_chat
    copied = "说实话，这个手机壳让我的手机重了二两"
    assert handlers.provenance_spans(engine, copied)[0]  # the engine finds its index once (rundir reads config.json)

    def no_reading(*a, **k):
        raise AssertionError("config.json read again")

    monkeypatch.setattr("goushi.rundir.read_run", no_reading)
    monkeypatch.setattr("goushi.ui.models.read_run", no_reading)
    out = handlers.select_model(reg, "chatty")
    assert "chatty" in out[0] and "上下文 context 64" in out[0] and "对话微调 chat fine-tuned" in out[5]
    assert handlers.chat_availability(reg, "chatty")[0]["value"] == handlers.CHAT_NOTE
    assert handlers.chat_availability(reg, "alpha")[0]["value"] == handlers.BASE_MODEL_NOTE
    assert handlers.prompt_cut_notice(engine, "说实话，" * 40).startswith("提示太长：161 个 token")
    spans, note = handlers.provenance_spans(engine, copied)
    assert spans and spans[0].source_id == "reviews" and "照抄" in note


def test_model_card_reads_the_run_files(ui_runs):
    summary = card.summary_markdown(ui_runs / "alpha", Engine.load(ui_runs / "alpha", device="cpu").record)
    assert "训练步数 steps | 149" in summary and "最后的训练损失 last train loss" in summary
    assert card.loss_image(ui_runs / "alpha").size[0] > 100  # drawn from metrics.jsonl: no loss.png here
    assert "Model card: alpha" in card.model_card_markdown(ui_runs / "alpha")
    assert "this run has no MODEL_CARD.md" in card.model_card_markdown(ui_runs / "nowhere")
    bad = GoushiError("config.json: n_layer=-1 must be at least 1")
    assert "bad config.json" in card.summary_markdown(ui_runs / "alpha", bad) and "n_layer=-1" in card.summary_markdown(
        ui_runs / "alpha", bad)
    assert '"model"' in card.config_json(ui_runs / "alpha", bad)  # the file's own text, to see what is wrong


def test_server_side_validation_names_the_bad_setting():
    with pytest.raises(gr.Error, match="temperature"):
        handlers.make_config("sample", -0.5, 0, 0.9, 1.0, 10, 1, 0)
    with pytest.raises(gr.Error, match="strategy"):
        handlers.make_config("random", 0.8, 0, 0.9, 1.0, 10, 1, 0)
    cfg, seed = handlers.make_config("sample", 0.8, 5, 0.9, 1.1, 10, 1, -1, 0, "。|\\n")
    assert cfg.top_k == 5 and cfg.seed == seed and seed >= 0 and cfg.stop == ["。", "\n"]


# ---- the live app through gradio_client ------------------------------------------------------------
@pytest.fixture(scope="module")
def client(ui_server):
    return Client(ui_server.url, verbose=False, download_files=False, analytics_enabled=False)


def gen_args(model="alpha", prompt="今天我终于", strategy="sample", temperature=0.8, top_k=0, top_p=0.95,
             repetition=1.1, max_new=40, beams=4, seed=7, no_repeat=0, stop=""):
    return [model, prompt, strategy, temperature, top_k, top_p, repetition, max_new, beams, seed, no_repeat, stop]


def test_generate_streams_and_is_reproducible_with_a_seed(client):
    job = client.submit(*gen_args(max_new=60), api_name="/generate")
    outputs = list(job)
    final_html, final_status = job.result()
    partial = {len(_text(h)) for h, _ in outputs[:-1]}
    assert len(partial) >= 2, "the output should arrive in pieces, not all at once"
    text = _text(final_html)
    assert text.startswith("今天我终于") and len(CJK.findall(text)) > 10
    assert "完成 done" in final_status and "种子 seed 7" in final_status
    again, _ = client.predict(*gen_args(max_new=60), api_name="/generate")
    assert _text(again) == text
    other, _ = client.predict(*gen_args(max_new=60, seed=8), api_name="/generate")
    assert _text(other) != text


def test_memorised_text_is_marked_with_its_source(client):
    html, status = client.predict(*gen_args(prompt="今天我终于", strategy="greedy", max_new=40),
                                  api_name="/generate")
    assert '<mark class="copied"' in html and "reviews" in html and "CC0-1.0" in html
    assert "照抄" in status


def test_out_of_range_values_are_refused_by_the_server(client):
    with pytest.raises(AppError):
        client.predict(*gen_args(temperature=5.0), api_name="/generate")
    with pytest.raises(AppError):
        client.predict(*gen_args(max_new=5000), api_name="/generate")
    with pytest.raises(AppError):
        client.predict(*gen_args(strategy="telepathy"), api_name="/generate")


def test_a_prompt_longer_than_the_context_is_cut_with_a_notice(client):
    prompt = "说实话，" * 40  # 160 tokens, alpha's context is 64
    html, status = client.predict(*gen_args(prompt=prompt, max_new=5), api_name="/generate")
    assert "提示被截断 prompt cut" in status and "64" in status
    assert _text(html).startswith(prompt)


def test_beam_search_returns_one_finished_text(client):
    html, status = client.predict(*gen_args(strategy="beam", beams=3, max_new=12), api_name="/generate")
    assert "完成 done" in status and len(_text(html)) > len("今天我终于")


def test_a_broken_run_says_why_and_the_others_keep_working(client):
    status = client.predict("broken", api_name="/select_model")[0]
    assert "无法加载" in status and "safetensors" in status
    with pytest.raises(AppError, match="safetensors"):
        client.predict(*gen_args(model="broken"), api_name="/generate")
    status = client.predict("beta", api_name="/select_model")[0]
    assert "beta" in status and "上下文 context 48" in status
    html, _ = client.predict(*gen_args(model="beta", max_new=10), api_name="/generate")
    assert _text(html).startswith("今天我终于")


def test_inspect_shows_tokens_probabilities_and_attention(client):
    out = client.predict("alpha", "这家店的", 6, handlers.RAW, "sample", 0.8, 0, 0.95, 1.1, 1, api_name="/inspect")
    tokens_html, summary, step, step_html, bars_html = out[:5]
    assert [m for m in re.findall(r'gs-piece">([^<]*)<', tokens_html)] == list("这家店的")
    assert "4 个字符 → 4 个 token" in summary
    assert bars_html.count('class="gs-bar-row') == handlers.TOP_N
    assert "gs-chosen" in bars_html and "选中 chosen" in bars_html
    assert out[7] is not None  # the heat map


def test_sessions_do_not_see_each_others_output(ui_server):
    prompts = ["今天我终于", "这家店的"]
    results = {}

    def run(prompt):
        c = Client(ui_server.url, verbose=False, download_files=False, analytics_enabled=False)
        results[prompt] = _text(c.predict(*gen_args(prompt=prompt, max_new=30), api_name="/generate")[0])

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in prompts:
        assert results[p].startswith(p)
        assert all(not results[p].startswith(q) for q in prompts if q != p)


def test_refresh_picks_up_a_run_trained_after_start(tmp_path):
    from ui_fixtures import make_trained_run, running_app

    runs = tmp_path / "runs"
    runs.mkdir()
    with running_app(runs_dir=runs) as server:
        c = Client(server.url, verbose=False, download_files=False, analytics_enabled=False)
        make_trained_run(runs / "late", steps=0, with_index=False)
        update = c.predict(None, api_name="/refresh")  # the new choices and value of the picker
        assert update["value"] == "late" and [c[1] for c in update["choices"]] == ["late"]
        assert "late" in c.predict("late", api_name="/select_model")[0]


# ---- the command ----------------------------------------------------------------------------------
def test_cli_registers_ui_with_its_options():
    from goushi.cli import build_parser

    args = build_parser().parse_args(["ui", "runs/a", "runs/b", "--runs-dir", "runs", "--port", "8000"])
    assert args.run_dirs == ["runs/a", "runs/b"] and args.runs_dir == "runs" and args.port == 8000
    assert args.host == "127.0.0.1"


def test_a_port_in_use_is_a_clear_error(tmp_path):
    from goushi.ui import build_app, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(GoushiError, match=f"--port {port}"):
            serve(build_app(None, tmp_path), "127.0.0.1", port, block=False, quiet=True)
