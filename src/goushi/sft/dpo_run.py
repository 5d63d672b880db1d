"""`goushi dpo`: tune a chat run on preference pairs (DPO), with the same trainer, checkpoints, budgets, metrics
and model card as every run. The result is a plain run directory (LoRA adapters merged) whose config.json has
"dpo" and "chat_template", so the engine, `goushi chat`, the page, the server and the exports treat it as a
chat run, and its model card credits the preference file beside the chat data and pre-training text it
inherits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from goushi import rundir
from goushi.chat import ChatTemplate
from goushi.checkpoint import RunFiles, open_run
from goushi.errors import ConfigError, GoushiError
from goushi.sft.dpo import DpoObjective, Reference
from goushi.sft.prefs import PrefData, PrefFile, read_pref_file
from goushi.sft.run import (
    check_passes,
    finetune_config,
    missing_row,
    recorded_settings,
    report_rows,
    token_table,
)
from goushi.train import Sampler, TrainConfig, train

# DPO moves a model that already answers: small steps, no weight decay, and no dropout (the log-probabilities of
# policy and reference must be comparable; TRL turns dropout off too). LoRA adapters start at zero and take
# larger steps. A batch is this many pairs (twice as many rows).
DPO_DEFAULTS: dict[str, Any] = dict(lr=5e-5, min_lr=5e-6, warmup=10, weight_decay=0.0, batch_size=8, eval_every=25,
                                    eval_batches=10, log_every=5, sample_tokens=40, save_every=200,
                                    model={"dropout": 0.0})
DPO_LORA_DEFAULTS: dict[str, Any] = dict(lr=5e-4, min_lr=5e-5)
DEFAULT_BETA = 0.1  # TRL's


@dataclass
class DpoOptions:
    base: str = ""  # the chat run to tune (and the reference)
    data: str = ""  # preference JSONL
    beta: float = DEFAULT_BETA  # how far from the reference the rewards let the model go: larger stays closer
    rpo_alpha: float = 0.0  # weight of the chosen answers' NLL beside the DPO loss (RPO; TRL's rpo_alpha)
    epochs: float = 1.0  # passes over the training pairs (unless max_steps / a time budget end it first)
    val_fraction: float = 0.05
    strict: bool = False  # refuse the run at the first bad row instead of skipping bad rows
    credit: dict[str, str] = dataclasses.field(default_factory=dict)  # license, author, url, note of the data file

    def validate(self) -> DpoOptions:
        if not self.beta > 0:
            raise ConfigError(f"--beta {self.beta}: must be > 0 (TRL's default is {DEFAULT_BETA})")
        if not self.rpo_alpha >= 0:
            raise ConfigError(f"--rpo-alpha {self.rpo_alpha}: must be >= 0 (0 = plain DPO)")
        check_passes(self.epochs, self.val_fraction)
        return self


def dpo_train_config(base: str, out: str, overrides: dict[str, Any]) -> TrainConfig:
    """DPO's defaults, then the given settings (TrainConfig keys), starting from `base`'s weights."""
    return finetune_config(base, out, overrides, defaults=DPO_DEFAULTS, lora_defaults=DPO_LORA_DEFAULTS, name="dpo")


def resume_settings(out: str) -> tuple[DpoOptions, dict[str, Any]]:
    """What a DPO run recorded about itself: its options and its TrainConfig (for --resume)."""
    record = rundir.read_run(out)
    if record.dpo is None:
        raise GoushiError(f"--resume: {out} is not a DPO run (no \"dpo\" in {rundir.CONFIG}); continue it with the "
                          "command that started it")
    base, train_cfg = recorded_settings(out, record)
    d = record.dpo
    return DpoOptions(base=base, data=d.data, beta=d.beta, rpo_alpha=float(d.extra.get("rpo_alpha", 0.0)),
                      val_fraction=d.val_fraction, credit=dict(d.credit)), train_cfg


def load_pref_file(opts: DpoOptions, log: Callable[[str], None]) -> tuple[PrefFile, RunFiles, ChatTemplate]:
    """The starting run (its tokenizer, shape and template) and the preference file read against them."""
    base = open_run(opts.base, role="CHAT_RUN")
    context = base.config.context_length
    template = base.record.template
    prefs = read_pref_file(opts.data, base.tokenizer, template, context, strict=opts.strict)
    report_rows(prefs.problems, len(prefs.rows) + len(prefs.problems), prefs.truncated, context, log)
    if prefs.unpaired:
        log(f"note: {prefs.unpaired} rated answer(s) (👍/👎) have no partner of the other rating for their prompt yet; "
            "they wait, untrained")
    return prefs, base, template


def run_dpo(opts: DpoOptions, cfg: TrainConfig, *, sampler: Sampler | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune; returns the trainer's summary. `cfg` comes from dpo_train_config (or a resumed run's)."""
    opts.validate()
    prefs, base, template = load_pref_file(opts, log)
    if not base.record.is_chat:
        log(f"note: {base.run_dir} is not chat fine-tuned; DPO works best on a run that already answers "
            "(goushi sft first)")
    reference = Reference(None if cfg.lora_rank else opts.base)
    source = PrefData(prefs, base.tokenizer, template, context=base.config.context_length,
                      val_fraction=opts.val_fraction, seed=cfg.seed, beta=opts.beta, reference=reference.name,
                      credit=opts.credit, base_data_dir=base.record.data.dir,
                      base_data_card=base.run_dir / rundir.DATA_CARD, rpo_alpha=opts.rpo_alpha)
    if not cfg.max_steps:  # --epochs; a time budget still ends the run first if it is shorter
        cfg = dataclasses.replace(cfg, max_steps=source.steps_for_epochs(opts.epochs, cfg.batch_size))
    log(f"preference data: {len(source.train_pairs)} training pairs ({source.trained_tokens:,} answer tokens), "
        f"{len(source.val_pairs)} held out; {cfg.batch_size} pairs a step, {cfg.max_steps} steps"
        + (f" or {cfg.time_budget}" if cfg.time_budget else ""))
    log(f"DPO, beta {opts.beta:g}, against {reference.name}: the loss starts at ln 2 = 0.693 and falls as the model "
        "prefers the chosen answers more than the reference does"
        + (f"; plus {opts.rpo_alpha:g} x the chosen answers' NLL (RPO)" if opts.rpo_alpha else ""))
    return train(cfg, source=source, sampler=sampler, progress=progress, log=log,
                 objective=DpoObjective(opts.beta, reference, opts.rpo_alpha))


