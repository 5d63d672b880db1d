"""Subtitle files (.srt, .vtt, .ass/.ssa) read as documents."""

import codecs
import json

import pytest

from goushi.data import subtitles
from goushi.data.build import BuildOptions, build_dataset
from goushi.data.readers import plan_file, read_file
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError

SRT = """1
00:00:01,000 --> 00:00:03,500
{\\an8}<i>你好，世界</i>

2
00:00:03,500 --> 00:00:05,000
<font color="#ffffff">你好，世界</font>

3
00:00:05,000 --> 00:00:07,000
第二句
- 第三句 &amp; 更多
4
00:00:07,000 --> 00:00:08,000
<b>第四句</b>

"""

VTT = """WEBVTT - 一部电影
Kind: captions
Language: zh

NOTE 这是注释，
不是台词

STYLE
::cue { color: yellow }

REGION
id:fred width:40%

intro
00:01.000 --> 00:04.000 align:start position:10%
<v 小明>我们走吧</v>

00:00:04.000 --> 00:00:06.000
<c.yellow>好的</c><00:00:05.000>马上<ruby>汉<rt>hàn</rt></ruby>字

00:00:06.000 --> 00:00:07.000
好的马上汉字
"""

ASS = """[Script Info]
Title: 测试
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize
Style: Default,Arial,20
Style: Sign,Arial,30

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:05.00,0:00:06.00,Default,,0,0,0,,最后一句, 带逗号
Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\\an8\\fs20}第一句\\N{\\fnArial}First line
Dialogue: 1,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\\an8\\fs20}第一句\\N{\\fnArial}First line
Comment: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,注释不是台词
Dialogue: 0,0:00:03.00,0:00:04.00,Sign,,0,0,0,,{\\p1}m 0 0 l 100 0 100 100{\\p0}招牌{注释}\\h上的字
"""


def wb(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_srt_drops_numbers_timings_tags_and_repeated_cues(tmp_path):
    p = wb(tmp_path / "a.srt", SRT.encode())
    assert list(read_file(p)) == ["你好，世界\n第二句\n- 第三句 & 更多\n第四句"]
    assert list(read_file(p, separator="line")) == ["你好，世界", "第二句\n- 第三句 & 更多", "第四句"]
    plan = plan_file(p)
    assert (plan.format, plan.separator, plan.encoding) == ("srt", "file", "utf-8")


def test_srt_cue_text_with_a_blank_line_stays_one_cue():
    text = "1\n00:00:01,000 --> 00:00:02,000\n上半句\n\n下半句\n\n2\n00:00:02,000 --> 00:00:03,000\n下一条\n"
    assert subtitles.parse_srt(text) == ["上半句\n下半句", "下一条"]


def test_vtt_drops_header_note_style_region_identifiers_and_tags(tmp_path):
    p = wb(tmp_path / "a.vtt", VTT.encode())
    # the last cue equals the one before it once tags are gone: kept once
    assert list(read_file(p, separator="line")) == ["我们走吧", "好的马上汉字"]


def test_ass_keeps_dialogue_in_screen_order_without_styles_overrides_or_drawings(tmp_path):
    p = wb(tmp_path / "a.ass", ASS.encode())
    assert list(read_file(p, separator="line")) == ["第一句\nFirst line", "招牌 上的字", "最后一句, 带逗号"]
    ssa = wb(tmp_path / "b.ssa", ASS.replace("[V4+ Styles]", "[V4 Styles]").encode())
    assert plan_file(ssa).format == "ass" and len(list(read_file(ssa))) == 1


def test_ass_errors_name_the_file_and_line(tmp_path):
    p = wb(tmp_path / "bad.ass", b"[Events]\nFormat: Layer, Start, End, Style, Text\nDialogue: 0,0:00:01.00\n")
    with pytest.raises(GoushiError, match=r"bad.ass:3: Dialogue line has 2 fields but the Format line names 5"):
        list(read_file(p))
    p = wb(tmp_path / "none.ass", b"[Script Info]\nTitle: x\n")
    with pytest.raises(GoushiError, match=r"none.ass: no \[Events\] section"):
        list(read_file(p))


@pytest.mark.parametrize("encode, used", [
    (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), "utf-8-sig"),
    (lambda t: t.encode("gb18030"), "gb18030"),
    (lambda t: t.encode("utf-16"), "utf-16"),  # Python writes a byte-order mark
])
def test_subtitle_encodings(tmp_path, encode, used):
    p = wb(tmp_path / "a.srt", encode(SRT))
    assert plan_file(p).encoding == used
    assert list(read_file(p))[0].startswith("你好，世界\n第二句")


