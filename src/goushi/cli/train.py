"""`goushi train`: train a model on a data directory (thin: flags -> TrainConfig -> goushi.train.train)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from goushi import rundir
from goushi.config import FAMILY_DEFAULTS, MLPS, NORMS, POS_ENCODINGS, PRESETS, ModelConfig, param_counts
from goushi.data import layout as data_layout
from goushi.device import pick_device
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.precision import train_plan
from goushi.run_record import RunRecord
from goushi.tokenizer import Tokenizer
from goushi.train import BatchSource, shape, train
from goushi.train import recipe as recipes
from goushi.train.config import TrainConfig, init_model_config, resolve_model_config, resolve_run_config

# Model fields as flags (over the preset); `family` is a train-level flag, `vocab_size` comes from the data.
MODEL_FLAGS: dict[str, tuple[type, str]] = {
    "vocab_size": (int, "vocabulary size (default: the data's; only needed with --print-config and no --data)"),
    "context_length": (int, "longest sequence the model sees, in tokens (alias --context)"),
    "n_layer": (int, "number of transformer blocks"),
    "n_head": (int, "attention heads per block"),
    "n_kv_head": (int, "key/value heads (grouped-query attention); 0 = same as --n-head"),
    "n_embd": (int, "model width (embedding size); a multiple of --n-head"),
    "mlp_hidden": (int, "MLP hidden width; 0 = automatic (4x width, ~8/3x for swiglu)"),
    "pos_encoding": (str, f"positions: {' | '.join(POS_ENCODINGS)}"),
    "norm": (str, f"normalisation: {' | '.join(NORMS)}"),
    "mlp": (str, f"MLP kind: {' | '.join(MLPS)}"),
    "dropout": (float, "dropout probability (0 for short runs on small data is fine)"),
    "rope_theta": (float, "RoPE base frequency"),
    "norm_eps": (float, "epsilon of the norms"),
}
MODEL_BOOLS = {"tie_embeddings": "share the token embedding with the LM head", "bias": "biases in linear layers and norms",
               "qk_norm": "RMS-normalise queries and keys",
               "attn_dropout": "--dropout on the attention weights too (default, except in the finetune recipe); "
                               "--no-attn-dropout keeps it on the residual branches only, which trains faster on a CPU"}
CHOICES = {"pos_encoding": POS_ENCODINGS, "norm": NORMS, "mlp": MLPS}

TRAIN_FLAGS: dict[str, tuple[type, str]] = {
    "optimizer": (str, "adamw | muon (Muon for hidden matrices, AdamW for the rest); default adamw. On a CPU "
                       "Muon's steps were 2.7x slower and lost at equal time (docs/recipe.md)"),
    "lr": (float, "peak learning rate (default 2e-3)"),
    "min_lr": (float, "learning rate at the end of the schedule (default 2e-4)"),
    "warmup": (int, "warmup steps (default 30, at most a fifth of the run)"),
    "schedule": (str, "cosine | wsd (warmup-stable-decay); default cosine"),
    "decay_frac": (float, "wsd: fraction of the run spent decaying (default 0.2)"),
    "weight_decay": (float, "AdamW/Muon weight decay on weight matrices (default 0.1)"),
    "beta1": (float, "AdamW beta1 (default 0.9)"),
    "beta2": (float, "AdamW beta2 (default 0.95)"),
    "muon_momentum": (float, "Muon momentum (default 0.95)"),
    "embed_lr_mult": (float, "the token table (and an untied head) learns at lr x this (default 1)"),
    "clip": (float, "gradient-norm clipping; 0 = off (default 1.0)"),
    "windows": (str, "any | docs: where training windows start; docs: at the start of the document they fall in, "
                     "as generation and evaluation read one (default any)"),
    "batch_size": (int, "sequences per micro-step, all processes together (default 32)"),
    "grad_accum": (int, "micro-steps per optimizer step (default 1)"),
    "max_steps": (int, "stop after this many optimizer steps"),
    "tokens": (int, "stop after this many training tokens"),
    "time_budget": (str, "stop after this much time, e.g. 90s, 10m, 1.5h; the schedule is planned to end on time"),
    "eval_every": (int, "validate every N steps; 0 = only at the end (default 100)"),
    "eval_batches": (int, "validation batches per evaluation (default 20)"),
    "log_every": (int, "write metrics every N steps (default 10)"),
    "sample_every": (int, "print a sample every N steps; 0 = at every evaluation (default)"),
    "sample_tokens": (int, "tokens per printed sample; 0 = no samples (default 40)"),
    "save_every": (int, "write the `last` checkpoint every N steps (default 500; also at the end and on Ctrl-C)"),
    "patience": (int, "early stopping: stop after N evaluations in a row without a new best validation loss; "
                      "0 = never (default; the fine-tuning recipe sets it)"),
    "serve": (str, "last | best: which weights RUN_DIR/model.safetensors holds when the run ends; best keeps the "
                   "last step's in last.safetensors for --resume (default last; the fine-tuning recipe: best)"),
    "shape": (str, "preset | auto: the preset's shape (and the size flags'), or the largest shape that gets enough "
                   "tokens per parameter in --time-budget at this machine's measured speed (default preset; the big "
                   "corpus recipe: auto)"),
    "seed": (int, "random seed (default 1337)"),
    "device": (str, "auto | cpu | cuda | cuda:N | mps (default auto)"),
    "dtype": (str, "auto | float32 | bfloat16 | float16 (default auto: bf16/fp16 on GPUs; on a CPU bf16 where it has "
                   "native bf16 and a short probe at the model's shapes finds it faster, else fp32; printed at start)"),
}
TRAIN_BOOLS = {"compile": "torch.compile the model, or never (default: on for CUDA; on a CPU only where "
                          "`bench/train_throughput.py --compile` measured that it wins back its compile time within "
                          "this run); falls back to eager mode, with a note, if it fails",
               "doc_mask": "attend only within each document of a training window, as a document is read alone when "
                           "generating or evaluating (default off; the recipes big and finetune: on; 1-3 %% slower "
                           "per step on a Xeon core, bench/doc_mask_speed.py)",
               "activation_checkpointing": "recompute activations in the backward pass: less memory, ~30% slower",
               "fsdp": "under torchrun: shard weights, gradients and optimizer state across the processes (FSDP2) "
                       "instead of a full copy in each (DDP); checkpoints stay plain files"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a data directory",
        description="Train a GPT on DATA_DIR (from `goushi data build`) into RUN_DIR. Settings: preset and family, "
        "then a TOML --config file, then the flags given here; with --time-budget, the budget recipe measured best for "
        "it (--recipe) fills in what you leave out. Ctrl-C saves a checkpoint; --resume continues it.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--data", metavar="DATA_DIR", help="data directory written by `goushi data build`")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write (refused if not empty, unless "
                   "--resume or --force)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="model size: tiny (CPU minutes), small (a CPU hour), "
                   "base (~100M, a GPU); default tiny, or the budget recipe's shape")
    p.add_argument("--family", choices=tuple(k for k in FAMILY_DEFAULTS), help="gpt2 (learned positions, LayerNorm, "
                   "GELU) or llama (RoPE, RMSNorm, SwiGLU, GQA); default gpt2, or the budget recipe's (llama)")
    p.add_argument("--config", metavar="FILE", dest="config_file", help="TOML file with settings (same names as the "
                   "flags, with underscores; model fields flat or under [model])")
    p.add_argument("--init-from", metavar="RUN_DIR", dest="init_from", help="start from the weights (and shape) of "
                   "this run instead of a random preset, e.g. to continue pre-training on new data built with "
                   "`goushi data build --tokenizer-from RUN_DIR`")
    p.add_argument("--recipe", choices=recipes.names(), help="auto (default): a new run with --time-budget gets the "
                   "recipe measured best for its budget and corpus size, under any setting you give (--print-config "
                   "says which and why); none: the plain defaults (gpt2, AdamW, cosine: nanoGPT's classic recipe); "
                   f"or a recipe by name ({', '.join(recipes.RECIPES)}), for any run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--force", action="store_true", help="replace the run in a non-empty --out")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and parameter counts, "
                   "then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    m = p.add_argument_group("model (overrides the preset)")
    for name, (typ, help_) in MODEL_FLAGS.items():
        flags = [_flag(name)] + (["--context"] if name == "context_length" else [])
        m.add_argument(*flags, dest=f"model.{name}", type=typ, choices=CHOICES.get(name), help=help_)
    for name, help_ in MODEL_BOOLS.items():
        m.add_argument(_flag(name), dest=f"model.{name}", action=argparse.BooleanOptionalAction, help=help_)
    t = p.add_argument_group("training")
    for name, (typ, help_) in TRAIN_FLAGS.items():
        choices = {"optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd"), "serve": ("last", "best"),
                   "shape": ("preset", "auto"), "windows": ("any", "docs")}.get(name)
        t.add_argument(_flag(name), dest=name, type=typ, choices=choices, help=help_)
    for name, help_ in TRAIN_BOOLS.items():
        t.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_)
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags actually given (argparse.SUPPRESS leaves the rest out), as TrainConfig keys."""
    out: dict[str, Any] = {}
    model: dict[str, Any] = {}
    skip = {"func", "command", "config_file", "print_config", "no_progress"}
    for k, v in vars(args).items():
        if k in skip:
            continue
        if k.startswith("model."):
            model[k[len("model."):]] = v
        else:
            out[k] = v
    if model:
        out["model"] = model
    return out


