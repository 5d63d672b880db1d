"""`goushi eval`, `goushi provenance`, `goushi report`: how good is a run, and whose words does it repeat?"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from goushi import rundir
from goushi.checkpoint import load_run
from goushi.device import pick_device
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.eval.metrics import evaluate_files, evaluate_generation, read_documents, read_prompts
from goushi.eval.provenance import format_spans, index_for_run, load_index, summarize
from goushi.eval.report import write_report
from goushi.fsutil import json_safe
from goushi.model_card import refresh_model_card


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="bits per character on held-out text; diversity and copying of generated text",
        description="Score held-out text files (loss, perplexity, bits per character and per byte; documents "
        "longer than the context are scored with a sliding window) and/or generate samples and measure "
        "distinct-n, repetition and how much is copied verbatim from the training data. Results go to "
        "RUN_DIR/eval.json and the model card. Without --text or --generate, the data's val.jsonl is scored.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `goushi train`")
    e.add_argument("--text", nargs="+", metavar="FILE", help="held-out text files (.txt, or .jsonl with a text field)")
    e.add_argument("--doc-split", choices=("blank", "line", "none"), default="blank",
                   help="documents in a .txt file: paragraphs between blank lines (default), lines, or the whole file")
    e.add_argument("--context-stride", type=_positive, metavar="N",
                   help="tokens the sliding window moves (default: half the context; 1 = most context, slowest)")
    e.add_argument("--generate", action="store_true", help="generate samples and measure them")
    e.add_argument("--prompts", metavar="FILE", help="--generate: prompts, one per line")
    e.add_argument("--samples", type=_positive, default=4, metavar="N", help="--generate: samples per prompt (default: 4)")
    e.add_argument("--max-new-tokens", type=_positive, default=200, help="--generate: tokens per sample (default: 200)")
    e.add_argument("--temperature", type=float, default=0.8, help="--generate: sampling temperature (default: 0.8)")
    e.add_argument("--top-k", type=int, default=0, help="--generate: top-k (default: off)")
    e.add_argument("--top-p", type=float, default=1.0, help="--generate: nucleus top-p (default: 1.0 = off)")
    e.add_argument("--seed", type=int, default=0, help="--generate: random seed (default: 0)")
    e.add_argument("--min-chars", type=_positive, default=8, help="shortest copied span counted (default: 8 characters)")
    e.add_argument("--data", metavar="DATA_DIR", help="data directory with the provenance index "
                   "(default: the one recorded in RUN_DIR/config.json)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of tables: text results "
                   "as {overall, files: {FILE: {loss, ppl, bpc, bpb, tokens, chars, ...}}, ...}, generation under "
                   "\"generate\"")
    e.set_defaults(func=run_eval)

    p = sub.add_parser(
        "provenance", help="find spans of a text copied verbatim from a run's training data, with their sources",
        description="List every span of at least --min-chars characters that occurs word for word in the "
        "training data, with the source id, author, url and licence where it occurs.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a DATA_DIR with a provenance/ index)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to check")
    src.add_argument("--file", metavar="FILE", help="a UTF-8 file with the text to check")
    p.add_argument("--min-chars", type=_positive, default=8, help="shortest span reported (default: 8 characters)")
    p.add_argument("--data", metavar="DATA_DIR", help="data directory with the index (default: from RUN_DIR/config.json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_provenance)

    r = sub.add_parser(
        "report", help="write one self-contained HTML page about a run",
        description="Loss curves, evaluation table, samples (copied spans highlighted) and the model card in "
        "one HTML file with everything embedded.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    r.add_argument("--out", metavar="FILE", help="where to write (default: RUN_DIR/report.html)")
    r.add_argument("--samples", type=int, default=3, metavar="N",
                   help="when eval.json holds no samples, generate N for the page (default: 3; 0 = none)")
    r.add_argument("--prompts", metavar="FILE", help="prompts for those samples (default: openings of val.jsonl)")
    r.add_argument("--max-new-tokens", type=_positive, default=150, help="length of those samples (default: 150)")
    r.add_argument("--data", metavar="DATA_DIR", help="data directory with the provenance index")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    r.set_defaults(func=run_report)


# ---- helpers -----------------------------------------------------------------------------------
def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _dump(obj: Any) -> str:
    return json.dumps(json_safe(obj), ensure_ascii=False, indent=2, default=_json_default)


def _optional_index(run_dir: str, data: str | None) -> Any:
    """The provenance index, or None with a note on stderr: generation metrics still work without it."""
    try:
        return index_for_run(run_dir, data)
    except GoushiError as e:
        if data:  # the user named it: a missing index is an error, not a note
            raise
        print(f"note: memorisation rate skipped: {e}", file=sys.stderr)
        return None


def _sample_config(args: argparse.Namespace, num_samples: int) -> Any:
    return SampleConfig(strategy="sample", temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, num_samples=num_samples, seed=args.seed).validate()


def _print_text_table(res: dict[str, Any]) -> None:
    rows = [(Path(f).name, r) for f, r in res["files"].items()]
    if len(rows) > 1:
        rows.append(("overall", res["overall"]))
    w = max(len(n) for n, _ in rows)
    print(f"{'file':<{w}}  {'bits/char':>9}  {'bits/byte':>9}  {'loss':>7}  {'ppl':>9}  {'tokens':>9}  {'chars':>9}")
    for name, r in rows:
        print(f"{name:<{w}}  {r['bpc']:9.4f}  {r['bpb']:9.4f}  {r['loss']:7.4f}  {r['ppl']:9.2f}  "
              f"{r['tokens']:9d}  {r['chars']:9d}")
    print(f"(a uniform guess over the vocabulary: loss {res['uniform_loss']:.3f}, "
          f"{res['uniform_loss'] / math.log(2) / res['overall']['chars_per_token']:.2f} bits/char on this text; "
          f"context {res['context_length']}, stride {res['stride']})")


# ---- commands ----------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    rundir.check_run_dir(args.run_dir)
    if args.prompts and not args.generate:
        raise GoushiError("--prompts is for --generate; add --generate to sample from the model")
    texts = args.text
    if not texts and not args.generate:
        val = rundir.val_jsonl_for_run(args.run_dir)
        if val is None:
            raise GoushiError("nothing to evaluate: pass --text FILE (held-out text) or --generate --prompts FILE "
                              "(the run's data has no val.jsonl to fall back on)")
        texts = [str(val)]
    out: dict[str, Any] = {}
    if texts:
        run = load_run(args.run_dir, device=pick_device(args.device))
        res = evaluate_files(run.model, run.tokenizer, texts, context_length=run.config.context_length,
                             stride=args.context_stride, split=args.doc_split)
        rundir.save_eval(args.run_dir, "text", res)
        out.update(res)  # text results at the top level: {"overall", "files", ...} as scripts expect
        if not args.json:
            _print_text_table(res)
    if args.generate:
        if not args.prompts:
            raise GoushiError("--generate needs --prompts FILE (one prompt per line)")
        prompts = read_prompts(args.prompts)
        index = _optional_index(args.run_dir, args.data)
        engine = Engine.load(args.run_dir, device=args.device)
        res = evaluate_generation(engine, prompts, _sample_config(args, args.samples), index=index,
                                  min_chars=args.min_chars)
        rundir.save_eval(args.run_dir, "generate", res)
        out["generate"] = res
        if not args.json:
            m = res["metrics"]
            print(f"{m['samples']} samples from {m['prompts']} prompt(s): distinct-1 {m['distinct_1']:.3f}, "
                  f"distinct-2 {m['distinct_2']:.3f}, repeated 4-grams {m['repeated_4gram_rate']:.1%}, "
                  f"mean length {m['mean_chars']:.0f} characters")
            if "memorisation_rate" in m:
                print(f"memorisation: {m['memorisation_rate']:.1%} of generated characters are in spans of "
                      f">= {args.min_chars} characters copied verbatim from the training data")
    refresh_model_card(args.run_dir)
    if args.json:
        print(_dump(out))
    else:
        print(f"saved {Path(args.run_dir) / rundir.EVAL}; {rundir.MODEL_CARD} updated", file=sys.stderr)
    return 0


def run_provenance(args: argparse.Namespace) -> int:
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise GoushiError(f"--file {args.file}: file not found") from None
        except UnicodeDecodeError:
            raise GoushiError(f"--file {args.file}: not UTF-8; save it as UTF-8") from None
    else:
        text = args.text
    if not text.strip():
        raise GoushiError("--text is empty; give the text to check")
    where = rundir.provenance_index_dir(args.run_dir, args.data)
    spans = load_index(where).find_copied_spans(text, args.min_chars)
    if args.json:
        info = summarize(text, spans)
        print(_dump({**info, "min_chars": args.min_chars, "index": str(where), "spans": [s.to_dict() for s in spans]}))
    else:
        print(format_spans(text, spans))
    return 0


def _report_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts:
        return read_prompts(args.prompts)[: args.samples]
    val = rundir.val_jsonl_for_run(args.run_dir)
    if val is None:
        return []
    # Openings of held-out documents: prompts in the data's own style that the model has not trained on.
    return [d[:8] for d in read_documents(val)[: args.samples]]


def run_report(args: argparse.Namespace) -> int:
    samples = None
    stored = ((rundir.read_eval(args.run_dir) or {}).get("generate") or {}).get("samples")
    if not stored and args.samples > 0:
        rundir.check_run_dir(args.run_dir)
        prompts = _report_prompts(args)
        if prompts:
            engine = Engine.load(args.run_dir, device=args.device)
            cfg = SampleConfig(max_new_tokens=args.max_new_tokens, num_samples=1, seed=0).validate()
            samples = evaluate_generation(engine, prompts, cfg, index=_optional_index(args.run_dir, args.data))["samples"]
        else:
            print("note: no samples on the page (no --prompts and no val.jsonl to take openings from)", file=sys.stderr)
    out = write_report(args.run_dir, args.out, samples=samples)
    print(f"wrote {out}")
    return 0
