"""The training loop: batches -> model -> next-token loss -> optimiser, with budgets, evaluation,
checkpoints that resume exactly, and a run directory that describes itself.

Exact resume: everything that decides the next step (weights, optimiser moments, the schedule's
planned length, the data generator, every RNG) is in the `last` checkpoint, and checkpoints are only
taken between optimizer steps. Ctrl-C sets a flag; the current step finishes, a checkpoint is written,
and the run stops cleanly (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import goushi
from goushi.checkpoint import CONFIG, TOKENIZER, WEIGHTS, load_weights, read_config, write_config
from goushi.config import ConfigError, param_counts
from goushi.device import pick_device, pick_dtype
from goushi.errors import GoushiError
from goushi.fsutil import atomic_path, atomic_write_text
from goushi.model import GPT
from goushi.train import checkpoint as ckpt
from goushi.train.config import TrainConfig, parse_duration, resolve_model_config
from goushi.train.data import TokenData, new_generator
from goushi.train.distributed import setup
from goushi.train.optim import build_optimizers, lr_multiplier, set_lr

METRICS = "metrics.jsonl"
PLOT = "loss.png"
DATA_CARD = "DATA_CARD.md"
MODEL_CARD = "MODEL_CARD.md"
# Files a previous run leaves in RUN_DIR; --force removes exactly these and nothing else.
RUN_FILES = (WEIGHTS, CONFIG, TOKENIZER, DATA_CARD, MODEL_CARD, METRICS, PLOT, ckpt.STATE, "model_card.json",
             "eval.json")
RUN_DIRS = (ckpt.BEST, "tb", ".saving")
DEFAULT_STEPS = 1000
PLAN_AFTER = 8  # steps of this session measured before a time budget is turned into a step count
BUDGET_KEYS = ("max_steps", "tokens", "time_budget", "batch_size", "grad_accum")

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs, from their data sheets; others are measured.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12, "L40": 181e12, "L4": 121e12,
             "A10": 125e12, "V100": 125e12, "T4": 65e12, "4090": 165e12, "3090": 71e12, "A6000": 155e12}


# ---------------------------------------------------------------------------------------------
# Hardware figures


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                        seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on this device: the ceiling an MFU figure is measured against."""
    g = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the training RNG
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    for _ in range(2):
        a @ b
    sync()
    best, reps, t_end = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or reps < 3:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))  # best of several: the machine is noisy
        reps += 1
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAKS.items():
            if key in name and dtype in (torch.bfloat16, torch.float16):
                return peak, f"{name} data sheet"
        return measure_matmul_peak(device, dtype, n=4096), f"measured {name} matmul"
    return measure_matmul_peak(device, dtype if device.type != "cpu" else torch.float32), f"measured {device.type} matmul"


# ---------------------------------------------------------------------------------------------
# Run directory helpers


def prepare_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    if resume:
        if not (out / CONFIG).is_file():
            raise GoushiError(f"--resume: {out} is not a run directory (no {CONFIG}); drop --resume to start a run")
        return
    if out.exists() and not out.is_dir():
        raise GoushiError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GoushiError(f"--out {out}: directory is not empty; pass --resume to continue that run, "
                              f"--force to replace it, or choose another --out")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k
    return None


def unwrap(model: nn.Module) -> GPT:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model  # type: ignore[return-value]


@torch.no_grad()
def sample_text(model: GPT, tokenizer, prompt_ids: list[int], n_tokens: int, *, temperature: float = 0.8,
                seed: int = 0) -> str:
    """A short continuation decoded directly through the model (KV cache, temperature sampling).

    Its own generator keeps the training RNG untouched, so samples never change the run.
    """
    was_training = model.training
    model.eval()
    device = model.wte.weight.device
    cfg = model.config
    prompt_ids = prompt_ids[-(cfg.context_length - 1):] or [tokenizer.eot_id]
    n_tokens = min(n_tokens, cfg.context_length - len(prompt_ids))
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    cache = model.new_kv_cache(1, len(prompt_ids) + n_tokens)
    idx = torch.tensor([prompt_ids], device=device)
    logits, _ = model(idx, kv_cache=cache, pos=0, last_only=True)
    out: list[int] = []
    for i in range(n_tokens):
        probs = torch.softmax(logits[0, -1].float() / max(temperature, 1e-5), -1)
        nxt = int(torch.multinomial(probs, 1, generator=g))
        if nxt == tokenizer.eot_id:
            break
        out.append(nxt)
        if i + 1 < n_tokens:
            logits, _ = model(torch.tensor([[nxt]], device=device), kv_cache=cache, pos=len(prompt_ids) + i)
    model.train(was_training)
    return tokenizer.decode(out)


