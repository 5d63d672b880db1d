"""`goushi export RUN_DIR --format hf --out DIR`: a directory `transformers` loads with no custom code.

    DIR/config.json model.safetensors generation_config.json   GPT2LMHeadModel or LlamaForCausalLM
    DIR/tokenizer.json tokenizer_config.json                   PreTrainedTokenizerFast (+ chat_template)
    DIR/README.md                                              the model card with sources and licences
    DIR/goushi_run.json                                        the run's config.json (import restores it)

The directory is built under a temporary name beside DIR and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from goushi.checkpoint import load_run
from goushi.export.common import check_out, export_card
from goushi.export.tokenizer_files import hf_tokenizer_config, hf_tokenizer_json, stop_ids
from goushi.fsutil import atomic_dir, atomic_write_json, usual_file_mode
from goushi.hf import HF_CLASSES, hf_family, to_hf

GOUSHI_RUN = "goushi_run.json"


def _usage(out: Path, chat: bool) -> list[str]:
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'tok = AutoTokenizer.from_pretrained("{out.name}")',
             f'model = AutoModelForCausalLM.from_pretrained("{out.name}")']
    if chat:
        lines += ['ids = tok.apply_chat_template([{"role": "user", "content": "写一条好评"}], add_generation_prompt=True,',
                  '                             return_tensors="pt", return_dict=True)']
    else:
        lines += ['ids = tok("今天我终于", return_tensors="pt")  # the tokenizer adds <|endoftext|> in front, as goushi does']
    lines += ["out = model.generate(**ids, max_new_tokens=50, do_sample=False)",
              'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))', "```"]
    return lines


def export_hf(run_dir: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write RUN_DIR as a Hugging Face model directory at `out`; returns `out`."""
    run_dir, out = Path(run_dir), Path(out)
    check_out(out, force=force, kind="directory")
    run = load_run(run_dir)
    family = hf_family(run.config)  # refuse before any file is written
    stops = stop_ids(run.tokenizer, run.record)
    hf = to_hf(run.model, run.tokenizer.eot_id, stops)
    chat = run.record.is_chat
    with atomic_dir(out, force=force) as tmp:
        hf.save_pretrained(tmp)
        hf.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
        hf.generation_config.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(hf_tokenizer_json(run.tokenizer), encoding="utf-8")
        atomic_write_json(tmp / "tokenizer_config.json",
                          hf_tokenizer_config(run.tokenizer, run.record, run.config.context_length))
        atomic_write_json(tmp / GOUSHI_RUN, run.record.to_dict())
        card = export_card(run.run_dir, run.record, family=family,
                           how_to_use=[f"Load it with `transformers` ({HF_CLASSES[family]}, no custom code):", "",
                                       *_usage(out, chat)])
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _check_files(tmp)
        for f in tmp.iterdir():  # transformers writes its weights private (0600); an export is made to be shared
            if f.is_file():
                os.chmod(f, usual_file_mode())
    return out


def _check_files(tmp: Path) -> None:
    """save_pretrained's file names changed across transformers versions; the loaders need these two."""
    names = {p.name for p in tmp.iterdir()}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise RuntimeError(f"transformers wrote {sorted(names)}; expected config.json and safetensors weights")
    json.loads((tmp / "config.json").read_text(encoding="utf-8"))


__all__ = ["GOUSHI_RUN", "export_hf"]
