"""The training loop: batches -> model -> next-token loss -> optimiser, with budgets, evaluation and
checkpoints that resume exactly.

The parts: a batch source (goushi.train.source; the token shards of a DATA_DIR by default), the
budget (goushi.train.budget), the metrics log (goushi.train.metrics), the run directory's files
(goushi.train.artifacts) and the checkpoints (goushi.train.checkpoint). This module wires them.

Exact resume: everything that decides the next step (weights, optimiser moments, the schedule's
planned length, the data generator, every RNG) is in the `last` checkpoint, and checkpoints are only
taken between optimizer steps. Ctrl-C sets a flag; the current step finishes, a checkpoint is written,
and the run stops cleanly (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from goushi import lora, rundir
from goushi.checkpoint import load_weights
from goushi.config import ModelConfig, param_counts
from goushi.device import DTYPES, describe_hardware, pick_device
from goushi.engine import Engine, SampleConfig
from goushi.errors import ConfigError, GoushiError
from goushi.model import GPT
from goushi.precision import Plan, peak_flops, should_compile, train_plan
from goushi.tokenizer import Tokenizer
from goushi.train import artifacts, distributed
from goushi.train import checkpoint as ckpt
from goushi.train.budget import Budget
from goushi.train.config import TrainConfig, init_model_config, load_train_config, resolve_model_config
from goushi.train.data import TokenData, new_generator
from goushi.train.distributed import setup
from goushi.train.metrics import MetricsLog, Throughput
from goushi.train.optim import build_optimizers, lr_multiplier, set_lr
from goushi.train.source import BatchSource


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k
    return None


class Trainer:
    """One run. `source` defaults to the token shards of `cfg.data`; pass another BatchSource (a chat
    dataset, say) to train on it with the same loop, checkpoints and budgets."""

    def __init__(self, cfg: TrainConfig, *, source: BatchSource | None = None,
                 on_step: Callable[[int, float], None] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg.validate()
        if not cfg.out:
            raise ConfigError("train config: out is empty; give --out RUN_DIR")
        self.source = source
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
        self.dist, device_name = setup(cfg.device, fsdp=cfg.fsdp)
        self.fsdp = cfg.fsdp and self.dist.enabled
        self._plain: GPT | None = None  # rank 0's unsharded copy under FSDP, for saving and samples
        self.out = Path(cfg.out)
        stored: dict[str, Any] | None = None
        if self.dist.is_main:
            rundir.prepare_out_dir(self.out, resume=cfg.resume, force=cfg.force)
        self.dist.barrier()
        if cfg.resume:
            if self.dist.is_main:
                done = ckpt.recover(self.out)
                if done:
                    self.log(f"note: {done}")
            self.dist.barrier()
            stored = rundir.read_config(self.out)
            if not cfg.data and self.source is None:
                cfg.data = str(rundir.data_section(stored).get("dir") or "")
        if self.source is None:
            if not cfg.data:
                raise ConfigError("train config: data is empty; give --data DATA_DIR (written by `goushi data build`)")
            self.source = TokenData(cfg.data)
        self.tokenizer: Tokenizer = self.source.tokenizer
        self.base: dict[str, Any] | None = None
        self.mc = self._model_config(stored)
        if stored is not None:
            self._check_compatible(stored)
        self.source.check_context(self.mc.context_length)
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"train config: batch_size={cfg.batch_size} is not divisible by the {self.dist.world} "
                              f"processes; the global batch is split evenly between them")
        self.device = pick_device(device_name)
        self.plan = self._precision_plan()
        self.plan.apply_threads()
        self.dtype = self.plan.dtype
        self.use_amp = self.dtype != torch.float32
        self.scaler = None
        if self.fsdp and self.dtype == torch.float16:
            raise GoushiError(f"--fsdp does not support float16 (its gradient scaler is not FSDP-aware) and float16 is "
                              f"what --dtype {cfg.dtype} gives on {self.device}; use --dtype bfloat16 or --dtype float32, "
                              f"or drop --fsdp")
        if self.dtype == torch.float16:
            # fp16 gradients underflow without loss scaling (the NaNs older-GPU users hit).
            try:
                self.scaler = torch.amp.GradScaler(self.device.type)
            except (RuntimeError, ValueError) as e:
                self.log(f"note: no gradient scaler for fp16 on {self.device.type} ({e}); training in float32")
                self.dtype, self.use_amp = torch.float32, False

    def _precision_plan(self) -> Plan:
        """Precision and threads (goushi.precision). A resumed run keeps the precision it started with, so it
        continues exactly; the probe is timing, so under torchrun rank 0's decision holds for every rank."""
        cfg = self.cfg
        plan = train_plan(self.mc, max(1, cfg.batch_size // self.dist.world), self.device, cfg.dtype)
        if cfg.resume and cfg.dtype in ("", "auto"):
            kept = (self._resume_state().get("precision") or {})
            if kept.get("dtype") in DTYPES:
                plan.dtype = DTYPES[kept["dtype"]]
                plan.attn_dtype = DTYPES.get(kept.get("attn_dtype") or "")
                plan.precision_note = "the run's own, chosen when it started"
        elif self.dist.enabled and cfg.dtype in ("", "auto") and self.device.type == "cpu":
            mine = [float(plan.dtype == torch.bfloat16), float(plan.attn_dtype == torch.float32)]
            bf16, attn32 = self.dist.sum(mine if self.dist.is_main else [0.0, 0.0], self.device)
            plan.dtype = torch.bfloat16 if bf16 else torch.float32
            plan.attn_dtype = torch.float32 if attn32 else None
        return plan

    def _resume_state(self) -> dict[str, Any]:
        if getattr(self, "_loaded_state", None) is None:
            self._loaded_state = ckpt.load_state(self.out)
        return self._loaded_state

    def _model_config(self, stored: dict[str, Any] | None) -> ModelConfig:
        """A preset's shape, or with init_from the shape of that run (whose tokenizer must be the data's)."""
        cfg = self.cfg
        if not cfg.init_from:
            return resolve_model_config(cfg, self.source.vocab_size)
        init = Path(cfg.init_from)
        if not rundir.looks_like_run(init):
            raise GoushiError(f"--init-from {init}: not a run directory (no {rundir.CONFIG}); give a RUN_DIR written by "
                              "`goushi train`")
        rundir.check_run_dir(init)
        init_info = rundir.read_config(init)
        if stored is not None and isinstance(stored.get("base"), dict):
            self.base = stored["base"]  # what the run recorded when it started; the base run may be gone since
        else:
            self.base = artifacts.base_info(init, init_info)
        init_tok = Tokenizer.from_file(init / rundir.TOKENIZER)
        if init_tok.hash() != self.tokenizer.hash():
            raise GoushiError(f"--init-from {init}: its tokenizer is not the one the data was encoded with; build the "
                              f"data with that run's tokenizer: goushi data build ... --tokenizer-from {init}")
        return init_model_config(cfg, rundir.model_config(init_info, init), self.source.vocab_size)

    def _check_compatible(self, stored: dict[str, Any]) -> None:
        run_hash = rundir.data_section(stored).get("tokenizer_hash")
        own_tok = self.out / rundir.TOKENIZER
        if own_tok.is_file():
            run_hash = Tokenizer.from_file(own_tok).hash()
        data_hash = self.tokenizer.hash()
        if run_hash and run_hash != data_hash:
            raise GoushiError(f"--data {self.cfg.data}: its tokenizer (hash {data_hash[:12]}) is not the one the run in "
                              f"{self.out} was trained with ({run_hash[:12]}); resume with the original data directory "
                              f"or start a new --out")
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
        if cfg.resume and not cfg.lora_rank:
            load_weights(self.out / rundir.WEIGHTS, self.model)
        elif cfg.init_from:
            # LoRA resumes from the frozen base weights plus the adapters in the trainer state (exactly); the
            # run's own model.safetensors holds them merged, for every other reader.
            base_weights = Path(cfg.init_from) / rundir.WEIGHTS
            if cfg.resume and not base_weights.is_file():
                raise GoushiError(f"--resume: this LoRA run trains adapters on the frozen weights of {cfg.init_from}, "
                                  f"and {base_weights} is gone; put the base run back to continue")
            load_weights(base_weights, self.model)
        if cfg.lora_rank:
            lora.apply_lora(self.model, cfg.lora_rank, cfg.lora_alpha or 2.0 * cfg.lora_rank)
        self.model.to(self.device)
        self.model.train()
        self.plan.apply_to(self.model)
        if self.fsdp:
            # Weights (random, --init-from or --resume) are whole and equal on every rank here; sharding keeps
            # each rank's part. The optimisers are built over the sharded parameters.
            distributed.shard(self.model, self.device)
        self.opts = build_optimizers(self.model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(cfg.beta1, cfg.beta2), muon_momentum=cfg.muon_momentum, device=self.device)
        # Dropout masks differ per rank (their data differs); init was identical, and DDP broadcasts rank 0's.
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.gen = new_generator(cfg.seed)
        self.positions_per_step = cfg.batch_size * cfg.grad_accum * self.mc.context_length
        self.budget = Budget(cfg, self.positions_per_step)
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.best_val, self.best_step, self.last_eval_step = math.inf, -1, -1
        if cfg.resume:
            self._load_state()
        self.net: nn.Module = self.model
        if self.dist.enabled and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.compiled = False
        want, self.compile_note = should_compile(cfg.compile, self.device, self.mc, cfg.batch_size, self.dtype,
                                                 budget_seconds=cfg.budget_seconds, steps=cfg.max_steps or None)
        if want:
            try:
                self.net = torch.compile(self.net)
                self.compiled = True
            except Exception as e:  # noqa: BLE001 - any compile failure means: run eagerly and say so
                self.log(f"note: torch.compile unavailable ({type(e).__name__}: {e}); training without it")

    def _load_state(self) -> None:
        st = self._resume_state()
        self._loaded_state = None  # its optimizer state is big; once loaded it is not needed again
        try:
            if len(st["optimizers"]) != len(self.opts):
                raise GoushiError(f"--resume: the run used a different optimizer; keep --optimizer as it was "
                                  f"(this run: {len(st['optimizers'])} optimiser(s))")
            for opt, sd in zip(self.opts, st["optimizers"], strict=True):
                if self.fsdp:
                    distributed.load_optimizer_state(self.model, opt, sd)
                else:
                    opt.load_state_dict(sd)
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            rngs = st["rng"]
            rng = rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0]
            if len(rngs) != self.dist.world:
                self.log(f"note: run saved with {len(rngs)} process(es), now {self.dist.world}; data order continues "
                         f"exactly, dropout randomness does not")
            ckpt.set_rng_state(rng, self.gen)
            if self.cfg.lora_rank:
                lora.load_adapter_state(self.model, st["adapters"])
            self.source.load_state_dict(st.get("source") or {})
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise GoushiError(f"{self.out / rundir.STATE}: does not fit this run ({type(e).__name__}: {e}); "
                              f"start a new run with --force") from None
        self.step, self.tokens, self.elapsed_before = int(st["step"]), int(st["tokens"]), float(st["elapsed_s"])
        self.best_val, self.best_step = float(st["best_val_loss"]), int(st["best_step"])
        self.last_eval_step = int(st["last_eval_step"])
        if not self.budget.restore(st.get("budget"), st.get("schedule") or {}):
            self.log("note: budget changed since the run was saved; the schedule is planned again")

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rngs = self.dist.gather(ckpt.rng_state(self.gen))  # collective: every rank calls save
        return {"version": ckpt.STATE_VERSION, "step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed(),
                "best_val_loss": self.best_val, "best_step": self.best_step, "last_eval_step": self.last_eval_step,
                "schedule": self.budget.schedule(), "budget": self.budget.key(),
                "optimizers": [distributed.full_optimizer_state(self.model, o) if self.fsdp else o.state_dict()
                               for o in self.opts],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rngs, "world_size": self.dist.world, "source": self.source.state_dict(),
                "adapters": lora.adapter_state(self.model) if self.cfg.lora_rank else {},
                "precision": {"dtype": str(self.dtype).replace("torch.", ""),
                              "attn_dtype": str(self.plan.attn_dtype).replace("torch.", "") if self.plan.attn_dtype
                              else None}}

    def _whole_model(self) -> nn.Module | None:
        """The model with full weights, for writing and sampling. Under FSDP a collective (every rank calls it):
        the weights are gathered into an unsharded CPU copy on rank 0; the other ranks get None."""
        if not self.fsdp:
            return self.model
        weights = distributed.full_model_state(self.model)
        if not self.dist.is_main:
            return None
        if self._plain is None:
            with torch.random.fork_rng(devices=[]):  # its random init must not move the run's RNG
                self._plain = GPT(self.mc)
        self._plain.load_state_dict(weights, strict=True)
        return self._plain

    def save(self) -> None:
        state = self._state()
        model = self._whole_model()
        if self.dist.is_main:
            ckpt.save_last(self.out, model, state)
        self.dist.barrier()

    # ---- one step ------------------------------------------------------------------------------
    def _autocast(self):
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

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
        """One optimizer step over grad_accum micro-batches; returns (mean loss, learning rate)."""
        cfg, T = self.cfg, self.mc.context_length
        mult = lr_multiplier(self.step, total=self.budget.total, warmup=self.budget.warmup, schedule=cfg.schedule,
                             min_ratio=cfg.min_lr / cfg.lr, decay_frac=cfg.decay_frac)
        lr = set_lr(self.opts, mult)
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            x, y = self.source.train_batch(cfg.batch_size, T, self.gen, self.dist.rank, self.dist.world)
            tokens += self.source.count_tokens(y)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = contextlib.nullcontext()
            if self.fsdp and cfg.grad_accum > 1:
                distributed.set_gradient_sync(self.model, micro == cfg.grad_accum - 1)
            elif self.dist.enabled and micro < cfg.grad_accum - 1:
                sync = getattr(self.net, "_orig_mod", self.net).no_sync()
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
        self.tokens += int(self.dist.sum([float(tokens)], self.device)[0])
        return loss, lr

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        total, count = 0.0, 0
        batches = self.source.val_batches(self.cfg.eval_batches, self.cfg.batch_size, self.mc.context_length,
                                          self.dist.rank, self.dist.world)
        if self.fsdp:
            batches = list(batches)
            # Each forward gathers weights from every rank, so every rank runs as many; a rank with fewer batches
            # runs the others' extra ones on a token it ignores.
            rounds = int(self.dist.max(float(len(batches)), self.device))
            pad = torch.zeros((1, 1), dtype=torch.long)
            batches += [(pad, None)] * (rounds - len(batches))
        for x, y in batches:
            with self._autocast():
                if y is None:
                    self.model(x.to(self.device))
                    continue
                n = self.source.count_tokens(y)
                _, loss = self.model(x.to(self.device), y.to(self.device))
            total += float(loss) * n  # the model's loss is the mean over targets that carry loss
            count += n
        total, count = self.dist.sum([total, float(count)], self.device)
        self.model.train()
        val = total / max(count, 1)
        rec = {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
        tpc = self.source.tokens_per_char
        if tpc is not None:
            rec["val_bpc"] = val * tpc / math.log(2)
        return rec

    def _sample(self, model: nn.Module) -> str:
        """A short continuation of a prompt in the data's style, through the one generation engine
        (its own random generator: samples never change the run)."""
        prompt = self.source.sample_prompt()
        sc = SampleConfig(strategy="sample", temperature=0.8, max_new_tokens=self.cfg.sample_tokens, seed=self.cfg.seed)
        engine = Engine(model, self.tokenizer, info=self.source.config_entries())
        try:
            if isinstance(prompt, str):
                text = engine.generate([prompt], sc)[0].text
            else:
                text = engine.chat(prompt, sc)[0].text
                prompt = prompt[-1]["content"] + " →"
        finally:
            self.model.train()  # the engine puts the model in eval mode
        return (prompt + "|" + text).replace("\n", " ⏎ ")

    def _do_eval(self, final: bool = False) -> dict[str, Any]:
        t = time.perf_counter()
        rec = self.evaluate()
        rec = {"step": self.step, "tokens": self.tokens, "elapsed_s": round(self.elapsed(), 3), **rec}
        self.last_eval_step = self.step
        improved = rec["val_loss"] < self.best_val
        if improved:
            self.best_val, self.best_step = rec["val_loss"], self.step
        self.metrics.write(rec)
        bpc = f", val bpc {rec['val_bpc']:.3f}" if "val_bpc" in rec else ""
        self.log(f"step {self.step}: val loss {rec['val_loss']:.4f}, ppl {rec['val_ppl']:.1f}{bpc}"
                 + (" (best)" if improved else ""))
        sample = bool(self.cfg.sample_tokens) and (
            not self.cfg.sample_every or final or self.step % self.cfg.sample_every == 0)
        save_best = improved and self.step > 0
        # Decided alike on every rank (val loss is averaged over them): under FSDP gathering is collective.
        model = self._whole_model() if sample or save_best else None
        if sample and self.dist.is_main:
            self.log(f"  sample: {self._sample(model)}")
        if save_best and self.dist.is_main:
            ckpt.save_best(self.out, model, [n for n in artifacts.BEST_COPIES if n != rundir.MODEL_CARD])
        self.dist.barrier()
        self.eval_seconds = time.perf_counter() - t
        return rec

    # ---- budgets -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_session)

    def _plan_time(self, step_times: list[float]) -> None:
        """Turn the time budget into a step count from measured step and evaluation times."""
        per_step = float(np.mean(step_times))
        eval_cost = self.eval_seconds if self.eval_seconds is not None else \
            per_step * self.cfg.eval_batches / (3 * self.cfg.grad_accum)  # a forward is ~1/3 of a step
        proposed = self.budget.propose(self.step, self.elapsed(), per_step, eval_cost)
        total = int(self.dist.max(float(proposed), self.device))  # every rank must run the same number of steps
        change = self.budget.apply(total, self.step)
        if change:
            self.log(f"time budget {self.cfg.time_budget}: {per_step:.2f}s/step measured -> {change}")
        if self.bar is not None:
            self.bar.total = self.budget.total

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

    def run(self) -> dict[str, Any]:
        self._setup()
        try:
            return self._run()
        finally:
            self.dist.close()

    def _announce(self, peak: float, peak_src: str) -> None:
        cfg, counts = self.cfg, param_counts(self.mc)
        origin = f"weights of {cfg.init_from}" if cfg.init_from else f"preset {cfg.preset}"
        self.log(f"model: {self.mc.family}, {origin}, {counts['total']:,} parameters "
                 f"({counts['non_embedding']:,} outside embeddings), context {self.mc.context_length}, "
                 f"vocabulary {self.mc.vocab_size}")
        if cfg.lora_rank:
            trainable = lora.trainable_parameters(self.model)
            self.log(f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha or 2 * cfg.lora_rank:g}: training {trainable:,} "
                     f"adapter parameters ({trainable / counts['total']:.2%} of the model); saved runs hold the merged "
                     f"weights")
        for line in self.plan.lines():
            self.log(line)
        self.log(f"torch.compile: {'on' if self.compiled else 'off'} ({self.compile_note})")
        self.log(f"device {self.device}, {str(self.dtype).replace('torch.', '')}"
                 f"{', compiled' if self.compiled else ''}, {self.dist.world} process(es)"
                 f"{' (FSDP)' if self.fsdp else ' (DDP)' if self.dist.enabled else ''}, "
                 f"{self.positions_per_step:,} tokens/step, budget {cfg.budget_summary()}; peak "
                 f"{peak / 1e9:,.0f} GFLOP/s ({peak_src})")
        self.log(f"uniform guess loss = ln(vocab) = ln({self.mc.vocab_size}) = {math.log(self.mc.vocab_size):.3f}; "
                 f"a learning model drops well below it")
        if cfg.resume:
            self.log(f"resuming {self.out} at step {self.step} ({self.tokens:,} tokens, {self.elapsed_before:.0f}s)")

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._build()
        self.budget.start(self.step)
        if self.dist.is_main:
            info = artifacts.config_info(cfg, self.mc, self.source, self.out, self.base)
            artifacts.write_start(self.out, info, self.source)
        self.metrics = MetricsLog(self.out, enabled=self.dist.is_main, resume_step=self.step if cfg.resume else None)
        self.dist.barrier()
        peak, peak_src = peak_flops(self.device, self.dtype)
        flops_per_position = self.model.flops_per_token(self.mc.context_length)
        self._announce(peak, peak_src)

        old = self._install_sigint()
        self.t_session = time.perf_counter()
        self.eval_seconds: float | None = None
        stop_reason = "budget"
        last_loss, last_rec = float("nan"), {}
        step_times: list[float] = []
        session_start_step = self.step
        self.bar = tqdm(total=self.budget.total, initial=self.step, disable=not (self.progress and self.dist.is_main),
                        unit="step", dynamic_ncols=True, mininterval=1.0)
        meter, positions = Throughput(), 0
        try:
            while True:
                if self.budget.total is not None and self.step >= self.budget.total:
                    break
                if self.dist.any(self.budget.time_up(self.elapsed()), self.device):
                    stop_reason = "time budget"
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.last_eval_step != self.step:
                    t_e = time.perf_counter()
                    last_rec = self._do_eval()
                    meter.exclude(time.perf_counter() - t_e)  # evaluation time is not training throughput
                    if self.budget.may_replan(self.step):
                        self._plan_time(step_times[2:])
                t0 = time.perf_counter()
                tokens_before = self.tokens
                loss, lr = self.train_step()
                if not math.isfinite(loss):
                    raise GoushiError(f"loss became {loss} at step {self.step}; lower --lr (now {cfg.lr}) or use "
                                      f"--dtype float32; the last checkpoint in {self.out} is intact")
                step_times.append(time.perf_counter() - t0)
                last_loss = self.dist.mean(loss, self.device)
                meter.add(self.tokens - tokens_before)
                positions += self.positions_per_step
                if self.budget.needs_plan(self.step, session_start_step):
                    self._plan_time(step_times[2:])  # the first steps pay for allocation and compilation
                if self.step % cfg.log_every == 0:
                    tps = meter.rate()
                    # MFU counts every position computed, loss-bearing or not.
                    mfu = flops_per_position * positions / max(time.perf_counter() - meter.t0, 1e-9) / peak
                    self.metrics.write({"step": self.step, "loss": last_loss, "lr": lr, "tokens": self.tokens,
                                        "elapsed_s": round(self.elapsed(), 3), "tokens_per_s": round(tps, 1),
                                        "mfu": round(mfu, 4)})
                    self.bar.set_postfix_str(f"loss {last_loss:.3f} | {tps:,.0f} tok/s | MFU {mfu:.1%}", refresh=False)
                    meter.reset()
                    positions = 0
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
            data_meta = dict(self.source.run_info().get("meta") or {})
            if self.base is not None:
                data_meta["base"] = self.base
            artifacts.write_end(self.out, model_config=self.mc, summary=summary, data_meta=data_meta)
            self.metrics.close()
            if stop_reason == "interrupted":
                self.log(f"stopped at step {self.step}; checkpoint saved. Continue with: goushi train --out {self.out} "
                         f"--resume")
            else:
                self.log(f"done: {self.step} steps, {self.tokens:,} tokens in {summary['seconds']:.0f}s; "
                         f"run directory {self.out}")
                hint = overfit_hint(summary, self.out)
                if hint:
                    self.log(hint)
        return summary

    def _summary(self, stop_reason: str, last_loss: float, last_rec: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_dir": str(self.out), "steps": self.step, "planned_steps": self.budget.total, "tokens": self.tokens,
            "seconds": round(self.elapsed(), 2), "stop_reason": stop_reason, "device": str(self.device),
            "hardware": describe_hardware(self.device),
            "dtype": str(self.dtype).replace("torch.", ""), "processes": self.dist.world,
            "fsdp": True if self.fsdp else None, "preset": self.cfg.preset,
            "family": self.mc.family, "optimizer": self.cfg.optimizer, "batch_size": self.cfg.batch_size,
            "learning_rate": self.cfg.lr, "parameters": param_counts(self.mc)["total"],
            "trainable_parameters": lora.trainable_parameters(self.model),
            "lora_rank": self.cfg.lora_rank or None,
            "init_from": str(Path(self.cfg.init_from).resolve()) if self.cfg.init_from else None,
            "final_train_loss": last_loss, "final_val_loss": last_rec.get("val_loss"),
            "final_val_ppl": last_rec.get("val_ppl"), "final_val_bpc": last_rec.get("val_bpc"),
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step if self.best_step >= 0 else None,
            "tokens_per_s": self.metrics.median_tokens_per_s(),
        }


# A final validation loss this much (nats) above the best one is past noise: the model has started to learn its
# training text by heart.
OVERFIT_NATS = 0.02


def overfit_hint(summary: dict[str, Any], out: Path) -> str | None:
    """What to do when validation loss rose after its best step (small corpora passed over many times), else None."""
    best, final = summary.get("best_val_loss"), summary.get("final_val_loss")
    if best is None or final is None or summary.get("best_step") in (None, summary.get("steps")):
        return None
    if final - best < OVERFIT_NATS:
        return None
    return (f"validation loss was lowest at step {summary['best_step']} ({best:.4f}; {final:.4f} at the end): the "
            f"model learned its training text by heart after that. {out / rundir.BEST} holds the weights of that "
            f"step (goushi sample {out / rundir.BEST}); more text or a shorter run would do better")


def train(cfg: TrainConfig | dict[str, Any], *, source: BatchSource | None = None,
          on_step: Callable[[int, float], None] | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a model; returns a run summary (steps, tokens, seconds, final/best val loss and bpc, ...).

    `cfg` is a TrainConfig or a dict of its fields (model fields allowed, flat or under "model").
    `source` replaces the token shards of cfg.data as the batch source.
    `on_step(step, loss)` is called after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, exactly like Ctrl-C.
    """
    if isinstance(cfg, dict):
        cfg = load_train_config(None, cfg)
    return Trainer(cfg, source=source, on_step=on_step, progress=progress, log=log).run()


__all__ = ["Trainer", "train", "first_difference", "overfit_hint"]
