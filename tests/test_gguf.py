"""`goushi export --format gguf`: llama.cpp (through llama-cpp-python, built from its package) loads the file
for both families and every tokenizer (char; BPE behind deepseek-v3, exact; BPE behind the two-character rule,
approximate) and gives our logits, our top-1 next tokens wherever they are clear, and our greedy text; llama.cpp
tokenizes text exactly as we do where the export is exact; the Modelfile, the han2 BPE refusal, --force and
interrupted exports."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from conftest import build_run
from export_fixtures import as_chat_run, load_gguf, raw_greedy, trained_run
from goushi import rundir
from goushi.checkpoint import load_run
from goushi.cli import main
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.export import export_gguf
from goushi.tokenizer import Tokenizer

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
PROMPTS = ["今天我终于", "床前明月光", "好评！物流"]
# Kinds of run: char, and BPE behind each pre-tokenizer; only "bpe-han2" (the two-character rule) is approximate.
KINDS = ["char", "bpe-deepseek-v3", "bpe-han2"]
EXACT = ("char", "bpe-deepseek-v3")
# What prompts contain: Chinese with its punctuation, digits, Latin, spaces of every kind, newlines, emoji, kana,
# rare and very new characters (outside deepseek-v3's CJK range U+4E00-U+9FA5), combining marks, control bytes.
TEXTS = ["  两个空格\n\n换行  ", " 前导空格 Hello, World!", "生僻字龘靐齉😀", "V我50，今天疯狂星期四",
         "全角标点：，。！？「」『』（）【】《》……——、；", "数字0123456789、３.１４和1,234.56元", "中文English中文123中文",
         "line one\nline two\r\n\n\n后面\t\t制表符   ", "\u3000\u3000全角空格\u00a0不换行空格\u200b零宽",
         "emoji 😀🎉👨\u200d👩\u200d👧 旗 🇨🇳", "ひらがなカタカナ漢字ｶﾀｶﾅ", "扩展A㐀䶵 扩展B𠀀𪚥 新字鿰鿿 々〇",
         "It's don't I'M café naïve e\u0301", "#话题 @用户 http://x.cn/a?b=1&c=2", "“你好，”他说：“OK吧？”"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_runs")
    built = {}

    def get(kind: str, family: str):
        if (kind, family) not in built:
            base, _, pre = kind.partition("-")
            built[kind, family] = trained_run(root / kind, base, family, **({"bpe_pre": pre} if pre else {}))
        return built[kind, family]

    return get


def top1_agreement(llm, model, ids: list[int]) -> float:
    """Share of positions where llama.cpp's most likely next token is ours."""
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)]).argmax(-1)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].argmax(-1).numpy()
    return float((theirs == ours).mean())


# llama.cpp computes GPT-2's GELU with the tanh approximation (ours is the exact one) and adds in its own order,
# so its logits are not ours to the last bit: the largest difference measured on a Xeon was 2e-3 to 7.3e-3 for the
# four runs below (the test prints it). Where our two best tokens are closer than twice that, which one wins
# depends on the CPU's rounding (a Zen 3 and a Xeon parted at such a near-tie), so the comparisons below are
# strict about the logits everywhere and about the winner only where it is clear.
LOGIT_TOL = 0.03
CLEAR = 2 * LOGIT_TOL  # a top-2 margin above this decides the same top-1 for any logits within LOGIT_TOL of ours


def teacher_forced(llm, model, ids: list[int]) -> tuple[float, int]:
    """llama.cpp and goushi read the same ids; every position's logits must be within LOGIT_TOL of ours, and
    its top-1 ours wherever our margin is clear. Returns (largest difference, near-ties)."""
    llm.reset()
    llm.eval(ids)
    theirs = torch.from_numpy(np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].float()
    worst = float((theirs - ours).abs().max())
    top2 = ours.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR
    assert worst <= LOGIT_TOL, f"llama.cpp's logits differ from ours by {worst:.2e} (allowed {LOGIT_TOL})"
    differ = (theirs.argmax(-1) != ours.argmax(-1)) & clear
    assert not differ.any(), f"top-1 differs at clear positions {differ.nonzero().flatten().tolist()}"
    return worst, int((~clear).sum())


