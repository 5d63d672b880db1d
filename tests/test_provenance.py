"""The verbatim-copy index: planted copies are found with their source, novel text is not, offsets are characters."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest

from goushi.data.textindex import TextIndex, TextIndexWriter, copied_char_mask
from goushi.errors import GoushiError
from goushi.eval.provenance import highlight_html, provenance_for_run, summarize
from goushi.rundir import provenance_index_dir as index_dir_for_run

KFC = "疯狂星期四，谁请我吃肯德基？v我50，我给你讲一个故事。"
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
SOURCES = {
    "kfc": {"author": "网友", "url": "https://example.org/kfc", "license": "MIT"},
    "poems": {"author": "李白", "url": "https://example.org/tang", "license": "AGPL-3.0"},
}


def build(path: Path, docs: list[tuple[str, str]], sources=SOURCES, **kw) -> Path:
    w = TextIndexWriter(path, **kw)
    for text, sid in docs:
        w.add(text, sid)
    w.close(sources)
    return path


@pytest.fixture()
def index(tmp_path) -> TextIndex:
    build(tmp_path, [("今天天气不错。", "kfc"), (KFC, "kfc"), (POEM, "poems"), ("ABC mixed ascii 与中文 text", "kfc")])
    return TextIndex.load(tmp_path)


def test_planted_copy_is_found_with_its_source_and_character_offsets(index):
    planted = "举头望明月，低头思"  # 9 characters from the poem
    text = "我昨天写了一句诗：" + planted + "。真不错"
    spans = index.find_copied_spans(text, min_chars=8)
    assert len(spans) == 1
    s = spans[0]
    assert text[s.start:s.end] == s.text == planted
    assert s.start == len("我昨天写了一句诗：")
    assert (s.source_id, s.author, s.license, s.url) == ("poems", "李白", "AGPL-3.0", "https://example.org/tang")
    assert s.doc_index == 2 and s.count == 1


def test_text_built_not_to_overlap_has_no_spans(index):
    # 7-character pieces of the training text (one short of the threshold) joined by characters absent from it.
    pieces = [POEM[0:7], KFC[3:10], POEM[12:19]]
    text = "乙".join(pieces)
    assert all(index.count(p) for p in pieces)
    assert index.find_copied_spans(text, min_chars=8) == []
    assert index.find_copied_spans("完全没有出现过的句子呀呀呀", min_chars=2) == []


def test_matches_never_cross_documents_or_nul(index):
    # "今天天气不错。" ends one document and KFC starts the next: the join is not training text.
    joined = "天气不错。" + KFC[:5]
    assert index.find_copied_spans(joined, min_chars=8) == []
    nul = KFC[:6] + "\x00" + KFC[6:14]
    spans = index.find_copied_spans(nul, min_chars=6)
    assert [(s.start, s.end) for s in spans] == [(0, 6), (7, 15)]
    # A lone surrogate (undecodable terminal bytes) splits like NUL instead of crashing.
    assert [s.text for s in index.find_copied_spans(POEM[:8] + "\udce6" + "x", 8)] == [POEM[:8]]


def test_count_and_mixed_ascii_offsets(index):
    text = "前缀 mixed ascii 与中文 后缀"
    (s,) = index.find_copied_spans(text, min_chars=8)
    assert s.text == " mixed ascii 与中文 " and text[s.start:s.end] == s.text
    assert s.source_id == "kfc" and s.count == 1
    assert index.count("明月") == 2


def _brute(docs: list[str], text: str, k: int) -> list[tuple[int, int]]:
    longest = []
    for i in range(len(text)):
        n = 0
        while i + n < len(text) and any(text[i:i + n + 1] in d for d in docs):
            n += 1
        longest.append(n)
    out, end = [], 0
    for i, n in enumerate(longest):
        if n >= k and i + n > end:
            out.append((i, i + n))
            end = i + n
    return out


def test_maximal_spans_agree_with_brute_force(tmp_path):
    rng = random.Random(7)
    alphabet = "甲乙丙丁a"
    for trial in range(40):
        docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(rng.randint(1, 4))]
        d = build(tmp_path / str(trial), [(t, "s") for t in docs], {"s": {"license": "MIT"}})
        idx = TextIndex.load(d)
        for _ in range(5):
            text = "".join(rng.choice(alphabet + "戊") for _ in range(rng.randint(0, 30)))
            k = rng.randint(1, 6)
            spans = idx.find_copied_spans(text, k)
            assert [(s.start, s.end) for s in spans] == _brute(docs, text, k), (docs, text, k)
            for s in spans:
                assert s.text in docs[s.doc_index]
                assert s.count == sum(sum(dd.startswith(s.text, p) for p in range(len(dd))) for dd in docs)


def test_int64_suffix_array_gives_the_same_answers(tmp_path):
    d = build(tmp_path, [(KFC, "kfc"), (POEM, "poems")])
    before = TextIndex.load(d).find_copied_spans("看：" + POEM[3:15], 8)
    sa = np.load(d / "provenance" / "sa-00000.npy")
    assert sa.dtype == np.int32  # small pieces use the compact type
    np.save(d / "provenance" / "sa-00000.npy", sa.astype(np.int64))  # as written for a piece over 2 GiB
    after = TextIndex.load(d).find_copied_spans("看：" + POEM[3:15], 8)
    assert before == after and len(after) == 1


def test_writer_is_atomic_and_unknown_sources_are_recorded(tmp_path):
    with TextIndexWriter(tmp_path) as w:
        w.add(KFC, "kfc")
        # leaving the block without close() aborts
    assert not (tmp_path / "provenance").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(RuntimeError):
        with TextIndexWriter(tmp_path) as w:
            w.add(KFC, "kfc")
            raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []
    build(tmp_path, [(KFC, "mystery")], sources={})
    idx = TextIndex.load(tmp_path / "provenance")
    assert idx.sources["mystery"]["license"] == "unknown"
    build(tmp_path, [(POEM, "poems")])  # a rebuild replaces the old index
    assert TextIndex.load(tmp_path).find_copied_spans(KFC, 8) == []
    assert [p.name for p in tmp_path.iterdir()] == ["provenance"]


def test_empty_index_and_bad_input(tmp_path):
    build(tmp_path, [])
    assert TextIndex.load(tmp_path).find_copied_spans(KFC, 8) == []
    with pytest.raises(GoushiError, match="min-chars"):
        TextIndex.load(tmp_path).find_copied_spans(KFC, 0)
    with pytest.raises(GoushiError, match="no provenance index"):
        TextIndex.load(tmp_path / "nowhere")


def make_run(tmp_path: Path, data_dir: Path | None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    data = {"dir": str(data_dir)} if data_dir else {}
    (run / "config.json").write_text(json.dumps({"model": {}, "data": data}), encoding="utf-8")
    return run


def test_run_finds_its_index_through_config_json(tmp_path):
    data = build(tmp_path / "data", [(KFC, "kfc"), (POEM, "poems")])
    run = make_run(tmp_path, data)
    spans = provenance_for_run(run, "他说" + KFC[:12], min_chars=8)
    assert [(s.source_id, s.text) for s in spans] == [("kfc", KFC[:12])]
    info = summarize("他说" + KFC[:12], spans)
    assert info["copied_chars"] == 12 and info["sources"]["kfc"]["license"] == "MIT"
    page = highlight_html("<b>" + KFC[:12], provenance_for_run(run, "<b>" + KFC[:12]))
    assert page.startswith("&lt;b&gt;<mark") and "kfc · 网友 · MIT" in page
    assert copied_char_mask(14, spans).sum() == 12


def test_missing_index_errors_name_the_fix(tmp_path):
    run = make_run(tmp_path, None)
    with pytest.raises(GoushiError, match="no data.dir recorded; pass --data"):
        index_dir_for_run(run)
    moved = tmp_path / "moved"
    (run / "config.json").write_text(json.dumps({"model": {}, "data": {"dir": str(moved)}}), encoding="utf-8")
    with pytest.raises(GoushiError, match="provenance index not found"):
        index_dir_for_run(run)
    with pytest.raises(GoushiError, match="--data"):
        index_dir_for_run(run, data_dir=tmp_path)
    build(moved, [(KFC, "kfc")])
    assert index_dir_for_run(run) == moved / "provenance"


def run_cli(argv: list[str]) -> int:
    from goushi.cli import eval as cli_eval

    parser = argparse.ArgumentParser(prog="goushi")
    cli_eval.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_provenance_json_and_text(tmp_path, capsys):
    data = build(tmp_path / "data", [(KFC, "kfc"), (POEM, "poems")])
    run = make_run(tmp_path, data)
    assert run_cli(["provenance", str(run), "--text", "好诗：" + POEM[:10], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["copied_chars"] == 10 and out["spans"][0]["source_id"] == "poems"
    assert out["spans"][0]["license"] == "AGPL-3.0" and out["spans"][0]["start"] == 3
    f = tmp_path / "q.txt"
    f.write_text(KFC, encoding="utf-8")
    assert run_cli(["provenance", str(data), "--file", str(f), "--min-chars", "20"]) == 0
    assert "← kfc (author 网友, licence MIT" in capsys.readouterr().out
    with pytest.raises(GoushiError, match="--text is empty"):
        run_cli(["provenance", str(run), "--text", "  "])
