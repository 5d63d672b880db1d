"""How text files are cut into documents (`separator = "auto"`, `--split-docs`), and builds whose validation
split would be empty or tiny."""

import argparse
import json
import re

import pytest

from goushi.cli import data as data_cli
from goushi.data.build import BuildOptions, build_dataset
from goushi.data.readers import STRAY_BLANK_LINES, decide_split, plan_file, plan_source, read_file
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError

POEMS = [f"《山居{i}》\n唐·诗人{i % 5}\n空山新雨后{i}，天气晚来秋。\n明月松间照，清泉石上流{i}。" for i in range(30)]
WORDS = ("菜量", "很足", "味道", "不错", "服务员", "态度", "好", "下次", "还来", "价格", "实惠", "环境", "一般", "太咸",
         "排队", "好久", "老板", "热情", "分量", "少", "推荐", "辣子鸡", "米饭", "免费", "停车", "方便", "装修", "旧")


def varied(i: int) -> str:
    """A review-like line; different enough from the others that cleaning keeps it."""
    rng = __import__("random").Random(i)
    return f"第{i}条：" + "，".join("".join(rng.choices(WORDS, k=3)) for _ in range(rng.randint(3, 6))) + "。"


LINES = [varied(i) for i in range(2000)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def manifest(folder, body='[[source]]\nid = "a"\npath = "a.txt"\nlicense = "CC0"\n'):
    return write(folder / "sources.toml", body)


def fast(**kw):
    return BuildOptions(provenance=False, **kw)


def run_cli(argv, capsys=None):
    p = argparse.ArgumentParser(prog="goushi")
    data_cli.register(p.add_subparsers())
    args = p.parse_args(argv)
    try:
        return args.func(args) or 0
    except GoushiError as e:
        print(f"error: {e}")
        return 2


# ---- the auto rule ---------------------------------------------------------------------------------------
def test_poems_with_blank_lines_split_on_blank_lines(tmp_path):
    p = write(tmp_path / "poems.txt", "\n\n".join(POEMS) + "\n")
    plan = plan_file(p)
    assert (plan.separator, plan.chosen_by, plan.lines, plan.paragraphs) == ("blank", "auto", 120, 30)
    docs = list(read_file(p))
    assert docs == POEMS  # title, author and verses stay together


def test_one_text_per_line_without_blank_lines_splits_per_line(tmp_path):
    p = write(tmp_path / "reviews.txt", "\n".join(LINES[:50]) + "\n")
    plan = plan_file(p)
    assert plan.separator == "line" and "no blank line" in plan.reason
    assert list(read_file(p)) == LINES[:50]


def test_a_handful_of_stray_blank_lines_among_many_lines_is_still_one_per_line(tmp_path):
    lines = list(LINES)
    for at in (100, 700, 701, 1500):  # four stray blank lines (two of them together)
        lines[at] = ""
    p = write(tmp_path / "reviews.txt", "\n".join(lines) + "\n")
    plan = plan_file(p)
    assert plan.separator == "line" and "stray blank lines" in plan.reason
    assert len(list(read_file(p))) == 2000 - 4


def test_the_threshold_between_paragraphs_and_stray_blank_lines():
    assert decide_split(STRAY_BLANK_LINES * 10, 10)[0] == "blank"  # paragraphs of exactly the limit
    assert decide_split(STRAY_BLANK_LINES * 10 + 10, 10)[0] == "line"  # one line more each on average
    assert decide_split(1, 1) == ("line", "a single line of text")
    assert decide_split(5, 1)[0] == "line"
    assert decide_split(5, 1, files=3)[0] == "file"  # a short file among several: one text per file
    assert decide_split(STRAY_BLANK_LINES + 1, 1, files=3)[0] == "line"


def test_a_folder_of_one_poem_per_file_reads_one_document_per_file(tmp_path):
    for i, poem in enumerate(POEMS[:4]):
        write(tmp_path / "poems" / f"{i}.txt", poem)
    (src,) = load_manifest(manifest(tmp_path, '[[source]]\nid = "p"\npath = "poems"\n'))
    plans = plan_source(src)
    assert [p.separator for p in plans] == ["file"] * 4
    assert [d for pl in plans for d in read_file(pl.path, separator=pl.separator)] == POEMS[:4]


def test_forced_separators_and_their_recording(tmp_path):
    write(tmp_path / "poems.txt", "\n\n".join(POEMS) + "\n")
    (src,) = load_manifest(manifest(tmp_path, '[[source]]\nid = "p"\npath = "poems.txt"\nseparator = "line"\n'))
    (plan,) = plan_source(src)
    assert (plan.separator, plan.chosen_by) == ("line", "manifest")
    (plan,) = plan_source(src, split_docs="file")
    assert (plan.separator, plan.chosen_by) == ("file", "--split-docs")
    assert plan.expected_docs() == 1
    (plan,) = plan_source(src, split_docs="auto")
    assert (plan.separator, plan.chosen_by) == ("blank", "auto")
    with pytest.raises(GoushiError, match=r"--split-docs 'para': choose one of auto, blank, line, file"):
        plan_source(src, split_docs="para")
    with pytest.raises(GoushiError, match=r"--split-docs 'para'"):
        BuildOptions(split_docs="para").validate()
    with pytest.raises(GoushiError, match=r"separator='  ' is empty"):
        load_manifest(manifest(tmp_path, '[[source]]\nid = "p"\npath = "poems.txt"\nseparator = "  "\n'))


# ---- a 2,000-line one-text-per-line file builds and keeps a real validation split -------------------------
def test_one_text_per_line_file_builds_with_a_validation_split(tmp_path):
    write(tmp_path / "a.txt", "\n".join(LINES) + "\n")
    write(tmp_path / "poems.txt", "\n\n".join(POEMS) + "\n")
    m = manifest(tmp_path, '[[source]]\nid = "a"\npath = "a.txt"\n\n[[source]]\nid = "p"\npath = "poems.txt"\n')
    meta = build_dataset(m, tmp_path / "d", options=fast())
    assert meta["train_docs"] + meta["val_docs"] == 2030 and meta["val_docs"] == round(2030 * 0.05)
    assert meta["sources"]["a"]["doc_split"] == {"one document per line (auto)": 1}
    assert meta["sources"]["p"]["doc_split"] == {"one document per paragraph (auto)": 1}
    report = json.loads((tmp_path / "d" / "report.json").read_text(encoding="utf-8"))
    (a,) = report["doc_split"]["a"]
    assert (a["separator"], a["chosen_by"], a["lines"], a["paragraphs"], a["docs"]) == ("line", "auto", 2000, 1, 2000)
    (p,) = report["doc_split"]["p"]
    assert (p["separator"], p["docs"]) == ("blank", 30)
    assert report["warnings"] == []
    card = (tmp_path / "d" / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "## Documents" in card
    assert "- **a** `a.txt`: 2,000 documents, one document per line (no blank line between its 2,000 lines)" in card
    assert ("- **p** `poems.txt`: 30 documents, one document per blank-line-separated paragraph (30 paragraphs, "
            "4.0 lines each on average)") in card


def test_split_docs_on_the_command_line(tmp_path, capsys):
    write(tmp_path / "a.txt", "\n\n".join(POEMS) + "\n")
    m = manifest(tmp_path)
    assert run_cli(["data", "build", "--sources", str(m), "--out", str(tmp_path / "d"), "--split-docs", "line",
                    "--no-provenance"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"read a: \d+ documents kept \(1 file one document per line\)", out)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    report = json.loads((tmp_path / "d" / "report.json").read_text(encoding="utf-8"))
    assert meta["options"]["split_docs"] == "line" and report["doc_split"]["a"][0]["docs"] == 120
    # `data add` records the choice in the manifest (--split-docs is another name for --separator there)
    write(tmp_path / "b.txt", "\n\n".join(POEMS) + "\n")
    assert run_cli(["data", "add", str(tmp_path / "b.txt"), "--id", "b", "--split-docs", "file",
                    "--sources", str(m)]) == 0
    assert [(s.id, s.separator) for s in load_manifest(m)] == [("a", "auto"), ("b", "file")]
    with pytest.raises(SystemExit):  # argparse names the choices
        run_cli(["data", "build", "--sources", str(m), "--out", str(tmp_path / "d"), "--split-docs", "para"])
    assert "--split-docs: invalid choice: 'para' (choose from 'auto', 'blank', 'line', 'file')" in capsys.readouterr().err


# ---- empty or tiny validation splits -----------------------------------------------------------------------
def nothing_written(tmp_path, out="d"):
    return not (tmp_path / out).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_one_document_is_refused_before_anything_is_written(tmp_path):
    write(tmp_path / "a.txt", "\n\n".join(POEMS[:1]) + "\n")  # one poem, four lines, no blank line
    m = manifest(tmp_path, '[[source]]\nid = "a"\npath = "a.txt"\nseparator = "blank"\n')
    with pytest.raises(GoushiError, match=r"the corpus is 1 document \(.*a.txt: one document per blank-line-separated "
                                          r"paragraph \(set by manifest\)\), so the validation split would be empty; "
                                          r"pass --split-docs line"):
        build_dataset(m, tmp_path / "d", options=fast())
    assert nothing_written(tmp_path)
    meta = build_dataset(m, tmp_path / "d", options=fast(split_docs="line"))  # the fix the message names
    assert meta["train_docs"] + meta["val_docs"] == 4 and meta["val_docs"] == 1


def test_one_line_and_one_record_corpora_name_the_file_and_the_fix(tmp_path):
    write(tmp_path / "a.txt", "只有一行字而已")
    m = manifest(tmp_path)
    with pytest.raises(GoushiError, match=r"a.txt: one document per line \(a single line of text\)\), so the "
                                          r"validation split would be empty; it holds a single line of text: add more"):
        build_dataset(m, tmp_path / "d", options=fast())
    write(tmp_path / "b.jsonl", '{"text": "一条"}\n')
    m = manifest(tmp_path, '[[source]]\nid = "b"\npath = "b.jsonl"\n')
    with pytest.raises(GoushiError, match=r"b.jsonl: jsonl: one document per line\).*a single record"):
        build_dataset(m, tmp_path / "d", options=fast())
    write(tmp_path / "empty.txt", "\n\n  \n")
    m = manifest(tmp_path, '[[source]]\nid = "e"\npath = "empty.txt"\n')
    with pytest.raises(GoushiError, match=r"no text in the sources' files \(.*empty.txt\)"):
        build_dataset(m, tmp_path / "d", options=fast())
    assert nothing_written(tmp_path)


def test_one_document_left_after_cleaning_is_refused_before_anything_is_written(tmp_path):
    write(tmp_path / "a.txt", "同一句话说了又说\n同一句话说了又说\n同一句话说了又说\n")
    m = manifest(tmp_path)
    with pytest.raises(GoushiError, match=r"only 1 document is left after cleaning \(3 read; dropped: "
                                          r"exact_duplicate 2\), so the validation split would be empty"):
        build_dataset(m, tmp_path / "d", options=fast())
    assert nothing_written(tmp_path)


def test_a_tiny_validation_split_is_announced_before_the_build_and_recorded(tmp_path):
    write(tmp_path / "a.txt", "\n".join(LINES[:30]) + "\n")
    said = []
    meta = build_dataset(manifest(tmp_path), tmp_path / "d", options=fast(), log=said.append)
    assert meta["val_docs"] == 2
    warning = next(m for m in said if m.startswith("warning:"))
    assert said.index(warning) < next(i for i, m in enumerate(said) if m.startswith("tokenizer:"))
    assert "the validation split is tiny" in warning and "2 of 30 documents" in warning
    assert "raise --val-fraction" in warning
    report = json.loads((tmp_path / "d" / "report.json").read_text(encoding="utf-8"))
    assert report["warnings"] == [warning.removeprefix("warning: ")]
    assert "the validation split is tiny" in (tmp_path / "d" / "DATA_CARD.md").read_text(encoding="utf-8")
    meta = build_dataset(manifest(tmp_path), tmp_path / "d2", options=fast(val_fraction=0.5), log=said.append)
    assert not json.loads((tmp_path / "d2" / "report.json").read_text(encoding="utf-8"))["warnings"]


def test_the_trainer_says_why_a_validation_split_is_empty_or_short(tmp_path):
    from goushi.train.data import TokenData

    write(tmp_path / "a.txt", "\n".join(LINES[:30]) + "\n")
    build_dataset(manifest(tmp_path), tmp_path / "zero", options=fast(val_fraction=0))
    with pytest.raises(GoushiError, match=r"val.bin: empty; it was built with --val-fraction 0; rebuild it"):
        TokenData(tmp_path / "zero")
    build_dataset(manifest(tmp_path), tmp_path / "small", options=fast())
    data = TokenData(tmp_path / "small")
    with pytest.raises(GoushiError, match=r"val.bin: \d+ tokens \(2 documents\) is too few for context 128 \(a window "
                                          r"needs 130\); train with --context \d+ or less, or rebuild the data with a "
                                          r"larger --val-fraction"):
        data.check_context(128)
