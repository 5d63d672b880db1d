"""`goushi sft`: fine-tune a base run on chat rows, with the same trainer, checkpoints, budgets, metrics and
model card as pre-training. The result is a plain run directory (LoRA adapters merged) whose config.json
has "sft" and "chat_template", so the engine, `goushi chat` and the page treat it as a chat run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.chat import ChatTemplate
from goushi.checkpoint import RunFiles, open_run
from goushi.errors import ConfigError, GoushiError
from goushi.run_record import RunRecord
from goushi.sft.data import MAX_REPORTED, ChatData, ChatFile, read_chat_file
from goushi.tokenizer import Tokenizer
from goushi.train import Sampler, TrainConfig, train
from goushi.train.config import merge_dict

# Fine-tuning starts from a trained model: a gentler step than pre-training's, no weight decay pulling
# the learned weights to zero, short warmup. LoRA adapters start at zero and need larger steps.
SFT_DEFAULTS: dict[str, Any] = dict(lr=3e-4, min_lr=3e-5, warmup=10, weight_decay=0.0, batch_size=16, eval_every=50,
                                    eval_batches=10, log_every=5, sample_tokens=40, save_every=200)
LORA_DEFAULTS: dict[str, Any] = dict(lr=2e-3, min_lr=2e-4)


@dataclass
class SftOptions:
    base: str = ""  # the run to fine-tune
    data: str = ""  # chat JSONL
    epochs: float = 3.0  # passes over the training rows (unless max_steps / tokens / a time budget end it first)
    val_fraction: float = 0.05
    strict: bool = False  # refuse the run at the first bad row instead of skipping bad rows
    credit: dict[str, str] = dataclasses.field(default_factory=dict)  # license, author, url, note of the data file

    def validate(self) -> SftOptions:
        check_passes(self.epochs, self.val_fraction)
        return self


def check_passes(epochs: float, val_fraction: float) -> None:
    """ConfigError unless --epochs and --val-fraction make sense."""
    if not epochs > 0:
        raise ConfigError(f"--epochs {epochs}: must be > 0")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: must be in (0, 1)")


def finetune_config(base: str, out: str, overrides: dict[str, Any], *, defaults: dict[str, Any],
                    lora_defaults: dict[str, Any], name: str) -> TrainConfig:
    """A fine-tune's defaults (`name`'s; LoRA's on top with lora_rank), then the given settings (TrainConfig keys),
    starting from `base`'s weights."""
    settings = {**defaults, **(lora_defaults if overrides.get("lora_rank") else {})}
    cfg = merge_dict(TrainConfig(), settings, source=f"{name} defaults")
    cfg = merge_dict(cfg, overrides, source="command line")
    return dataclasses.replace(cfg, init_from=base, out=out, data="").validate()


def sft_train_config(base: str, out: str, overrides: dict[str, Any]) -> TrainConfig:
    """SFT's defaults, then the given settings (TrainConfig keys), starting from `base`'s weights."""
    return finetune_config(base, out, overrides, defaults=SFT_DEFAULTS, lora_defaults=LORA_DEFAULTS, name="sft")


def recorded_settings(out: str, record: RunRecord) -> tuple[str, dict[str, Any]]:
    """(the run it started from, its TrainConfig settings but where it writes and reads), for --resume."""
    train = dict(record.train)
    base = merge_dict(TrainConfig(), train, source=f"{out}/{rundir.CONFIG}").init_from
    for k in ("out", "data", "init_from"):
        train.pop(k, None)
    return base, train


def resume_settings(out: str) -> tuple[SftOptions, dict[str, Any]]:
    """What a chat run recorded about itself: its SFT options and its TrainConfig (for --resume)."""
    record = rundir.read_run(out)
    if record.sft is None:
        raise GoushiError(f"--resume: {out} is not a chat fine-tuning run (no \"sft\" in {rundir.CONFIG}); continue "
                          "it with `goushi train --out ... --resume`")
    base, train = recorded_settings(out, record)
    return SftOptions(base=base, data=record.sft.data, val_fraction=record.sft.val_fraction,
                      credit=dict(record.sft.credit)), train


def load_chat_file(opts: SftOptions, log: Callable[[str], None]) -> tuple[ChatFile, RunFiles, ChatTemplate]:
    """The base run (its tokenizer and shape) and its template, and the data file read against them (problems
    reported)."""
    base = open_run(opts.base, role="BASE_RUN")
    context = base.config.context_length
    template = base.record.template  # a chat run tuned again keeps its template; else ChatML
    chat = read_chat_file(opts.data, base.tokenizer, template, context, strict=opts.strict)
    report_rows(chat.problems, len(chat.rows) + len(chat.problems), chat.truncated, context, log)
    return chat, base, template


