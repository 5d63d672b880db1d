"""Model quality for a fixed wall-clock budget: bits per character on held-out text, one row per configuration.

    .venv/bin/python bench/quality_budget.py CORPUS [CORPUS ...] --budget 10m [--configs classic,default,...]
        [--heldout FILE | --heldout-frac 0.03] [--work DIR] [--poems N] [--equal-tokens [--jobs N]] [--list]

A row is a configuration (`--list`), optionally at its own budget: `--configs classic,default,default@30m`.
`default` is the budget recipe `goushi train --time-budget B` picks by itself for the data (goushi.train.recipe).

CORPUS: text files or folders of .txt files (documents separated by blank lines where a file has them, else one
per line). Unless --heldout names a file, a seeded share of the documents (--heldout-frac) is set aside as the
held-out file and never trained on. Every configuration is trained by the real command (`goushi train
--time-budget B`, one after another, same machine, same data) and scored by `goushi eval RUN --text HELDOUT`, so
bits per character compare across char and BPE tokenizers. The classic baseline (GPT-2 architecture, AdamW,
warmup + cosine, char level: nanoGPT's recipe, which is what `goushi train` did before the budget recipes) is always
run in the same invocation, and every row prints its ratio against it. --poems N samples N poems (greedy-free,
temperature 0.8) from each run and reports the share in the poem format (a 《title》 line, then lines of 5- or
7-character clauses).

Prints the CPU it ran on. Wall-clock budgets are only comparable on a machine with the same other load for every
row. On a shared machine use --equal-tokens: every configuration's training speed is measured first, in this
process, interleaved (round after round, best round kept, so other load hits all of them alike), and each is then
trained for the tokens it would process in the budget at that speed (`--tokens N`, the schedule planned for N):
the same comparison as wall clock on a quiet machine, without its noise. The speed is measured at the precision
and thread count `goushi train` picks (goushi.precision), kept per data and flags in WORK/speeds.json (the best
ever seen). --measure-only stops after measuring (do it on a quiet machine); --jobs N then trains N rows at once,
each on its share of the cores: the token counts already fix what each row trains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOUSHI = [sys.executable, "-m", "goushi.cli"]

# name -> (tokenizer kind, goushi train flags). "classic" is the baseline every invocation runs. A kind is "char"
# (every character), "charMAX" (the vocabulary capped at MAX), "bpe[VOCAB][-PRE]" (BPE with VOCAB tokens, default
# --bpe-vocab, behind the pre-tokenizer PRE of goushi.tokenizer BPE_PRES, default han2: the two-character rule
# every "bpe" figure so far was measured with) or "default" (what `goushi data build` makes with no tokenizer flags).
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "classic": ("char", ["--family", "gpt2", "--preset", "tiny", "--optimizer", "adamw", "--schedule", "cosine",
                         "--lr", "2e-3", "--batch-size", "32", "--dropout", "0"]),
    # one switch at a time on top of the classic recipe
    "rope": ("char", ["--family", "gpt2", "--preset", "tiny", "--pos-encoding", "rope"]),
    "llama": ("char", ["--family", "llama", "--preset", "tiny"]),
    "llama-qknorm": ("char", ["--family", "llama", "--preset", "tiny", "--qk-norm"]),
    "relu2": ("char", ["--family", "llama", "--preset", "tiny", "--mlp", "relu2"]),
    "untied": ("char", ["--family", "llama", "--preset", "tiny", "--no-tie-embeddings"]),
    "muon": ("char", ["--family", "llama", "--preset", "tiny", "--optimizer", "muon"]),
    "wsd": ("char", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd"]),
    "lr3e-3": ("char", ["--family", "llama", "--preset", "tiny", "--lr", "3e-3"]),
    "lr1e-3": ("char", ["--family", "llama", "--preset", "tiny", "--lr", "1e-3"]),
    "batch16": ("char", ["--family", "llama", "--preset", "tiny", "--batch-size", "16"]),
    "batch64": ("char", ["--family", "llama", "--preset", "tiny", "--batch-size", "64"]),
    "ctx256": ("char", ["--family", "llama", "--preset", "tiny", "--context", "256", "--batch-size", "16"]),
    "ctx64": ("char", ["--family", "llama", "--preset", "tiny", "--context", "64", "--batch-size", "64"]),
    "dropout0.1": ("char", ["--family", "llama", "--preset", "tiny", "--dropout", "0.1"]),
    # regularisation for repeated data (a 10-minute run passes over a 1.4 M-character corpus ~15 times)
    "classic-d0.1": ("char", ["--family", "gpt2", "--preset", "tiny", "--optimizer", "adamw", "--schedule", "cosine",
                              "--lr", "2e-3", "--batch-size", "32", "--dropout", "0.1"]),
    # the recipe `short` (since it has weight decay 0.5), and it with other weight decay or dropout
    "short": ("char", ["--recipe", "short"]),
    "short-wd0.1": ("char", ["--recipe", "short", "--weight-decay", "0.1"]),
    "short-wd1": ("char", ["--recipe", "short", "--weight-decay", "1.0"]),
    "short-d0.1": ("char", ["--recipe", "short", "--weight-decay", "0.1", "--dropout", "0.1"]),
    "classic-wd0.5": ("char", ["--family", "gpt2", "--preset", "tiny", "--optimizer", "adamw", "--schedule", "cosine",
                               "--lr", "2e-3", "--batch-size", "32", "--dropout", "0", "--weight-decay", "0.5"]),
    "bpe": ("bpe", ["--family", "llama", "--preset", "tiny"]),
    # the single switches that won at 2 minutes on poetry, together
    "combo": ("bpe", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3"]),
    # the same behind llama.cpp's deepseek-v3 pre-tokenizer (whole CJK runs, exported exactly to GGUF)
    "combo-dsv3": ("bpe-deepseek-v3", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3"]),
    "combo-char": ("char", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3"]),
    # the combination, varied: vocabulary, learning rate, size for longer budgets
    "combo-8k": ("bpe8192", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3"]),
    "combo-2k": ("bpe2048", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3"]),
    "combo-lr5e-3": ("bpe", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "5e-3"]),
    "combo-w192": ("bpe", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "3e-3",
                           "--n-layer", "6", "--n-embd", "192", "--n-head", "6"]),
    "combo-w256": ("bpe", ["--family", "llama", "--preset", "tiny", "--schedule", "wsd", "--lr", "2e-3",
                           "--n-layer", "6", "--n-embd", "256", "--n-head", "8"]),
    # size for the budget
    "narrow-deep": ("char", ["--family", "llama", "--preset", "tiny", "--n-layer", "6", "--n-embd", "96",
                             "--n-head", "4"]),
    "wide": ("char", ["--family", "llama", "--preset", "tiny", "--n-layer", "4", "--n-embd", "192",
                      "--n-head", "6"]),
    "w192-l6": ("char", ["--family", "llama", "--preset", "tiny", "--n-layer", "6", "--n-embd", "192",
                         "--n-head", "6"]),
    "w256-l6": ("char", ["--family", "llama", "--preset", "tiny", "--n-layer", "6", "--n-embd", "256",
                         "--n-head", "8"]),
    "small": ("char", ["--family", "llama", "--preset", "small", "--batch-size", "16"]),
    # big corpora (tens of millions of characters): the recipes and the vocabulary, capped char or BPE
    "big": ("char", ["--recipe", "big"]),
    "big-c6k": ("char6000", ["--recipe", "big"]),
    "big-c4k": ("char4000", ["--recipe", "big"]),
    "big-bpe8k": ("bpe8192-deepseek-v3", ["--recipe", "big"]),
    "big-long": ("char", ["--recipe", "big-long"]),
    "big-long-c6k": ("char6000", ["--recipe", "big-long"]),
    "big-long-bpe8k": ("bpe8192-deepseek-v3", ["--recipe", "big-long"]),
    "big-c6k-muon": ("char6000", ["--recipe", "big", "--optimizer", "muon"]),
    "big-long-c6k-muon": ("char6000", ["--recipe", "big-long", "--optimizer", "muon"]),
    "big-c4k-muon": ("char4000", ["--recipe", "big", "--optimizer", "muon"]),
    "big-c4k-muon-w192": ("char4000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd", "192",
                                       "--n-head", "6"]),
    "big-c6k-muon-lr5e-3": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--lr", "5e-3"]),
    "big-c6k-muon-w192": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd", "192",
                                       "--n-head", "6"]),
    # a longer cooldown: warmup-stable-decay spending half the run decaying, to 1 % of the peak
    "big-c6k-muon-dec0.5": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--decay-frac", "0.5",
                                         "--min-lr", "3e-5"]),
    "big-c6k-muon-w192-dec0.5": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4",
                                              "--n-embd", "192", "--n-head", "6", "--decay-frac", "0.5",
                                              "--min-lr", "3e-5"]),
    "big-c6k-muon-w256-dec0.5": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4",
                                              "--n-embd", "256", "--n-head", "8", "--decay-frac", "0.5",
                                              "--min-lr", "3e-5"]),
    "big-c4k-muon-w192-dec0.5": ("char4000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4",
                                              "--n-embd", "192", "--n-head", "6", "--decay-frac", "0.5",
                                              "--min-lr", "3e-5"]),
    # the 4 x 192 shape with the recipe's own settings (its cooldown), one switch at a time
    "big-w192-untied": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                     "--no-tie-embeddings"]),
    "big-w192-relu2": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                    "--mlp", "relu2"]),
    "big-l6w160": ("char6000", ["--recipe", "big", "--n-layer", "6", "--n-embd", "160", "--n-head", "5"]),
    "big-w192-b16": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                  "--batch-size", "16"]),
    # the 4 x 192 row's own flags with one free setting changed: the same speed, so exactly the same tokens
    "big-c6k-muon-w192-dec0.5-lr2e-3": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4",
                                                     "--n-embd", "192", "--n-head", "6", "--decay-frac", "0.5",
                                                     "--min-lr", "2e-5", "--lr", "2e-3"]),
    "big-w192-elr3": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                   "--embed-lr-mult", "3"]),
    "big-w192-b16-elr3": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                       "--batch-size", "16", "--embed-lr-mult", "3"]),
    "big-w192-b16-lr2e-3": ("char6000", ["--recipe", "big", "--n-layer", "4", "--n-embd", "192", "--n-head", "6",
                                         "--batch-size", "16", "--lr", "2e-3", "--min-lr", "2e-5"]),
    # documents read alone: attention within each document of a window (--doc-mask), windows from documents' starts
    "big-w192-mask": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd", "192",
                                   "--n-head", "6", "--decay-frac", "0.5", "--min-lr", "3e-5", "--doc-mask"]),
    "big-w192-docs": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd", "192",
                                   "--n-head", "6", "--decay-frac", "0.5", "--min-lr", "3e-5", "--windows", "docs",
                                   "--no-doc-mask"]),
    "big-w192-docs-mask": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd",
                                        "192", "--n-head", "6", "--decay-frac", "0.5", "--min-lr", "3e-5",
                                        "--windows", "docs", "--doc-mask"]),
    "big-w192-nomask": ("char6000", ["--recipe", "big", "--optimizer", "muon", "--n-layer", "4", "--n-embd", "192",
                                     "--n-head", "6", "--decay-frac", "0.5", "--min-lr", "3e-5", "--no-doc-mask"]),
    # what `goushi train --time-budget B` picks by itself (the budget recipes): no flags but the budget
    "default": ("default", []),
}
BPE_KIND = re.compile(r"bpe(\d*)(?:-(.+))?")
CHAR_KIND = re.compile(r"char(\d*)")  # char[MAX]: characters, the vocabulary capped at MAX (rarer ones as bytes)
CLAUSE = re.compile(r"[，。？！；、,.?!;]")


def base_name(row: str) -> str:
    """"default@30m" -> "default": a row is a configuration, optionally at its own budget."""
    return row.split("@", 1)[0]


def row_budget(row: str, budget: str) -> str:
    return row.split("@", 1)[1] if "@" in row else budget


def config_flags(name: str, budget: str, data_dir: Path) -> list[str]:
    """The configuration's train flags; `default` names the budget recipe `goushi train --time-budget BUDGET`
    would pick for this data, so that it also applies when the run is given --tokens instead."""
    flags = CONFIGS[name][1]
    if name == "default":
        from goushi.data import layout
        from goushi.train.config import parse_duration
        from goushi.train.recipe import choose

        recipe = choose(parse_duration(budget), int(layout.read_meta(data_dir)["train_chars"]))
        flags = ["--recipe", recipe.name if recipe is not None else "none"]
    return flags


# train flags that change neither the model nor the work per step, so not the speed
FREE_FLAGS = ("--lr", "--min-lr", "--weight-decay", "--schedule", "--warmup", "--decay-frac", "--beta1", "--beta2",
              "--embed-lr-mult", "--windows")


def shape_key(setup: tuple[Path, list[str]]) -> tuple[int, tuple[str, ...]]:
    """What a row's speed depends on: its flags but the free ones, and of its data only the vocabulary size (the
    speed is measured on random batches), so that data folders differing only in their tokenizer's pre-tokenizer
    share one speed and so one token budget."""
    from goushi.data import layout

    data_dir, flags = setup
    kept, i = [], 0
    while i < len(flags):
        if flags[i] in FREE_FLAGS:
            i += 2
            continue
        kept.append(flags[i])
        i += 1
    return int(layout.read_meta(data_dir)["vocab_size"]), tuple(kept)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if re.search(r"\n[ \t]*\n", text):
        docs = re.split(r"\n[ \t]*\n", text)
    else:
        docs = text.splitlines()
    return [d.strip() for d in docs if d.strip()]


def corpus_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # licence texts (../shared/data/*/LICENSES/) are not corpus text
            out += sorted(f for f in p.rglob("*.txt") if f.is_file()
                          and not any(part.lower() in ("licenses", "licences", "license") for part in
                                      f.relative_to(p).parts[:-1]))
        elif p.is_file():
            out.append(p)
        else:
            sys.exit(f"error: {p}: no such file or folder")
    if not out:
        sys.exit(f"error: no .txt files in {' '.join(paths)}")
    return out


def run(cmd: list[str], log: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if log is not None:
        log.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr, encoding="utf-8")
    if res.returncode != 0:
        sys.exit(f"error: {shlex.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Path]]:
    """Train text (one file per corpus file, blank-line separated) and the held-out file."""
    files = corpus_files(args.corpus)
    train_dir = work / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    heldout = Path(args.heldout) if args.heldout else work / "heldout.txt"
    held_docs: list[str] = []
    rng = random.Random(args.seed)
    for i, f in enumerate(files):
        docs = documents(f)
        if not args.heldout:
            rng.shuffle(docs)
            k = max(1, int(len(docs) * args.heldout_frac))
            held_docs += docs[:k]
            docs = docs[k:]
        (train_dir / f"{i:02d}_{f.stem}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    if not args.heldout:
        heldout.write_text("\n\n".join(held_docs) + "\n", encoding="utf-8")
    sources = work / "sources.toml"
    if not sources.exists():
        run(GOUSHI + ["data", "add", str(train_dir), "--id", "corpus", "--license", "see the corpus' SOURCES.md",
                      "--sources", str(sources)])
    data: dict[str, Path] = {}
    kinds = sorted({CONFIGS[base_name(c)][0] for c in args.configs})
    for kind in kinds:
        bpe = BPE_KIND.fullmatch(kind)
        vocab, pre = (int(bpe.group(1) or args.bpe_vocab), bpe.group(2) or "han2") if bpe else (0, "")
        # han2 keeps the folder name it always had, so earlier work folders are reused
        d = work / (f"data-bpe{vocab}" + ("" if pre == "han2" else f"-{pre}") if bpe else f"data-{kind}")
        if not (d / "meta.json").exists():
            cap = CHAR_KIND.fullmatch(kind)
            extra = (["--tokenizer", "bpe", "--vocab-size", str(vocab), "--bpe-pre", pre] if bpe
                     else ["--tokenizer", "char", "--max-vocab", cap.group(1) or "0"] if cap else [])
            run(GOUSHI + ["data", "build", "--sources", str(sources), "--out", str(d), "--force",
                          "--val-fraction", "0.02"] + extra,
                log=work / f"build-{d.name}.log")
        data[kind] = d
    return heldout, data


def poem_format(texts: list[str]) -> float:
    """Share of samples in the poem format: a 《title》 line, then at least two verse lines whose clauses are all
    5 or 7 characters long."""
    ok = 0
    for t in texts:
        lines = [ln.strip() for ln in t.strip().splitlines() if ln.strip()]
        if len(lines) < 3 or not re.match(r"^《[^》]+》", lines[0]):
            continue
        verse = lines[1:-1] if len(lines) > 3 else lines[1:]  # the last line may be cut by the token limit
        clauses = [c for ln in verse for c in CLAUSE.split(ln) if c]
        if len(verse) >= 2 and clauses and all(len(c) in (5, 7) for c in clauses):
            ok += 1
    return ok / len(texts) if texts else float("nan")


def sample_poems(run_dir: Path, n: int) -> list[str]:
    out = run(GOUSHI + ["sample", str(run_dir), "--prompt", "《", "--strategy", "sample", "--num-samples", str(n),
                        "--max-new-tokens", "80", "--temperature", "0.8", "--seed", "0", "--json"])
    texts: list[str] = []
    for line in out.splitlines():
        if line.strip():
            obj = json.loads(line)
            texts += ["《" + (s["text"] if isinstance(s, dict) else str(s)) for s in obj.get("generations", [])]
    return texts


def train_config_for(flags: list[str], data_dir: Path):
    """TrainConfig and ModelConfig that `goushi train --data DATA_DIR FLAGS` would use (with --init-from, the
    base's shape, grown to the data's vocabulary)."""
    from goushi.cli import build_parser
    from goushi.cli.train import overrides_from_args
    from goushi.data import layout
    from goushi.tokenizer import Tokenizer
    from goushi.train.config import run_config, run_model_config

    args = build_parser().parse_args(["train", "--data", str(data_dir), "--out", "/nonexistent"] + flags)
    cfg = run_config(None, overrides_from_args(args))
    tokenizer = Tokenizer.from_file(Path(data_dir) / "tokenizer.json")
    return cfg, run_model_config(cfg, int(layout.read_meta(data_dir)["vocab_size"]), tokenizer, None)[0]


# Settings added after rows were first kept: a run whose config.json lacks one trained with this value.
LATER_FIELDS = {"shape": "preset", "windows": "any", "doc_mask": False}


def trained_as_now(out: Path, train_args: list[str]) -> bool:
    """Whether the run in `out` trained with what `goushi train TRAIN_ARGS` resolves to today. The command alone
    does not say: a recipe (--recipe big) may have changed its settings since the run was kept."""
    from goushi.cli import build_parser
    from goushi.cli.train import overrides_from_args
    from goushi.train.config import run_config
    from goushi.train.recipe import RECIPES

    path = out / "config.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text(encoding="utf-8")).get("train", {})
    cfg = run_config(None, overrides_from_args(build_parser().parse_args(["train", *train_args])))
    keys = {k for r in RECIPES.values() for k in r.settings if k != "model"} | set(LATER_FIELDS)
    return all(saved.get(k, LATER_FIELDS.get(k)) == getattr(cfg, k) for k in sorted(keys))


def heldout_score(out: Path, heldout: Path, reused: bool, env: dict | None) -> dict:
    """`goushi eval RUN --text HELDOUT --json`, kept beside the run: a reused row (same command, so the same
    weights) is not scored again while the held-out file is unchanged (3 to 7 minutes of a core each)."""
    # by content: each invocation writes the held-out file again (the same seeded split, a new mtime)
    key = {"heldout": str(heldout.resolve()), "sha256": hashlib.sha256(heldout.read_bytes()).hexdigest()}
    kept = out / "bench-eval.json"
    if reused and kept.exists():
        saved = json.loads(kept.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["result"]
    res = json.loads(run(GOUSHI + ["eval", str(out), "--text", str(heldout), "--json"], env=env))
    tmp = kept.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": res}, ensure_ascii=False), encoding="utf-8")
    tmp.replace(kept)
    return res


def measure_speeds(setups: dict[str, tuple[Path, list[str]]], rounds: int = 4, steps: int = 3,
                   compiled: bool = False, compile_s: dict[str, float] | None = None) -> dict[str, float]:
    """Training tokens/s of each configuration on this machine: forward, backward, clip and optimiser step on
    random batches of the configuration's shape, interleaved across configurations, best round kept. `compiled`:
    the model under torch.compile, as `goushi train --compile` runs it (compiled before the rounds); the seconds
    its first step took beyond a compiled step's go into `compile_s`, so that a row's budget can pay for them."""
    import torch

    from goushi.model import GPT
    from goushi.precision import train_plan
    from goushi.tokenizer import Tokenizer
    from goushi.train.optim import build_optimizers, muon_ns_dtype

    torch.manual_seed(0)
    jobs, plans = {}, {}
    for name, (data_dir, flags) in setups.items():
        cfg, mc = train_config_for(flags, data_dir)
        model = GPT(mc).train()
        xy = torch.randint(0, mc.vocab_size, (cfg.batch_size, mc.context_length + 1))
        # the precision and threads `goushi train` would pick here (goushi.precision; the probe is cached)
        plan = train_plan(mc, cfg.batch_size, torch.device("cpu"))
        opts = build_optimizers(model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                betas=(cfg.beta1, cfg.beta2), device=torch.device("cpu"),
                                ns_dtype=muon_ns_dtype(plan.dtype))
        plan.apply_to(model)
        plans[name] = plan
        net = torch.compile(model) if compiled else model

        # a row that reads each document alone pays for its explicit attention mask (bench/doc_mask_speed.py)
        sep = {"doc_sep": Tokenizer.from_file(data_dir / "tokenizer.json").eot_id} if cfg.doc_mask else {}

        def step(model=net, opts=opts, xy=xy, plan=plan, sep=sep):
            plan.apply_threads()
            with torch.autocast("cpu", dtype=plan.dtype, enabled=plan.dtype != torch.float32):
                _, loss = model(xy[:, :-1], xy[:, 1:], **sep)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        step()  # warm up (and compile)
        first = time.perf_counter() - t0
        if compiled:
            step()  # the first step after compiling still pays for lazy initialisation
            t0 = time.perf_counter()
            step()
            if compile_s is not None:
                compile_s[name] = max(0.0, first - (time.perf_counter() - t0))
        jobs[name] = (step, cfg.batch_size * mc.context_length)
    best = {n: float("inf") for n in setups}
    for _ in range(rounds):
        for name, (step, _) in jobs.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - t) / steps)
    for n, plan in plans.items():
        print(f"  {n}: {plan.describe_dtype()}, {plan.threads or torch.get_num_threads()} threads")
    return {n: jobs[n][1] / best[n] for n in setups}


def speed_key(data_dir: Path, flags: list[str], compiled: bool) -> str:
    """WORK/speeds.json's key: the data, the flags, and whether compiled."""
    return f"{data_dir.name} {shlex.join(flags)}" + (" [compiled]" if compiled else "")


