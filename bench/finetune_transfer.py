"""Pretrain, then fine-tune: does a base run fine-tuned on a small corpus beat training on that corpus from scratch?

    python bench/finetune_transfer.py BASE_RUN ../shared/data/copypasta --scratch-tokens 18000000 \
        --configs scratch,ft,ft-lr3e-4,ft-lr3e-3 --work /work/exp/transfer

Held-out bits per character on a seeded 3 % of the corpus's documents (as bench/quality_budget.py sets aside),
every row beside the from-scratch row of the same invocation:

- scratch: `goushi train --recipe short` on the corpus with its own char tokenizer, for --scratch-tokens tokens
  (what `--time-budget` buys at this machine's measured speed: 10 minutes on 2 cores is ~18 M tokens for the tiny
  shape on a Xeon with bf16; bench/quality_budget.py --measure-only measures it). Scored twice: the weights it
  ends with (what a user gets today) and its best/ (the lowest validation loss it passed).
- ft*: `goushi train --init-from BASE_RUN` on the corpus encoded with the base's tokenizer (`goushi data build
  --tokenizer-from`), with the same token budget (or --ft-tokens); recipe auto (the fine-tuning recipe), or
  with one setting changed.
  These runs stop early and serve their best weights, so they use a fraction of the budget.
- ft-none: `--recipe none`: the plain from-scratch defaults on the base's weights (what --init-from did before).
- ft-ext*: as ft*, on the corpus encoded with the base's tokenizer grown by the corpus's characters it spells in
  bytes (`goushi data build --tokenizer-from BASE --extend-vocab N`, seen twice or more).

--ft-budget 10m gives each ft row the tokens its own command trains in that time here: its training step (the
base's shape, the row's dropout, mask, optimiser and vocabulary, eager as `goushi train` runs a fine-tune) is timed
interleaved with the others' in one process at the threads each row trains with (the cores / --jobs), best of
4 rounds, and the fastest figure ever seen for it is kept in
WORK/ft-speeds.json (load only lowers a measurement). The time its validations take is paid from the budget, as
`goushi train --time-budget` pays it: a validation batch is counted as a third of a training step (a forward
without the backward). Until the seventh session every ft row got one --ft-tokens, 10 minutes at the base's own
compiled speed without dropout and validations: 2.2x what the fine-tune with attention dropout trains in that time.
Without --scratch-tokens the scratch row is timed the same way beside them, so every row is the same minutes on
this machine (a --scratch-tokens figure carried from another machine compares minutes of two CPUs).

Rows train one after another, or --jobs N at a time, each with its share of the cores (the token budgets are
fixed, so sharing changes only the wall time). --reuse evaluates a finished row again when its command is the same
and resolves to the settings it trained with (a recipe may have changed since).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_budget import (  # noqa: E402
    GOUSHI,
    cpu_name,
    heldout_bpc,
    measure_speeds,
    prepare,
    run,
    train_config_for,
    trained_as_now,
)

ROWS: dict[str, list[str]] = {
    "scratch": ["--recipe", "short"],
    "ft": [],
    "ft-none": ["--recipe", "none"],
    "ft-lr3e-4": ["--lr", "3e-4", "--min-lr", "3e-5"],
    "ft-lr3e-3": ["--lr", "3e-3", "--min-lr", "3e-4"],
    "ft-lr1e-4": ["--lr", "1e-4", "--min-lr", "1e-5"],
    "ft-d0.1": ["--dropout", "0.1"],
    "ft-p8": ["--patience", "8"],
    "ft-muon": ["--optimizer", "muon"],
    "ft-wd0.5": ["--weight-decay", "0.5"],
    "ft-d0.2": ["--dropout", "0.2"],
    "ft-d0.1-lr2e-3": ["--dropout", "0.1", "--lr", "2e-3", "--min-lr", "2e-4"],
    "ft-ext": [],
    "ft-ext-d0.2": ["--dropout", "0.2"],
    # each window's documents read alone (--doc-mask), windows from documents' starts, a longer cooldown
    "ft-ext-d0.2-docs-mask": ["--dropout", "0.2", "--windows", "docs", "--doc-mask"],
    "ft-ext-d0.2-docs-mask-dec0.6": ["--dropout", "0.2", "--windows", "docs", "--doc-mask", "--decay-frac", "0.6"],
    "ft-ext-d0.2-mask-dec0.6": ["--dropout", "0.2", "--doc-mask", "--decay-frac", "0.6"],
    "ft-ext-d0.3-mask-dec0.6": ["--dropout", "0.3", "--doc-mask", "--decay-frac", "0.6"],
    "ft-ext-d0.2-mask-dec1.0": ["--dropout", "0.2", "--doc-mask", "--decay-frac", "1.0"],
    # dropout on the residual branches only: SDPA keeps its fused kernel (goushi train --no-attn-dropout)
    "ft-ext-noattn": ["--no-attn-dropout"],
    "ft-ext-noattn-d0.3": ["--no-attn-dropout", "--dropout", "0.3"],
    "ft-ext-noattn-d0.1": ["--no-attn-dropout", "--dropout", "0.1"],
    "ft-ext-noattn-lr2e-3": ["--no-attn-dropout", "--lr", "2e-3", "--min-lr", "2e-4"],
    "ft-ext-noattn-s2": ["--no-attn-dropout", "--seed", "2"],
    "ft-ext-noattn-lr2e-3-s2": ["--no-attn-dropout", "--lr", "2e-3", "--min-lr", "2e-4", "--seed", "2"],
    "ft-ext-noattn-lr3e-3": ["--no-attn-dropout", "--lr", "3e-3", "--min-lr", "3e-4"],
    "ft-ext-noattn-d0.1-lr2e-3": ["--no-attn-dropout", "--dropout", "0.1", "--lr", "2e-3", "--min-lr", "2e-4"],
    "ft-ext-noattn-d0.1-lr3e-3": ["--no-attn-dropout", "--dropout", "0.1", "--lr", "3e-3", "--min-lr", "3e-4"],
    "ft-ext-noattn-d0.05-lr2e-3": ["--no-attn-dropout", "--dropout", "0.05", "--lr", "2e-3", "--min-lr", "2e-4"],
    "ft-ext-noattn-d0.1-lr2e-3-s2": ["--no-attn-dropout", "--dropout", "0.1", "--lr", "2e-3", "--min-lr", "2e-4",
                                     "--seed", "2"],
    "ft-ext-s2": ["--seed", "2"],
}
EXTEND = 4000  # characters at most: every one the base lacks that the corpus holds twice or more, in practice


def data_for(name: str, own: Path, borrowed: Path, grown: Path) -> Path:
    return own if name == "scratch" else grown if name.startswith("ft-ext") else borrowed


def row_flags(name: str, base: str) -> list[str]:
    """The row's flags to `goushi train` beyond data, output and budget."""
    if name == "scratch":
        return ROWS[name] + ["--eval-every", "250"]  # so best/ exists for the second score
    return ["--init-from", str(Path(base).resolve())] + ROWS[name]


