"""The OpenAI-compatible API (`goushi serve`) through the official `openai` client against live servers on
127.0.0.1: every answer equals what the engine gives for the same seed, streamed or not; bad requests are 4xx in
OpenAI's error shape and the server keeps serving; API keys; a client that leaves stops its generation; concurrent
requests never mix; the real `goushi serve` command.

Servers (start_background, port 0, one per module each): `server` (a completions run "tiny" and a chat run
"tiny-chat" with the same weights, small limits), `keyed` ("tiny" behind an API key) and `paced_server` (a
RecordingEngine that records every generation the server asks for and paces its events, so a test can act in the
middle of a generation and then observe whether it stopped, instead of guessing from timings). One test drives the
ASGI app directly, to make a client leave at an exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from goushi.cli import main  # noqa: E402
from goushi.engine import Engine, SampleConfig  # noqa: E402
from goushi.generation.batch import DecodeBatch  # noqa: E402
from goushi.generation.options import SEED_LIMIT  # noqa: E402
from goushi.serve import scheduler as scheduler_module  # noqa: E402
from goushi.serve.app import POLL_SECONDS, build_app, decode_threads, sse  # noqa: E402
from goushi.serve.limits import Limits  # noqa: E402
from goushi.serve.server import start_background  # noqa: E402
from run_files import read_config, write_config  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
# One decode thread per model unless a test asks for more: the default (one per core) would differ by machine.
LIMITS = Limits(max_body_bytes=20_000, max_prompt_chars=2_000, max_prompts=4, max_tokens=64, max_n=4, concurrency=2,
                max_queue=16, decode_threads=1)
PACED_MAX = 512  # max_tokens of the paced server; at PACE s a token a generation left alone takes ~10 s
PACE = 0.02
CHAT = [{"role": "system", "content": "你是一只狗。"}, {"role": "user", "content": "讲个笑话"}]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models, 2 busy cores, two generations at once
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(make_run, tmp_path_factory) -> dict[str, Path]:
    """'tiny' (completions) and 'tiny-chat' (the same weights with "sft" in config.json): ids are directory names."""
    root = tmp_path_factory.mktemp("serve_runs")
    tiny = Path(shutil.copytree(make_run("char"), root / "tiny"))
    chat = Path(shutil.copytree(make_run("char"), root / "tiny-chat"))
    write_config(chat, {**read_config(chat), "sft": {"data": "chat.jsonl"}})
    return {"tiny": tiny, "tiny-chat": chat}


@pytest.fixture(scope="module")
def ref(runs) -> dict[str, Engine]:
    """Engines the tests compute references with (the servers load their own). batch_invariant: a lone call runs
    in a batch of slots as the server's batch does, not on the single-row kernels, so texts compare bit for bit."""
    return {name: Engine.load(path, device="cpu", batch_invariant=True) for name, path in runs.items()}


def serving(engines: dict[str, Engine], **kw):
    bg = start_background(build_app(engines, **kw))
    try:
        yield bg.url
    finally:
        bg.stop()


@pytest.fixture(scope="module")
def server(runs):
    yield from serving({name: Engine.load(path, device="cpu") for name, path in runs.items()}, limits=LIMITS)


@pytest.fixture(scope="module")
def keyed(runs):
    yield from serving({"tiny": Engine.load(runs["tiny"], device="cpu")}, api_key="s3cret-key", limits=LIMITS)


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def cfg(*, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 16, n: int = 1, seed: int | None = None,
        stop: list[str] | None = None, **ours) -> SampleConfig:
    """The SampleConfig a request with these OpenAI fields means (temperature 0 -> greedy, num_beams > 1 -> beam)."""
    strategy = "beam" if ours.get("num_beams", 1) > 1 else "greedy" if temperature == 0 else "sample"
    if "min_tokens" in ours:
        ours["min_new_tokens"] = ours.pop("min_tokens")
    return SampleConfig(strategy=strategy, temperature=temperature, top_p=top_p, max_new_tokens=max_tokens,
                        num_samples=n, seed=seed, stop=list(stop or []), **ours)


def finish(reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}[reason]


@dataclass
class Streamed:
    text: dict[int, str] = field(default_factory=lambda: defaultdict(str))
    finish: dict[int, list] = field(default_factory=lambda: defaultdict(list))  # finish_reason of every chunk
    roles: dict[int, list] = field(default_factory=lambda: defaultdict(list))
    ids: set = field(default_factory=set)
    usage: object = None
    chunks_after_usage: int = 0


def collect(stream, *, chat: bool = False) -> Streamed:
    out = Streamed()
    for chunk in stream:
        out.ids.add(chunk.id)
        if out.usage is not None:
            out.chunks_after_usage += 1
        if chunk.usage is not None:
            assert chunk.choices == []
            out.usage = chunk.usage
        for c in chunk.choices:
            if chat:
                out.text[c.index] += c.delta.content or ""
                if c.delta.role:
                    out.roles[c.index].append(c.delta.role)
            else:
                out.text[c.index] += c.text
            out.finish[c.index].append(c.finish_reason)
    return out


# ---- models --------------------------------------------------------------------------------------------
def test_models_lists_both_runs_with_their_chat_flag(server, ref):
    models = client(server).models.list().data
    assert [(m.id, m.chat, m.context_length, m.owned_by) for m in models] == [
        ("tiny", False, ref["tiny"].context_length, "goushi"), ("tiny-chat", True, ref["tiny"].context_length, "goushi")]
    one = client(server).models.retrieve("tiny-chat")
    assert (one.id, one.chat) == ("tiny-chat", True)
    with pytest.raises(openai.NotFoundError) as e:
        client(server).models.retrieve("nope")
    assert e.value.code == "model_not_found"


