"""Load test of `goushi serve`, batched against `--max-batch 1`: N concurrent streaming clients on loopback for T
seconds against each, in one invocation; every answer is checked.

    .venv/bin/python bench/serve_load.py [RUN_DIR] [--preset tiny|small] [--clients 32] [--seconds 60]
        [--max-tokens 32] [--max-batch N] [--concurrency 2] [--only batched|single]

Starts the real command (`python -m goushi.cli serve RUN_DIR --port P --device cpu --max-batch N`) in a subprocess,
once batched (--max-batch N, default the server's own default) and once with --max-batch 1 (one engine call per
request, --concurrency at a time: the behaviour before batching), after computing the reference text of a pool of
seeded requests (prompt x seed) with Engine.generate on the same weights, on one thread as the batched server runs.
--clients asyncio clients (httpx, one connection each) send streaming /v1/completions requests from the pool back
to back until --seconds have passed. Each streamed text is compared with its reference: a different text is a
mismatch (outputs mixed between requests, or not reproducible). Prints, per server, the requests, errors by kind,
mismatches, p50/p95 latency of whole requests and of the first token and aggregate completion tokens/s (the
server's own `usage` counts); then batched against --max-batch 1 and PASS/FAIL against the target: zero errors and
zero mismatches in both, batched tokens/s at least 3x and p95 latency no worse.

RUN_DIR defaults to demo_out/run when it exists, else a random model built in a temporary directory (--preset
forces that: tiny = 2 layers x 64, context 128, a character vocabulary; small = the small preset, 6 x 384, context
256, a 4,096-id head), so the script runs anywhere. Bounded: at most MAX_CLIENTS clients and MAX_SECONDS seconds per
server, a timeout on every request, and each server is always stopped (Ctrl-C, then killed if it lingers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
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
TARGET = ("32 concurrent streaming clients for 60 s, zero errors and zero mismatches in both; batched completion "
          "tokens/s >= 3x --max-batch 1, p95 latency no worse")
SPEEDUP = 3.0
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


def random_run(out: Path, preset: str = "tiny") -> Path:
    """A random run with a character tokenizer: tiny (2 layers x 64, context 128; fast, so the server is what is
    measured) or small (the small preset, 6 x 384, context 256, a 4,096-id head as a trained vocabulary has)."""
    tok = Tokenizer.train_char(TINY_TEXTS * 5)
    if preset == "small":
        cfg = preset_config("small", "gpt2", vocab_size=4096)
    else:
        cfg = preset_config("tiny", "gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_embd=64,
                            context_length=128)
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
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    stats.errors["chunk is not JSON"] += 1
                    stats.problem("chunk is not JSON", data[:200])
                    return
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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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


@dataclass
class Outcome:
    name: str
    stats: Stats
    wall: float
    health: dict
    rc: int
    tracebacks: int

    @property
    def errors(self) -> int:
        return sum(self.stats.errors.values())

    @property
    def tokens_per_s(self) -> float:
        return self.stats.completion_tokens / self.wall if self.wall else 0.0

    def p95(self) -> float:
        v = sorted(self.stats.latencies)
        return v[min(len(v) - 1, round(0.95 * (len(v) - 1)))] if v else float("inf")

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.stats.mismatches == 0 and self.stats.done > 0 and self.tracebacks == 0


def serve_and_load(name: str, run: Path, max_batch: int | None, jobs: list[Job], args, tmp: Path) -> Outcome:
    """Start `goushi serve` with this --max-batch (None: its default), run the clients against it, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "goushi.cli", "serve", str(run), "--port", str(port), "--device", "cpu",
           "--concurrency", str(args.concurrency), "--max-queue", str(max(64, args.clients)),
           "--max-tokens", str(max(args.max_tokens, 1))] + ([] if max_batch is None else ["--max-batch", str(max_batch)])
    if max_batch != 1 and args.decode_threads is not None:
        cmd += ["--decode-threads", str(args.decode_threads)]
    print(f"\n[{name}] server: {shlex.join(cmd)}")
    log_path = tmp / f"server-{name.replace(' ', '-')}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    env.pop("GOUSHI_API_KEY", None)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    stats = Stats()
    wall, health, server_cpu = 0.0, {}, None
    clients_cpu = resource.getrusage(resource.RUSAGE_SELF)
    try:
        wait_up(proc, url, timeout=120)
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
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
        server_cpu = cpu_seconds(proc.pid)
    finally:
        rc = stop(proc)
    server_log = log_path.read_text(encoding="utf-8", errors="replace")
    after = resource.getrusage(resource.RUSAGE_SELF)
    clients = after.ru_utime + after.ru_stime - clients_cpu.ru_utime - clients_cpu.ru_stime
    out = Outcome(name, stats, wall, health, rc, server_log.count("Traceback"))
    errors = out.errors
    for line in server_log.splitlines():
        if line.startswith("loaded "):
            print(f"[{name}] {line}")
    print(f"[{name}] wall: {wall:.1f} s; requests done: {stats.done} ({stats.done / max(wall, 1e-9):.1f}/s); errors: "
          f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in stats.errors.most_common())})" if errors else "")
          + f"; mismatches: {stats.mismatches}")
    print(f"[{name}] latency (whole request): p50 {pct(stats.latencies, 0.5)}, p95 {pct(stats.latencies, 0.95)}; "
          f"first token: p50 {pct(stats.first_token, 0.5)}, p95 {pct(stats.first_token, 0.95)}")
    mean = statistics.fmean(stats.latencies) if stats.latencies else 0
    print(f"[{name}] throughput: {out.tokens_per_s:.0f} completion tokens/s aggregate "
          f"({stats.completion_tokens} tokens; mean request {mean * 1000:.0f} ms)")
    per_k = 1000 / max(stats.completion_tokens, 1)
    print(f"[{name}] CPU time (the machine's other jobs included in the wall clock, not here): server "
          + (f"{server_cpu:.1f} s ({server_cpu * per_k * 1000:.0f} ms per 1,000 tokens)" if server_cpu is not None
             else "- (no /proc)") + f", clients {clients:.1f} s ({clients * per_k * 1000:.0f} ms per 1,000 tokens)")
    print(f"[{name}] server after the run: waiting {health.get('waiting')}; stopped with exit {rc} "
          f"({'Ctrl-C' if rc == 130 else 'see log'}); tracebacks in its log: {out.tracebacks}")
    for line in stats.examples:
        print(f"  e.g. {line}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", metavar="RUN_DIR", help="run to serve (default: demo_out/run, else a random tiny one)")
    ap.add_argument("--preset", choices=("tiny", "small"), help="serve a random run of this shape built in a "
                    "temporary directory (default when there is no RUN_DIR nor demo_out/run: tiny)")
    ap.add_argument("--tiny", action="store_true", help="the same as --preset tiny")
    ap.add_argument("--clients", type=int, default=32, help=f"concurrent streaming clients (at most {MAX_CLIENTS})")
    ap.add_argument("--seconds", type=float, default=60, help=f"how long clients send requests to each server "
                    f"(at most {MAX_SECONDS})")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--pool", type=int, default=128, help="distinct seeded requests (prompt x seed) with references")
    ap.add_argument("--max-batch", type=int, default=None, help="the batched server's --max-batch (default: its own)")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="the batched server's --decode-threads (default: its own, one per CPU core)")
    ap.add_argument("--concurrency", type=int, default=2, help="the servers' --concurrency (what --max-batch 1 uses)")
    ap.add_argument("--only", choices=("batched", "single"), help="run one server only (no comparison)")
    ap.add_argument("--request-timeout", type=float, default=120, help="seconds one request may take")
    args = ap.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        ap.error(f"--clients {args.clients}: must be between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds {args.seconds:g}: must be in (0, {MAX_SECONDS}]")
    if args.pool < 1 or args.max_tokens < 1:
        ap.error("--pool and --max-tokens must be at least 1")
    if args.max_batch is not None and args.max_batch < 2:
        ap.error(f"--max-batch {args.max_batch}: the batched server needs at least 2 (--max-batch 1 always runs too)")
    preset = args.preset or ("tiny" if args.tiny else None)

    name, flags = cpu_info()
    print(f"CPU: {name}; {os.cpu_count()} cores; flags: {' '.join(flags) or 'none of avx2/avx512/amx'}")
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        demo = ROOT / "demo_out" / "run"
        run = Path(args.run) if args.run else demo if demo.is_dir() and not preset else \
            random_run(Path(tmp) / (preset or "tiny"), preset or "tiny")
        # The references decode as the batched server does (batch_invariant): its rows equal them bit for bit. The
        # --max-batch 1 server runs each request solo (single-row kernels), equal but for float near-ties.
        engine = Engine.load(run, device="cpu", batch_invariant=True)
        params = sum(p.numel() for p in engine.model.parameters())
        print(f"run: {run} ({params / 1e6:.2f}M parameters, vocab {engine.tokenizer.vocab_size}, context "
              f"{engine.context_length}, {str(engine.plan.dtype).replace('torch.', '') if engine.plan else 'float32'})")

        # references first, on the same weights and settings the servers use: cpu, one engine call per request, on
        # one thread (the batched server decodes on one; a row's floats are then the same batched and alone)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t = time.perf_counter()
        jobs = []
        for i in range(args.pool):
            prompt, seed = PROMPTS[i % len(PROMPTS)], 1000 + i
            cfg = SampleConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens, seed=seed)
            jobs.append(Job(prompt, seed, engine.generate(prompt, cfg)[0].text))
        torch.set_num_threads(threads)
        print(f"references: {len(jobs)} seeded requests ({len(set(PROMPTS))} prompts) in {time.perf_counter() - t:.1f} s")
        del engine
        print(f"clients: {args.clients} streaming, {args.seconds:g} s per server, max_tokens {args.max_tokens}, "
              f"temperature {args.temperature:g}, top_p {args.top_p:g}")
        outcomes = []
        if args.only != "single":
            outcomes.append(serve_and_load("batched", run, args.max_batch, jobs, args, Path(tmp)))
        if args.only != "batched":
            outcomes.append(serve_and_load("max-batch 1", run, 1, jobs, args, Path(tmp)))

    ok = all(o.ok for o in outcomes)
    meets = args.clients >= 32 and args.seconds >= 60
    small = "" if meets else "; this run was smaller than the target"
    if len(outcomes) == 2:
        b, s1 = outcomes
        ratio = b.tokens_per_s / s1.tokens_per_s if s1.tokens_per_s else float("inf")
        faster, p95_ok = ratio >= SPEEDUP, b.p95() <= s1.p95()
        print(f"\nbatched / max-batch 1: {ratio:.2f}x completion tokens/s ({b.tokens_per_s:.0f} / "
              f"{s1.tokens_per_s:.0f}); p95 latency {b.p95() * 1000:.0f} ms / {s1.p95() * 1000:.0f} ms")
        passed = ok and faster and p95_ok
        why = [w for w, bad in (("errors or mismatches", not ok), (f"under {SPEEDUP:g}x", not faster),
                                ("p95 worse", not p95_ok)) if bad]
        print(f"{'PASS' if passed else 'FAIL'}{' (' + ', '.join(why) + ')' if why else ''}: "
              + "; ".join(f"{o.name}: {o.stats.done} requests, {o.errors} errors, {o.stats.mismatches} mismatches"
                          for o in outcomes) + f" (target: {TARGET}{small})")
        return 0 if passed else 1
    o = outcomes[0]
    print(f"{'PASS' if ok else 'FAIL'}: {o.name}: {o.stats.done} requests, {o.errors} errors, {o.stats.mismatches} "
          f"mismatches (zero errors and zero mismatches; no comparison with --only{small})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