def mask_table(opts: DpoOptions, line: int) -> str:
    """One pair's two sides as the model trains on them: position, id, piece, and whether it is a target."""
    prefs, base, _ = load_pref_file(dataclasses.replace(opts, strict=False), lambda _m: None)
    row = next((r for r in prefs.rows if r.line == line), None)
    if row is None:
        raise missing_row(prefs.path, line, prefs.problems, prefs.lines)
    lines = [f"{prefs.path}:{line}"]
    for name, side in (("chosen", row.chosen), ("rejected", row.rejected)):
        cut = " (cut to the context: oldest prompt tokens dropped)" if side.truncated else ""
        lines += ["", f"{name}{cut}:", *token_table(base.tokenizer, side.ids, side.mask)]
    lines += ["", f"{sum(row.chosen.mask)} chosen and {sum(row.rejected.mask)} rejected tokens carry the loss: the "
              "final answer and its end-of-turn token. Their log-probabilities are summed per answer; the prompt and "
              "earlier turns are read, never scored."]
    return "\n".join(lines)


__all__ = ["DPO_DEFAULTS", "DPO_LORA_DEFAULTS", "DEFAULT_BETA", "DpoOptions", "dpo_train_config", "resume_settings",
           "load_pref_file", "run_dpo", "mask_table"]
