"""`goushi serve RUN_DIR [RUN_DIR ...]`: the OpenAI-compatible HTTP API (thin: loads engines, builds the app,
runs uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from goushi import rundir
from goushi.engine import Engine
from goushi.errors import GoushiError
from goushi.serve.limits import Limits

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

API_KEY_ENV = "GOUSHI_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    d = Limits()
    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP API over trained runs (completions, chat, streaming)",
        description="Serve RUN_DIRs over an OpenAI-compatible API: GET /v1/models, POST /v1/completions, POST "
        "/v1/chat/completions (chat runs from `goushi sft`), streaming by server-sent events, GET /health. A "
        "model's id is its run directory's name. Use it with the `openai` client: "
        "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='KEY or anything').")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to serve")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = the whole network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require `Authorization: Bearer KEY` on every /v1 request (default: ${API_KEY_ENV}, else none)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help="rows decoded together per model: requests join a running batch at token boundaries and "
                   "leave as they finish, and a seeded request answers the same as alone; 1 = each request its own "
                   f"engine call, --concurrency at a time (default: {d.max_batch}, the fastest measured by "
                   "bench/serve_load.py)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads, metavar="N",
                   help="batched: decode threads per model, each with its share of the --max-batch slots and one "
                   "core (default: one per CPU core, at most 4, for a model of 8M parameters or more on a CPU, "
                   "else one; measured in docs/serving.md)")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help="with --max-batch 1: generations running at once; more requests wait their turn. Batched: "
                   f"beam-search requests running at once (default: {d.concurrency})")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests allowed to wait; beyond it the server answers 503 (default: {d.max_queue})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"most tokens one choice may ask for (default: {d.max_tokens})")
    p.add_argument("--max-n", type=int, default=d.max_n, help=f"most choices per prompt, n (default: {d.max_n})")
    p.add_argument("--max-body", type=int, default=d.max_body_bytes, metavar="BYTES",
                   help=f"largest request body (default: {d.max_body_bytes:,})")
    p.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars,
                   help=f"longest prompt or conversation, in characters (default: {d.max_prompt_chars:,})")
    p.set_defaults(func=run)


def model_ids(run_dirs: list[str]) -> dict[str, Path]:
    """Each run's id: its directory name, with the parent's name in front where two would clash."""
    paths = [Path(d) for d in run_dirs]
    names = [p.resolve().name for p in paths]
    out: dict[str, Path] = {}
    for p, name in zip(paths, names, strict=True):
        key = name if names.count(name) == 1 else f"{p.resolve().parent.name}/{name}"
        if key in out:
            raise GoushiError(f"{p}: given twice")
        out[key] = p
    return out


def run(args: argparse.Namespace) -> int:
    # Imported here on purpose: FastAPI and uvicorn are the optional `serve` extra, and every other
    # subcommand must start without them.
    try:
        from goushi.serve.app import build_app, decode_threads
        from goushi.serve.server import serve_forever
    except ImportError as e:
        raise GoushiError(f"goushi serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'goushi[serve]'") from None
    for name in ("max_batch", "concurrency", "max_queue", "max_tokens", "max_n", "max_body", "max_prompt_chars"):
        if getattr(args, name) < 1:
            raise GoushiError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.decode_threads < 0:
        raise GoushiError(f"--decode-threads {args.decode_threads}: must be at least 1 (or 0: chosen by the model's size, see --help)")
    if not 1 <= args.port <= 65535:
        raise GoushiError(f"--port {args.port}: must be between 1 and 65535")
    limits = Limits(max_body_bytes=args.max_body, max_prompt_chars=args.max_prompt_chars, max_tokens=args.max_tokens,
                    max_n=args.max_n, concurrency=args.concurrency, max_queue=args.max_queue, max_batch=args.max_batch,
                    decode_threads=args.decode_threads)
    ids = model_ids(args.run_dirs)
    for path in ids.values():
        rundir.check_run_dir(path)  # every path named before seconds go into loading
    if args.api_key is not None and not args.api_key.strip():
        raise GoushiError("--api-key is empty; give a key, or leave it out to serve without one")
    if args.host not in LOCAL_HOSTS:
        print(f"warning: --host {args.host}: every model is reachable from other machines on the network"
              + ("" if args.api_key else " by anyone (no --api-key)") + "; use --host 127.0.0.1 to keep it on this one",
              file=sys.stderr)
    if args.max_batch > 1:
        # Every decode thread on one intra-op thread: on more, BLAS splits a matmul by its row count and a row's
        # floats would depend on how many rows run beside it; the cores go to parallel decode threads instead
        # (goushi.serve.scheduler).
        torch.set_num_threads(1)
    else:  # concurrent generations share the cores: more threads each than cores in all only adds contention
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.concurrency))
    engines = {}
    for name, path in ids.items():
        engines[name] = Engine.load(path, device=args.device)
        kind = "chat" if engines[name].is_chat else "completions only"
        batching = (f"; batched: {args.max_batch} rows on {decode_threads(limits, engines[name])} decode thread(s)"
                    if args.max_batch > 1 else "")
        print(f"loaded {name} from {path} ({kind}, context {engines[name].context_length}{batching})", flush=True)
    app = build_app(engines, api_key=args.api_key, limits=limits)
    shown = "localhost" if args.host in LOCAL_HOSTS else args.host
    print(f"goushi serve: http://{shown}:{args.port}/v1  (OpenAI-compatible; Ctrl-C to stop)"
          + ("; API key required" if args.api_key else ""), flush=True)
    serve_forever(app, args.host, args.port)
    return 0


__all__ = ["register", "run", "model_ids"]
