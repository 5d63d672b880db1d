"""The page's feedback in a real browser (Debian's Chromium driven by Playwright): two answers, pick the better,
👍 / 👎, on the Chat and Generate tabs, each click a row in RUN_DIR/feedback.jsonl."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright")

from playwright.sync_api import expect  # noqa: E402

from goushi import rundir  # noqa: E402
from test_ui_browser import CJK, SLOW, assert_offline, open_app, pick_model  # noqa: E402

pytest_plugins = ["ui_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("ui_threads")]

LIKE, DISLIKE = re.compile(r"^(赞|Like)$"), re.compile(r"^(踩|Dislike)$")  # Gradio's labels, zh-CN or English


def rows(run_dir) -> list[dict]:
    path = run_dir / rundir.FEEDBACK
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_chat_two_answers_pick_one_and_thumbs(page, ui_server, ui_runs):
    chatty = ui_runs / "chatty"
    before = len(rows(chatty))
    open_app(page, ui_server.url)
    pick_model(page, "chatty")
    page.get_by_role("tab", name="对话 Chat").click()
    box = page.locator("#chat-msg textarea")
    expect(box).to_be_enabled(timeout=SLOW)
    box.fill("讲个笑话")
    page.click("#chat-two")
    a, b = page.locator("#chat-a textarea"), page.locator("#chat-b textarea")
    expect(b).not_to_have_value("", timeout=SLOW)
    expect(a).not_to_have_value("")
    answer_b = b.input_value()
    expect(page.locator("#chatbot [data-testid='user']")).to_have_text("讲个笑话")
    page.click("#chat-pick-b")
    expect(page.locator("#chat-feedback-status")).to_contain_text("记下了", timeout=SLOW)
    bots = page.locator("#chatbot [data-testid='bot']")
    expect(bots.last).to_have_text(answer_b.strip(), timeout=SLOW)  # the picked answer joins the conversation
    expect(b).to_have_value("")
    written = rows(chatty)[before:]
    assert len(written) == 1 and written[0]["chosen"] == answer_b and written[0]["source"] == "page-chat"
    assert written[0]["messages"][-1] == {"role": "user", "content": "讲个笑话"}

    page.locator("#chatbot").get_by_role("button", name=DISLIKE).last.click()
    expect(page.locator("#chat-like-status")).to_contain_text("👎", timeout=SLOW)
    last = rows(chatty)[-1]
    assert last["label"] is False and last["completion"] == answer_b
    assert_offline(page)


def test_generate_two_continuations_rate_and_pick(page, ui_server, ui_runs):
    alpha = ui_runs / "alpha"
    before = len(rows(alpha))
    open_app(page, ui_server.url)
    page.fill("#gen-prompt textarea", "今天我终于")
    page.locator("#gen-feedback").get_by_text("哪个更好").click()  # open the accordion
    page.click("#gen-two")
    a, b = page.locator("#gen-a textarea"), page.locator("#gen-b textarea")
    expect(a).to_have_value(CJK, timeout=SLOW)
    expect(b).to_have_value(CJK)
    text_a, text_b = a.input_value(), b.input_value()
    page.click("#gen-up-a")
    expect(page.locator("#gen-feedback-status")).to_contain_text("👍 A", timeout=SLOW)
    page.click("#gen-pick-b")
    expect(page.locator("#gen-feedback-status")).to_contain_text("B 更好", timeout=SLOW)
    written = rows(alpha)[before:]
    assert [r.get("label") for r in written] == [True, None]
    assert written[0]["completion"] == text_a and (written[1]["chosen"], written[1]["rejected"]) == (text_b, text_a)
    assert all(r["prefix"] == "今天我终于" and r["model"] == "alpha" for r in written)
    assert_offline(page)
