"""The OpenAI-compatible HTTP API over the engine (FastAPI): /v1/models, /v1/completions, /v1/chat/completions
(chat runs), server-sent-event streaming, /health.

With `limits.max_batch` > 1 (the default) the requests of a model are decoded together: their rows join one
running batch at token boundaries and leave as they finish (goushi.serve.scheduler), each with its own settings
and seed, and a seeded request answers the same as alone. At most `max_batch` requests run at once; beam search
runs per request (`concurrency` at a time). With max_batch 1 each request is one engine call (`Engine.stream` /
`Engine.stream_chat`) in a worker thread, at most `limits.concurrency` at once. Either way the others wait in a
queue of at most `limits.max_queue` (then 503), and a client that disconnects, streaming or not, stops its
generation at the next token. With an API key every /v1 request needs `Authorization: Bearer KEY`; /health
never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import goushi
from goushi.engine import Engine, SampleConfig, StreamEvent
from goushi.errors import GoushiError
from goushi.serve.limits import Limits
from goushi.serve.protocol import (
    FINISH,
    APIError,
    ChatRequest,
    CompletionRequest,
    new_id,
    now,
    usage,
    validation_error,
)
from goushi.serve.scheduler import Scheduler

log = logging.getLogger("goushi.serve")
POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there


@dataclass
class Batched:
    """A request for a model's Scheduler (its rows join the running batch) instead of an engine call of its own:
    what Engine.request / Engine.chat_request gave."""

    scheduler: Scheduler
    request: tuple


class Generations:
    """Runs generations, at most `capacity` at once (max_batch requests in batches, else `concurrency` engine
    calls in worker threads), and hands their events to the event loop as they come. Cancelling (client gone)
    stops a generation at its next token."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.capacity = limits.max_batch if limits.max_batch > 1 else limits.concurrency
        self.pool = ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="goushi-gen")
        self.schedulers: dict[str, Scheduler] = {}  # model id -> its batch (max_batch > 1)
        self.running = 0
        self.waiting = 0
        self.freed: asyncio.Event | None = None  # set whenever a generation ends; made in the event loop

    def _release(self) -> None:
        self.running -= 1
        if self.freed is not None:
            self.freed.set()

    async def events(self, start: Callable[[], Iterator[StreamEvent]] | Batched,
                     disconnected: Callable[[], Any]) -> AsyncIterator[list[StreamEvent]]:
        """The generation's events, a list at a time (those that arrived together), after its turn in the queue."""
        if self.waiting >= self.limits.max_queue:
            raise APIError(503, f"server busy: {self.waiting} requests are waiting; try again shortly",
                           type="server_error", code="server_busy")
        if self.freed is None:
            self.freed = asyncio.Event()
        self.waiting += 1
        try:
            # Waiting on a clock, not on a semaphore: a client that leaves the queue must never be served.
            while True:
                if self.running < self.capacity:
                    if await disconnected():  # it may have left since the last look, while a slot was freed
                        log.info("client went away while queued; nothing generated")
                        return
                    if self.running < self.capacity:  # still free after that await
                        break
                    continue
                self.freed.clear()
                try:
                    await asyncio.wait_for(self.freed.wait(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await disconnected():
                        log.info("client went away while queued; nothing generated")
                        return
        finally:
            self.waiting -= 1
        self.running += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if isinstance(start, Batched):
            try:
                ticket = start.scheduler.submit(start.request, lambda kind, value: queue.put_nowait((kind, value)),
                                                self._release)
            except BaseException:
                self._release()
                raise
            stop = functools.partial(start.scheduler.cancel, ticket)
        else:
            stop = self._start_thread(start, loop, queue)
        try:
            # The client is checked on a clock, also while tokens keep coming: a non-streamed answer has no
            # write that would fail when its client is gone.
            next_check = loop.time() + POLL_SECONDS
            while True:
                try:  # what has arrived already needs no timer (wait_for makes a task per call)
                    kind, value = queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        kind, value = await asyncio.wait_for(queue.get(), max(0.0, next_check - loop.time()))
                    except asyncio.TimeoutError:
                        kind, value = "tick", None
                if loop.time() >= next_check:
                    if await disconnected():
                        log.info("client went away; generation stopped")
                        return
                    next_check = loop.time() + POLL_SECONDS
                # Everything that has arrived goes out together: when the loop falls behind the decoding, a client
                # gets several tokens in one write instead of a write per token.
                ready: list[StreamEvent] = []
                while kind in ("event", "events"):
                    ready.extend(value if kind == "events" else [value])
                    try:
                        kind, value = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        kind, value = "tick", None
                if ready:
                    yield ready
                if kind == "done":
                    return
                if kind == "error":
                    raise value
        finally:
            stop()

    def _start_thread(self, start: Callable[[], Iterator[StreamEvent]], loop: asyncio.AbstractEventLoop,
                      queue: asyncio.Queue) -> Callable[[], None]:
        """Run the engine call in a worker thread; returns what stops it."""
        cancel = threading.Event()

        def work() -> None:
            try:
                events = start()
                try:
                    for ev in events:
                        loop.call_soon_threadsafe(queue.put_nowait, ("event", ev))
                        if cancel.is_set():
                            break
                finally:
                    events.close()  # stops the engine's generator where it is
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
            except BaseException as e:  # noqa: BLE001 - handed to the request, which answers it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                loop.call_soon_threadsafe(self._release)

        try:
            loop.run_in_executor(self.pool, work)
        except BaseException:
            self._release()
            raise
        return cancel.set

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class APIKeyCheck:
    """Every /v1 request needs `Authorization: Bearer KEY`. Plain ASGI on purpose: Starlette's
    @app.middleware("http") wraps the request so that `is_disconnected()` never sees the client leave."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            problem = None
            if scheme.lower() != "bearer" or not token.strip():
                problem = "missing API key: send the header Authorization: Bearer KEY"
            elif not secrets.compare_digest(token.strip().encode("latin-1"), self.key):
                problem = "incorrect API key"
            if problem:
                await error_response(APIError(401, problem, code="invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class EventStream(StreamingResponse):
    """A streamed answer whose body is closed however the response ends. When the client leaves while a
    chunk is being written, Starlette cancels the response inside send() and the body generator would stay
    suspended, generating on, until the garbage collector finalises it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined] - our body is an async generator


async def read_body(request: Request, model: type[BaseModel], limits: Limits) -> Any:
    """The request's JSON body as `model`, refusing oversized bodies before reading them whole."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
        raise APIError(413, f"request body of {int(size):,} bytes is over the limit of {limits.max_body_bytes:,}",
                       code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise APIError(413, f"request body is over the limit of {limits.max_body_bytes:,} bytes",
                           code="request_too_large")
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


# Characters JSON leaves as they are but Python's str.splitlines breaks a line at, as httpx's line reader (and so
# the `openai` client) does: a model writing byte tokens can produce them, and a chunk cut in two is no JSON.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


# Decode threads are threads of one process: their kernels run in parallel, the Python between them (scoring,
# events, the event loop's writes) takes turns on the GIL. Measured with bench/serve_load.py on a 2-core Xeon, 32
# clients, two lanes against one: a 12.3 M-parameter model 1.51x the tokens/s, a 3.6 M one 0.82x, a 0.8 M one 0.75x.
# So a model gets more than one lane from this size up (the crossover lies between the two middle points).
LANES_FROM_PARAMS = 8_000_000
MAX_AUTO_LANES = 4  # not measured past 2 cores: more threads would share one GIL


def decode_threads(limits: Limits, engine: Engine) -> int:
    """Lanes for this model's batch: limits.decode_threads, or by default one per core this process may use (at
    most MAX_AUTO_LANES) for a model of LANES_FROM_PARAMS parameters or more on a CPU, else one (a GPU: one batch
    keeps the device busiest)."""
    if limits.decode_threads > 0:
        return limits.decode_threads
    if engine.device.type != "cpu" or sum(p.numel() for p in engine.model.parameters()) < LANES_FROM_PARAMS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_AUTO_LANES))


def build_app(models: dict[str, Engine], *, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The API over `models` (model id -> loaded Engine)."""
    limits = limits or Limits()
    if not models:
        raise GoushiError("no models to serve; give at least one RUN_DIR")
    gens = Generations(limits)
    if limits.max_batch > 1:
        gens.schedulers = {name: Scheduler(engine, limits.max_batch, decode_threads(limits, engine))
                           for name, engine in models.items()}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        gens.close()

    app = FastAPI(title="Goushi GPT API", version=goushi.__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.generations = gens
    created = now()

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else "method_not_allowed" if e.status_code == 405 else None
        return error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _bug(_request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(APIError(500, f"internal error ({type(e).__name__}); the server keeps serving",
                                       type="server_error", code="internal_error"))

    if api_key is not None:
        app.add_middleware(APIKeyCheck, api_key=api_key)

    def engine_for(name: str) -> Engine:
        if name not in models:
            raise APIError(404, f"model {name!r} does not exist; GET /v1/models lists {', '.join(models)}",
                           param="model", code="model_not_found")
        return models[name]

    def model_card(name: str, engine: Engine) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "goushi",
                "context_length": engine.context_length, "chat": engine.is_chat}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models), "waiting": gens.waiting}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n, e) for n, e in models.items()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return model_card(name, engine_for(name))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = await read_body(request, CompletionRequest, limits)
        engine = engine_for(req.model)
        prompts = req.prompts(limits)
        cfg = req.sample_config(req.max_tokens, limits)
        try:  # options are checked now, before any work
            start = batched(req.model, engine.request(prompts, cfg)) if cfg.strategy != "beam" and gens.schedulers \
                else thread_call(engine.stream(prompts, cfg))
        except GoushiError as e:
            raise APIError(400, str(e), code="invalid_value") from None
        return await respond(request, req, start, kind="text_completion", prompts=len(prompts), cfg=cfg)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatRequest = await read_body(request, ChatRequest, limits)
        engine = engine_for(req.model)
        if not engine.is_chat:
            raise APIError(400, f"model {req.model!r} is not chat fine-tuned; use /v1/completions, or fine-tune it "
                           "with `goushi sft`", param="model", code="model_not_chat")
        messages = req.conversation(limits)
        cfg = req.sample_config(req.token_limit, limits)
        try:
            start = batched(req.model, engine.chat_request(messages, cfg)) if cfg.strategy != "beam" and \
                gens.schedulers else thread_call(engine.stream_chat(messages, cfg))
        except GoushiError as e:
            raise APIError(400, str(e), param="messages", code="invalid_value") from None
        return await respond(request, req, start, kind="chat.completion", prompts=1, cfg=cfg)

    def batched(name: str, request: tuple) -> Batched:
        return Batched(gens.schedulers[name], request)

    def thread_call(stream: Iterator[StreamEvent]) -> Callable[[], Iterator[StreamEvent]]:
        return lambda: stream

    async def respond(request: Request, req: Any, start: Callable[[], Iterator[StreamEvent]] | Batched, *, kind: str,
                      prompts: int, cfg: SampleConfig):
        rid = new_id("chatcmpl" if kind == "chat.completion" else "cmpl")
        if gens.waiting >= limits.max_queue:  # say so with a status code, before a stream has begun
            raise APIError(503, f"server busy: {gens.waiting} requests are waiting; try again shortly",
                           type="server_error", code="server_busy")
        events = gens.events(start, request.is_disconnected)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(stream_body(events, rid, kind, req.model, cfg, prompts, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        results = {}
        try:
            async with contextlib.aclosing(events):
                async for ready in events:
                    for ev in ready:
                        if ev.result is not None:
                            results[ev.index] = ev.result
        except GoushiError as e:
            raise APIError(400, str(e), code="invalid_value") from None
        gens_sorted = [results[i] for i in sorted(results)]
        prompt_tokens = sum(g.prompt_tokens for g in gens_sorted[:: cfg.num_samples])
        completion_tokens = sum(g.completion_tokens for g in gens_sorted)
        if kind == "chat.completion":
            choices = [{"index": i, "message": {"role": "assistant", "content": g.text},
                        "finish_reason": FINISH.get(g.finish_reason, "stop"), "logprobs": None}
                       for i, g in enumerate(gens_sorted)]
        else:
            choices = [{"index": i, "text": g.text, "finish_reason": FINISH.get(g.finish_reason, "stop"),
                        "logprobs": None} for i, g in enumerate(gens_sorted)]
        return {"id": rid, "object": kind, "created": now(), "model": req.model, "choices": choices,
                "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": f"goushi-{goushi.__version__}"}

    async def stream_body(events: AsyncIterator[list[StreamEvent]], rid: str, kind: str, model: str,
                          cfg: SampleConfig, prompts: int, include_usage: bool) -> AsyncIterator[str]:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
        base = {"id": rid, "object": chunk_kind, "created": now(), "model": model,
                "system_fingerprint": f"goushi-{goushi.__version__}"}
        started: set[int] = set()
        prompt_tokens: dict[int, int] = {}
        completion_tokens = 0
        try:
            async with contextlib.aclosing(events):  # closing it stops the generation (Generations.events)
                async for ready in events:
                    out = []  # one chunk per event, written together
                    for ev in ready:
                        prompt_tokens.setdefault(ev.index // cfg.num_samples, ev.prompt_tokens)
                        finish = FINISH.get(ev.finish_reason, "stop") if ev.finish_reason else None
                        if ev.result is not None:
                            completion_tokens += ev.result.completion_tokens
                        if kind == "chat.completion":
                            delta: dict[str, Any] = {}
                            if ev.index not in started:
                                delta["role"] = "assistant"
                                started.add(ev.index)
                            if ev.delta:
                                delta["content"] = ev.delta
                            if not delta and finish is None:
                                continue
                            choice = {"index": ev.index, "delta": delta, "finish_reason": finish, "logprobs": None}
                        else:
                            if not ev.delta and finish is None:
                                continue
                            choice = {"index": ev.index, "text": ev.delta, "finish_reason": finish,
                                      "logprobs": None}
                        out.append(sse({**base, "choices": [choice]}))
                    if out:
                        yield "".join(out)
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage(sum(prompt_tokens.values()), completion_tokens)})
        except (APIError, GoushiError) as e:
            err = e if isinstance(e, APIError) else APIError(400, str(e), code="invalid_value")
            yield sse(err.body())
        except Exception as e:  # noqa: BLE001 - the status line is sent already; say it in the stream
            log.exception("internal error while streaming")
            yield sse(APIError(500, f"internal error ({type(e).__name__})", type="server_error").body())
        yield "data: [DONE]\n\n"

    return app


__all__ = ["build_app", "Generations", "Batched", "POLL_SECONDS"]