# ---- completions ------------------------------------------------------------------------------------------
def test_a_seeded_completion_equals_engine_generate(server, ref):
    r = client(server).completions.create(model="tiny", prompt="今天我终于", max_tokens=20, temperature=0.9, top_p=0.95,
                                          seed=7)
    g = ref["tiny"].generate("今天我终于", cfg(temperature=0.9, top_p=0.95, max_tokens=20, seed=7))[0]
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert [(c.index, c.text, c.finish_reason) for c in r.choices] == [(0, g.text, finish(g.finish_reason))]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        g.prompt_tokens, g.completion_tokens, g.prompt_tokens + g.completion_tokens)
    assert g.prompt_tokens == ref["tiny"].count_prompt_tokens("今天我终于") == 6  # 5 characters + <|endoftext|>
    again = client(server).completions.create(model="tiny", prompt="今天我终于", max_tokens=20, temperature=0.9,
                                              top_p=0.95, seed=7)
    assert again.choices[0].text == g.text and again.id != r.id


def test_a_greedy_completion_equals_engine_generate(server, ref):
    r = client(server).completions.create(model="tiny", prompt="春眠", max_tokens=24, temperature=0)
    g = ref["tiny"].generate("春眠", cfg(temperature=0, max_tokens=24))[0]
    assert (r.choices[0].text, r.choices[0].finish_reason) == (g.text, finish(g.finish_reason))


def test_two_prompts_with_n_2_are_prompt_major_with_summed_usage(server, ref):
    prompts = ["今天我终于", "春眠"]
    r = client(server).completions.create(model="tiny", prompt=prompts, n=2, max_tokens=20, seed=3)
    gens = ref["tiny"].generate(prompts, cfg(n=2, max_tokens=20, seed=3))
    assert [g.prompt for g in gens] == [prompts[0], prompts[0], prompts[1], prompts[1]]  # prompt-major
    assert [(c.index, c.text, c.finish_reason) for c in r.choices] == [
        (i, g.text, finish(g.finish_reason)) for i, g in enumerate(gens)]
    assert len({c.text for c in r.choices}) > 1  # seeds 3 and 4 differ
    assert r.usage.prompt_tokens == sum(ref["tiny"].count_prompt_tokens(p) for p in prompts) == 6 + 3
    assert r.usage.completion_tokens == sum(g.completion_tokens for g in gens)


def test_stop_strings_and_decoding_options_from_extra_body(server, ref):
    c = client(server)
    r = c.completions.create(model="tiny", prompt="今天", max_tokens=40, seed=2, stop=["的", "。"])
    g = ref["tiny"].generate("今天", cfg(max_tokens=40, seed=2, stop=["的", "。"]))[0]
    assert (r.choices[0].text, r.choices[0].finish_reason) == (g.text, finish(g.finish_reason))
    ours = {"top_k": 5, "repetition_penalty": 1.3, "min_p": 0.05, "no_repeat_ngram_size": 2}
    r = c.completions.create(model="tiny", prompt="今天", max_tokens=30, seed=9, n=2, extra_body=ours)
    gens = ref["tiny"].generate("今天", cfg(max_tokens=30, seed=9, n=2, **ours))
    assert [c.text for c in r.choices] == [g.text for g in gens]
    assert gens[0].text != ref["tiny"].generate("今天", cfg(max_tokens=30, seed=9))[0].text  # the options mattered
    beams = c.completions.create(model="tiny", prompt="春眠", max_tokens=12, n=2, extra_body={"num_beams": 3})
    best = ref["tiny"].generate("春眠", cfg(max_tokens=12, n=2, num_beams=3))
    assert [c.text for c in beams.choices] == [g.text for g in best]
    assert beams.usage.completion_tokens == sum(g.completion_tokens for g in best)


@pytest.mark.parametrize("prompts,n", [("今天我终于", 1), (["今天我终于", "春眠"], 2)], ids=["one", "two-prompts-n2"])
def test_a_streamed_completion_concatenates_to_the_non_streamed_one(server, ref, prompts, n):
    c = client(server)
    whole = c.completions.create(model="tiny", prompt=prompts, n=n, max_tokens=24, seed=5)
    s = collect(c.completions.create(model="tiny", prompt=prompts, n=n, max_tokens=24, seed=5, stream=True,
                                     stream_options={"include_usage": True}))
    gens = ref["tiny"].generate(prompts, cfg(n=n, max_tokens=24, seed=5))
    assert sorted(s.text) == list(range(len(gens))) == [ch.index for ch in whole.choices]  # every row, its own index
    assert [s.text[i] for i in range(len(gens))] == [ch.text for ch in whole.choices] == [g.text for g in gens]
    for i, g in enumerate(gens):  # only the last chunk of a choice has a finish_reason
        assert s.finish[i][-1] == finish(g.finish_reason) and set(s.finish[i][:-1]) <= {None}
    assert len(s.ids) == 1 and s.ids.pop().startswith("cmpl-")
    assert s.usage is not None and s.chunks_after_usage == 0  # the usage chunk comes last
    assert s.usage.model_dump() == whole.usage.model_dump()
    plain = collect(c.completions.create(model="tiny", prompt=prompts, n=n, max_tokens=24, seed=5, stream=True))
    assert plain.usage is None and dict(plain.text) == dict(s.text)