def _vocab_for_print(cfg: TrainConfig) -> int:
    if cfg.model.get("vocab_size"):
        return int(cfg.model["vocab_size"])
    if not cfg.data:
        raise GoushiError("--print-config needs --data DATA_DIR (for the vocabulary size) or --vocab-size N")
    meta = data_layout.read_meta(cfg.data)
    try:
        return int(meta["vocab_size"])
    except (KeyError, ValueError, TypeError) as e:
        raise GoushiError(f"{cfg.data}/{data_layout.META}: no usable vocab_size ({e}); rebuild the data directory") from None


def _model_for_print(cfg: TrainConfig) -> ModelConfig:
    if cfg.init_from:
        base = rundir.read_run(cfg.init_from).model
        vocab = _vocab_for_print(cfg) if (cfg.data or cfg.model.get("vocab_size")) else base.vocab_size
        return init_model_config(cfg, base, vocab, grow=bool(cfg.data) and _data_extends_base(cfg))
    return resolve_model_config(cfg, _vocab_for_print(cfg))


def _data_extends_base(cfg: TrainConfig) -> bool:
    """Whether the data was encoded with the base run's tokenizer grown (`goushi data build --extend-vocab`): the
    model then grows to the data's vocabulary, as training will."""
    data_tok = Tokenizer.from_file(Path(cfg.data) / data_layout.TOKENIZER)
    base_tok = Tokenizer.from_file(Path(cfg.init_from) / rundir.TOKENIZER)
    return data_tok.hash() != base_tok.hash() and data_tok.extends(base_tok)