def training_share(data_dir: Path, flags: list[str]) -> float:
    """The share of a run's time spent on training steps when a validation batch costs a third of one."""
    from goushi.train.data import TokenData

    cfg, mc = train_config_for(flags, data_dir)
    if not cfg.eval_every:
        return 1.0
    batches = len(list(TokenData(data_dir).val_batches(cfg.eval_batches, cfg.batch_size, mc.context_length)))
    return cfg.eval_every / (cfg.eval_every + batches / 3)


def measured_budgets(names: list[str], budget: str, base: str, own: Path, borrowed: Path, grown: Path,
                     work: Path, threads: int) -> dict[str, int]:
    """{row: the tokens its command trains in `budget` at the fastest speed seen for it here, timed at the
    `threads` each row trains with (left to the probe, a timing may take both cores for a row that gets one)}."""
    from goushi.train.config import parse_duration

    seconds = parse_duration(budget)
    setups = {n: (data_for(n, own, borrowed, grown), row_flags(n, base)) for n in names}
    before = os.environ.get("GOUSHI_THREADS")
    os.environ["GOUSHI_THREADS"] = str(threads)
    try:
        now = measure_speeds(setups)
    finally:
        if before is None:
            os.environ.pop("GOUSHI_THREADS")
        else:
            os.environ["GOUSHI_THREADS"] = before
    share = {n: training_share(*setups[n]) for n in names}
    cache = work / "ft-speeds.json"
    kept = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    out = {}
    for n, (data_dir, flags) in setups.items():
        key = f"{data_dir.name} {shlex.join(flags)} threads{threads}"
        kept[key] = max(now[n], kept.get(key, 0.0))
        out[n] = int(kept[key] * seconds * share[n])
        print(f"  {n}: {now[n]:,.0f} tokens/s now, {kept[key]:,.0f} the fastest seen; {share[n]:.1%} of the time "
              f"trains, the rest validates -> {out[n]:,} tokens in {budget}")
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=1), encoding="utf-8")
    tmp.replace(cache)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the pretrained run (RUN_DIR) to fine-tune")
    ap.add_argument("corpus", nargs="+", help="the small corpus: text files or folders of .txt files")
    ap.add_argument("--configs", default="scratch,ft", help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--scratch-tokens", type=int, help="the token budget of every row (what the time budget buys "
                    "the from-scratch recipe on this machine); with --ft-budget, of the scratch row only (default "
                    "there: timed beside the ft rows, as they are)")
    ap.add_argument("--ft-tokens", type=int, help="the token budget of the ft rows (default: --scratch-tokens; a "
                    "bigger base trains fewer tokens in the same minutes: give what the budget buys its shape)")
    ap.add_argument("--ft-budget", help="instead of --ft-tokens: each ft row trains what its own measured speed "
                    "buys in this time here (10m, 600s)")
    ap.add_argument("--work", required=True, help="folder for data and runs")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch-run", help="score this finished run as the scratch row instead of training it (its "
                    "command must be the scratch row's; say it beside the figures)")
    args = ap.parse_args()
    if not args.scratch_tokens and not args.ft_budget:
        ap.error("give --scratch-tokens N (the tokens of every row) or --ft-budget TIME (each row timed here)")
    rows = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown configuration {bad[0]!r}; choose from {', '.join(ROWS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    split = SimpleNamespace(corpus=args.corpus, heldout=None, heldout_frac=0.03, seed=args.seed, configs=["classic"],
                            bpe_vocab=4096)
    heldout, data = prepare(split, work)
    own = data["char"]
    borrowed = work / "data-base"
    if not (borrowed / "meta.json").exists():
        out = run(GOUSHI + ["data", "build", "--sources", str(work / "sources.toml"), "--out", str(borrowed),
                            "--tokenizer-from", str(Path(args.base) / "tokenizer.json"), "--force",
                            "--val-fraction", "0.02", "--no-progress"], log=work / "build-data-base.log")
        print(next((ln for ln in out.splitlines() if "covers" in ln), "").strip())
    grown = work / "data-base-ext"
    if any(r.startswith("ft-ext") for r in rows) and not (grown / "meta.json").exists():
        out = run(GOUSHI + ["data", "build", "--sources", str(work / "sources.toml"), "--out", str(grown),
                            "--tokenizer-from", str(Path(args.base) / "tokenizer.json"), "--extend-vocab",
                            str(EXTEND), "--force", "--val-fraction", "0.02", "--no-progress"],
                  log=work / "build-data-base-ext.log")
        print(next((ln for ln in out.splitlines() if "extended by" in ln), "").strip())
    threads = max(1, (os.cpu_count() or 1) // args.jobs)  # each row's share of the cores
    if args.ft_budget:
        # scratch is timed beside the others unless its tokens are given (or its run is scored as it is)
        timed = [r for r in rows if r != "scratch" or not (args.scratch_tokens or args.scratch_run)]
        tokens = measured_budgets(timed, args.ft_budget, args.base, own, borrowed, grown, work, threads)
    else:
        tokens = {r: args.ft_tokens or args.scratch_tokens for r in rows}
    if args.scratch_tokens:
        tokens["scratch"] = args.scratch_tokens
    print(f"held-out: {heldout} ({heldout.stat().st_size:,} bytes); token budgets: "
          f"{', '.join(f'{r} {tokens[r]:,}' for r in rows if r in tokens)}")

    def one(name: str) -> list[dict]:
        out = work / "runs" / name
        data_dir = data_for(name, own, borrowed, grown)
        cmd = GOUSHI + ["train", "--data", str(data_dir), "--out", str(out), "--force", "--no-progress",
                        "--sample-tokens", "0", "--tokens", str(tokens.get(name, 0))] + row_flags(name, args.base)
        env = {**os.environ, "GOUSHI_THREADS": str(threads)}
        stamp, logf = out / "bench-command.json", work / f"train-{name}.log"
        if name == "scratch" and args.scratch_run:
            out, logf = Path(args.scratch_run), Path(args.scratch_run) / "train.log"
        elif not (args.reuse and stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")).get("cmd") == cmd
                  and trained_as_now(out, cmd[len(GOUSHI) + 1:])):
            run(cmd, log=logf, env=env)
            stamp.write_text(json.dumps({"cmd": cmd}), encoding="utf-8")
        log = logf.read_text(encoding="utf-8") if logf.exists() else ""
        steps = next((ln for ln in log.splitlines() if ln.startswith("done:")), "")
        scored = []
        for label, run_dir in ((name, out), (f"{name} best/", out / "best")):
            if label.endswith("best/") and (name != "scratch" or not (run_dir / "model.safetensors").is_file()):
                continue
            res = json.loads(run(GOUSHI + ["eval", str(run_dir), "--text", str(heldout), "--json"], env=env))
            scored.append({"name": label, "bpc": heldout_bpc(res), "log": steps})
            print(json.dumps(scored[-1], ensure_ascii=False), flush=True)
        return scored

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = [r for rs in pool.map(one, rows) for r in rs]
    ref = next((r["bpc"] for r in results if r["name"] == "scratch"), None)
    print("\n| row | held-out bits/char | vs scratch |\n|---|---:|---:|")
    for r in results:
        ratio = f"{r['bpc'] / ref:.3f}x" if ref else "—"
        print(f"| {r['name']} | {r['bpc']:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
