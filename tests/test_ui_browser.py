"""The web page end to end in a real browser (Debian's Chromium driven by Playwright), as a user clicks it.

A failing test leaves a screenshot in test-artifacts/ (see ui_fixtures.pytest_runtest_makereport).
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright")

from playwright.sync_api import expect  # noqa: E402

pytest_plugins = ["ui_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("ui_threads")]

CJK = re.compile(r"[\u4e00-\u9fff]")
SLOW = 90_000  # ms; generous, the machine running CI may be busy (30 s ran out under load)


def open_app(page, url: str, model: str = "alpha") -> None:
    page.goto(url)
    expect(page.locator("#model-status")).to_contain_text(model, timeout=SLOW)


def pick_model(page, name: str) -> None:
    page.locator("#model-picker input").click()
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#model-status")).to_contain_text(name, timeout=SLOW)


def record_lengths(page, selector: str) -> None:
    """Remember the text length of `selector` at every DOM change, to see text grow during streaming."""
    page.evaluate("""(sel) => {
        window.__lens = [];
        const el = document.querySelector(sel);
        new MutationObserver(() => window.__lens.push(el.innerText.length))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""", selector)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def assert_offline(page) -> None:
    assert page.outside_requests == [], f"the page fetched from outside this machine: {page.outside_requests}"


def test_generate_streams_chinese_text(page, ui_server):
    open_app(page, ui_server.url)
    prompt = "今天我终于"
    page.fill("#gen-prompt textarea", prompt)
    record_lengths(page, "#gen-output")
    page.click("#gen-btn")
    expect(page.locator("#gen-status")).to_contain_text("完成 done", timeout=SLOW)
    final = page.inner_text("#gen-output")
    assert final.startswith(prompt) and len(CJK.findall(final)) > len(prompt) + 10
    partial = {n for n in page.evaluate("window.__lens") if len(prompt) < n < len(final)}
    assert len(partial) >= 2, "the text should appear piece by piece while it is generated"
    assert_offline(page)


def test_example_prompt_and_copied_text_highlight(page, ui_server):
    open_app(page, ui_server.url)
    page.get_by_role("button", name="这家店的").first.click()
    expect(page.locator("#gen-prompt textarea")).to_have_value("这家店的")
    page.get_by_text("贪心 greedy").click()
    page.click("#gen-btn")
    expect(page.locator("#gen-status")).to_contain_text("照抄", timeout=SLOW)
    mark = page.locator("#gen-output mark.copied").first
    expect(mark).to_be_visible()
    assert "CC0-1.0" in mark.get_attribute("title")


def test_stop_button_stops_a_long_generation(page, ui_server):
    open_app(page, ui_server.url)
    pick_model(page, "slow")
    page.fill("#gen-prompt textarea", "说实话")
    set_number(page, "max-new", 1000)
    page.evaluate("""() => {
        window.__status = [];
        const el = document.querySelector('#gen-status');
        new MutationObserver(() => window.__status.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#gen-btn")
    page.wait_for_function("document.querySelector('#gen-output').innerText.length > 10", timeout=SLOW)
    page.click("#gen-stop")
    expect(page.locator("#gen-status")).to_contain_text("已停止", timeout=SLOW)
    # Only the text: Gradio also badges the cancelled output with "错误/Error".
    stopped_at = page.inner_text("#gen-output .gs-output")
    page.wait_for_timeout(1500)
    assert page.inner_text("#gen-output .gs-output") == stopped_at, "text kept growing after stop"
    history = page.evaluate("window.__status")
    assert not any("完成" in s for s in history), f"it finished before stop was pressed: {history[-5:]}"
    assert any("生成中" in s for s in history)

    page.click("#gen-btn")  # the page still works after a stop
    page.wait_for_function("(s) => document.querySelector('#gen-output .gs-output').innerText !== s", arg=stopped_at,
                           timeout=SLOW)
    page.click("#gen-stop")
    expect(page.locator("#gen-status")).to_contain_text("已停止", timeout=SLOW)


def test_inspect_shows_tokens_probability_chart_and_attention(page, ui_server):
    open_app(page, ui_server.url)
    page.get_by_role("tab", name="透视 Inspect").click()
    page.fill("#ins-prompt textarea", "这家店的")
    page.click("#ins-btn")
    chips = page.locator("#ins-tokens .gs-tok")
    expect(chips).to_have_count(4, timeout=SLOW)
    assert [c.inner_text().split("\n")[0] for c in chips.all()] == list("这家店的")
    assert all(re.fullmatch(r"\d+", c.locator(".gs-id").inner_text()) for c in chips.all())
    expect(page.locator("#ins-bars .gs-bar-row")).to_have_count(10)
    expect(page.locator("#ins-bars .gs-chosen")).to_have_count(1)
    expect(page.locator("#ins-bars")).to_contain_text("第 0 步")
    heat = page.locator("#ins-heat img")
    expect(heat).to_be_visible(timeout=SLOW)
    first_src = heat.get_attribute("src")

    set_number(page, "ins-step", 3)
    expect(page.locator("#ins-bars")).to_contain_text("第 3 步", timeout=SLOW)
    expect(page.locator("#ins-steptext .gs-next")).to_be_visible()

    page.locator("#ins-head").get_by_text("头 head 1").click()
    page.wait_for_function("(s) => document.querySelector('#ins-heat img')?.getAttribute('src') !== s", arg=first_src,
                           timeout=SLOW)
    assert_offline(page)


def test_switch_models_and_a_broken_one_explains_itself(page, ui_server):
    open_app(page, ui_server.url)
    pick_model(page, "beta")
    expect(page.locator("#model-status")).to_contain_text("上下文 context 48")
    page.get_by_role("tab", name="模型卡 Model card").click()
    expect(page.locator("#card-md")).to_contain_text("Model card: beta")
    expect(page.locator("#card-loss img")).to_be_visible()

    pick_model(page, "broken")
    expect(page.locator("#model-status")).to_contain_text("无法加载")
    expect(page.locator("#model-status")).to_contain_text("safetensors")

    pick_model(page, "alpha")
    page.get_by_role("tab", name="生成 Generate").click()
    page.fill("#gen-prompt textarea", "老板说")
    page.click("#gen-btn")
    expect(page.locator("#gen-status")).to_contain_text("完成 done", timeout=SLOW)
    assert page.inner_text("#gen-output").startswith("老板说")


def test_chat_needs_a_chat_model(page, ui_server):
    open_app(page, ui_server.url)
    pick_model(page, "chatty")  # chosen before the Chat tab was ever opened
    page.get_by_role("tab", name="对话 Chat").click()
    expect(page.locator("#chat-note")).to_contain_text("对话微调过", timeout=SLOW)
    box = page.locator("#chat-msg textarea")
    expect(box).to_be_enabled(timeout=SLOW)
    box.fill("讲个笑话")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='user']")).to_have_text("讲个笑话", timeout=SLOW)
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text(CJK, timeout=SLOW)
    expect(page.locator("#chatbot [data-testid='bot']").last).not_to_contain_text("<|im_")  # the engine stops there

    pick_model(page, "alpha")  # a base model: a clear note, and no chatting
    expect(page.locator("#chat-note")).to_contain_text("还不会对话")
    expect(page.locator("#chat-note")).to_contain_text("goushi sft")
    expect(box).to_be_disabled()


def test_chat_streams_keeps_the_history_and_clears(page, ui_server):
    open_app(page, ui_server.url)
    pick_model(page, "chatty")
    page.get_by_role("tab", name="对话 Chat").click()
    box = page.locator("#chat-msg textarea")
    expect(box).to_be_enabled(timeout=SLOW)
    users = page.locator("#chatbot [data-testid='user']")
    bots = page.locator("#chatbot [data-testid='bot']")

    # A streaming chatbot shows no busy sign once the first words are out: an answer is done when the chat
    # has not changed for a while (a tiny model writes its 150 tokens in about a second).
    page.evaluate("""() => {
        window.__changed = performance.now();
        new MutationObserver(() => window.__changed = performance.now())
            .observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
    }""")

    def send(text: str, n: int) -> str:
        """Type `text`, press Enter, wait for the n-th answer to finish; its text."""
        box.fill(text)
        box.press("Enter")
        expect(users).to_have_count(n, timeout=SLOW)
        expect(users.nth(n - 1)).to_have_text(text)
        expect(bots).to_have_count(n, timeout=SLOW)
        expect(bots.nth(n - 1)).to_contain_text(CJK, timeout=SLOW)
        page.wait_for_function("performance.now() - window.__changed > 2000", timeout=SLOW)
        return bots.nth(n - 1).inner_text()

    record_lengths(page, "#chatbot")
    first = send("讲个笑话", 1)
    assert "<|im_" not in first  # the engine stops at the end of the turn
    lens = page.evaluate("window.__lens")
    partial = {x for x in lens if len("讲个笑话") < x < max(lens)}
    assert len(partial) >= 2, f"the answer should appear piece by piece while it is written: {lens}"

    second = send("再来一个", 2)  # the first turn stays on the page (and goes back to the model with the new one)
    assert [u.inner_text() for u in users.all()] == ["讲个笑话", "再来一个"]
    assert bots.first.inner_text() == first and second

    page.get_by_role("button", name="清空 Clear").click()
    expect(users).to_have_count(0, timeout=SLOW)
    expect(bots).to_have_count(0)
    send("老板说", 1)  # a new conversation
    expect(users).to_have_count(1)
    assert_offline(page)


def test_no_runs_page_explains_how_to_train(page, tmp_path):
    from ui_fixtures import running_app

    with running_app(runs_dir=tmp_path / "runs") as server:
        page.goto(server.url)
        expect(page.locator("#empty-page")).to_contain_text("还没有找到训练好的模型", timeout=SLOW)
        expect(page.locator("#empty-page")).to_contain_text("make demo")
        expect(page.locator("#empty-page")).to_contain_text("goushi train")
        expect(page.locator("#main-page")).to_be_hidden()
    assert_offline(page)
