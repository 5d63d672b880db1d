"""Fixtures for the web-page tests: tiny trained runs, a live server on a free port, and a Chromium page.

Loaded by the UI test modules through `pytest_plugins = ["ui_fixtures"]`; owned by the UI, so it does not
collide with tests/conftest.py. Everything is made in temporary directories; nothing reads ../shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from goushi.chat import ChatTemplate  # noqa: E402
from goushi.checkpoint import save_weights  # noqa: E402
from goushi.config import ModelConfig  # noqa: E402
from goushi.data.textindex import TextIndexWriter  # noqa: E402
from goushi.model import GPT  # noqa: E402
from goushi.tokenizer import Tokenizer  # noqa: E402
from run_files import write_config  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Written for these tests (house style: absurd reviews). Repeated so a tiny model learns it in seconds.
CORPUS = [
    "今天我终于狠心买了一瓶矿泉水，喝上矿泉水一直是我的梦想。",
    "这家店的服务员会后空翻，菜还没上，我先给他鼓了掌。",
    "说实话，这个手机壳让我的手机重了二两，我的人生也沉重了起来。",
    "我宣布，从今天起，每个星期四都是疯狂星期四，谁反对谁请客。",
    "老板说这个西瓜保甜，我吃了一口，甜得我给老板写了一首诗。",
]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """On a small shared machine, two threads per forward pass of a tiny model fight other processes for
    the cores and run ~10x slower than one. Restored afterwards, so other test modules are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ui_threads() -> Iterator[None]:
    """Use with pytest.mark.usefixtures: the in-process server generates with one torch thread."""
    with one_torch_thread():
        yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_trained_run(out: Path, *, seed: int = 0, steps: int = 150, n_layer: int = 2, n_head: int = 2,
                     n_embd: int = 64, context_length: int = 64, sft: bool = False, with_index: bool = True,
                     never_ends: bool = False) -> Path:
    """A tiny run directory in the layout `goushi train` writes, trained until it parrots CORPUS (~3 s)."""
    with one_torch_thread():
        return _make_run(out, seed=seed, steps=steps, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         context_length=context_length, sft=sft, with_index=with_index, never_ends=never_ends)


def _make_run(out: Path, *, seed: int, steps: int, n_layer: int, n_head: int, n_embd: int, context_length: int,
              sft: bool, with_index: bool, never_ends: bool) -> Path:
    torch.manual_seed(seed)
    text = "".join(CORPUS * 4)
    tok = Tokenizer.train_char(CORPUS)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, tie_embeddings=not never_ends)
    model = GPT(cfg)
    if never_ends:
        # The final norm outputs a constant vector b, and <|endoftext|>'s head row points away from it:
        # every step draws from one fixed distribution in which ending has probability ~0.
        with torch.no_grad():
            model.ln_f.weight.zero_()
            model.ln_f.bias.normal_()
            model.lm_head.weight[tok.eot_id] = -50.0 * model.ln_f.bias / model.ln_f.bias.norm()
    ids = torch.tensor(tok.encode(text))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    window = 32  # training windows shorter than the context: cheaper, and enough to memorise CORPUS
    gen = torch.Generator().manual_seed(seed)
    metrics = []
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - window - 1, (8,), generator=gen)
        x = torch.stack([ids[s:s + window] for s in starts])
        y = torch.stack([ids[s + 1:s + 1 + window] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            metrics.append({"step": step, "loss": float(loss.detach()), "lr": 3e-3, "tokens": (step + 1) * x.numel()})
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "model.safetensors", model)
    tok.save(out / "tokenizer.json")
    info = {"model": cfg.to_dict(), "train": {"steps": steps}, "goushi_version": "test"}
    if with_index:
        data = out.parent / f".{out.name}-data"
        data.mkdir(parents=True, exist_ok=True)
        w = TextIndexWriter(data)
        for doc in CORPUS:
            w.add(doc, "reviews")
        w.close({"reviews": {"author": "ui tests", "url": "", "license": "CC0-1.0"}})
        info["data"] = {"dir": str(data.resolve()), "meta": {"tokenizer_kind": "char"}}
    if sft:
        info["sft"] = {"data": "chat.jsonl"}
    write_config(out, info)
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(f"# Model card: {out.name}\n\nTrained for the UI tests on "
                                       "five invented reviews (CC0-1.0).\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with good runs (alpha, beta), one whose weights are corrupt (broken), one marked chat-tuned (chatty),
    and a bigger untrained one whose generations last long enough to stop (slow)."""
    root = tmp_path_factory.mktemp("ui") / "runs"
    make_trained_run(root / "alpha", seed=0)
    make_trained_run(root / "beta", seed=1, steps=60, n_embd=32, context_length=48)
    broken = make_trained_run(root / "broken", seed=2, steps=0, with_index=False)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    # Marked as chat fine-tuned the way `goushi sft` marks a run ("sft" section and the chat template), to drive
    # the Chat tab's wiring. Trained on plain text only, so its answers are any CORPUS-like text.
    chatty = root / "chatty"
    shutil.copytree(root / "alpha", chatty)
    info = json.loads((chatty / "config.json").read_text(encoding="utf-8"))
    info.update(sft={"data": "chat.jsonl", "note": "ui tests: marked only"}, chat_template=ChatTemplate().to_dict())
    (chatty / "config.json").write_text(json.dumps(info), encoding="utf-8")
    # Untrained, 20x bigger and never ending: ~10 ms a token here, so 1000 tokens are still running when stop
    # is pressed.
    make_trained_run(root / "slow", steps=0, n_layer=6, n_head=6, n_embd=384, context_length=256, with_index=False,
                     never_ends=True)
    return root


class Server:
    def __init__(self, demo, url: str):
        self.demo, self.url = demo, url

    def close(self) -> None:
        self.demo.close()


@contextlib.contextmanager
def running_app(run_dirs=None, runs_dir=None) -> Iterator[Server]:
    from goushi.ui import build_app, serve

    demo = build_app(run_dirs, runs_dir)
    url = serve(demo, "127.0.0.1", free_port(), block=False, quiet=True)
    server = Server(demo, url.rstrip("/"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def ui_server(ui_runs: Path) -> Iterator[Server]:
    with running_app(runs_dir=ui_runs) as s:
        yield s


@pytest.fixture(scope="session")
def browser_context():
    """One headless Debian Chromium for the session, with a fresh profile."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium chromium-driver fonts-wqy-microhei)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="goushi-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
                                                   locale="zh-CN")
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, request):
    """A new tab that records every request leaving 127.0.0.1 (the page must work offline)."""
    pg = browser_context.new_page()
    # Every wait (clicks included) as patient as the explicit ones: a busy 2-core machine rendered a button after
    # Playwright's default 30 s. A timeout guards against a hang; it never measures speed.
    pg.set_default_timeout(90_000)
    pg.outside_requests = []  # type: ignore[attr-defined]

    def watch(req) -> None:
        url = req.url
        if not url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")):
            pg.outside_requests.append(url)  # type: ignore[attr-defined]

    pg.on("request", watch)
    request.node._ui_page = pg
    yield pg
    pg.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep a screenshot of the page when a browser test fails, to see what the user would have seen."""
    outcome = yield
    rep = outcome.get_result()
    pg = getattr(item, "_ui_page", None)
    if rep.when == "call" and rep.failed and pg is not None:
        with contextlib.suppress(Exception):
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"{item.name}.png"), full_page=True)