def plot_losses(metrics_path: Path, out_png: Path) -> bool:
    """loss.png: training loss per logged step and validation loss per evaluation."""
    if not metrics_path.is_file():
        return False
    train, val = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            m = json.loads(line)
            if "loss" in m:
                train.append((m["step"], m["loss"]))
            if "val_loss" in m:
                val.append((m["step"], m["val_loss"]))
    if not train and not val:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed; never opens a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Goushi GPT training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, *, on_step: Callable[[int, float], None] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.cfg = cfg.validate()
        if not cfg.out:
            raise ConfigError("train config: out is empty; give --out RUN_DIR")
        self.on_step = on_step
        self.progress = progress
        self._log = log
        self._stop_requested = False
        self.bar = None

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                self._log(msg)

    # ---- setup -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.dist, device_name = setup(cfg.device)
        self.out = Path(cfg.out)
        stored: dict[str, Any] | None = None
        if self.dist.is_main:
            prepare_out_dir(self.out, resume=cfg.resume, force=cfg.force)
        self.dist.barrier()
        if cfg.resume:
            if self.dist.is_main:
                done = ckpt.recover(self.out)
                if done:
                    self.log(f"note: {done}")
            self.dist.barrier()
            stored = read_config(self.out)
            if not cfg.data:
                cfg.data = str((stored.get("data") or {}).get("dir") or "")
        if not cfg.data:
            raise ConfigError("train config: data is empty; give --data DATA_DIR (written by `goushi data build`)")
        self.data = TokenData(cfg.data)
        from goushi.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_file(self.data.dir / TOKENIZER)
        if self.tokenizer.hash() != self.data.tokenizer_hash:
            raise GoushiError(f"{self.data.dir / TOKENIZER}: hash differs from meta.json tokenizer_hash; the data "
                              f"directory is inconsistent, rebuild it with `goushi data build`")
        self.mc = resolve_model_config(cfg, self.data.vocab_size)
        if stored is not None:
            self._check_compatible(stored)
        self.data.check_context(self.mc.context_length)
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"train config: batch_size={cfg.batch_size} is not divisible by the {self.dist.world} "
                              f"processes; the global batch is split evenly between them")
        self.device = pick_device(device_name)
        self.dtype = pick_dtype(self.device, cfg.dtype)
        self.use_amp = self.dtype != torch.float32
        self.scaler = None
        if self.dtype == torch.float16:
            # fp16 gradients underflow without loss scaling (the NaNs older-GPU users hit).
            try:
                self.scaler = torch.amp.GradScaler(self.device.type)
            except (RuntimeError, ValueError) as e:
                self.log(f"note: no gradient scaler for fp16 on {self.device.type} ({e}); training in float32")
                self.dtype, self.use_amp = torch.float32, False

    def _check_compatible(self, stored: dict[str, Any]) -> None:
        run_hash = (stored.get("data") or {}).get("tokenizer_hash")
        own_tok = self.out / TOKENIZER
        if own_tok.is_file():
            from goushi.tokenizer import Tokenizer

            run_hash = Tokenizer.from_file(own_tok).hash()
        if run_hash and run_hash != self.data.tokenizer_hash:
            raise GoushiError(f"--data {self.data.dir}: its tokenizer (hash {self.data.tokenizer_hash[:12]}) is not the "
                              f"one the run in {self.out} was trained with ({run_hash[:12]}); resume with the original "
                              f"data directory or start a new --out")
        run_mc = dict(stored["model"])
        diff = first_difference(self.mc.to_dict(), run_mc)
        if diff:
            raise GoushiError(f"--resume: model config {diff}={self.mc.to_dict().get(diff)!r} but the run in {self.out} "
                              f"has {diff}={run_mc.get(diff)!r}; drop the option or start a new --out")

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = GPT(self.mc)
        self.model.gradient_checkpointing = cfg.activation_checkpointing
        if cfg.resume:
            load_weights(self.out / WEIGHTS, self.model)
        self.model.to(self.device)
        self.model.train()
        self.opts = build_optimizers(self.model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(cfg.beta1, cfg.beta2), muon_momentum=cfg.muon_momentum, device=self.device)
        # Dropout masks differ per rank (their data differs); init was identical, and DDP broadcasts rank 0's.
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.gen = new_generator(cfg.seed)
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.best_val, self.best_step, self.last_eval_step = math.inf, -1, -1
        self.total: int | None = None
        self.warmup = cfg.warmup
        if cfg.resume:
            self._load_state()
        self.net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.compiled = False
        if cfg.compile:
            try:
                self.net = torch.compile(self.net)
                self.compiled = True
            except Exception as e:  # noqa: BLE001 - any compile failure means: run eagerly and say so
                self.log(f"note: torch.compile unavailable ({type(e).__name__}: {e}); training without it")

    def _load_state(self) -> None:
        st = ckpt.load_state(self.out)
        try:
            if len(st["optimizers"]) != len(self.opts):
                raise GoushiError(f"--resume: the run used a different optimizer; keep --optimizer as it was "
                                  f"(this run: {len(st['optimizers'])} optimiser(s))")
            for opt, sd in zip(self.opts, st["optimizers"], strict=True):
                opt.load_state_dict(sd)
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            rngs = st["rng"]
            rng = rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0]
            if len(rngs) != self.dist.world:
                self.log(f"note: run saved with {len(rngs)} process(es), now {self.dist.world}; data order continues "
                         f"exactly, dropout randomness does not")
            ckpt.set_rng_state(rng, self.gen)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise GoushiError(f"{self.out / ckpt.STATE}: does not fit this run ({type(e).__name__}: {e}); "
                              f"start a new run with --force") from None
        self.step, self.tokens, self.elapsed_before = int(st["step"]), int(st["tokens"]), float(st["elapsed_s"])
        self.best_val, self.best_step = float(st["best_val_loss"]), int(st["best_step"])
        self.last_eval_step = int(st["last_eval_step"])
        same_budget = st.get("budget") == self._budget()
        sched = st.get("schedule") or {}
        if same_budget and sched.get("total", -1) > 0:
            self.total, self.warmup = int(sched["total"]), int(sched["warmup"])
        elif not same_budget:
            self.log("note: budget changed since the run was saved; the schedule is planned again")

    def _budget(self) -> dict[str, Any]:
        return {k: getattr(self.cfg, k) for k in BUDGET_KEYS}

    # ---- files -------------------------------------------------------------------------------
    def _config_info(self) -> dict[str, Any]:
        train = self.cfg.to_dict()
        train["data"] = str(self.data.dir.resolve())
        train["out"] = str(self.out.resolve())
        for k in ("resume", "force"):
            train.pop(k)
        return {"model": self.mc.to_dict(), "train": train,
                "data": {"dir": str(self.data.dir.resolve()), "tokenizer_hash": self.data.tokenizer_hash,
                         "meta": self.data.selected_meta()},
                "goushi_version": goushi.__version__}

    def _write_static_files(self) -> None:
        write_config(self.out, self._config_info())
        shutil.copyfile(self.data.dir / TOKENIZER, self.out / TOKENIZER)
        if (self.data.dir / DATA_CARD).is_file():
            shutil.copyfile(self.data.dir / DATA_CARD, self.out / DATA_CARD)
        metrics = self.out / METRICS
        if self.cfg.resume and metrics.is_file():
            # Drop what was logged after the checkpoint we resume from: those steps run again.
            keep = [ln for ln in metrics.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            atomic_write_text(metrics, "".join(ln + "\n" for ln in keep))
        elif not self.cfg.resume:
            metrics.unlink(missing_ok=True)

    def _metric(self, rec: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec["step"])

    def _state(self) -> dict[str, Any]:
        rngs = self.dist.gather(ckpt.rng_state(self.gen))  # collective: every rank calls save
        return {"version": ckpt.STATE_VERSION, "step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed(),
                "best_val_loss": self.best_val, "best_step": self.best_step, "last_eval_step": self.last_eval_step,
                "schedule": {"total": self.total or -1, "warmup": self.warmup}, "budget": self._budget(),
                "optimizers": [o.state_dict() for o in self.opts],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rngs, "world_size": self.dist.world}

    def save(self) -> None:
        state = self._state()
        if self.dist.is_main:
            ckpt.save_last(self.out, self.model, state)
        self.dist.barrier()

    # ---- evaluation ----------------------------------------------------------------------------
    def _autocast(self):
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        T = self.mc.context_length
        total, count = 0.0, 0
        for x, y in self.data.val_batches(self.cfg.eval_batches, self.cfg.batch_size, T, self.dist.rank, self.dist.world):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                _, loss = self.model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
        total, count = self.dist.sum([total, float(count)], self.device)
        self.model.train()
        val = total / max(count, 1)
        rec = {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
        tpc = self.data.tokens_per_char
        if tpc is not None:
            rec["val_bpc"] = val * tpc / math.log(2)
        return rec

    def _sample(self) -> str:
        val = np.asarray(self.data.val[: 64]).astype(np.int64).tolist()
        eot = self.tokenizer.eot_id
        prompt = val[: val.index(eot)] if eot in val else val
        prompt = prompt[:6] or [eot]
        try:  # the one generation engine (architecture.md), when installed; it samples with its own generator
            from goushi.engine import Engine, SampleConfig
        except ImportError:
            text = sample_text(self.model, self.tokenizer, prompt, self.cfg.sample_tokens, seed=self.cfg.seed)
        else:
            sc = SampleConfig(strategy="sample", temperature=0.8, max_new_tokens=self.cfg.sample_tokens,
                              seed=self.cfg.seed)
            try:
                text = Engine(self.model, self.tokenizer).generate([self.tokenizer.decode(prompt)], sc)[0].text
            finally:
                self.model.train()  # Engine puts the model in eval mode
        shown = self.tokenizer.decode(prompt) if prompt != [eot] else ""
        return (shown + "|" + text).replace("\n", " ⏎ ")

    # ---- budgets -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_session)

    def _fixed_total(self) -> int | None:
        cfg = self.cfg
        cands = []
        if cfg.max_steps:
            cands.append(cfg.max_steps)
        if cfg.tokens:
            cands.append(math.ceil(cfg.tokens / self.tokens_per_step))
        if not cands and not cfg.time_budget:
            cands.append(DEFAULT_STEPS)
        return min(cands) if cands else None

    def _set_total(self, total: int) -> None:
        self.total = max(total, self.step + 1)
        capped = min(self.cfg.warmup, self.total // 5)
        # Never restart a warmup already under way (a time budget is planned a few steps in).
        self.warmup = capped if capped >= self.step else self.step

    def _plan_time(self, step_times: list[float], *, again: bool = False) -> None:
        """Turn the time budget into a step count from measured step and evaluation times.

        Planned a few steps in, then planned again at evaluations in the first 60% of the run from the
        longer measurement (the schedule's decay phase is never moved).
        """
        budget = parse_duration(self.cfg.time_budget)
        per_step = float(np.mean(step_times))
        eval_cost = self.eval_seconds if self.eval_seconds is not None else \
            per_step * self.cfg.eval_batches / (3 * self.cfg.grad_accum)  # a forward is ~1/3 of a step
        evals_per_step = 1 / self.cfg.eval_every if self.cfg.eval_every else 0.0
        remaining = budget - self.elapsed() - eval_cost  # keep room for the final evaluation
        n = max(1, int(0.98 * remaining / (per_step + evals_per_step * eval_cost)))
        total = self.step + n
        fixed = self._fixed_total()
        if fixed:
            total = min(total, fixed)
        total = int(self.dist.max(float(total), self.device))  # every rank must run the same number of steps
        if again and abs(total - (self.total or 0)) <= 0.02 * total:
            return
        old = self.total
        if again:
            self.total = max(total, self.step + 1)
        else:
            self._set_total(total)
        self.log(f"time budget {self.cfg.time_budget}: {per_step:.2f}s/step measured -> "
                 + (f"planned {self.total} steps in total" if not again else f"re-planned {old} -> {self.total} steps"))

    # ---- the loop ------------------------------------------------------------------------------
    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.log("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit at once)")

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:
            return None

    def _micro_step(self, x, y):
        try:
            with self._autocast():
                _, loss = self.net(x, y)
            loss_for_grad = loss / self.cfg.grad_accum
            (self.scaler.scale(loss_for_grad) if self.scaler else loss_for_grad).backward()
            return loss.detach()
        except Exception as e:
            if not self.compiled:
                raise
            # torch.compile compiles lazily, so its failures (no C compiler, unsupported backend) surface here.
            self.log(f"note: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     f"falling back to eager mode")
            self.compiled = False
            self.net = getattr(self.net, "_orig_mod", self.net)
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            return self._micro_step(x, y)

    def train_step(self) -> tuple[float, float]:
        cfg, T = self.cfg, self.mc.context_length
        mult = lr_multiplier(self.step, total=self.total, warmup=self.warmup, schedule=cfg.schedule,
                             min_ratio=cfg.min_lr / cfg.lr, decay_frac=cfg.decay_frac)
        lr = set_lr(self.opts, mult)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = self.data.train_batch(cfg.batch_size, T, self.gen, self.dist.rank, self.dist.world)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = contextlib.nullcontext()
            if self.dist.enabled and micro < cfg.grad_accum - 1:
                sync = self.net.no_sync() if hasattr(self.net, "no_sync") else \
                    getattr(self.net, "_orig_mod", self.net).no_sync()
            with sync:
                loss_sum += self._micro_step(x, y)
        if cfg.clip > 0:
            if self.scaler:
                for o in self.opts:
                    self.scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        for o in self.opts:
            if self.scaler:
                self.scaler.step(o)
            else:
                o.step()
        if self.scaler:
            self.scaler.update()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss = float(loss_sum) / cfg.grad_accum
        self.step += 1
        self.tokens += self.tokens_per_step
        return loss, lr

    def _do_eval(self, final: bool = False) -> dict[str, Any]:
        t = time.perf_counter()
        rec = self.evaluate()
        rec = {"step": self.step, "tokens": self.tokens, "elapsed_s": round(self.elapsed(), 3), **rec}
        self.last_eval_step = self.step
        improved = rec["val_loss"] < self.best_val
        if improved:
            self.best_val, self.best_step = rec["val_loss"], self.step
        self._metric(rec)
        bpc = f", val bpc {rec['val_bpc']:.3f}" if "val_bpc" in rec else ""
        self.log(f"step {self.step}: val loss {rec['val_loss']:.4f}, ppl {rec['val_ppl']:.1f}{bpc}"
                 + (" (best)" if improved else ""))
        if self.dist.is_main and self.cfg.sample_tokens and (
                not self.cfg.sample_every or final or self.step % self.cfg.sample_every == 0):
            self.log(f"  sample: {self._sample()}")
        if improved and self.step > 0 and self.dist.is_main:
            ckpt.save_best(self.out, self.model, [CONFIG, TOKENIZER, DATA_CARD])
        self.dist.barrier()
        self.eval_seconds = time.perf_counter() - t
        return rec

    def run(self) -> dict[str, Any]:
        self._setup()
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._build()
        T = self.mc.context_length
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * T
        if self.total is None:
            fixed = self._fixed_total()
            if fixed and not cfg.time_budget:
                self._set_total(fixed)
        if self.dist.is_main:
            self._write_static_files()
        self.dist.barrier()
        self.tb = None
        if self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                pass  # TensorBoard is optional; metrics.jsonl has everything

        counts = param_counts(self.mc)
        peak, peak_src = peak_flops(self.device, self.dtype)
        flops_tok = self.model.flops_per_token(T)
        self.log(f"model: {self.mc.family} preset {cfg.preset}, {counts['total']:,} parameters "
                 f"({counts['non_embedding']:,} outside embeddings), context {T}, vocabulary {self.mc.vocab_size}")
        self.log(f"device {self.device}, {str(self.dtype).replace('torch.', '')}"
                 f"{', compiled' if self.compiled else ''}, {self.dist.world} process(es), "
                 f"{self.tokens_per_step:,} tokens/step, budget {cfg.budget_summary()}; peak "
                 f"{peak / 1e9:,.0f} GFLOP/s ({peak_src})")
        self.log(f"uniform guess loss = ln(vocab) = ln({self.mc.vocab_size}) = {math.log(self.mc.vocab_size):.3f}; "
                 f"a learning model drops well below it")
        if cfg.resume:
            self.log(f"resuming {self.out} at step {self.step} ({self.tokens:,} tokens, {self.elapsed_before:.0f}s)")

        old = self._install_sigint()
        self.t_session = time.perf_counter()
        self.eval_seconds: float | None = None
        stop_reason = "budget"
        last_loss, last_rec = float("nan"), {}
        step_times: list[float] = []
        session_start_step = self.step
        planned_here = False
        budget_s = parse_duration(cfg.time_budget) if cfg.time_budget else None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.step, disable=not (self.progress and self.dist.is_main),
                        unit="step", dynamic_ncols=True, mininterval=1.0)
        t_log, tok_log = time.perf_counter(), 0
        try:
            while True:
                if self.total is not None and self.step >= self.total:
                    break
                if budget_s is not None and self.dist.any(self.elapsed() >= budget_s, self.device):
                    stop_reason = "time budget"
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.last_eval_step != self.step:
                    t_e = time.perf_counter()
                    last_rec = self._do_eval()
                    t_log += time.perf_counter() - t_e  # evaluation time is not training throughput
                    if planned_here and self.total and self.step < 0.6 * self.total:
                        self._plan_time(step_times[2:], again=True)
                        self.bar.total = self.total
                t0 = time.perf_counter()
                loss, lr = self.train_step()
                if not math.isfinite(loss):
                    raise GoushiError(f"loss became {loss} at step {self.step}; lower --lr (now {cfg.lr}) or use "
                                      f"--dtype float32; the last checkpoint in {self.out} is intact")
                step_times.append(time.perf_counter() - t0)
                last_loss = self.dist.mean(loss, self.device)
                tok_log += self.tokens_per_step
                if budget_s is not None and self.total is None and self.step - session_start_step >= PLAN_AFTER:
                    self._plan_time(step_times[2:])  # the first steps pay for allocation and compilation
                    planned_here = True
                    self.bar.total = self.total
                if self.step % cfg.log_every == 0:
                    dt = time.perf_counter() - t_log
                    tps = tok_log / dt if dt > 0 else 0.0
                    mfu = flops_tok * tps / peak
                    self._metric({"step": self.step, "loss": last_loss, "lr": lr, "tokens": self.tokens,
                                  "elapsed_s": round(self.elapsed(), 3), "tokens_per_s": round(tps, 1),
                                  "mfu": round(mfu, 4)})
                    self.bar.set_postfix_str(f"loss {last_loss:.3f} | {tps:,.0f} tok/s | MFU {mfu:.1%}", refresh=False)
                    t_log, tok_log = time.perf_counter(), 0
                self.bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                if self.on_step is not None:
                    try:
                        self.on_step(self.step, last_loss)
                    except KeyboardInterrupt:
                        self._stop_requested = True
                if self.dist.any(self._stop_requested, self.device):
                    stop_reason = "interrupted"
                    break
        finally:
            self.bar.close()
            self.bar = None
            if old is not None:
                signal.signal(signal.SIGINT, old)

        if stop_reason != "interrupted" and self.last_eval_step != self.step:
            last_rec = self._do_eval(final=True)
        self.save()
        summary = self._summary(stop_reason, last_loss, last_rec)
        if self.dist.is_main:
            plot_losses(self.out / METRICS, self.out / PLOT)
            self._write_model_card(summary)
            if self.tb is not None:
                self.tb.close()
            if stop_reason == "interrupted":
                self.log(f"stopped at step {self.step}; checkpoint saved. Continue with: goushi train --out {self.out} "
                         f"--resume")
            else:
                self.log(f"done: {self.step} steps, {self.tokens:,} tokens in {summary['seconds']:.0f}s; "
                         f"run directory {self.out}")
        return summary

    def _summary(self, stop_reason: str, last_loss: float, last_rec: dict[str, Any]) -> dict[str, Any]:
        metrics = self.out / METRICS
        tps = []
        if self.dist.is_main and metrics.is_file():
            for ln in metrics.read_text(encoding="utf-8").splitlines():
                m = json.loads(ln)
                if "tokens_per_s" in m:
                    tps.append(m["tokens_per_s"])
        return {
            "run_dir": str(self.out), "steps": self.step, "planned_steps": self.total, "tokens": self.tokens,
            "seconds": round(self.elapsed(), 2), "stop_reason": stop_reason, "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""), "processes": self.dist.world, "preset": self.cfg.preset,
            "family": self.mc.family, "optimizer": self.cfg.optimizer, "batch_size": self.cfg.batch_size,
            "learning_rate": self.cfg.lr, "parameters": param_counts(self.mc)["total"],
            "final_train_loss": last_loss, "final_val_loss": last_rec.get("val_loss"),
            "final_val_ppl": last_rec.get("val_ppl"), "final_val_bpc": last_rec.get("val_bpc"),
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step if self.best_step >= 0 else None,
            "tokens_per_s": float(np.median(tps)) if tps else None,
        }

    def _write_model_card(self, summary: dict[str, Any]) -> None:
        card_summary = {k: v for k, v in summary.items() if k not in ("run_dir",) and v is not None}
        try:
            from goushi.eval.model_card import write_model_card
        except ImportError:
            write_model_card = None
        if write_model_card is not None:
            write_model_card(self.out, model_config=self.mc, train_summary=card_summary, data_meta=self.data.meta)
        else:  # pragma: no cover - only without goushi.eval
            lines = [f"# Model card: {self.out.name}", "", f"{self.mc.family} model trained with Goushi GPT.", ""]
            lines += [f"- {k}: {v}" for k, v in card_summary.items()]
            lines += ["", "Sources and licences: see DATA_CARD.md."]
            atomic_write_text(self.out / MODEL_CARD, "\n".join(lines) + "\n")
        best = self.out / ckpt.BEST
        if best.is_dir():
            for name in (MODEL_CARD, CONFIG, TOKENIZER):
                if (self.out / name).is_file():
                    with atomic_path(best / name) as tmp:
                        shutil.copyfile(self.out / name, tmp)


def train(cfg: TrainConfig | dict[str, Any], *, on_step: Callable[[int, float], None] | None = None,
          progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a model; returns a run summary (steps, tokens, seconds, final/best val loss and bpc, ...).

    `cfg` is a TrainConfig or a dict of its fields (model fields allowed, flat or under "model").
    `on_step(step, loss)` is called after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, exactly like Ctrl-C.
    """
    if isinstance(cfg, dict):
        from goushi.train.config import load_train_config

        cfg = load_train_config(None, cfg)
    return Trainer(cfg, on_step=on_step, progress=progress, log=log).run()


__all__ = ["Trainer", "train", "measure_matmul_peak", "peak_flops", "plot_losses", "sample_text", "prepare_out_dir"]