def test_undecodable_subtitles_say_so(tmp_path):
    p = wb(tmp_path / "bad.srt", codecs.BOM_UTF16_LE + "1\n00:00:01,000 --> 00:00:02,000\n台词".encode("utf-16-le") + b"\x00")
    with pytest.raises(GoushiError, match=r"bad.srt: starts with a UTF-16 byte-order mark"):
        list(read_file(p))
    p = wb(tmp_path / "bad2.srt", b"1\n00:00:01,000 --> 00:00:02,000\nok \x80\x80\xff\n")
    with pytest.raises(GoushiError, match=r"bad2.srt: neither UTF-8 \(bad byte at 35\) nor GB18030 .*convert it to UTF-8"):
        list(read_file(p))
    p = wb(tmp_path / "big5.srt", "1\n00:00:01,000 --> 00:00:02,000\n電影\n".encode("big5"))
    assert list(read_file(p, encoding="big5")) == ["電影"]
    with pytest.raises(GoushiError, match=r"big5.srt: not valid ascii at byte \d+"):
        list(read_file(p, encoding="ascii"))


def test_a_folder_of_subtitles_builds_one_document_per_file(tmp_path):
    for i in range(4):
        wb(tmp_path / "subs" / f"ep{i}.srt",
           "".join(f"{k}\n00:00:{k:02d},000 --> 00:00:{k + 1:02d},000\n第{i}集第{k}句台词，说得很长很长很长很长很长很长。\n\n"
                   for k in range(1, 20)).encode())
    wb(tmp_path / "subs" / "ep9.ass", ASS.encode())
    wb(tmp_path / "subs" / "notes.vtt", VTT.encode())
    (tmp_path / "sources.toml").write_text('[[source]]\nid = "subs"\npath = "subs"\nlicense = "CC0"\n', encoding="utf-8")
    (src,) = load_manifest(tmp_path / "sources.toml")
    assert len(src.files()) == 6
    meta = build_dataset(tmp_path / "sources.toml", tmp_path / "d", options=BuildOptions(provenance=False))
    assert meta["train_docs"] + meta["val_docs"] == 6
    assert meta["sources"]["subs"]["doc_split"] == {"subtitles, one document per file": 6}
    card = (tmp_path / "d" / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "`ep0.srt`: 1 documents, subtitles: the whole file is one document, cues joined with newlines" in card
    meta = build_dataset(tmp_path / "sources.toml", tmp_path / "d2",
                         options=BuildOptions(provenance=False, split_docs="line"))
    report = json.loads((tmp_path / "d2" / "report.json").read_text(encoding="utf-8"))
    assert [d["docs"] for d in report["doc_split"]["subs"]] == [19, 19, 19, 19, 3, 2]  # read, before cleaning
    assert meta["sources"]["subs"]["doc_split"] == {"subtitles, one document per cue": 6}


def test_one_subtitle_file_is_refused_with_the_option_that_helps(tmp_path):
    wb(tmp_path / "movie.srt", SRT.encode())
    (tmp_path / "sources.toml").write_text('[[source]]\nid = "m"\npath = "movie.srt"\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"1 document \(.*movie.srt: subtitles: the whole file is one document.*"
                                          r"add more subtitle files, or pass --split-docs line"):
        build_dataset(tmp_path / "sources.toml", tmp_path / "d", options=BuildOptions(provenance=False))
    assert not (tmp_path / "d").exists()
    meta = build_dataset(tmp_path / "sources.toml", tmp_path / "d", options=BuildOptions(provenance=False,
                                                                                        split_docs="line"))
    assert meta["train_docs"] + meta["val_docs"] == 3
    report = json.loads((tmp_path / "d" / "report.json").read_text(encoding="utf-8"))
    assert report["doc_split"]["m"][0]["separator"] == "line"
