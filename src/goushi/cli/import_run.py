"""`goushi import HF_DIR --out RUN_DIR`: a Hugging Face GPT-2 or Llama checkpoint as a goushi run, to sample from,
continue training (`goushi train --init-from`) or chat fine-tune (`goushi sft`)."""

from __future__ import annotations

import argparse

from goushi.export import import_hf


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="turn a Hugging Face GPT-2 or Llama model directory into a run directory",
        description="Reads HF_DIR (config.json, weights, tokenizer.json) and writes a run that goushi sample, "
        "train --init-from and sft accept. The vocabulary is renumbered so goushi's special tokens hold ids 0-6; "
        "checkpoints with options goushi's model cannot hold are refused by name.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="a local Hugging Face model directory (save_pretrained output)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to create")
    p.add_argument("--context", type=int, default=None,
                   help="use at most this many positions (default: the model's own; long-context models need "
                   "much memory for the KV cache)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out, notes = import_hf(args.hf_dir, args.out, force=args.force, context=args.context)
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out}/ (try: goushi sample {out} --prompt 今天 --strategy greedy)")
    return 0
