"""`goushi sft BASE_RUN --data FILE.jsonl --out RUN_DIR`: chat fine-tuning (thin: flags -> goushi.sft)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from goushi.cli.train import sample_line
from goushi.errors import GoushiError
from goushi.sft import SftOptions, mask_table, run_sft, sft_train_config
from goushi.sft.run import SFT_DEFAULTS, resume_settings
from goushi.train import TrainConfig
from goushi.train.config import merge_dict

DEFAULT_LORA_RANK = 8
# Training settings offered here (the rest of `goushi train`'s are reachable through --config FILE).
TRAIN_FLAGS: dict[str, tuple[type, str]] = {
    "lr": (float, f"peak learning rate (default {SFT_DEFAULTS['lr']:g}; {2e-3:g} with --lora)"),
    "min_lr": (float, "learning rate at the end of the schedule (default lr / 10)"),
    "batch_size": (int, f"packed sequences per step (default {SFT_DEFAULTS['batch_size']})"),
    "grad_accum": (int, "micro-steps per optimizer step (default 1)"),
    "max_steps": (int, "stop after this many steps (default: what --epochs takes)"),
    "time_budget": (str, "stop after this much time, e.g. 90s, 10m; the schedule is planned to end on time"),
    "eval_every": (int, f"validate every N steps (default {SFT_DEFAULTS['eval_every']})"),
    "sample_tokens": (int, "tokens of the sample answer printed at evaluations; 0 = none"),
    "save_every": (int, f"write the `last` checkpoint every N steps (default {SFT_DEFAULTS['save_every']})"),
    "seed": (int, "random seed: row split, order and dropout (default 1337)"),
    "device": (str, "auto | cpu | cuda | cuda:N | mps (default auto)"),
    "dtype": (str, "auto | float32 | bfloat16 | float16 (default auto)"),
}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft", help="chat fine-tuning: teach a trained run to answer (full or LoRA)",
        description="Fine-tune BASE_RUN on conversations so it answers instead of continuing. --data is a JSONL "
        "file with {\"prompt\", \"response\"} (optional \"system\") or {\"messages\": [{\"role\", \"content\"}, ...]} "
        "rows; only the assistant's tokens carry loss. The result in --out is a plain run (LoRA adapters are "
        "merged) that `goushi chat`, `goushi ui` and `goushi sample` use. Bad rows are reported with their line "
        "and skipped (--strict refuses instead). --show-mask prints how one row is trained.")
    p.add_argument("base", nargs="?", metavar="BASE_RUN", help="the run to fine-tune (written by `goushi train`)")
    p.add_argument("--data", metavar="FILE", help="chat rows, one JSON object per line")
    p.add_argument("--out", metavar="RUN_DIR", help="where the chat run is written")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training rows (default 3)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of rows held out for validation "
                   "(default 0.05, at least one row)")
    add_training_flags(p, TRAIN_FLAGS, run="chat run")
    add_mask_flags(p, "row's tokens and which of them are trained", "BASE_RUN")
    p.set_defaults(func=run)


def add_mask_flags(p: argparse.ArgumentParser, shows: str, run: str) -> None:
    m = p.add_argument_group("look at the loss mask")
    m.add_argument("--show-mask", metavar="FILE", help=f"print one {shows}, then exit")
    m.add_argument("--row", type=int, metavar="LINE", help="--show-mask: the row's line number in FILE (1 = first)")
    m.add_argument("--base", dest="mask_base", metavar=run, help="--show-mask: whose tokenizer and context")


def add_training_flags(p: argparse.ArgumentParser, flags: dict[str, tuple[type, str]], *, run: str) -> None:
    """The flags a fine-tuning command shares with `goushi sft`: LoRA, bad rows, credit, resume, training settings."""
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the attention and MLP projections "
                   "instead of every weight (far fewer parameters); merged into the weights when saved")
    p.add_argument("--lora-rank", type=int, default=None, help=f"adapter rank (default {DEFAULT_LORA_RANK}; implies --lora)")
    p.add_argument("--lora-alpha", type=float, default=None, help="adapter scale alpha/rank (default 2 x rank)")
    p.add_argument("--strict", action="store_true", help="refuse the run at the first bad row instead of skipping it")
    for k in ("license", "author", "url", "note"):
        p.add_argument(flag_name(k), help=f"{k} of the data file, credited in the model card")
    p.add_argument("--resume", action="store_true", help=f"continue the {run} in --out exactly where it stopped")
    p.add_argument("--force", action="store_true", help="replace the run in a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    t = p.add_argument_group("training")
    for name, (typ, help_) in flags.items():
        t.add_argument(flag_name(name), dest=name, type=typ, default=None, help=help_)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig settings from the training and LoRA flags that were given (`goushi sft` and `goushi dpo`)."""
    out = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if args.lora or args.lora_rank is not None or args.lora_alpha is not None:
        out["lora_rank"] = args.lora_rank if args.lora_rank is not None else DEFAULT_LORA_RANK
        if args.lora_alpha is not None:
            out["lora_alpha"] = args.lora_alpha
    if "lr" in out and "min_lr" not in out:
        out["min_lr"] = out["lr"] / 10
    return out