def clear_prefix(model, ids: list[int], new: list[int]) -> int:
    """How many of our greedy tokens `new` after `ids` were chosen by a clear margin before the first near-tie."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + new]))[0][0, len(ids) - 1:-1].float()
    top2 = logits.topk(2, dim=-1).values
    near = ((top2[:, 0] - top2[:, 1]) <= CLEAR).nonzero()
    return int(near[0]) if len(near) else len(new)


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if t == 0 or len(out) >= n:
            break
        out.append(t)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_gives_our_logits_top1_tokens_and_greedy_text(runs, tmp_path, kind, family):
    run_dir = runs(kind, family)
    out, modelfile = export_gguf(run_dir, tmp_path / "m.gguf", approximate_tokenizer=kind not in EXACT)
    assert modelfile == tmp_path / "m.Modelfile" and modelfile.is_file()
    engine = Engine.load(run_dir)
    llm = load_gguf(out)
    try:
        texts_compared = tokens_compared = near_ties = positions = 0
        worst = 0.0
        for prompt in PROMPTS:
            ids = [0] + engine.tokenizer.encode(prompt)
            if kind in EXACT:  # llama.cpp tokenizes these runs exactly like us (BOS included)
                assert llm.tokenize(prompt.encode(), add_bos=True, special=False) == ids
            ours = raw_greedy(engine.model, ids, 24)
            diff, ties = teacher_forced(llm, engine.model, ids + ours)
            worst, near_ties, positions = max(worst, diff), near_ties + ties, positions + len(ids) + len(ours)
            # Free-running through llama.cpp's own decode loop (its KV cache): the same tokens up to the first
            # step our model decided by a near-tie, after which either continuation is right.
            theirs = llama_greedy(llm, ids, 24)
            n = clear_prefix(engine.model, ids, ours)
            assert theirs[:n] == ours[:n]
            # ... and those tokens read back as the same bytes (a text may end inside a character)
            assert llm.detokenize(ours[:n]) == b"".join(engine.tokenizer.token_bytes(i) for i in ours[:n])
            tokens_compared += n
            if n == len(ours) and theirs == ours:
                text = engine.generate(prompt, SampleConfig(strategy="greedy", max_new_tokens=24))[0]
                if text.token_ids == ours:  # the engine's UTF-8 guard did not step in
                    assert llm.detokenize(ours).decode("utf-8") == text.text
                    texts_compared += 1
        print(f"{kind}-{family}: largest logit difference {worst:.2e} over {positions} positions, "
              f"{near_ties} near-ties (top-2 margin <= {CLEAR}); {tokens_compared} greedy tokens and "
              f"{texts_compared} texts compared")
        # The logits were compared at every position; the free-running comparison must not be vacuous either. How
        # far each rollout stays clear depends on the CPU's rounding (20 of 72 tokens for the deepseek-v3 GPT-2 run
        # under AVX2 kernels, 39-52 on a Xeon), so the floor is a third of one rollout.
        assert tokens_compared >= 8
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("gtype", ["f16", "q8_0"])
def test_smaller_types_load_and_mostly_agree(runs, tmp_path, gtype):
    run_dir = runs("char", "llama")
    out, _ = export_gguf(run_dir, tmp_path / f"m-{gtype}.gguf", kind=gtype)
    f32, _ = export_gguf(run_dir, tmp_path / "m-f32.gguf")
    assert out.stat().st_size < f32.stat().st_size
    engine = Engine.load(run_dir)
    llm = load_gguf(out)
    try:
        ids = [0] + engine.tokenizer.encode("".join(PROMPTS))
        ids += raw_greedy(engine.model, ids, 20)
        agreement = top1_agreement(llm, engine.model, ids)
        print(f"{gtype}: top-1 agreement {agreement:.3f} over {len(ids)} positions")
        assert agreement >= 0.8
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", EXACT)
def test_tokenizer_matches_on_spaces_rare_characters_and_chat_markers(runs, tmp_path, kind):
    run_dir = as_chat_run(runs(kind, "gpt2"), tmp_path / "chat")
    out, modelfile = export_gguf(run_dir, tmp_path / "c.gguf")
    tok = load_run(run_dir).tokenizer
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        if kind != "char":
            assert llm.metadata["tokenizer.ggml.pre"] == "deepseek-v3"
        for text in TEXTS:
            got = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert got == tok.encode(text)
            assert llm.detokenize(got).decode("utf-8") == text
        tpl = rundir.read_run(run_dir).template
        messages = [{"role": "system", "content": "你是段子手"}, {"role": "user", "content": "讲个 笑话"}]
        rendered = tpl.render(messages, add_generation_prompt=True)
        ids = llm.tokenize(rendered.encode(), add_bos=True, special=True)
        assert ids == tpl.encode(tok, messages, add_generation_prompt=True)[0]
        assert "tokenizer.chat_template" in llm.metadata
    finally:
        llm.close()
    text = modelfile.read_text(encoding="utf-8")
    assert "FROM ./c.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "{{ $m.Role }}" in text and "poems: CC0-1.0 (https://example.com/poems)" in text


def test_two_character_rule_bpe_is_refused_unless_approximation_is_accepted(make_run, tmp_path):
    with pytest.raises(GoushiError, match=r"BPE tokenizer splits Chinese into runs of at most 2 characters \(pre-"
                       r"tokenizer han2\), which llama.cpp cannot reproduce.*--approximate-tokenizer.*--bpe-pre deepseek-v3"):
        export_gguf(make_run("bpe", "gpt2", bpe_pre="han2"), tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_deepseek_v3_bpe_tokenizes_like_llama_cpp_on_random_text(make_run, tmp_path):
    """Seeded random strings over every kind of character the pre-tokenizer's regexes tell apart (letters, marks,
    numbers of every category, punctuation, symbols, each kind of space and control, CJK in and out of its range):
    llama.cpp's ids are ours on all of them."""
    run_dir = make_run("bpe", "gpt2", bpe_pre="deepseek-v3")
    out, _ = export_gguf(run_dir, tmp_path / "m.gguf")
    tok = Tokenizer.from_file(run_dir)
    pools = ["".join(map(chr, range(0x20, 0x7F))), "\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u3000\u2028\u200b\u200d\ufeff",
             "床前明月光疑是地上霜举头望低思故乡今天我终于学会了做饭", "\u9fa5\u9fa6\u9fff\u3400\u3005\u3007\u2e80\uf900\U00020000",
             "，。！？、；：“”‘’（）《》【】…—·", "".join(map(chr, range(0xFF01, 0xFF5F))), "ぁあかがアカガ・ー゛",
             "😀🎉🇨🇳\ufe0f\u0301", "".join(map(chr, range(0xC0, 0x180))), "٠١٢Ⅰⅱ①⑳½²", "αβγДжש"]
    rng = random.Random(0)
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        for _ in range(1000):
            text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 30)))
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), repr(text)
    finally:
        llm.close()


def test_options_llama_cpp_cannot_express_are_refused_by_name(tmp_path):
    run = build_run(tmp_path / "qk", family="llama", qk_norm=True)
    with pytest.raises(GoushiError, match=r"qk_norm=True"):
        export_gguf(run, tmp_path / "m.gguf")
    with pytest.raises(GoushiError, match=r"--type q4_0: not one of f32, f16, q8_0"):
        export_gguf(run, tmp_path / "m.gguf", kind="q4_0")
    with pytest.raises(GoushiError, match=r"ending in .gguf"):
        export_gguf(run, tmp_path / "m.bin")


def test_existing_files_are_refused_unless_force_and_interrupts_leave_nothing(make_run, tmp_path, capsys, monkeypatch):
    run_dir = make_run("char", "llama")
    out = tmp_path / "m.gguf"
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out), "--type", "f16"]) == 0
    assert out.is_file() and (tmp_path / "m.Modelfile").is_file()
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    (tmp_path / "m.gguf").unlink()
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out)]) == 2  # the Modelfile is still there
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out), "--force"]) == 0

    import gguf

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(run_dir, tmp_path / "other.gguf")
    assert sorted(os.listdir(tmp_path)) == ["m.Modelfile", "m.gguf"]
