"""Load test of `goushi serve`: N concurrent streaming clients on loopback for T seconds; every answer is checked.

    .venv/bin/python bench/serve_load.py [RUN_DIR] [--clients 32] [--seconds 60] [--max-tokens 32] [--concurrency 2]

Starts the real command (`python -m goushi.cli serve RUN_DIR --port P --device cpu`) in a subprocess, computes the
reference text of a pool of seeded requests (prompt x seed) with Engine.generate on the same weights, then runs
--clients asyncio clients (httpx, one connection each) that send streaming /v1/completions requests from the pool
back to back until --seconds have passed. Each streamed text is compared with its reference: a different text is a
mismatch (outputs mixed between requests, or not reproducible). Prints the CPU, the command lines, requests, errors by
kind, mismatches, p50/p95 latency of whole requests and of the first token, aggregate completion tokens/s (the
server's own `usage` counts), and PASS/FAIL against the target: zero errors and zero mismatches.

RUN_DIR defaults to demo_out/run when it exists, else a tiny random model built in a temporary directory (--tiny
forces that), so the script runs anywhere. Bounded: at most MAX_CLIENTS clients and MAX_SECONDS seconds, a timeout on
every request, and the server is always stopped (Ctrl-C, then killed if it lingers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from goushi.checkpoint import save_weights  # noqa: E402
from goushi.config import preset_config  # noqa: E402
from goushi.engine import Engine, SampleConfig  # noqa: E402
from goushi.model import GPT  # noqa: E402
from goushi.run_record import RunRecord  # noqa: E402
from goushi.rundir import write_run  # noqa: E402
from goushi.tokenizer import Tokenizer  # noqa: E402

MAX_CLIENTS = 256
MAX_SECONDS = 600
TARGET = "32 concurrent streaming clients for 60 s, zero errors, zero mismatches"
PROMPTS = ["今天我终于", "春眠不觉晓，", "好评！物流很快，", "我们去吃", "床前明月光，", "", "下次还来", "说实话，",
           "明天的天气", "V我50"]
TINY_TEXTS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "今天我终于学会了做饭，味道还不错。",
              "今天疯狂星期四，V我50！我们去吃肯德基吧。", "好评！物流很快，东西不错，下次还来。",
              "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。", "说实话，明天的天气应该很好。"]


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model and the vector flags that matter to torch on CPU (/proc/cpuinfo; Linux)."""
    name, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = value.strip()
            elif key.strip() == "flags" and flags is None:
                flags = sorted(f for f in value.split() if f in ("avx2", "fma") or f.startswith(("avx512", "amx")))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags or []


