import pytest

from goushi.data import readers
from goushi.data.readers import read_file
from goushi.errors import GoushiError


def wb(p, data: bytes):
    p.write_bytes(data)
    return p


def test_txt_blank_line_documents_with_crlf(tmp_path):
    p = wb(tmp_path / "a.txt", "第一篇\r\n第二行\r\n\r\n\r\n第二篇\n   \n第三篇".encode())
    assert list(read_file(p)) == ["第一篇\n第二行", "第二篇", "第三篇"]


def test_txt_line_file_and_literal_separators(tmp_path):
    p = wb(tmp_path / "a.txt", "甲\n乙\n\n%%\n丙\n".encode())
    assert list(read_file(p, separator="line")) == ["甲", "乙", "%%", "丙"]
    assert list(read_file(p, separator="file")) == ["甲\n乙\n\n%%\n丙\n"]
    assert list(read_file(p, separator="%%")) == ["甲\n乙", "丙"]


def test_crlf_split_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK", 4)
    p = wb(tmp_path / "a.txt", "ab\r\ncd\r\n\r\n中文\r\n".encode())
    assert list(read_file(p, separator="line")) == ["ab", "cd", "中文"]


def test_not_utf8_names_file_byte_offset_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK", 5)  # the offset must be right across chunk borders too
    data = b"ascii line\n" + "中文文本".encode("gb18030")
    p = wb(tmp_path / "gbk.txt", data)
    with pytest.raises(GoushiError, match=r"gbk.txt: not valid utf-8 at byte 11.*--encoding gb18030"):
        list(read_file(p))
    # no blank line: auto reads one document per line
    assert list(read_file(p, encoding="gb18030")) == ["ascii line", "中文文本"]
    assert list(read_file(p, encoding="gb18030", separator="blank")) == ["ascii line\n中文文本"]


def test_utf8_bom_and_utf16(tmp_path):
    p = wb(tmp_path / "bom.txt", b"\xef\xbb\xbf" + "你好".encode())
    assert list(read_file(p)) == ["你好"]
    p = wb(tmp_path / "u16.txt", "你好\n\n世界".encode("utf-16"))
    assert list(read_file(p, encoding="utf-16")) == ["你好", "世界"]


@pytest.mark.parametrize("data, match", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is a PNG image"),
    (b"PK\x03\x04rest", "is a zip archive"),
    (b"abc\x00\x01\x02def", "looks binary"),
])
def test_binary_files_refused(tmp_path, data, match):
    p = wb(tmp_path / "x.txt", data)
    with pytest.raises(GoushiError, match=match):
        list(read_file(p))


def test_missing_and_folder(tmp_path):
    with pytest.raises(GoushiError, match="file not found"):
        list(read_file(tmp_path / "nope.txt"))
    with pytest.raises(GoushiError, match="is a folder"):
        list(read_file(tmp_path))


def test_unreadable_file(tmp_path, monkeypatch):
    p = wb(tmp_path / "secret.txt", b"x")

    def denied(path, mode="r", *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    # chmod 000 does not stop root, so refuse the open itself.
    monkeypatch.setattr(readers, "open", denied, raising=False)
    with pytest.raises(GoushiError, match="secret.txt: cannot read \\(Permission denied\\)"):
        list(read_file(p))


def test_jsonl_field_and_malformed_line(tmp_path):
    p = wb(tmp_path / "a.jsonl", '{"text": "一"}\n\n{"text": "二", "x": 1}\n{"text": null}\n'.encode())
    assert list(read_file(p)) == ["一", "二"]
    p = wb(tmp_path / "b.jsonl", '{"content": "甲", "title": "题"}\n{"content": ["行一", "行二"], "title": "题二"}\n'.encode())
    assert list(read_file(p, field="content")) == ["甲", "行一\n行二"]
    assert list(read_file(p, field=["title", "content"])) == ["题\n甲", "题二\n行一\n行二"]
    with pytest.raises(GoushiError, match=r"b.jsonl:1: no field 'text' \(fields here: content, title\)"):
        list(read_file(p))
    p = wb(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(GoushiError, match=r"bad.jsonl:2: malformed JSON line"):
        list(read_file(p))
    p = wb(tmp_path / "list.jsonl", b'["not", "an object"]\n')
    with pytest.raises(GoushiError, match=r"list.jsonl:1: expected a JSON object"):
        list(read_file(p))


def test_json_array(tmp_path):
    p = wb(tmp_path / "poems.json", '[{"title": "静夜思", "paragraphs": ["床前明月光，", "疑是地上霜。"]}]'.encode())
    assert list(read_file(p, field=["title", "paragraphs"])) == ["静夜思\n床前明月光，\n疑是地上霜。"]
    p = wb(tmp_path / "bad.json", b'[{"text": "x"},\n')
    with pytest.raises(GoushiError, match="bad.json:2: malformed JSON"):
        list(read_file(p))


def test_csv_column_with_quoted_newlines(tmp_path):
    p = wb(tmp_path / "r.csv", 'id,review\n1,"好评,\n很快"\n2,差评\n3,\n'.encode())
    assert list(read_file(p, column="review")) == ["好评,\n很快", "差评"]
    with pytest.raises(GoushiError, match=r"no column 'text' \(columns: id, review\)"):
        list(read_file(p))
    p = wb(tmp_path / "r.tsv", "text\tx\n一\t1\n".encode())
    assert list(read_file(p)) == ["一"]
