"""`goushi dpo CHAT_RUN --data PREFS.jsonl --out RUN_DIR`: preference tuning, DPO (thin: flags -> goushi.sft.dpo_run)."""

from __future__ import annotations

import argparse

from goushi.cli.sft import (
    TRAIN_FLAGS,
    add_mask_flags,
    add_training_flags,
    credit_args,
    mask_args,
    resumed_config,
    train_overrides,
)
from goushi.cli.train import sample_line
from goushi.errors import GoushiError
from goushi.sft.dpo_run import (
    DEFAULT_BETA,
    DPO_DEFAULTS,
    DPO_LORA_DEFAULTS,
    DpoOptions,
    dpo_train_config,
    mask_table,
    resume_settings,
    run_dpo,
)

FLAGS = {**TRAIN_FLAGS,
         "lr": (float, f"peak learning rate (default {DPO_DEFAULTS['lr']:g}; {DPO_LORA_DEFAULTS['lr']:g} with --lora)"),
         "batch_size": (int, f"preference pairs per step (default {DPO_DEFAULTS['batch_size']})"),
         "max_steps": (int, "stop after this many steps (default: what --epochs takes)"),
         "eval_every": (int, f"evaluate on the held-out pairs every N steps (default {DPO_DEFAULTS['eval_every']})"),
         "seed": (int, "random seed: pair split and order (default 1337)")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dpo", help="preference tuning (DPO): teach a chat run which of two answers is better",
        description="Direct Preference Optimization: tune CHAT_RUN so it prefers the chosen answer of each pair "
        "over the rejected one more than CHAT_RUN itself does (the reference, kept frozen; with --lora it is the "
        "model with its adapters switched off, no second copy). --data is a JSONL file of {\"prompt\" | "
        "\"messages\", \"chosen\", \"rejected\"} rows (TRL's formats; rows of one answer rated with \"completion\" "
        "and \"label\", as the page's feedback.jsonl holds, are paired per prompt). Only the answers' tokens are "
        "scored, with the chat template and masks of `goushi sft` (--show-mask prints them). Logged on held-out "
        "pairs: DPO loss, reward margin, preference accuracy and KL to the reference. Bad rows are reported with "
        "their line and skipped (--strict refuses instead). The result in --out is a chat run like any other.")
    p.add_argument("base", nargs="?", metavar="CHAT_RUN", help="the chat run to tune (written by `goushi sft`)")
    p.add_argument("--data", metavar="FILE", help="preference rows, one JSON object per line")
    p.add_argument("--out", metavar="RUN_DIR", help="where the tuned run is written")
    p.add_argument("--beta", type=float, default=None, help=f"how closely the tuned model stays to the reference: "
                   f"larger keeps it closer (default {DEFAULT_BETA:g}, TRL's)")
    p.add_argument("--rpo-alpha", type=float, default=None, help="add this many times the chosen answers' mean "
                   "next-token loss to the DPO loss (RPO, TRL's rpo_alpha): keeps the chosen answers likely while "
                   "the margin grows (default 0, plain DPO)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training pairs (default 1)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of pairs held out for evaluation "
                   "(default 0.05, at least one pair)")
    add_training_flags(p, FLAGS, run="DPO run")
    add_mask_flags(p, "pair's tokens and which of them are scored", "CHAT_RUN")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.show_mask:
        base, row = mask_args(args, "CHAT_RUN")
        print(mask_table(DpoOptions(base=base, data=args.show_mask), row))
        return 0
    if not args.out:
        raise GoushiError("goushi dpo needs --out RUN_DIR (where the tuned run is written)")
    if args.resume:
        opts, stored = resume_settings(args.out)
        cfg = resumed_config(args, opts.base, stored, dpo_train_config)
        if args.data and args.data != opts.data:
            raise GoushiError(f"--resume: the run was tuned on {opts.data}; drop --data or start a new --out")
        if args.beta is not None and args.beta != opts.beta:
            raise GoushiError(f"--resume: --beta {args.beta:g} differs from the run's {opts.beta:g}; drop it")
        if args.rpo_alpha is not None and args.rpo_alpha != opts.rpo_alpha:
            raise GoushiError(f"--resume: --rpo-alpha {args.rpo_alpha:g} differs from the run's {opts.rpo_alpha:g}; "
                              "drop it")
    else:
        if not args.base:
            raise GoushiError("goushi dpo needs CHAT_RUN, the chat run to tune (e.g. goushi dpo runs/mine-chat --data "
                              "prefs.jsonl --out runs/mine-dpo)")
        if not args.data:
            raise GoushiError("goushi dpo needs --data FILE.jsonl (rows of {\"prompt\", \"chosen\", \"rejected\"})")
        opts = DpoOptions(base=args.base, data=args.data, beta=args.beta if args.beta is not None else DEFAULT_BETA,
                          rpo_alpha=args.rpo_alpha if args.rpo_alpha is not None else 0.0,
                          epochs=args.epochs if args.epochs is not None else 1.0,
                          val_fraction=args.val_fraction if args.val_fraction is not None else 0.05,
                          strict=args.strict, credit=credit_args(args)).validate()
        cfg = dpo_train_config(args.base, args.out, {**train_overrides(args), "force": args.force})
    summary = run_dpo(opts, cfg, sampler=sample_line, progress=not args.no_progress)
    if summary["stop_reason"] == "interrupted":
        print(f"continue with: goushi dpo --out {args.out} --resume")
        return 130
    print(f"tuned chat run: {args.out}; talk to it with: goushi chat {args.out}")
    return 0


__all__ = ["register", "run"]