def mask_args(args: argparse.Namespace, run: str = "BASE_RUN") -> tuple[str, int]:
    """--show-mask's (run whose tokenizer and context encode the row, line), or what is missing."""
    base = args.mask_base or args.base
    if not base:
        raise GoushiError(f"--show-mask needs --base {run} (whose tokenizer and context the row is encoded with)")
    if args.row is None:
        raise GoushiError("--show-mask needs --row LINE (the row's line number in the file, 1 = first)")
    return base, args.row


def _show_mask(args: argparse.Namespace) -> int:
    base, row = mask_args(args)
    print(mask_table(SftOptions(base=base, data=args.show_mask), row))
    return 0


def resumed_config(args: argparse.Namespace, base: str, stored: dict[str, Any],
                   defaults: Callable[[str, str, dict[str, Any]], TrainConfig]) -> TrainConfig:
    """A resumed fine-tune's settings: the command's defaults, what the run recorded, then the flags given now
    (LoRA's shape may not change)."""
    if args.force:
        raise GoushiError("--resume and --force together make no sense; --resume continues a run, --force replaces it")
    given = train_overrides(args)
    for k in ("lora_rank", "lora_alpha"):
        if k in given and given[k] != stored.get(k):
            raise GoushiError(f"--resume: {flag_name(k)} {given[k]} differs from the run's {stored.get(k)}; drop it")
    return merge_dict(merge_dict(defaults(base, args.out, {}), stored, source=f"{args.out}/config.json"),
                      {**given, "resume": True}, source="command line").validate()


def credit_args(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in ("license", "author", "url", "note") if getattr(args, k)}


def run(args: argparse.Namespace) -> int:
    if args.show_mask:
        return _show_mask(args)
    if not args.out:
        raise GoushiError("goushi sft needs --out RUN_DIR (where the chat run is written)")
    log = print
    if args.resume:
        opts, stored = resume_settings(args.out)
        cfg = resumed_config(args, opts.base, stored, sft_train_config)
        if args.data and args.data != opts.data:
            raise GoushiError(f"--resume: the run was tuned on {opts.data}; drop --data or start a new --out")
    else:
        if not args.base:
            raise GoushiError("goushi sft needs BASE_RUN, the run to fine-tune (e.g. goushi sft runs/mine --data "
                              "chat.jsonl --out runs/mine-chat)")
        if not args.data:
            raise GoushiError("goushi sft needs --data FILE.jsonl (rows of {\"prompt\", \"response\"} or {\"messages\"})")
        opts = SftOptions(base=args.base, data=args.data, epochs=args.epochs if args.epochs is not None else 3.0,
                          val_fraction=args.val_fraction if args.val_fraction is not None else 0.05,
                          strict=args.strict, credit=credit_args(args)).validate()
        cfg = sft_train_config(args.base, args.out, {**train_overrides(args), "force": args.force})
    summary = run_sft(opts, cfg, sampler=sample_line, progress=not args.no_progress, log=log)
    if summary["stop_reason"] == "interrupted":
        return 130
    print(f"chat run: {args.out}; talk to it with: goushi chat {args.out}")
    return 0


__all__ = ["register", "run", "TRAIN_FLAGS", "flag_name", "train_overrides", "add_training_flags",
           "mask_args", "resumed_config", "credit_args",
           "add_mask_flags"]
