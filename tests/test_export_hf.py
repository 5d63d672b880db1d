"""`goushi export --format hf`: transformers loads the directory with no custom code, gives our logits and
our greedy text for both families and both tokenizer kinds, and a chat run's template works through
apply_chat_template token for token."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import build_run
from export_fixtures import as_chat_run, raw_greedy, trained_run
from goushi import rundir
from goushi.checkpoint import load_run, save_weights
from goushi.cli import main
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.export import export_hf

transformers = pytest.importorskip("transformers")
PROMPTS = ["今天我终于", "床前明月光", ""]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_runs")
    built = {}

    def get(kind: str, family: str, chat: bool = False):
        if (kind, family, chat) not in built:
            # BPE: the two-character rule, the tokenizer these runs' greedy texts were first compared with. The export
            # copies tokenizer.json whatever its pre-tokenizer (test_tokenizer checks transformers' ids for each);
            # the default's tiny 100-step run steps into the engine's UTF-8 guard on 2 of the 3 prompts, leaving
            # too few whole texts to compare.
            pre = {"bpe_pre": "han2"} if kind == "bpe" else {}
            built[kind, family, chat] = (as_chat_run(get(kind, family), root / f"{kind}_{family}_chat") if chat
                                         else trained_run(root, kind, family, **pre))
        return built[kind, family, chat]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family,cls", [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM")])
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_transformers_loads_the_export_with_our_logits_and_greedy_text(runs, tmp_path, kind, family, cls):
    run_dir = runs(kind, family)
    out = export_hf(run_dir, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == cls
    engine = Engine.load(run_dir)
    texts_compared = 0
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")
        ours_ids = [engine.tokenizer.eot_id] + engine.tokenizer.encode(prompt)
        assert ids["input_ids"][0].tolist() == ours_ids  # the exported tokenizer puts <|endoftext|> in front
        assert tok(prompt, add_special_tokens=False)["input_ids"] == engine.tokenizer.encode(prompt)
        with torch.no_grad():
            diff = (model(**ids).logits[0] - engine.model(torch.tensor([ours_ids]))[0][0]).abs().max().item()
        assert diff <= 1e-4, f"{kind}/{family} {prompt!r}: max |logit difference| {diff}"
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=24, do_sample=False)
        new = [i for i in gen[0, ids["input_ids"].shape[1]:].tolist() if i != tok.eos_token_id]
        assert new == raw_greedy(engine.model, ours_ids, 24)
        ours = engine.generate(prompt, SampleConfig(strategy="greedy", max_new_tokens=24))[0]
        if ours.token_ids == new:  # the engine's UTF-8 guard did not step in
            assert tok.decode(new, skip_special_tokens=True) == ours.text
            texts_compared += 1
    assert texts_compared >= 2
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "license: cc0-1.0" in card and "poems" in card and "CC0-1.0" in card
    assert json.loads((out / "goushi_run.json").read_text(encoding="utf-8"))["model"]["family"] == family


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_template_renders_and_tokenizes_like_ours(runs, tmp_path, kind):
    run_dir = runs(kind, "llama", chat=True)
    out = export_hf(run_dir, tmp_path / "hf_chat")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_run(run_dir).tokenizer
    tpl = rundir.read_run(run_dir).template
    conversations = [
        [{"role": "user", "content": "写一条好评"}],
        [{"role": "system", "content": "你是段子手"}, {"role": "user", "content": "讲个笑话"},
         {"role": "assistant", "content": "好的。今天星期四！"}, {"role": "user", "content": "再来一个 please"}],
    ]
    for messages in conversations:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == "<|endoftext|>" + tpl.render(messages, add_generation_prompt=True)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ids == tpl.encode(ours, messages, add_generation_prompt=True)[0]
    done = conversations[1][:3]
    assert (tok.apply_chat_template(done, tokenize=False, add_generation_prompt=False)
            == "<|endoftext|>" + tpl.render(done, add_generation_prompt=False))
    gen = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    # generate() stops where our engine ends an answer: at the end of the turn, or at a next turn opened
    assert gen["eos_token_id"] == [0, ours.token_to_id("<|im_end|>"), ours.token_to_id("<|im_start|>")]


def test_a_base_run_has_no_chat_template(make_run, tmp_path):
    out = export_hf(make_run("char", "gpt2"), tmp_path / "hf")
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))


def test_options_the_target_cannot_express_are_refused_by_name(tmp_path):
    run = build_run(tmp_path / "qk", family="llama", qk_norm=True)
    with pytest.raises(GoushiError, match=r"LlamaForCausalLM: qk_norm=True"):
        export_hf(run, tmp_path / "out")
    run = build_run(tmp_path / "gqa", family="gpt2", n_kv_head=2)
    with pytest.raises(GoushiError, match=r"GPT2LMHeadModel: n_kv_head=2"):
        export_hf(run, tmp_path / "out")
    run = build_run(tmp_path / "sin", family="gpt2", pos_encoding="sinusoidal", mlp="relu2")
    with pytest.raises(GoushiError, match=r"pos_encoding='sinusoidal'.*mlp='relu2'"):
        export_hf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_llama_with_biases_exports_exactly(tmp_path):
    run_dir = build_run(tmp_path / "b", family="llama", bias=True)
    run = load_run(run_dir)
    with torch.no_grad():
        for n, p in run.model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    save_weights(run_dir / rundir.WEIGHTS, run.model)
    out = export_hf(run_dir, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    idx = torch.randint(0, run.config.vocab_size, (1, 20))
    with torch.no_grad():
        assert (model(idx).logits - run.model(idx)[0]).abs().max().item() <= 1e-4


def test_existing_output_is_refused_unless_force_and_interrupts_leave_nothing(make_run, tmp_path, monkeypatch):
    run_dir = make_run("char", "gpt2")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 2
    assert (out / "keep.txt").exists()
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        export_hf(run_dir, tmp_path / "hf2")
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no half-written directory, no temporary left behind


def test_export_cli_errors_are_one_line(make_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "hf", "--out", str(tmp_path / "o")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["export", str(make_run("char", "gpt2")), "--format", "hf", "--out", str(tmp_path / "o"),
                 "--type", "q8_0"]) == 2
    assert "--type q8_0: only for --format gguf" in capsys.readouterr().err


