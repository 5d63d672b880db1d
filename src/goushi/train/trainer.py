"""The training loop: batches -> model -> next-token loss -> optimiser, with budgets, evaluation and
checkpoints that resume exactly.

The parts: a batch source (goushi.train.source; the token shards of a DATA_DIR by default), the
budget (goushi.train.budget), the metrics log (goushi.train.metrics), the run directory's files and the
log's opening and closing lines (goushi.train.artifacts), the checkpoints and the trainer state
(goushi.train.checkpoint), the run's shape and whether it may resume (goushi.train.config) and the
processes (goushi.train.distributed). This module wires them. It prints samples through a Sampler its
caller hands in, and imports nothing above goushi.train.

Exact resume: everything that decides the next step (weights, optimiser moments, the schedule's planned length,
the data generator, every RNG) is in the `last` checkpoint, and checkpoints are only taken between optimizer
steps. Ctrl-C sets a flag; the current step finishes, a checkpoint is written, and the run stops cleanly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from goushi import lora, rundir
from goushi.device import pick_device
from goushi.errors import ConfigError, GoushiError
from goushi.model import GPT
from goushi.precision import Plan, peak_flops, should_compile, train_plan
from goushi.tokenizer import Tokenizer
from goushi.train import artifacts, compile_race, distributed, shape
from goushi.train import checkpoint as ckpt
from goushi.train.budget import Budget
from goushi.train.config import TrainConfig, check_resumable, load_train_config, run_model_config
from goushi.train.data import TokenData, new_generator
from goushi.train.distributed import setup
from goushi.train.interrupt import StopRequest
from goushi.train.metrics import MetricsLog, Throughput
from goushi.train.objective import Objective
from goushi.train.optim import (
    build_optimizers,
    grad_scaler,
    lr_multiplier,
    muon_ns_dtype,
    optimizer_step,
    set_lr,
)
from goushi.train.source import BatchSource

# Writes the sample printed at evaluations: (model with whole weights, batch source, tokens, seed) -> one line. The
# callers hand it in (goushi train and sft: the engine's, goushi.cli.train.sample_line): train/ imports nothing above.
Sampler = Callable[[nn.Module, BatchSource, int, int], str]


class Trainer:
    """One run. `source` defaults to the token shards of `cfg.data`; pass another BatchSource (a chat
    dataset, say) to train on it with the same loop, checkpoints and budgets. Samples are printed only
    with a `sampler`. An `objective` (goushi.train.objective) replaces the next-token loss and its evaluation."""

    def __init__(self, cfg: TrainConfig, *, source: BatchSource | None = None, sampler: Sampler | None = None,
                 on_step: Callable[[int, float], None] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, objective: Objective | None = None):
        self.cfg = cfg.validate()
        if not cfg.out:
            raise ConfigError("train config: out is empty; give --out RUN_DIR")
        self.source = source
        self.sampler = sampler
        self.objective = objective
        if objective is not None and cfg.fsdp:
            raise ConfigError("train config: fsdp shards the model, which this objective's reference pass cannot use; "
                              "drop --fsdp (torchrun without it keeps a whole model per process)")
        self.on_step = on_step
        self.progress = progress
        self._log = log
        self.stop = StopRequest(self.log)
        self.bar = None

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            if self.bar is not None and not self.bar.disable:  # a disabled bar would print, bypassing `log`
                self.bar.write(msg)
            else:
                self._log(msg)

    # ---- setup -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.dist, device_name = setup(cfg.device, fsdp=cfg.fsdp)
        self.fsdp = cfg.fsdp and self.dist.enabled
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
            stored = rundir.read_run(self.out)
            if not cfg.data and self.source is None:
                cfg.data = stored.data.dir or ""
        if self.source is None:
            if not cfg.data:
                raise ConfigError("train config: data is empty; give --data DATA_DIR (written by `goushi data build`)")
            self.source = TokenData(cfg.data, windows=cfg.windows)
        self.tokenizer: Tokenizer = self.source.tokenizer
        if (cfg.doc_mask or cfg.windows != "any") and not isinstance(self.source, TokenData):
            raise ConfigError("train config: doc_mask and windows are for text data directories; a chat dataset "
                              "lays out its own rows (drop --doc-mask / --windows)")
        # how the model reads a batch, in training and in validation alike
        self.read_as: dict[str, int] = {"doc_sep": self.tokenizer.eot_id} if cfg.doc_mask else {}
        self.mc, self.base = run_model_config(cfg, self.source.vocab_size, self.tokenizer, stored)
        if stored is not None:
            check_resumable(cfg, self.mc, self.tokenizer.hash(), stored)
        self.source.check_context(self.mc.context_length)
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"train config: batch_size={cfg.batch_size} is not divisible by the {self.dist.world} "
                              f"processes; the global batch is split evenly between them")
        self.device = pick_device(device_name)
        self.plan = self._precision_plan()
        self.plan.apply_threads()
        if shape.wanted(cfg):
            self._choose_shape()
        self.scaler, self.dtype = grad_scaler(self.plan.dtype, self.device, fsdp=self.fsdp, asked=cfg.dtype,
                                              log=self.log)
        self.use_amp = self.dtype != torch.float32

    def _precision_plan(self) -> Plan:
        """Precision and threads (goushi.precision). A resumed run keeps the precision it started with, so it
        continues exactly; the probe is timing, so under torchrun rank 0's decision holds for every rank."""
        cfg = self.cfg
        plan = train_plan(self.mc, max(1, cfg.batch_size // self.dist.world), self.device, cfg.dtype)
        if cfg.resume and cfg.dtype in ("", "auto"):
            ckpt.keep_precision(plan, self._resume_state())
        elif self.dist.enabled and cfg.dtype in ("", "auto") and self.device.type == "cpu":
            distributed.agree_precision(plan, self.dist, self.device)
        return plan

    def _choose_shape(self) -> None:
        """The shape by the tokens the budget buys here (goushi.train.shape). Under torchrun rank 0 times it and
        its choice holds for every rank. The choice is written into the run's settings, so --resume rebuilds it."""
        cfg = self.cfg
        if self.dist.is_main:
            mc, lines = shape.for_run(cfg, self.mc, self.device, self.plan.dtype, self.plan.apply_to,
                                      ranks=self.dist.world)
            for line in lines:
                self.log(line)
            pick = [float(i) for i, rung in enumerate(shape.LADDER) if rung[:2] == (mc.n_layer, mc.n_embd)]
        else:
            pick = [0.0]
        index = int(self.dist.sum(pick, self.device)[0]) if self.dist.enabled else int(pick[0])
        mc = shape.rung_config(self.mc, *shape.LADDER[index])
        cfg.model = {**cfg.model, "n_layer": mc.n_layer, "n_embd": mc.n_embd, "n_head": mc.n_head,
                     "n_kv_head": mc.n_kv_head}
        if mc != self.mc:
            self.mc = mc
            self.source.check_context(mc.context_length)
            self.plan = self._precision_plan()  # its precision probe is per shape
            self.plan.apply_threads()

    def _resume_state(self) -> dict[str, Any]:
        if getattr(self, "_loaded_state", None) is None:
            self._loaded_state = ckpt.load_state(self.out)
        return self._loaded_state

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = GPT(self.mc)
        self.model.gradient_checkpointing = cfg.activation_checkpointing
        ckpt.load_start_weights(self.model, cfg)
        if cfg.lora_rank:
            lora.apply_lora(self.model, cfg.lora_rank, cfg.lora_alpha or 2.0 * cfg.lora_rank)
        self.model.to(self.device)
        self.model.train()
        self.plan.apply_to(self.model)
        if self.fsdp:
            # Weights (random, --init-from or --resume) are whole and equal on every rank here; sharding keeps
            # each rank's part. The optimisers are built over the sharded parameters.
            distributed.shard(self.model, self.device)
        self.whole_model = distributed.WholeModel(self.model, self.dist, self.fsdp, lambda: GPT(self.mc))
        self.opts = build_optimizers(self.model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(cfg.beta1, cfg.beta2), muon_momentum=cfg.muon_momentum, device=self.device,
                                     ns_dtype=muon_ns_dtype(self.dtype), embed_lr_mult=cfg.embed_lr_mult)
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
        key, self.race = (self.mc, cfg.batch_size, self.dtype), None
        if not want and compile_race.wanted(cfg.compile, self.device, key, budget_seconds=cfg.budget_seconds,
                                            steps=self.budget.fixed_total(), processes=self.dist.world):
            self.race, self.compiled = compile_race.start(self.net, key), True
            self.compile_note = "auto: not measured here for this shape yet, so raced against eager on the first steps"

    def _load_state(self) -> None:
        st, self._loaded_state = self._resume_state(), None  # its optimizer state is big; once loaded not needed
        load = partial(distributed.load_optimizer_state, self.model) if self.fsdp else \
            lambda opt, sd: opt.load_state_dict(sd)
        (self.step, self.tokens, self.elapsed_before, self.best_val, self.best_step,
         self.last_eval_step) = ckpt.restore_state(
            st, self.out, optimizers=self.opts, load_optimizer=load, scaler=self.scaler, rank=self.dist.rank,
            world=self.dist.world, data_generator=self.gen, source=self.source, budget=self.budget, log=self.log,
            adapters_of=self.model if self.cfg.lora_rank else None)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rngs = self.dist.gather(ckpt.rng_state(self.gen))  # collective: every rank calls save
        return ckpt.pack_state(
            ckpt.Progress(self.step, self.tokens, self.elapsed(), self.best_val, self.best_step, self.last_eval_step),
            budget=self.budget, rngs=rngs, source=self.source.state_dict(), dtype=self.dtype,
            attn_dtype=self.plan.attn_dtype, scaler=self.scaler.state_dict() if self.scaler is not None else {},
            optimizers=[distributed.full_optimizer_state(self.model, o) if self.fsdp else o.state_dict()
                        for o in self.opts],
            adapters=lora.adapter_state(self.model) if self.cfg.lora_rank else {})

    def save(self) -> None:
        state = self._state()
        model = self.whole_model()
        if self.dist.is_main:
            ckpt.save_last(self.out, model, state)
        self.dist.barrier()

    # ---- one step ------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.use_amp)

    def _micro_step(self, x, y):
        try:
            with self._autocast():
                if self.objective is not None:
                    loss = self.objective.loss(self.model, self.net, x, y)
                else:
                    _, loss = self.net(x, y, **self.read_as)
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
            with distributed.micro_step_sync(self.net, self.model, self.dist, self.fsdp, micro, cfg.grad_accum):
                loss_sum += self._micro_step(x, y)
        optimizer_step(self.opts, self.scaler, self.model.parameters(), cfg.clip)
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
        if self.objective is not None:
            totals = self.dist.sum(self.objective.eval_sums(self.model, batches, self._autocast, self.device),
                                   self.device)
            self.model.train()
            return self.objective.eval_record(totals)
        if self.fsdp:
            batches = distributed.even_batches(batches, self.dist, self.device)
        # validation windows are laid out as training's are (TokenData.windows), and read with the same mask
        for x, y in batches:
            with self._autocast():
                if y is None:
                    self.model(x.to(self.device), **self.read_as)
                    continue
                n = self.source.count_tokens(y)
                _, loss = self.model(x.to(self.device), y.to(self.device), **self.read_as)
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
        line = self.objective.describe(rec) if self.objective is not None else \
            f"val loss {rec['val_loss']:.4f}, ppl {rec['val_ppl']:.1f}{bpc}"
        self.log(f"step {self.step}: {line}" + (" (best)" if improved else ""))
        sample = self.sampler is not None and bool(self.cfg.sample_tokens) and (
            not self.cfg.sample_every or final or self.step % self.cfg.sample_every == 0)
        save_best = improved and self.step > 0
        # Decided alike on every rank (val loss is averaged over them): under FSDP gathering is collective.
        model = self.whole_model() if sample or save_best else None
        if sample and self.dist.is_main:
            try:  # the sampler has its own random generator: samples never change the run
                self.log(f"  sample: {self.sampler(model, self.source, self.cfg.sample_tokens, self.cfg.seed)}")
            finally:
                self.model.train()  # the engine puts the model in eval mode
        if save_best and self.dist.is_main:
            ckpt.save_best(self.out, model, [n for n in artifacts.BEST_COPIES if n != rundir.MODEL_CARD])
        self.dist.barrier()
        self.eval_seconds = time.perf_counter() - t
        return rec

    # ---- budgets -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_session)

    def _plan_time(self, step_times: list[float]) -> None:
        # Every rank must run the same number of steps: each takes the largest total proposed.
        change = self.budget.plan(self.step, self.elapsed(), step_times, self.eval_seconds,
                                  agree=lambda total: self.dist.max(total, self.device))
        if change:
            self.log(change)
        if self.bar is not None:
            self.bar.total = self.budget.total

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._setup()
        try:
            summary = self._run()
            # Rank 0 writes the closing files alone; the others wait rather than tear the group down under it (a
            # rank that left early ended the other with "terminate called without an active exception", under load).
            self.dist.barrier()
            return summary
        finally:
            self.dist.close()

    def _race_step(self, seconds: float) -> bool:
        """Time a raced step; True once the race is over (decided, or compiling failed and eager took over)."""
        verdict = self.race.timed(seconds) if self.compiled else None
        if self.compiled and verdict is None:
            return False
        if verdict is not None:
            self.net, self.compiled = self.race.winner, self.race.winner is self.race.compiled
            self.log(verdict)
        self.race = None
        return True

    def _announce(self, peak: float, peak_src: str) -> None:
        for line in artifacts.opening_lines(
                self.cfg, self.mc, trainable=lora.trainable_parameters(self.model), plan_lines=self.plan.lines(),
                compiled=self.compiled, compile_note=self.compile_note, device=self.device, dtype=self.dtype,
                processes=self.dist.describe(self.fsdp), tokens_per_step=self.positions_per_step, peak=peak,
                peak_src=peak_src):
            self.log(line)
        if self.cfg.resume:
            self.log(f"resuming {self.out} at step {self.step} ({self.tokens:,} tokens, {self.elapsed_before:.0f}s)")

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._build()
        self.budget.start(self.step)
        if self.dist.is_main:
            record = artifacts.run_record(cfg, self.mc, self.source, self.out, self.base)
            artifacts.write_start(self.out, record, self.source)
        self.metrics = MetricsLog(self.out, enabled=self.dist.is_main, resume_step=self.step if cfg.resume else None)
        self.dist.barrier()
        peak, peak_src = peak_flops(self.device, self.dtype)
        flops_per_position = self.model.flops_per_token(self.mc.context_length)
        self._announce(peak, peak_src)

        self.stop.install()
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
                    if self.budget.patience_out(self.step, self.best_step):
                        stop_reason = "early stop"
                        break
                    if self.budget.may_replan(self.step):
                        self._plan_time(step_times[2:])
                if self.race is not None:
                    self.net = self.race.net()
                t0 = time.perf_counter()
                tokens_before = self.tokens
                loss, lr = self.train_step()
                if not math.isfinite(loss):
                    raise GoushiError(f"loss became {loss} at step {self.step}; lower --lr (now {cfg.lr}) or use "
                                      f"--dtype float32; the last checkpoint in {self.out} is intact")
                step_times.append(time.perf_counter() - t0)
                if self.race is not None and self._race_step(step_times[-1]):
                    step_times, session_start_step = [], self.step  # plan the time budget on the winner's steps
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
                        self.stop.requested = True
                if self.dist.any(self.stop.requested, self.device):
                    stop_reason = "interrupted"
                    break
        finally:
            self.bar.close()
            self.bar = None
            self.stop.restore()

        if stop_reason != "interrupted" and self.last_eval_step != self.step:
            last_rec = self._do_eval(final=True)
        self.save()
        served = self.dist.is_main and self.budget.serves_best(self.step, self.best_step) and ckpt.serve_best(self.out)
        summary = artifacts.run_summary(
            self.cfg, self.mc, out=self.out, step=self.step, planned_steps=self.budget.total, tokens=self.tokens,
            seconds=self.elapsed(), stop_reason=stop_reason, device=self.device, dtype=self.dtype,
            processes=self.dist.world, fsdp=self.fsdp, trainable=lora.trainable_parameters(self.model),
            last_loss=last_loss, last_eval=last_rec, best_val=self.best_val, best_step=self.best_step,
            tokens_per_s=self.metrics.median_tokens_per_s(), served_best=served)
        if self.objective is not None:
            summary.update(self.objective.summary(last_rec))
        if self.dist.is_main:
            artifacts.write_end(self.out, model_config=self.mc, summary=summary, source=self.source, base=self.base)
            self.metrics.close()
            for line in artifacts.closing_lines(summary, self.out):
                self.log(line)
        return summary

def train(cfg: TrainConfig | dict[str, Any], *, source: BatchSource | None = None, sampler: Sampler | None = None,
          on_step: Callable[[int, float], None] | None = None, progress: bool = True,
          log: Callable[[str], None] = print, objective: Objective | None = None) -> dict[str, Any]:
    """Train a model; returns a run summary (steps, tokens, seconds, final/best val loss and bpc, ...).

    `cfg` is a TrainConfig or a dict of its fields (model fields allowed, flat or under "model").
    `source` replaces the token shards of cfg.data as the batch source.
    `sampler` writes the samples printed at evaluations (cfg.sample_tokens long); without one none are printed.
    goushi.cli.train.sample_line is the one `goushi train` and `goushi sft` hand in.
    `on_step(step, loss)` is called after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, exactly like Ctrl-C.
    `objective` replaces the next-token loss and its evaluation (goushi.train.objective; DPO's is one).
    """
    if isinstance(cfg, dict):
        cfg = load_train_config(None, cfg)
    return Trainer(cfg, source=source, sampler=sampler, on_step=on_step, progress=progress, log=log,
                   objective=objective).run()


__all__ = ["Sampler", "Trainer", "train"]