def tiny_run(out: Path) -> Path:
    """A random tiny run (char tokenizer, 2 layers x 64, context 128): fast, so the server is what is measured."""
    tok = Tokenizer.train_char(TINY_TEXTS * 5)
    cfg = preset_config("tiny", "gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_embd=64, context_length=128)
    torch.manual_seed(0)
    model = GPT(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "model.safetensors", model)
    write_run(out, RunRecord(model=cfg))
    tok.save(out / "tokenizer.json")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Job:
    prompt: str
    seed: int
    want: str


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    done: int = 0
    mismatches: int = 0
    errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few problems, for the report

    def problem(self, kind: str, detail: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {detail}")


async def one_request(http: httpx.AsyncClient, url: str, model: str, job: Job, args, stats: Stats) -> None:
    body = {"model": model, "prompt": job.prompt, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "seed": job.seed, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    text, usage, done, finish = [], None, False, None
    try:
        async with http.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                stats.errors[f"http {r.status_code}"] += 1
                stats.problem(f"http {r.status_code}", r.text[:200])
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    stats.errors["error event in stream"] += 1
                    stats.problem("error event", data[:200])
                    return
                for c in chunk["choices"]:
                    if c["index"] != 0:
                        stats.errors["wrong choice index"] += 1
                        return
                    if c["text"] and first is None:
                        first = time.perf_counter() - t0
                    text.append(c["text"])
                    finish = c["finish_reason"] or finish
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except httpx.TimeoutException:
        stats.errors["timeout"] += 1
        return
    except httpx.HTTPError as e:
        stats.errors[type(e).__name__] += 1
        stats.problem(type(e).__name__, str(e)[:200])
        return
    if not done or usage is None or finish is None:
        stats.errors["stream ended early"] += 1
        stats.problem("stream ended early", f"done={done} usage={usage} finish={finish}")
        return
    stats.done += 1
    stats.latencies.append(time.perf_counter() - t0)
    if first is not None:
        stats.first_token.append(first)
    stats.completion_tokens += usage["completion_tokens"]
    got = "".join(text)
    if got != job.want:
        stats.mismatches += 1
        stats.problem("mismatch", f"prompt {job.prompt!r} seed {job.seed}: got {got[:40]!r}, want {job.want[:40]!r}")


async def client_loop(k: int, url: str, model: str, jobs: list[Job], deadline: float, args, stats: Stats) -> None:
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1)) as http:
        i = k * 7  # each client walks the pool from its own place: at any moment the clients ask different things
        while time.monotonic() < deadline:
            await one_request(http, url, model, jobs[i % len(jobs)], args, stats)
            i += 1


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"{v[min(len(v) - 1, round(q * (len(v) - 1)))] * 1000:.0f} ms"


def wait_up(proc: subprocess.Popen, url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"goushi serve exited with {proc.returncode} before it served")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"goushi serve did not answer /health within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", metavar="RUN_DIR", help="run to serve (default: demo_out/run, else a tiny one)")
    ap.add_argument("--tiny", action="store_true", help="serve a tiny random run built in a temporary directory")
    ap.add_argument("--clients", type=int, default=32, help=f"concurrent streaming clients (at most {MAX_CLIENTS})")
    ap.add_argument("--seconds", type=float, default=60, help=f"how long clients send requests (at most {MAX_SECONDS})")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--pool", type=int, default=128, help="distinct seeded requests (prompt x seed) with references")
    ap.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency")
    ap.add_argument("--request-timeout", type=float, default=120, help="seconds one request may take")
    args = ap.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        ap.error(f"--clients {args.clients}: must be between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds {args.seconds:g}: must be in (0, {MAX_SECONDS}]")
    if args.pool < 1 or args.max_tokens < 1:
        ap.error("--pool and --max-tokens must be at least 1")

    name, flags = cpu_info()
    print(f"CPU: {name}; {os.cpu_count()} cores; flags: {' '.join(flags) or 'none of avx2/avx512/amx'}")
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        demo = ROOT / "demo_out" / "run"
        run = Path(args.run) if args.run else demo if demo.is_dir() and not args.tiny else tiny_run(Path(tmp) / "tiny")
        engine = Engine.load(run, device="cpu")
        params = sum(p.numel() for p in engine.model.parameters())
        print(f"run: {run} ({params / 1e6:.2f}M parameters, vocab {engine.tokenizer.vocab_size}, context "
              f"{engine.context_length})")

        # references first, on the same weights and settings the server uses (cpu, float32, one engine call per request)
        t = time.perf_counter()
        jobs = []
        for i in range(args.pool):
            prompt, seed = PROMPTS[i % len(PROMPTS)], 1000 + i
            cfg = SampleConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens, seed=seed)
            jobs.append(Job(prompt, seed, engine.generate(prompt, cfg)[0].text))
        print(f"references: {len(jobs)} seeded requests ({len(set(PROMPTS))} prompts) in {time.perf_counter() - t:.1f} s")
        del engine

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "goushi.cli", "serve", str(run), "--port", str(port), "--device", "cpu",
               "--concurrency", str(args.concurrency), "--max-queue", str(max(64, args.clients)),
               "--max-tokens", str(max(args.max_tokens, 1))]
        print(f"server: {shlex.join(cmd)}")
        log_path = Path(tmp) / "server.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        env.pop("GOUSHI_API_KEY", None)
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        stats = Stats()
        try:
            wait_up(proc, url, timeout=120)
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            print(f"clients: {args.clients} streaming, {args.seconds:g} s, max_tokens {args.max_tokens}, temperature "
                  f"{args.temperature:g}, top_p {args.top_p:g}")
            t0 = time.monotonic()
            deadline = t0 + args.seconds

            async def everyone() -> None:
                tasks = [client_loop(k, url, model, jobs, deadline, args, stats) for k in range(args.clients)]
                await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + args.request_timeout + 10)

            try:
                asyncio.run(everyone())
            except asyncio.TimeoutError:
                stats.errors["run over its time bound"] += 1
            wall = time.monotonic() - t0
            health = httpx.get(url + "/health", timeout=5).json()
        finally:
            rc = stop(proc)
        server_log = log_path.read_text(encoding="utf-8", errors="replace")

    errors = sum(stats.errors.values())
    print(f"wall: {wall:.1f} s; requests done: {stats.done} ({stats.done / wall:.1f}/s); errors: {errors}"
          + (f" ({', '.join(f'{k}: {v}' for k, v in stats.errors.most_common())})" if errors else "")
          + f"; mismatches: {stats.mismatches}")
    print(f"latency (whole request): p50 {pct(stats.latencies, 0.5)}, p95 {pct(stats.latencies, 0.95)}; "
          f"first token: p50 {pct(stats.first_token, 0.5)}, p95 {pct(stats.first_token, 0.95)}")
    mean = statistics.fmean(stats.latencies) if stats.latencies else 0
    print(f"throughput: {stats.completion_tokens / wall:.0f} completion tokens/s aggregate "
          f"({stats.completion_tokens} tokens; mean request {mean * 1000:.0f} ms)")
    print(f"server after the run: waiting {health.get('waiting')}; stopped with exit {rc} "
          f"({'Ctrl-C' if rc == 130 else 'see log'}); tracebacks in its log: {server_log.count('Traceback')}")
    for line in stats.examples:
        print(f"  e.g. {line}")
    ok = errors == 0 and stats.mismatches == 0 and stats.done > 0 and "Traceback" not in server_log
    meets = args.clients >= 32 and args.seconds >= 60
    print(f"{'PASS' if ok else 'FAIL'}: {stats.done} requests, {errors} errors, {stats.mismatches} mismatches "
          f"(target: {TARGET}{'' if meets else '; this run was smaller than the target'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