def heldout_bpc(res: dict) -> float:
    """Overall bits per character from `goushi eval --json`."""
    return float(res["overall"]["bpc"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", nargs="*", help="text files or folders of .txt files")
    ap.add_argument("--budget", default="2m", help="wall-clock training budget per configuration (default 2m)")
    ap.add_argument("--configs", default="classic,default", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    ap.add_argument("--heldout", help="held-out text file (default: a share of the corpus set aside)")
    ap.add_argument("--heldout-frac", type=float, default=0.03, help="share of each file's documents held out")
    ap.add_argument("--bpe-vocab", type=int, default=4096, help="BPE vocabulary size for bpe configurations")
    ap.add_argument("--work", help="folder for data and runs (default: /tmp/quality_budget/<corpus names>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--poems", type=int, default=0, help="sample N poems per run and report the poem-format share")
    ap.add_argument("--extra", default="", help="flags added to every goushi train command (quoted)")
    ap.add_argument("--equal-tokens", action="store_true", help="train each configuration for the tokens it processes "
                    "in the budget at its measured speed, instead of for the wall-clock budget (for shared machines)")
    ap.add_argument("--jobs", type=int, default=1, help="with --equal-tokens: train this many configurations at "
                    "once, each on its share of the cores (the token counts come from the speeds measured first)")
    ap.add_argument("--measure-only", action="store_true", help="with --equal-tokens: measure the speeds (kept in "
                    "WORK/speeds.json) and stop; measure on a quiet machine, then train with --jobs")
    ap.add_argument("--reuse", action="store_true", help="evaluate a row's earlier run instead of training it again "
                    "when it finished with the very same command (kept in RUN/bench-command.json); a row measured before keeps "
                    "the speed it was trained with")
    ap.add_argument("--compile", action="store_true", help="with --equal-tokens: measure every row's speed under "
                    "torch.compile (as a long `goushi train` runs once its compile race has won) and train with "
                    "--compile; speeds are kept apart from eager ones")
    ap.add_argument("--list", action="store_true", help="list the configurations and exit")
    args = ap.parse_args()
    if args.list:
        for name, (kind, flags) in CONFIGS.items():
            print(f"{name:<14} {kind:<15} {shlex.join(flags) or '(the budget recipe: no flags)'}")
        return 0
    if not args.corpus:
        ap.error("give at least one CORPUS")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if base_name(c) not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {unknown[0]!r}; --list shows them")
    if "classic" not in args.configs:
        args.configs.insert(0, "classic")
    if args.jobs > 1 and not args.equal_tokens:
        ap.error("--jobs needs --equal-tokens: runs sharing the cores cannot be compared by wall clock")
    tag = "+".join(Path(c).resolve().name for c in args.corpus)
    work = Path(args.work or f"/tmp/quality_budget/{tag}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    heldout, data = prepare(args, work)
    print(f"corpus: {', '.join(args.corpus)}; held-out: {heldout} ({heldout.stat().st_size:,} bytes); "
          f"budget {args.budget} per configuration")
    speeds: dict[str, float] = {}
    compile_secs: dict[str, float] = {}
    if args.equal_tokens:
        from goushi.train.config import parse_duration

        # The fastest speed ever measured here per configuration (WORK/speeds.json): a moment of load on a shared
        # machine only ever lowers a measurement, and the budget should mean the machine's real speed. Keyed by the
        # data and flags, so rows of one shape share a measurement.
        cache = work / "speeds.json"
        seen = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
        setups = {}
        for row in args.configs:
            d = data[CONFIGS[base_name(row)][0]]
            flags = config_flags(base_name(row), row_budget(row, args.budget), d)
            setups[speed_key(d, flags, args.compile)] = (d, flags)
        compile_now: dict[str, float] = {}
        now = measure_speeds(setups, compiled=args.compile, compile_s=compile_now)
        # A configuration measured for the first time on a busy machine would be slowed by the load while the
        # classic row keeps its best speed seen; so every speed measured now is also scaled by the classic's
        # best / now, the ratio against the peer measured in the same interleaved rounds.
        classic = next(n for n in setups if CONFIGS["classic"][1] == setups[n][1])
        load = max(1.0, seen.get(classic, 0.0) / now[classic])
        speeds = {n: max(v * load, seen.get(n, 0.0)) for n, v in now.items()}
        # Rows of one shape differ only in free settings (learning rate, schedule, weight decay): one speed, the
        # best any of them reached, so that noise in a loaded measurement does not hand them different budgets.
        for n in speeds:
            same = [m for m in speeds if shape_key(setups[m]) == shape_key(setups[n])]
            speeds[n] = max(speeds[m] for m in same)
        if args.reuse:
            # A row trained before keeps the speed it was trained with: a faster measurement now would change its
            # token count, hence its command, and train it again instead of reusing it.
            # A new row of a shape trained before takes that shape's speed too: equal shapes, equal tokens.
            speeds = {n: seen.get(n, v) for n, v in speeds.items()}
            for n in speeds:
                old = [seen[m] for m in speeds if m in seen and shape_key(setups[m]) == shape_key(setups[n])]
                speeds[n] = old[0] if old and n not in seen else speeds[n]
        # Compiling costs a compiled row part of its budget (torch.compile's own caches make it shorter after the
        # first time on a machine, so the shortest seen counts, as the fastest speed does).
        compile_secs = {n: min(v, seen.get(n + " [compile s]", v)) for n, v in compile_now.items()}
        if args.reuse:  # as the speeds: what a row was trained with stays
            compile_secs = {n: seen.get(n + " [compile s]", v) for n, v in compile_secs.items()}
        cache.write_text(json.dumps({**seen, **speeds, **{n + " [compile s]": v for n, v in compile_secs.items()}},
                                    indent=1), encoding="utf-8")
        print(f"training speed (interleaved, best of 4 rounds; now -> best seen in {cache}, "
              f"measurements now scaled by {load:.2f}, the classic row's best / now):")
        for n, v in speeds.items():
            paid = f" (compiling: {compile_secs[n]:.0f} s of the budget)" if n in compile_secs else ""
            print(f"  {now[n]:>9,.0f} -> {v:>9,.0f} tokens/s  {n}{paid}")
        if args.measure_only:
            return 0
    def train_one(row_name: str) -> dict:
        name, budget_text = base_name(row_name), row_budget(row_name, args.budget)
        kind, flags = CONFIGS[name]
        flags = config_flags(name, budget_text, data[kind])
        out = work / "runs" / (f"{name}-{budget_text}" + ("-eq" if args.equal_tokens else "")
                               + ("-compiled" if args.compile else ""))
        key = speed_key(data[kind], flags, args.compile)
        seconds = parse_duration(budget_text) - (compile_secs.get(key, 0.0) if args.equal_tokens else 0.0)
        budget = (["--tokens", str(int(speeds[key] * max(0.0, seconds)))] if args.equal_tokens
                  else ["--time-budget", budget_text])
        cmd = GOUSHI + ["train", "--data", str(data[kind]), "--out", str(out), "--force", "--no-progress",
                        "--sample-tokens", "0", "--eval-every", "0"] + budget + flags
        cmd += ["--compile"] if args.compile else []
        cmd += shlex.split(args.extra)
        env = None
        if args.jobs > 1:  # each job gets its share of the cores; only the token count matters (--equal-tokens)
            env = {**os.environ, "GOUSHI_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}
        t = time.perf_counter()
        logf = work / f"train-{name}-{budget_text}{'-compiled' if args.compile else ''}.log"
        stamp = out / "bench-command.json"
        reused = (args.reuse and stamp.exists() and logf.exists()
                  and json.loads(stamp.read_text(encoding="utf-8")).get("cmd") == cmd
                  and trained_as_now(out, cmd[len(GOUSHI) + 1:]))
        if reused:
            print(f"{row_name}: reusing {out} (same command)", flush=True)
        else:
            run(cmd, log=logf, env=env)
        seconds = time.perf_counter() - t
        log = logf.read_text(encoding="utf-8")
        if not reused:
            stamp.write_text(json.dumps({"cmd": cmd, "seconds": round(seconds, 1)}), encoding="utf-8")
        else:
            seconds = json.loads(stamp.read_text(encoding="utf-8")).get("seconds", 0.0)
        done = re.search(r"done: (\d+) steps, ([\d,]+) tokens", log)
        params = re.search(r"([\d,]+) parameters", log)
        res = heldout_score(out, heldout, reused, env)
        row = {"name": row_name, "kind": kind, "bpc": heldout_bpc(res), "tokens_per_s": round(speeds.get(key, 0)),
               "steps": int(done.group(1)) if done else None,
               "tokens": int(done.group(2).replace(",", "")) if done else None, "seconds": round(seconds, 1),
               "params": int(params.group(1).replace(",", "")) if params else None}
        if args.poems:
            row["poem_format"] = poem_format(sample_poems(out, args.poems))
        print(json.dumps(row, ensure_ascii=False), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(train_one, args.configs))
    base = next(r["bpc"] for r in rows if r["name"] == "classic")
    print(f"\n{'config':<14} {'tok':<15} {'held-out bpc':>12} {'vs classic':>10} {'steps':>7} {'tokens':>11} "
          f"{'wall s':>7}" + ("  poem format" if args.poems else ""))
    for r in rows:
        poem = f"  {r['poem_format']:.0%}" if args.poems else ""
        print(f"{r['name']:<14} {r['kind']:<15} {r['bpc']:>12.3f} {r['bpc'] / base - 1:>+10.1%} {r['steps'] or 0:>7,} "
              f"{r['tokens'] or 0:>11,} {r['seconds']:>7.0f}{poem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
