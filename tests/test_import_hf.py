"""`goushi import HF_DIR --out RUN_DIR`: tiny GPT-2 and Llama checkpoints made here (GPT-2 and Llama 3 style
tokenizers) become normal runs that give the Hugging Face model's logits, sample, and train on with
--init-from; our own exports come back unchanged; what we cannot hold is refused by name."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from export_fixtures import hf_gpt2_dir, hf_llama_dir, hf_tokens
from goushi import rundir
from goushi.checkpoint import load_run
from goushi.cli import main
from goushi.data.build import BuildOptions, build_dataset
from goushi.errors import GoushiError
from goushi.export import export_hf, import_hf
from goushi.tokenizer import Tokenizer
from goushi.train import train
from run_files import read_config, write_config
from test_train import cfg_for, quiet, random_docs

transformers = pytest.importorskip("transformers")
TEXTS = ["今天我终于学会了做饭，味道还不错。", "Hello world! It's 2024.", "床前明月光"]


def _same_logits(hf_dir, run_dir) -> float:
    """Largest |logit difference| between the HF model and the imported run over TEXTS, on the tokens both have."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    run = load_run(run_dir)
    info = read_config(run_dir)
    doc = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    old_doc = next(a["id"] for a in doc["added_tokens"] if a["content"] == info["imported"]["document_token"])
    worst = 0.0
    for text in TEXTS:
        old = [old_doc] + hf_tokens(hf_dir, text)
        new = [0] + run.tokenizer.encode(text)
        assert len(old) == len(new)
        with torch.no_grad():
            theirs = hf(torch.tensor([old])).logits[0]
            ours = run.model(torch.tensor([new]))[0][0]
        # every old token keeps its row under a new number: compare column by column
        mapping = _old_to_new(hf_dir, run)
        cols_old = torch.tensor(list(mapping))
        cols_new = torch.tensor([mapping[o] for o in mapping])
        worst = max(worst, (theirs[:, cols_old] - ours[:, cols_new]).abs().max().item())
    return worst


def _old_to_new(hf_dir, run) -> dict[int, int]:
    """Old id -> new id, through the token strings (the document token under its new name)."""
    spec = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    old = {i: t for t, i in spec["model"]["vocab"].items()}
    old.update({a["id"]: a["content"] for a in spec["added_tokens"]})
    doc = read_config(run.run_dir)["imported"]["document_token"]
    out = {}
    for i, t in old.items():
        new = run.tokenizer.token_to_id("<|endoftext|>" if t == doc else t)
        assert new is not None, t
        out[i] = new
    return out


