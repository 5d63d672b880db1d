"""`goushi export RUN_DIR --format hf|gguf --out PATH`: a run for `transformers`, llama.cpp or Ollama."""

from __future__ import annotations

import argparse

from goushi.errors import GoushiError
from goushi.export import GGUF_TYPES, export_gguf, export_hf


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a run as a Hugging Face model directory or a GGUF file (llama.cpp, Ollama)",
        description="--format hf: a directory transformers.AutoModelForCausalLM / AutoTokenizer load with no custom "
        "code (GPT2LMHeadModel or LlamaForCausalLM; the chat template of chat runs; README.md with the sources and "
        "licences). --format gguf: one .gguf file llama.cpp loads, and an Ollama Modelfile beside it. Nothing is "
        "left half written: files are built under a temporary name and renamed when complete.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `goushi train`, `sft` or `import`")
    p.add_argument("--format", choices=("hf", "gguf"), required=True, help="hf (transformers) or gguf (llama.cpp)")
    p.add_argument("--out", required=True, help="hf: a directory to create; gguf: a FILE.gguf (FILE.Modelfile goes beside it)")
    p.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default=None,
                   help="gguf: how weights are stored (default f32; f16 halves the file, q8_0 quarters it)")
    p.add_argument("--approximate-tokenizer", action="store_true",
                   help="gguf, BPE runs with the two-character rule (--bpe-pre han2): export although llama.cpp splits "
                   "prompts with 3+ Chinese characters in a row differently from goushi (the model runs; prompts read "
                   "slightly differently); --bpe-pre deepseek-v3 runs export exactly without it")
    p.add_argument("--force", action="store_true", help="replace an existing --out (and its Modelfile)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "hf":
        for flag, given in ((f"--type {args.gguf_type}", args.gguf_type is not None),
                            ("--approximate-tokenizer", args.approximate_tokenizer)):
            if given:
                raise GoushiError(f"{flag}: only for --format gguf; a Hugging Face export is exact and float32")
        out = export_hf(args.run_dir, args.out, force=args.force)
        print(f"wrote {out}/ (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
        return 0
    out, modelfile = export_gguf(args.run_dir, args.out, kind=args.gguf_type or "f32", force=args.force,
                                  approximate_tokenizer=args.approximate_tokenizer)
    print(f"wrote {out} and {modelfile}")
    print(f"  llama.cpp: llama-cli -m {out} -p 今天   Ollama: ollama create NAME -f {modelfile}")
    return 0
