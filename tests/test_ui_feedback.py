"""The page's feedback without a browser: rows appended to RUN_DIR/feedback.jsonl by the Chat and Generate tabs'
handlers (two answers and the better one picked, 👍 / 👎), safe appends, and `goushi dpo` training on the file."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from goushi import rundir  # noqa: E402
from goushi.chat import CHATML  # noqa: E402
from goushi.cli import main  # noqa: E402
from goushi.engine import Engine  # noqa: E402
from goushi.sft.prefs import read_pref_file  # noqa: E402
from goushi.ui import build_app, feedback, preferences  # noqa: E402
from goushi.ui.models import ModelRegistry  # noqa: E402

pytest_plugins = ["ui_fixtures"]
pytestmark = pytest.mark.usefixtures("ui_threads")

SYSTEM = "你是段子手"


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.FEEDBACK).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def registry(ui_runs) -> ModelRegistry:
    return ModelRegistry(None, ui_runs, loader=lambda p: Engine.load(p, device="cpu"))


def test_appends_are_whole_lines_even_from_many_threads_and_after_a_cut_line(tmp_path):
    row = feedback.pair_row([{"role": "user", "content": "写一条好评"}], "好吃", "难吃", source=feedback.CHAT, model="m")
    assert row["messages"] == [{"role": "user", "content": "写一条好评"}] and row["source"] == "page-chat"
    assert datetime.fromisoformat(row["date"].replace("Z", "+00:00")).tzinfo is not None
    (tmp_path / rundir.FEEDBACK).write_text('{"prefix": "cut off by a cra', encoding="utf-8")
    threads = [threading.Thread(target=lambda i=i: [feedback.append_row(tmp_path, {**row, "n": i * 100 + k})
                                                    for k in range(20)]) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / rundir.FEEDBACK).read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"prefix": "cut off by a cra' and len(lines) == 121
    assert sorted(json.loads(line)["n"] for line in lines[1:]) == sorted(i * 100 + k for i in range(6) for k in range(20))
    with pytest.raises(Exception, match="same"):
        feedback.pair_row("今天", "一样", "一样", source=feedback.GENERATE)


def test_chat_tab_two_answers_pick_and_thumbs_write_preference_rows(ui_runs, registry):
    chatty = ui_runs / "chatty"
    (chatty / rundir.FEEDBACK).unlink(missing_ok=True)
    with pytest.raises(gr.Error, match="not chat fine-tuned"):
        preferences.chat_two(registry, "alpha", SYSTEM, "写一条好评", [], 0.7, 0.9, 1.1, 12)
    with pytest.raises(gr.Error, match="first press Two answers"):
        preferences.chat_pick(registry, None, [], which=0)
    history, box, a, b, pending, status = preferences.chat_two(registry, "chatty", SYSTEM, "写一条好评", [], 0.7, 0.9,
                                                               1.1, 12)
    assert box == "" and history == [{"role": "user", "content": "写一条好评"}] and a and b and "pick" in status
    if a == b:  # two samples of a tiny model can agree; the test needs two different answers
        pending["answers"][1] = b = b + "！"
    history, a2, b2, pending2, status = preferences.chat_pick(registry, pending, history, which=1)
    assert history[-1] == {"role": "assistant", "content": b} and pending2 is None and (a2, b2) == ("", "")
    assert "feedback.jsonl" in status and "goushi dpo" in status
    # 👍 on the answer now in the chat, 👎 on another answer to the same conversation (two answers, rated).
    history = history + [{"role": "user", "content": "写一条差评"}, {"role": "assistant", "content": "味道一般"}]
    preferences.chat_like(registry, "chatty", SYSTEM, history, 1, True)
    preferences.chat_like(registry, "chatty", SYSTEM, history, 3, False)
    with pytest.raises(gr.Error, match="only the model's answers"):
        preferences.chat_like(registry, "chatty", SYSTEM, history, 2, True)
    written = rows(chatty)
    assert [sorted(r) for r in written] == [
        ["chosen", "date", "messages", "model", "rejected", "source"],
        ["completion", "date", "label", "messages", "model", "source"],
        ["completion", "date", "label", "messages", "model", "source"]]
    first, up, down = written
    assert first["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "写一条好评"}]
    assert (first["chosen"], first["rejected"], first["model"]) == (b, a, "chatty")
    assert up["label"] is True and up["completion"] == b and up["messages"] == first["messages"]
    assert down["label"] is False and down["messages"][-1] == {"role": "user", "content": "写一条差评"}


def test_generate_tab_two_continuations_pick_and_rate(ui_runs, registry):
    alpha = ui_runs / "alpha"
    (alpha / rundir.FEEDBACK).unlink(missing_ok=True)
    with pytest.raises(gr.Error, match="first press Two answers"):
        preferences.rate(registry, None, which=0, good=True)
    # greedy would write the same text twice: the two continuations are sampled
    a, b, pending, status = preferences.generate_two(registry, "alpha", "今天我终于", "greedy", 0.0, 0, 0.95, 1.1, 12, 4,
                                                     7, 0, "")
    assert a and b and "seed 7" in status and pending["prompt"] == "今天我终于"
    if a == b:
        pending["answers"][1] = b = b + "！"
    assert "👍 A" in preferences.rate(registry, pending, which=0, good=True)
    assert "👎 B" in preferences.rate(registry, pending, which=1, good=False)
    assert preferences.pick(registry, pending, which=0)[0] is None
    written = rows(alpha)
    assert [r.get("label") for r in written] == [True, False, None]
    assert all(r["prefix"] == "今天我终于" and r["source"] == "page-generate" for r in written)
    assert (written[2]["chosen"], written[2]["rejected"]) == (a, b)


def test_goushi_dpo_trains_on_the_feedback_file(ui_runs, registry, tmp_path):
    """Rows as the page writes them (both tabs, both kinds) read as pairs and train a DPO run."""
    chatty = ui_runs / "chatty"
    (chatty / rundir.FEEDBACK).unlink(missing_ok=True)
    pending = {"prompt": "今天我终于", "answers": ["喝上了矿泉水。", "买了一个西瓜。"], "model": "chatty",
               "source": feedback.GENERATE}
    for _ in range(3):
        preferences.pick(registry, pending, which=0)
    chat = {**pending, "prompt": [{"role": "user", "content": "说实话"}], "source": feedback.CHAT}
    preferences.rate(registry, chat, which=0, good=True)
    preferences.rate(registry, chat, which=1, good=False)
    preferences.rate(registry, chat, which=1, good=False)  # no 👍 left to pair it with: it waits
    tok = Engine.load(chatty, device="cpu").tokenizer
    prefs = read_pref_file(chatty / rundir.FEEDBACK, tok, CHATML, 64)
    assert len(prefs.rows) == 4 and prefs.unpaired == 1 and not prefs.problems
    out = tmp_path / "dpo"
    assert main(["dpo", str(chatty), "--data", str(chatty / rundir.FEEDBACK), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "2", "--val-fraction", "0.25", "--sample-tokens", "0", "--no-progress"]) == 0
    assert rundir.read_run(out).dpo.unpaired_rows == 1 and "page-generate" in (out / rundir.MODEL_CARD).read_text(
        encoding="utf-8")


def test_the_page_builds_with_the_feedback_buttons(registry):
    demo = build_app(registry=registry)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for elem in ("gen-two", "gen-pick-a", "gen-up-b", "chat-two", "chat-pick-b", "chat-down-a", "chat-compare"):
        assert elem in ids, elem
    assert {"/chat_two", "/generate_two"} <= set(demo.config["dependencies"][i]["api_name"] and
                                                 "/" + demo.config["dependencies"][i]["api_name"]
                                                 for i in range(len(demo.config["dependencies"])))