def report_rows(problems: list[str], total: int, truncated: int, context: int, log: Callable[[str], None]) -> None:
    """What the log says about a data file's bad rows (the first few by file and line, then a count) and cut ones."""
    for problem in problems[:MAX_REPORTED]:
        log(f"skipped {problem}")
    if len(problems) > MAX_REPORTED:
        log(f"... and {len(problems) - MAX_REPORTED} more bad rows")
    if problems:
        log(f"skipped {len(problems)} bad row(s) of {total} (--strict refuses instead)")
        too_long = sum("longer than the context" in p for p in problems)
        if too_long:
            log(f"note: {too_long} of them have an answer longer than the model's context ({context} tokens); "
                "a base run pre-trained with a longer --context keeps them")
    if truncated:
        log(f"note: {truncated} row(s) were longer than the context ({context} tokens); their oldest "
            f"prompt tokens were cut, the answers kept whole")


def run_sft(opts: SftOptions, cfg: TrainConfig, *, sampler: Sampler | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune; returns the trainer's summary. `cfg` comes from sft_train_config (or a resumed run's);
    `sampler` writes the sample answers printed at evaluations (see goushi.train.train)."""
    opts.validate()
    chat, base, template = load_chat_file(opts, log)
    source = ChatData(chat, base.tokenizer, template, context=base.config.context_length,
                      val_fraction=opts.val_fraction, seed=cfg.seed, credit=opts.credit,
                      base_data_dir=base.record.data.dir,
                      base_data_card=base.run_dir / rundir.DATA_CARD)
    if not cfg.max_steps:  # --epochs; a token or time budget still ends the run first if it is shorter
        cfg = dataclasses.replace(cfg, max_steps=source.steps_for_epochs(opts.epochs, cfg.batch_size))
    log(f"chat data: {len(source.train_rows)} training rows ({source.trained_tokens:,} answer tokens trained), "
        f"{len(source.val_rows)} held out; {source.sequences_per_epoch()} packed sequences per epoch of "
        f"{cfg.batch_size}-row batches; {cfg.max_steps} steps" + (f" or {cfg.time_budget}" if cfg.time_budget else ""))
    return train(cfg, source=source, sampler=sampler, progress=progress, log=log)


def mask_table(opts: SftOptions, line: int, log: Callable[[str], None] = print) -> str:
    """One row's tokens as the model trains on them: position, id, piece, and whether it is a target."""
    chat, base, _ = load_chat_file(dataclasses.replace(opts, strict=False), lambda _m: None)
    row = next((r for r in chat.rows if r.line == line), None)
    if row is None:
        raise missing_row(chat.path, line, chat.problems, chat.lines)
    lines = [f"{chat.path}:{line}" + (" (cut to the context: oldest prompt tokens dropped)" if row.truncated else "")]
    lines += token_table(base.tokenizer, row.ids, row.mask)
    n = sum(row.mask)
    lines.append(f"{n} of {len(row.ids)} tokens trained: the assistant's answers and their end-of-turn token. Each "
                 "is predicted from the tokens before it; nothing else carries loss.")
    return "\n".join(lines)


def missing_row(path: Path, line: int, problems: list[str], lines: int) -> GoushiError:
    """Why --show-mask --row LINE has nothing to show: the row's own problem, or that the file has no such line."""
    bad = next((p for p in problems if p.startswith(f"{path}:{line}:")), None)
    if bad:
        return GoushiError(bad)
    return GoushiError(f"--row {line}: {path} has no row on line {line} (it has {lines} lines)")


def token_table(tok: Tokenizer, ids: list[int], mask: list[bool]) -> list[str]:
    """Lines of position, id, piece and whether the token is a training target."""
    width = max(len("piece"), *(len(_visible(tok.id_to_piece(i))) for i in ids))
    lines = [f"{'pos':>5}  {'id':>6}  {'piece':<{width}}  trained"]
    for pos, (i, trained) in enumerate(zip(ids, mask, strict=True)):
        lines.append(f"{pos:>5}  {i:>6}  {_visible(tok.id_to_piece(i)):<{width}}  {'✓' if trained else ''}")
    return lines


def _visible(piece: str) -> str:
    return piece.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥")


__all__ = ["SFT_DEFAULTS", "LORA_DEFAULTS", "SftOptions", "sft_train_config", "resume_settings", "run_sft",
           "mask_table", "load_chat_file", "finetune_config", "recorded_settings", "check_passes", "report_rows", "missing_row", "token_table"]