def print_config(cfg: TrainConfig, mc: ModelConfig, why: list[str] | None = None) -> None:
    counts = param_counts(mc)
    print("[train]")
    for k, v in cfg.to_dict().items():
        if k != "model":
            print(f"{k} = {json.dumps(v, ensure_ascii=False)}")
    print("\n[model]")
    for k, v in mc.to_dict().items():
        print(f"{k} = {json.dumps(v)}")
    total = counts["total"]
    print(f"\nparameters: {total:,} total")
    for k in ("embedding", "positions", "blocks"):
        print(f"  {k:<10} {counts[k]:>12,}  ({counts[k] / total:.1%})")
    print(f"embedding share: {counts['embedding'] / total:.1%} (token embedding"
          f"{'' if mc.tie_embeddings else ' + untied LM head'}; vocabulary {mc.vocab_size} x width {mc.n_embd})")
    tokens_per_step = cfg.batch_size * cfg.grad_accum * mc.context_length
    print(f"tokens per step: {tokens_per_step:,}; budget: {cfg.budget_summary()}")
    for line in why or []:
        print(line)


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    cfg, why = resolve_run_config(getattr(args, "config_file", None), overrides)
    if getattr(args, "print_config", False):
        mc = _model_for_print(cfg)
        if shape.wanted(cfg):  # timed as the run would time it (cached per machine), so the shape printed is its
            device = pick_device(cfg.device)
            plan = train_plan(mc, cfg.batch_size, device, cfg.dtype)
            plan.apply_threads()
            mc, lines = shape.for_run(cfg, mc, device, plan.dtype, plan.apply_to)
            why = [*why, *lines]
        print_config(cfg, mc, why)
        return 0
    if not cfg.out:
        raise GoushiError("goushi train needs --out RUN_DIR (where the model is written)")
    if not cfg.data and not cfg.resume:
        raise GoushiError("goushi train needs --data DATA_DIR (build one with `goushi data build`)")
    if not cfg.resume:
        print(why[0])
    summary = train(cfg, sampler=sample_line, progress=not getattr(args, "no_progress", False))
    return 0 if summary["stop_reason"] != "interrupted" else 130


def sample_line(model: nn.Module, source: BatchSource, max_new_tokens: int, seed: int) -> str:
    """The sample `goushi train` and `goushi sft` print at evaluations (a goushi.train.Sampler): a short
    continuation of a prompt in the data's style, or the answer to a conversation, through the one generation
    engine (its own random generator: samples never change the run)."""
    prompt = source.sample_prompt()
    sc = SampleConfig(strategy="sample", temperature=0.8, max_new_tokens=max_new_tokens, seed=seed)
    fields = source.record_fields()  # a chat source's: the samples are answers in its template
    engine = Engine(model, source.tokenizer, record=RunRecord(model=model.config, **fields) if fields else None)
    if isinstance(prompt, str):
        text = engine.generate([prompt], sc)[0].text
    else:
        text = engine.chat(prompt, sc)[0].text
        prompt = prompt[-1]["content"] + " →"
    return (prompt + "|" + text).replace("\n", " ⏎ ")


__all__ = ["register", "run", "overrides_from_args", "sample_line"]