def test_gpt2_import_gives_the_hf_logits_and_samples(tmp_path, capsys):
    hf_dir = hf_gpt2_dir(tmp_path / "hf")
    assert main(["import", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    assert "wrote" in capsys.readouterr().out
    run_dir = tmp_path / "run"
    diff = _same_logits(hf_dir, run_dir)
    assert diff <= 1e-4, diff
    info = read_config(run_dir)
    assert info["model"]["family"] == "gpt2" and info["imported"]["document_token"] == "<|endoftext|>"
    assert info["model"]["vocab_size"] == json.loads((hf_dir / "config.json").read_text())["vocab_size"] + 6
    card = (run_dir / rundir.MODEL_CARD).read_text(encoding="utf-8")
    assert "hf" in card and "mit" in card  # the imported model is credited with its licence
    assert main(["sample", str(run_dir), "--prompt", "今天", "--strategy", "greedy", "--max-new-tokens", "5"]) == 0


def test_llama_import_renames_bos_and_gives_the_hf_logits(tmp_path, capsys):
    hf_dir = hf_llama_dir(tmp_path / "hf")
    _, notes = import_hf(hf_dir, tmp_path / "run")
    assert any("'<|begin_of_text|>'" in n and "became <|endoftext|>" in n for n in notes)
    diff = _same_logits(hf_dir, tmp_path / "run")
    assert diff <= 1e-4, diff
    run = load_run(tmp_path / "run")
    assert run.config.family == "llama" and run.config.kv_heads == 2 and not run.config.tie_embeddings
    assert run.tokenizer.token_to_id("<|end_of_text|>") is not None  # EOS stays an ordinary special token


def test_imported_run_trains_on_with_init_from(tmp_path):
    hf_dir = hf_gpt2_dir(tmp_path / "hf")
    base, _ = import_hf(hf_dir, tmp_path / "base")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "new.txt").write_text("\n\n".join(random_docs(200, 3)), encoding="utf-8")
    (corpus / "sources.toml").write_text('[[source]]\nid = "new"\npath = "new.txt"\nlicense = "CC0"\n', encoding="utf-8")
    data = tmp_path / "data"
    meta = build_dataset(corpus / "sources.toml", data, options=BuildOptions(tokenizer_from=str(base)))
    assert meta["tokenizer_hash"] == Tokenizer.from_file(base).hash()
    s = train(cfg_for(data, tmp_path / "child", model={}, max_steps=3, eval_every=0, sample_tokens=0,
                      init_from=str(base)), progress=False, log=quiet)
    assert s["steps"] == 3
    card = (tmp_path / "child" / rundir.MODEL_CARD).read_text(encoding="utf-8")
    assert "Started from another model" in card and "mit" in card


def test_our_export_imports_back_unchanged(make_run, tmp_path):
    run_dir = make_run("bpe", "llama")
    info = read_config(run_dir)
    info["sft"], info["data"] = {"data": "c.jsonl"}, {"meta": {"sources": {"s": {"license": "MIT"}}}}
    chat = tmp_path / "chat"
    shutil.copytree(run_dir, chat)
    write_config(chat, info)
    export_hf(chat, tmp_path / "hf")
    back, notes = import_hf(tmp_path / "hf", tmp_path / "back")
    assert notes == []
    a, b = load_run(chat), load_run(back)
    assert a.tokenizer.hash() == b.tokenizer.hash()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    got = read_config(back)
    assert got["sft"]["data"] == "c.jsonl" and got["data"]["meta"]["sources"] == {"s": {"license": "MIT"}}


def test_gelu_new_is_imported_with_a_note(tmp_path):
    _, notes = import_hf(hf_gpt2_dir(tmp_path / "hf", activation="gelu_new"), tmp_path / "run")
    assert any("gelu_new" in n and "exact GELU" in n for n in notes)
    assert any("gelu_new" in n for n in read_config(tmp_path / "run")["imported"]["notes"])


def test_what_we_cannot_hold_is_refused_by_name(tmp_path):
    hf_dir = hf_llama_dir(tmp_path / "scaled", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(GoushiError, match=r"rope_type='linear'.*goushi imports gpt2 \(GPT2LMHeadModel\) and llama"):
        import_hf(hf_dir, tmp_path / "out")
    hf_dir = hf_llama_dir(tmp_path / "bias", attention_bias=True)
    with pytest.raises(GoushiError, match=r"attention_bias=True with mlp_bias=False"):
        import_hf(hf_dir, tmp_path / "out")
    other = tmp_path / "mistral"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(GoushiError, match=r"model_type 'mistral' \(MistralForCausalLM\) is not supported.*gpt2"):
        import_hf(other, tmp_path / "out")
    with pytest.raises(GoushiError, match="no such directory"):
        import_hf(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sentencepiece_tokenizers_are_refused_by_name(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, normalizers

    hf_dir = hf_llama_dir(tmp_path / "spm")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "▁": 259, "a": 260}
    t = HFTok(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    t.normalizer = normalizers.Replace(" ", "▁")
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    t.add_special_tokens(["<s>", "</s>"])
    t.save(str(hf_dir / "tokenizer.json"))
    with pytest.raises(GoushiError, match=r"SentencePiece-style BPE.*cannot be imported.*byte-level BPE"):
        import_hf(hf_dir, tmp_path / "out")


def test_existing_output_is_refused_unless_force(tmp_path, capsys):
    hf_dir = hf_gpt2_dir(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    assert main(["import", str(hf_dir), "--out", str(tmp_path / "run")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["import", str(hf_dir), "--out", str(tmp_path / "run"), "--force", "--context", "32"]) == 0
    assert load_run(tmp_path / "run").config.context_length == 32
    assert sorted(os.listdir(tmp_path)) == ["hf", "run"]