# ---- chat ---------------------------------------------------------------------------------------------------
def test_chat_equals_engine_chat_and_never_shows_the_markers(server, ref):
    r = client(server).chat.completions.create(model="tiny-chat", messages=CHAT, n=4, max_tokens=40, seed=1)
    gens = ref["tiny-chat"].chat(CHAT, cfg(n=4, max_tokens=40, seed=1))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in r.choices] == [
        (i, "assistant", g.text, finish(g.finish_reason)) for i, g in enumerate(gens)]
    assert "stop" in {g.finish_reason for g in gens}  # at least one answer ran into a turn marker, which was cut
    assert not any("<|im_" in c.message.content for c in r.choices)
    assert r.usage.prompt_tokens == gens[0].prompt_tokens and r.usage.completion_tokens == sum(
        g.completion_tokens for g in gens)
    # developer is system under OpenAI's newer name; max_completion_tokens is max_tokens under its newer name
    dev = [{"role": "developer", "content": CHAT[0]["content"]}, CHAT[1]]
    r = client(server).chat.completions.create(model="tiny-chat", messages=dev, max_completion_tokens=12, seed=4)
    assert r.choices[0].message.content == ref["tiny-chat"].chat(CHAT, cfg(max_tokens=12, seed=4))[0].text


def test_streamed_chat_with_n_3_equals_engine_chat(server, ref):
    s = collect(client(server).chat.completions.create(
        model="tiny-chat", messages=CHAT, n=3, max_tokens=40, seed=11, stream=True,
        stream_options={"include_usage": True}), chat=True)
    gens = ref["tiny-chat"].chat(CHAT, cfg(n=3, max_tokens=40, seed=11))
    assert sorted(s.text) == [0, 1, 2] and [s.text[i] for i in range(3)] == [g.text for g in gens]
    assert all(s.roles[i] == ["assistant"] for i in range(3))  # the role comes once, in a choice's first chunk
    assert [s.finish[i][-1] for i in range(3)] == [finish(g.finish_reason) for g in gens]
    assert not any("<|im_" in t for t in s.text.values())
    assert len(s.ids) == 1 and next(iter(s.ids)).startswith("chatcmpl-")
    assert (s.usage.prompt_tokens, s.usage.completion_tokens) == (gens[0].prompt_tokens,
                                                                  sum(g.completion_tokens for g in gens))


# ---- bad requests -----------------------------------------------------------------------------------------
OK = {"model": "tiny", "prompt": "今天", "max_tokens": 4}
OK_CHAT = {"model": "tiny-chat", "messages": CHAT, "max_tokens": 4}


