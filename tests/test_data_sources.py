import pytest

from goushi.data.sources import add_source, load_manifest
from goushi.errors import GoushiError


def write(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_manifest_paths_are_relative_to_its_folder(tmp_path):
    write(tmp_path / "corpus" / "a.txt", "一\n\n二\n")
    m = write(tmp_path / "corpus" / "sources.toml", '[[source]]\nid = "a"\npath = "a.txt"\nlicense = "MIT"\n')
    (s,) = load_manifest(m)
    assert s.files() == [tmp_path / "corpus" / "a.txt"]
    assert s.license_shown == "MIT"


def test_folder_and_glob_skip_licence_and_readme_files(tmp_path):
    d = tmp_path / "poetry"
    write(d / "tang.txt", "诗")
    write(d / "sub" / "song.md", "词")
    write(d / "SOURCES.md", "credits")
    write(d / "LICENSES" / "MIT.txt", "licence text")
    write(d / "README.md", "readme")
    write(d / "image.png", "not text")
    m = write(tmp_path / "sources.toml", '[[source]]\nid = "p"\npath = "poetry"\n\n[[source]]\nid = "g"\npath = "poetry/**/*.*"\n')
    p, g = load_manifest(m)
    assert [f.name for f in p.files()] == ["song.md", "tang.txt"]
    assert sorted(f.name for f in g.files()) == ["image.png", "song.md", "tang.txt"]
    assert p.license_shown == "unknown" and p.credit()["author"] == "unknown"


def test_a_glob_may_climb_out_of_the_manifests_folder_but_hidden_files_stay_out(tmp_path):
    write(tmp_path / "shared" / "poems" / "tang.txt", "诗")
    write(tmp_path / "shared" / "poems" / ".draft.txt", "草稿")
    m = write(tmp_path / "mine" / "sources.toml", '[[source]]\nid = "p"\npath = "../shared/poems/*.txt"\n')
    (p,) = load_manifest(m)
    assert [f.name for f in p.files()] == ["tang.txt"]


@pytest.mark.parametrize("body, match", [
    ('[[source]]\nid = "a"\npath = "a.txt"\nlicence = "MIT"\n', "unknown key 'licence'"),
    ('[[source]]\nid = "a"\npath = "a.txt"\n[[source]]\nid = "a"\npath = "a.txt"\n', "duplicate source id 'a'"),
    ('[[source]]\npath = "a.txt"\n', "missing required key 'id'"),
    ('[[source]]\nid = "a b"\npath = "a.txt"\n', "id='a b'"),
    ('[[source]]\nid = "a"\npath = "a.txt"\nweight = -1\n', "weight=-1"),
    ('[[source]]\nid = "a"\npath = "a.txt"\nformat = "docx"\n', "format='docx'"),
    ('[[source]]\nid = "a"\npath = "a.txt"\nencoding = "klingon"\n', "encoding='klingon'"),
    ('[source]\nid = "a"\n', r"\[\[source\]\]"),
    ('[[sources]]\nid = "a"\n', "unknown top-level key 'sources'"),
    ('[[source]\nid = ', "not valid TOML"),
])
def test_bad_manifest(tmp_path, body, match):
    write(tmp_path / "a.txt", "x")
    m = write(tmp_path / "sources.toml", body)
    with pytest.raises(GoushiError, match=match):
        load_manifest(m)


def test_missing_manifest_and_missing_path(tmp_path):
    with pytest.raises(GoushiError, match="manifest not found"):
        load_manifest(tmp_path / "nope.toml")
    m = write(tmp_path / "sources.toml", '[[source]]\nid = "a"\npath = "gone.txt"\n')
    (s,) = load_manifest(m)
    with pytest.raises(GoushiError, match="source 'a'.*gone.txt not found"):
        s.files()
    m.write_text('[[source]]\nid = "a"\npath = "*.nothing"\n', encoding="utf-8")
    with pytest.raises(GoushiError, match="matches no files"):
        load_manifest(m)[0].files()


def test_add_source_appends_and_refuses_duplicates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "texts" / "kfc.txt", "v我50")
    write(tmp_path / "other.jsonl", '{"text": "x"}\n')
    m = tmp_path / "sources.toml"
    add_source(m, "texts/kfc.txt", id="kfc", url="https://example.org/kfc", author="网友", license="MIT", note='有 "引号"')
    add_source(m, "other.jsonl", id="other", field=["title", "text"], weight=2.5)
    a, b = load_manifest(m)
    assert (a.id, a.path, a.author, a.note, a.license) == ("kfc", "texts/kfc.txt", "网友", '有 "引号"', "MIT")
    assert (b.field, b.weight, b.license_shown) == (["title", "text"], 2.5, "unknown")
    before = m.read_text(encoding="utf-8")
    with pytest.raises(GoushiError, match="already has a source with id 'kfc'"):
        add_source(m, "other.jsonl", id="kfc")
    with pytest.raises(GoushiError, match="not found"):
        add_source(m, "missing.txt", id="missing")
    assert m.read_text(encoding="utf-8") == before  # nothing half-written