def send(method: str, url: str, kwargs: dict) -> httpx.Response:
    """kwargs for httpx, where {"chunked": N} is a body of N bytes sent without a Content-Length."""
    kwargs = dict(kwargs)
    if "chunked" in kwargs:
        total = kwargs.pop("chunked")
        kwargs["content"] = (b" " * 1000 for _ in range(total // 1000))
    return httpx.request(method, url, timeout=30, **kwargs)


BAD = [  # id, method, path, request kwargs, status, code, param[, marks]
    ("malformed-json", "POST", "/v1/completions", {"content": b'{"model": "tiny", "prompt": "x",'}, 400,
     "invalid_json", None),
    ("not-an-object", "POST", "/v1/completions", {"json": ["tiny", "x"]}, 400, "invalid_json", None),
    ("empty-body", "POST", "/v1/completions", {"content": b""}, 400, "invalid_json", None),
    ("not-utf8", "POST", "/v1/completions", {"content": b'{"model": "\xff"}'}, 400, "invalid_json", None),
    ("n-as-a-word", "POST", "/v1/completions", {"json": {**OK, "n": "two"}}, 400, "invalid_value", "n"),
    ("prompt-of-numbers", "POST", "/v1/completions", {"json": {**OK, "prompt": 5}}, 400, "invalid_value", "prompt"),
    ("stop-a-number", "POST", "/v1/completions", {"json": {**OK, "stop": 5}}, 400, "invalid_value", "stop"),
    ("content-a-number", "POST", "/v1/chat/completions",
     {"json": {**OK_CHAT, "messages": [{"role": "user", "content": 5}]}}, 400, "invalid_value", "messages.0.content"),
    ("stream-as-a-list", "POST", "/v1/completions", {"json": {**OK, "stream": [1]}}, 400, "invalid_value", "stream"),
    ("unknown-field", "POST", "/v1/completions", {"json": {**OK, "temprature": 0.5}}, 400, "invalid_value",
     "temprature"),
    ("no-model", "POST", "/v1/completions", {"json": {"prompt": "x"}}, 400, "invalid_value", "model"),
    ("unknown-model", "POST", "/v1/completions", {"json": {**OK, "model": "gpt-4o"}}, 404, "model_not_found", "model"),
    ("negative-max-tokens", "POST", "/v1/completions", {"json": {**OK, "max_tokens": -1}}, 400, "invalid_value",
     "max_tokens"),
    ("zero-max-tokens", "POST", "/v1/completions", {"json": {**OK, "max_tokens": 0}}, 400, "invalid_value",
     "max_tokens"),
    ("max-tokens-over-the-limit", "POST", "/v1/completions", {"json": {**OK, "max_tokens": LIMITS.max_tokens + 1}},
     400, "invalid_value", "max_tokens"),
    ("temperature-5", "POST", "/v1/completions", {"json": {**OK, "temperature": 5}}, 400, "invalid_value",
     "temperature"),
    ("top-p-0", "POST", "/v1/completions", {"json": {**OK, "top_p": 0}}, 400, "invalid_value", "top_p"),
    ("n-over-max-n", "POST", "/v1/completions", {"json": {**OK, "n": LIMITS.max_n + 1}}, 400, "invalid_value", "n"),
    ("n-0", "POST", "/v1/completions", {"json": {**OK, "n": 0}}, 400, "invalid_value", "n"),
    ("negative-seed", "POST", "/v1/completions", {"json": {**OK, "seed": -1}}, 400, "invalid_value", "seed"),
    ("seed-out-of-range", "POST", "/v1/completions", {"json": {**OK, "seed": SEED_LIMIT}}, 400, "invalid_value", "seed"),
    ("five-stops", "POST", "/v1/completions", {"json": {**OK, "stop": list("abcde")}}, 400, "invalid_value", "stop"),
    ("more-choices-than-beams", "POST", "/v1/completions", {"json": {**OK, "n": 3, "num_beams": 2}}, 400,
     "invalid_value", "n"),
    ("presence-penalty", "POST", "/v1/completions", {"json": {**OK, "presence_penalty": 0.5}}, 400,
     "unsupported_parameter", "presence_penalty"),
    ("logprobs", "POST", "/v1/completions", {"json": {**OK, "logprobs": 2}}, 400, "unsupported_parameter",
     "logprobs"),
    ("echo", "POST", "/v1/completions", {"json": {**OK, "echo": True}}, 400, "unsupported_parameter", "echo"),
    ("too-many-prompts", "POST", "/v1/completions", {"json": {**OK, "prompt": ["x"] * (LIMITS.max_prompts + 1)}},
     400, "invalid_value", "prompt"),
    ("prompt-too-long", "POST", "/v1/completions", {"json": {**OK, "prompt": "字" * (LIMITS.max_prompt_chars + 1)}},
     400, "invalid_value", "prompt"),
    ("oversized-body", "POST", "/v1/completions", {"json": {**OK, "prompt": "a" * LIMITS.max_body_bytes}}, 413,
     "request_too_large", None),
    ("oversized-chunked-body", "POST", "/v1/completions", {"chunked": LIMITS.max_body_bytes + 5000}, 413,
     "request_too_large", None),
    ("chat-to-a-non-chat-run", "POST", "/v1/chat/completions", {"json": {**OK_CHAT, "model": "tiny"}}, 400,
     "model_not_chat", "model"),
    ("chat-to-an-unknown-model", "POST", "/v1/chat/completions", {"json": {**OK_CHAT, "model": "nope"}}, 404,
     "model_not_found", "model"),
    ("chat-without-messages", "POST", "/v1/chat/completions", {"json": {**OK_CHAT, "messages": []}}, 400,
     "invalid_value", "messages"),
    ("chat-with-a-robot", "POST", "/v1/chat/completions",
     {"json": {**OK_CHAT, "messages": [{"role": "robot", "content": "hi"}]}}, 400, "invalid_value", "messages.0.role"),
    ("chat-with-a-marker", "POST", "/v1/chat/completions",
     {"json": {**OK_CHAT, "messages": [{"role": "user", "content": "hi<|im_end|>"}]}}, 400, "invalid_value",
     "messages"),
    ("chat-frequency-penalty", "POST", "/v1/chat/completions", {"json": {**OK_CHAT, "frequency_penalty": 1}}, 400,
     "unsupported_parameter", "frequency_penalty"),
    ("unknown-route", "POST", "/v1/embeddings", {"json": {"model": "tiny", "input": "x"}}, 404, "not_found", None),
    ("unknown-page", "GET", "/nothing/here", {}, 404, "not_found", None),
    ("wrong-method", "GET", "/v1/completions", {}, 405, "method_not_allowed", None),
]


@pytest.mark.parametrize("method,path,kwargs,status,code,param",
                         [pytest.param(*b[1:7], id=b[0], marks=b[7:]) for b in BAD])
def test_a_bad_request_is_answered_in_openai_error_shape(server, method, path, kwargs, status, code, param):
    r = send(method, server + path, kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and len(err["message"]) > 5 and "\n" not in err["message"]
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error"), err
    if code == "invalid_value" and param:
        assert err["message"].startswith(param.split(".")[0])  # the message names the field
    if param == "temprature":
        assert "unknown field" in err["message"]


def test_the_client_raises_openai_errors_and_the_server_keeps_serving(server, ref):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no-such-run", prompt="x", max_tokens=2)
    assert (e.value.status_code, e.value.code, e.value.param) == (404, "model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", temperature=5)
    assert (e.value.code, e.value.param) == ("invalid_value", "temperature")
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=CHAT)
    assert e.value.code == "model_not_chat" and "not chat" in e.value.message
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt="x", stream=True, max_tokens=-3)  # a 400 before the stream starts
    for _, method, path, kwargs, *_ in BAD:  # every bad request once more, then an ordinary one
        assert send(method, server + path, kwargs).status_code >= 400
    r = c.completions.create(model="tiny", prompt="今天", max_tokens=10, seed=1)
    assert r.choices[0].text == ref["tiny"].generate("今天", cfg(max_tokens=10, seed=1))[0].text
    assert httpx.get(server + "/health").json() == {"status": "ok", "models": ["tiny", "tiny-chat"], "waiting": 0}


# ---- API keys ---------------------------------------------------------------------------------------------
def test_an_api_key_is_required_on_v1_but_not_on_health(keyed, ref):
    for path in ("/v1/models", "/v1/completions", "/v1/nowhere"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer s3cret-key-and-more"}):
            r = httpx.post(keyed + path, json=OK, headers=headers) if path == "/v1/completions" else httpx.get(
                keyed + path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as e:
        client(keyed, "wrong").completions.create(model="tiny", prompt="今天", max_tokens=4)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert httpx.get(keyed + "/health").json()["status"] == "ok"  # no key needed
    good = client(keyed, "s3cret-key")
    assert [m.id for m in good.models.list().data] == ["tiny"]
    r = good.completions.create(model="tiny", prompt="今天", max_tokens=8, seed=2)
    assert r.choices[0].text == ref["tiny"].generate("今天", cfg(max_tokens=8, seed=2))[0].text
    s = collect(good.completions.create(model="tiny", prompt="今天", max_tokens=8, seed=2, stream=True))
    assert s.text[0] == r.choices[0].text


# ---- concurrency --------------------------------------------------------------------------------------------
def test_concurrent_seeded_streams_each_get_exactly_their_own_text(server, ref):
    """8 clients at once (the server runs 2 at a time, the rest queue): each stream holds exactly its reference."""
    jobs = []
    for k in range(8):
        chat = k % 4 == 3
        prompt = ["今天我终于", "春眠", "好评！", "", "床前"][k % 5]
        jobs.append(dict(chat=chat, prompt=prompt, seed=100 + k, n=1 + k % 2, max_tokens=40 + k))
    for j in jobs:
        sc = cfg(n=j["n"], max_tokens=j["max_tokens"], seed=j["seed"])
        gens = ref["tiny-chat"].chat([{"role": "user", "content": j["prompt"] or "你好"}], sc) if j["chat"] else \
            ref["tiny"].generate(j["prompt"], sc)
        j["want"] = [g.text for g in gens]
    assert len({t for j in jobs for t in j["want"]}) == sum(j["n"] for j in jobs)  # all different: mixing would show
    barrier = threading.Barrier(len(jobs))
    results: dict[int, object] = {}

    def run(k: int, j: dict) -> None:
        c = client(server)
        try:
            barrier.wait(timeout=30)
            if j["chat"]:
                stream = c.chat.completions.create(model="tiny-chat", n=j["n"], max_tokens=j["max_tokens"],
                                                   seed=j["seed"], stream=True,
                                                   messages=[{"role": "user", "content": j["prompt"] or "你好"}])
            else:
                stream = c.completions.create(model="tiny", prompt=j["prompt"], n=j["n"], max_tokens=j["max_tokens"],
                                              seed=j["seed"], stream=True)
            results[k] = collect(stream, chat=j["chat"])
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[k] = e

    threads = [threading.Thread(target=run, args=(k, j)) for k, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for k, j in enumerate(jobs):
        got = results.get(k)
        assert isinstance(got, Streamed), f"client {k}: {got!r}"
        assert [got.text[i] for i in range(j["n"])] == j["want"] and sorted(got.text) == list(range(j["n"])), k
    assert len({next(iter(r.ids)) for r in results.values()}) == len(jobs)  # one id per request
    assert httpx.get(server + "/health").json()["waiting"] == 0


# ---- disconnects and the queue (a paced, recording engine) ---------------------------------------------------
@dataclass
class Call:
    """One generation the server asked the engine for, as the engine saw it."""

    events: int = 0
    finished: bool = False  # the last event (a finish reason) was drawn
    started: threading.Event = field(default_factory=threading.Event)  # a worker began drawing events
    closed: threading.Event = field(default_factory=threading.Event)  # the generator was closed or ran out
    abort: threading.Event = field(default_factory=threading.Event)  # set by a test: end now (cleanup)


class RecordingEngine(Engine):
    """Engine.stream, recorded per call and paced (one event every PACE s), so a test sees exactly how far the
    server let a generation run."""

    def __init__(self, base: Engine):
        super().__init__(base.model, base.tokenizer, record=base.record, batch_invariant=base.batch_invariant)
        self.calls: list[Call] = []

    def stream(self, prompts, cfg=None):
        inner = super().stream(prompts, cfg)
        call = Call()
        self.calls.append(call)
        return self._recorded(inner, call)

    @staticmethod
    def _recorded(inner, call: Call):
        call.started.set()
        try:
            for ev in inner:
                call.events += 1
                call.finished = ev.finish_reason is not None
                yield ev
                if call.abort.wait(PACE):
                    return
        finally:
            inner.close()
            call.closed.set()


@pytest.fixture(scope="module")
def paced_server(runs):
    # --max-batch 1: each request an engine call; batch_invariant like `ref`, whose texts its answers are held to
    engine = RecordingEngine(Engine.load(runs["tiny"], device="cpu", batch_invariant=True))
    limits = Limits(max_tokens=PACED_MAX, concurrency=1, max_queue=1, max_batch=1)
    for url in serving({"slow": engine}, limits=limits):
        yield url, engine


@pytest.fixture()
def paced(paced_server):
    """The paced server, left idle after the test whatever happened in it."""
    url, engine = paced_server
    before = len(engine.calls)
    yield url, engine, before
    for call in engine.calls[before:]:
        call.abort.set()
    for call in engine.calls[before:]:  # (a call refused with 503 was never started)
        assert not call.started.is_set() or call.closed.wait(15)
    deadline = time.monotonic() + 10
    while httpx.get(url + "/health").json()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.05)


# min_tokens = max_tokens: <|endoftext|> is suppressed throughout, so a generation never ends early
LONG = {"model": "slow", "prompt": "今天", "max_tokens": PACED_MAX, "temperature": 1.0,
        "extra_body": {"min_tokens": PACED_MAX}}
LONG_JSON = {k: v for k, v in LONG.items() if k != "extra_body"} | LONG["extra_body"]


def long_reference(ref: dict[str, Engine], seed: int, tokens: int = 48) -> str:
    """The first `tokens` tokens' text of a LONG request with this seed (eos is suppressed there as in LONG)."""
    return ref["tiny"].generate("今天", cfg(max_tokens=tokens, min_tokens=tokens, seed=seed))[0].text


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_a_client_that_disconnects_mid_stream_stops_its_generation(paced, ref):
    url, engine, before = paced
    want = long_reference(ref, 3)
    stream = client(url).completions.create(**LONG, seed=3, stream=True)
    chunks = iter(stream)
    first = "".join(next(chunks).choices[0].text for _ in range(3))
    stream.close()  # what a client that gives up does: the connection closes
    assert first == want[: len(first)]
    call = engine.calls[before]
    assert call.closed.wait(5), f"the generation is still running after the client left ({call.events} events)"
    assert not call.finished and call.events < 40  # stopped at about where the client left, not at PACED_MAX
    # and the server serves the next one at once
    r = client(url).completions.create(model="slow", prompt="春眠", max_tokens=3, seed=1)
    assert r.choices[0].text == ref["tiny"].generate("春眠", cfg(max_tokens=3, seed=1))[0].text


def test_a_client_that_disconnects_before_a_non_streamed_answer_stops_its_generation(paced):
    url, engine, before = paced
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json={**LONG_JSON, "seed": 4}, timeout=httpx.Timeout(10, read=0.5))
    call = engine.calls[before]
    assert call.started.is_set()
    assert call.closed.wait(POLL_SECONDS * 4 + 2), f"still generating after the client left ({call.events} events)"
    assert not call.finished


def test_a_queued_request_whose_client_left_never_runs(paced):
    url, engine, before = paced
    holder = client(url).completions.create(**LONG, seed=5, stream=True)  # takes the one slot
    next(iter(holder))  # streaming: it holds the slot from now on
    with pytest.raises(httpx.ReadTimeout):  # waits for the slot, then its client gives up
        httpx.post(url + "/v1/completions", json={**LONG_JSON, "seed": 6}, timeout=httpx.Timeout(10, read=0.5))
    assert len(engine.calls) == before + 2 and not engine.calls[before + 1].started.is_set()
    holder.close()
    assert engine.calls[before].closed.wait(5)
    queued = engine.calls[before + 1]
    assert wait_for(lambda: httpx.get(url + "/health").json()["waiting"] == 0)
    time.sleep(POLL_SECONDS * 4)
    assert not queued.started.is_set(), "the abandoned request was generated for nobody"


def test_a_full_queue_answers_503_and_the_queue_drains(paced, ref):
    url, engine, before = paced
    want = long_reference(ref, 8)
    holder = client(url).completions.create(**LONG, seed=7, stream=True)  # the one slot
    next(iter(holder))
    waiter = client(url).completions.create(**LONG, seed=8, stream=True)  # the one place in the queue
    assert wait_for(lambda: httpx.get(url + "/health").json()["waiting"] == 1)
    for stream in (False, True):  # refused with a status code, before any stream begins
        with pytest.raises(openai.InternalServerError) as e:
            client(url).completions.create(model="slow", prompt="x", max_tokens=2, stream=stream)
        assert (e.value.status_code, e.value.code) == (503, "server_busy")
    assert len(engine.calls) == before + 4 and not engine.calls[before + 1].started.is_set()
    holder.close()  # the waiter gets the slot and streams its own text
    chunks = iter(waiter)
    got = "".join(next(chunks).choices[0].text for _ in range(4))
    waiter.close()
    assert got == want[: len(got)] and engine.calls[before + 1].started.is_set()
    assert engine.calls[before + 1].closed.wait(5)
    r = client(url).completions.create(model="slow", prompt="今天", max_tokens=2, seed=8)
    assert r.choices[0].text == ref["tiny"].generate("今天", cfg(max_tokens=2, seed=8))[0].text


async def post_and_leave(app, body: dict, *, leave_after: int, slow_write: float = 0.3) -> list[bytes]:
    """POST `body` to the ASGI app as uvicorn does, from a client that leaves while the app writes its
    `leave_after`-th body chunk: the write takes `slow_write` s (a full socket buffer; the app has its next chunk
    ready meanwhile), then the client is gone (receive says http.disconnect and later sends do nothing)."""
    raw = json.dumps(body).encode()
    gone, received, chunks = asyncio.Event(), False, []

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set():
            return
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if len(chunks) == leave_after:
                await asyncio.sleep(slow_write)
                gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    await app(scope, receive, send)
    return chunks


def test_a_client_that_leaves_during_a_slow_write_stops_its_generation(runs):
    engine = RecordingEngine(Engine.load(runs["tiny"], device="cpu"))
    app = build_app({"slow": engine}, limits=Limits(max_tokens=PACED_MAX, max_batch=1))

    async def scenario() -> bool:
        chunks = await post_and_leave(app, {**LONG_JSON, "seed": 1, "stream": True}, leave_after=3)
        assert len(chunks) == 3 and all(c.startswith(b"data: ") for c in chunks)
        # checked while the event loop still runs (asyncio.run's shutdown would close the generator itself)
        return await asyncio.to_thread(engine.calls[0].closed.wait, 2.0)

    try:
        stopped = asyncio.run(scenario())
        assert stopped, f"still generating 2 s after the client left ({engine.calls[0].events} events)"
        assert not engine.calls[0].finished
    finally:
        for call in engine.calls:
            call.abort.set()
            call.closed.wait(10)
        app.state.generations.close()


def test_a_streamed_chunk_is_one_line_whatever_the_text_holds():
    """Byte tokens can write U+0085, U+2028 or U+2029, where httpx's line reader (and so the openai client) cuts a
    line: a chunk escapes them, and still reads back as the same text."""
    text = "今天\x85好\u2028天气\u2029。\n\r\x0b\x1c"
    line = sse({"choices": [{"text": text}]})
    assert line.endswith("\n\n") and len(line[:-2].splitlines()) == 1
    assert json.loads(line.removeprefix("data: "))["choices"][0]["text"] == text


# ---- batched decoding (--max-batch > 1: the default) ----------------------------------------------------------
class PacedBatch(DecodeBatch):
    """DecodeBatch that records how many rows run at each step and how many tokens it made, pacing each step by
    `pace` s, so that requests overlap and a test can act in the middle of a generation."""

    pace = PACE
    most = 0
    tokens = 0
    live: list[DecodeBatch] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PacedBatch.live.append(self)

    def choose(self):
        PacedBatch.most = max(PacedBatch.most, len(self.running))
        self.decoded = getattr(self, "decoded", 0) + len(self.running)
        events = super().choose()
        PacedBatch.tokens += len(events)
        time.sleep(self.pace)
        return events


@pytest.fixture()
def paced_batches(monkeypatch):
    """Every scheduler started from now on decodes with a PacedBatch."""
    monkeypatch.setattr(scheduler_module, "DecodeBatch", PacedBatch)
    monkeypatch.setattr(PacedBatch, "most", 0)
    monkeypatch.setattr(PacedBatch, "tokens", 0)
    monkeypatch.setattr(PacedBatch, "live", [])
    return PacedBatch


def batched_app(runs, **limits):
    engines = {name: Engine.load(path, device="cpu") for name, path in runs.items()}
    return build_app(engines, limits=dataclasses.replace(LIMITS, **limits))


def test_a_batched_server_decodes_requests_together_and_each_gets_its_own_text(runs, ref, paced_batches):
    """8 clients at once with every decoding option (beam search too), 4 rows per batch: the requests share
    decode steps, and each answer equals what the engine gives that request alone."""
    paced_batches.pace = 0.002
    options = [dict(temperature=0.0), dict(temperature=1.0, top_p=0.9), dict(temperature=1.2, extra={"top_k": 5}),
               dict(temperature=1.0, extra={"repetition_penalty": 1.4, "no_repeat_ngram_size": 2}),
               dict(temperature=1.0, stop=["。"], extra={"min_tokens": 3}), dict(temperature=1.0, n=2),
               dict(temperature=1.0, extra={"min_p": 0.2}), dict(temperature=0.0, n=2, extra={"num_beams": 3})]
    jobs = []
    for k, o in enumerate(options):
        extra = o.get("extra", {})
        sc = cfg(temperature=o["temperature"], top_p=o.get("top_p", 1.0), n=o.get("n", 1), max_tokens=24 + k,
                 seed=300 + k, stop=o.get("stop"), **extra)
        prompt = ["今天我终于", "春眠", "好评！", "", "床前"][k % 5]
        jobs.append((k, o, prompt, sc, [g.text for g in ref["tiny"].generate(prompt, sc)]))
    app = batched_app(runs, max_batch=4, max_queue=16)
    bg = start_background(app)
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(jobs))

    def run(k, o, prompt, sc):
        try:
            barrier.wait(timeout=30)
            r = client(bg.url).completions.create(
                model="tiny", prompt=prompt, n=sc.num_samples, max_tokens=sc.max_new_tokens, seed=sc.seed,
                temperature=o["temperature"], top_p=o.get("top_p", 1.0), stop=o.get("stop"),
                extra_body=o.get("extra") or None, stream=k % 2 == 0)
            results[k] = collect(r).text if k % 2 == 0 else {c.index: c.text for c in r.choices}
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[k] = e

    try:
        threads = [threading.Thread(target=run, args=(k, o, p, sc)) for k, o, p, sc, _ in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for k, _, _, sc, want in jobs:
            got = results.get(k)
            assert isinstance(got, dict), f"request {k}: {got!r}"
            assert [got[i] for i in range(sc.num_samples)] == want, k
        assert 1 < paced_batches.most <= 4  # requests shared steps; never more rows than --max-batch
        # a request's place is given back once its rows are out of the batch, just after its last event
        assert wait_for(lambda: app.state.generations.running == 0)
        assert httpx.get(bg.url + "/health").json()["waiting"] == 0
    finally:
        bg.stop()
        app.state.generations.close()


def test_two_decode_threads_share_the_requests_and_each_gets_its_own_text(runs, ref, paced_batches):
    """--decode-threads 2: the 6 slots split 3 and 3 between two decode threads, new requests go to the one with
    fewer rows, both decode, and every answer still equals the engine's for that request alone."""
    paced_batches.pace = 0.002
    app = batched_app(runs, max_batch=6, max_queue=16, decode_threads=2)
    scheduler = app.state.generations.schedulers["tiny"]
    assert [lane.max_batch for lane in scheduler.lanes] == [3, 3]
    bg = start_background(app)
    jobs = [(k, cfg(temperature=[0.0, 1.0, 1.3][k % 3], n=1 + k % 2, max_tokens=20 + k, seed=40 + k,
                    top_k=[0, 0, 7][k % 3]), ["春眠", "今天我终于", "好评！"][k % 3]) for k in range(6)]
    want = {k: [g.text for g in ref["tiny"].generate(p, sc)] for k, sc, p in jobs}
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(jobs))

    def run(k, sc, prompt):
        try:
            barrier.wait(timeout=30)
            r = client(bg.url).completions.create(
                model="tiny", prompt=prompt, n=sc.num_samples, max_tokens=sc.max_new_tokens, seed=sc.seed,
                temperature=sc.temperature if sc.strategy == "sample" else 0.0,
                extra_body={"top_k": sc.top_k} if sc.top_k else None, stream=k % 2 == 1)
            results[k] = collect(r).text if k % 2 == 1 else {c.index: c.text for c in r.choices}
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[k] = e

    try:
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for k, sc, _ in jobs:
            got = results.get(k)
            assert isinstance(got, dict), f"request {k}: {got!r}"
            assert [got[i] for i in range(sc.num_samples)] == want[k], k
        batches = paced_batches.live
        assert len(batches) == 2 and all(b.size == 3 and getattr(b, "decoded", 0) > 0 for b in batches)
        assert wait_for(lambda: app.state.generations.running == 0 and scheduler.rows == [0, 0])
    finally:
        bg.stop()
        app.state.generations.close()


def test_decode_threads_default_to_the_cores_for_a_big_model_on_a_cpu_else_one(ref, monkeypatch):
    from goushi.serve import app as app_module

    engine = ref["tiny"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert decode_threads(Limits(), engine) == 1  # a tiny model: its Python, under one GIL, is most of a step
    assert decode_threads(Limits(decode_threads=5), engine) == 5
    monkeypatch.setattr(app_module, "LANES_FROM_PARAMS", 1000)  # as if it were big
    assert decode_threads(Limits(), engine) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert decode_threads(Limits(), engine) == app_module.MAX_AUTO_LANES
    monkeypatch.setattr(engine, "device", torch.device("cuda", 0))
    assert decode_threads(Limits(), engine) == 1
    assert decode_threads(Limits(decode_threads=2), engine) == 2


def test_a_scheduler_never_gives_a_lane_fewer_than_2_slots(ref):
    assert [lane.max_batch for lane in scheduler_module.Scheduler(ref["tiny"], 5, lanes=8).lanes] == [3, 3]
    assert [lane.max_batch for lane in scheduler_module.Scheduler(ref["tiny"], 32, lanes=3).lanes] == [11, 11, 11]
    with pytest.raises(ValueError, match="max_batch 1"):
        scheduler_module.Scheduler(ref["tiny"], 1)


def test_a_batched_client_that_disconnects_frees_its_rows(runs, ref, paced_batches):
    app = batched_app(runs, max_tokens=PACED_MAX)
    bg = start_background(app)
    try:
        other = client(bg.url).completions.create(model="tiny", prompt="今天", max_tokens=20, seed=3, stream=True)
        leaving = client(bg.url).completions.create(**{**LONG, "model": "tiny"}, seed=1, stream=True)
        chunks = iter(leaving)
        got = "".join(next(chunks).choices[0].text for _ in range(3))
        assert long_reference(ref, 1).startswith(got)
        leaving.close()
        batch = paced_batches.live[0]
        assert wait_for(lambda: app.state.generations.running <= 1 and len(batch.running) <= 1, POLL_SECONDS * 4 + 2)
        assert collect(other).text[0] == ref["tiny"].generate("今天", cfg(max_tokens=20, seed=3))[0].text
        assert wait_for(lambda: app.state.generations.running == 0 and not batch.busy)
        assert paced_batches.tokens < PACED_MAX  # the long request stopped when its client left
    finally:
        bg.stop()
        app.state.generations.close()


def test_a_batched_server_queues_beyond_max_batch_and_answers_503_beyond_the_queue(runs, ref, paced_batches):
    app = batched_app(runs, max_tokens=PACED_MAX, max_batch=2, max_queue=1)
    bg = start_background(app)
    try:
        holders = [client(bg.url).completions.create(**{**LONG, "model": "tiny"}, seed=s, stream=True) for s in (1, 2)]
        for h in holders:
            next(iter(h))
        waiter = client(bg.url).completions.create(**{**LONG, "model": "tiny"}, seed=8, stream=True)
        assert wait_for(lambda: httpx.get(bg.url + "/health").json()["waiting"] == 1)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as e:
                client(bg.url).completions.create(model="tiny", prompt="x", max_tokens=2, stream=stream)
            assert (e.value.status_code, e.value.code) == (503, "server_busy")
        assert paced_batches.most <= 2
        holders[0].close()  # the waiter gets the freed place and streams its own text
        chunks = iter(waiter)
        got = "".join(next(chunks).choices[0].text for _ in range(4))
        assert long_reference(ref, 8).startswith(got) and got
        waiter.close()
        holders[1].close()
        assert wait_for(lambda: app.state.generations.running == 0 and not paced_batches.live[0].busy)
    finally:
        bg.stop()
        app.state.generations.close()


# ---- the command -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_goushi_serve_answers_the_openai_client_and_stops_gracefully_on_ctrl_c(runs, ref):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GOUSHI_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "goushi.cli", "serve", str(runs["tiny"]), str(runs["tiny-chat"]),
                             "--port", str(port), "--device", "cpu", "--max-tokens", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            # a test run started in the background inherits SIGINT ignored; a user's Ctrl-C is not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(url + "/health", timeout=1).status_code == 200
            return False

        assert wait_for(up, timeout=60), "goushi serve did not come up"
        c = client(url)
        assert [(m.id, m.chat) for m in c.models.list().data] == [("tiny", False), ("tiny-chat", True)]
        r = c.chat.completions.create(model="tiny-chat", messages=CHAT, max_tokens=16, seed=2)
        assert r.choices[0].message.content == ref["tiny-chat"].chat(CHAT, cfg(max_tokens=16, seed=2))[0].text
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="tiny", prompt="x", max_tokens=33)  # --max-tokens 32
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"goushi serve did not stop on SIGINT:\n{err}")
    # uvicorn shuts down gracefully, then re-raises the SIGINT: the CLI's usual Ctrl-C ending, exit 130
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert "Application shutdown complete" in err
    assert f"goushi serve: http://localhost:{port}/v1" in out and "loaded tiny-chat from" in out and "(chat," in out
    assert "Traceback" not in err and "ERROR" not in err, err


def run_main(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = main(["serve", *argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_goushi_serve_refuses_bad_arguments_in_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GOUSHI_API_KEY", raising=False)
    run = str(runs["tiny"])
    for argv, words in [((str(tmp_path / "missing"),), "no such run directory"),
                        ((run, "--api-key", ""), "--api-key is empty"),
                        ((run, "--api-key", "  "), "--api-key is empty"),
                        ((run, "--max-n", "0"), "--max-n 0"),
                        ((run, "--concurrency", "0"), "--concurrency 0"),
                        ((run, "--max-batch", "0"), "--max-batch 0"),
                        ((run, "--decode-threads", "-1"), "--decode-threads -1"),
                        ((run, run), "given twice")]:
        rc, err = run_main(capsys, *argv)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], (argv, err)
    with socket.socket() as busy:  # a port another program holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc, err = run_main(capsys, run, "--port", str(busy.getsockname()[1]), "--device", "cpu")
    assert rc == 2 and len(err) == 1 and "another program is using it" in err[0], err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_goushi_serve_refuses_a_port_out_of_range_in_one_line(runs, capsys, port):
    rc, err = run_main(capsys, str(runs["tiny"]), "--port", port, "--device", "cpu")
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: --port {port}"), err
