"""`goushi data get copypasta`: the house style from vetted public repositories, each credited. No test here
touches the network: the repositories are a small mirror the tests write (laid out like raw.githubusercontent.com)."""

import argparse
import json
import urllib.request

import pytest

from goushi.cli import data as data_cli
from goushi.data import corpora
from goushi.data.build import BuildOptions, build_dataset
from goushi.data.corpora import COPYPASTA_PARTS, COPYPASTA_URL, FABING_NAMES, copypasta_parts, get_corpus
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError
from goushi.model_card import license_class

KFC = [{"index": 1, "text": "今天是肯德基疯狂星期四，\r\n\r\n谁请我吃？v我50"}, {"index": 2, "text": None},
       {"index": 3, "text": "我是秦始皇，v我50，封你为大将军"}]
KFC_NTHILY = [{"index": 1, "text": "我是秦始皇，v我50，封你为大将军"}, {"index": 2, "text": "疯四文学，周周都来"}]
FABING = ["我好想做[name]小姐的狗啊", "[name]，香香的软软的🥵"]
DUANZI = ["车到山前必有雾，船到桥头自然沉。", "  单身脱发又没钱，跑步进入中老年。  "]
DAD = ["打雷的时候为什么要装死？因为假死避雷。"]
TUWEI = ["我想在你那里买一块地|买什么地？|买你的死心塌地", "落叶归根|你归我|"]
XIEHOUYU = [{"riddle": "做贼的说梦话", "answer": "想偷"}, {"riddle": "嘴上抹石灰", "answer": "白说；白吃"}]
HITOKOTO = [{"id": 1, "hitokoto": "宅，是一种生活状态。", "from": "网络", "creator": "someone"}]


def upstream(part):
    return {"kfc": {"kfc.json": KFC}, "kfc-nthily": {"kfc.json": KFC_NTHILY},
            "fabing": {"src/modules/fabing/fabing.json": FABING},
            "duanzi": {"src/modules/duanzi/duanzi.json": DUANZI, "src/modules/dad-joke/dad-joke.json": DAD},
            "tuwei": {"src/assets/words.json": TUWEI}, "xiehouyu": {"data/xiehouyu.json": XIEHOUYU},
            "hitokoto": {"sentences/e.json": HITOKOTO, "sentences/f.json": [], "sentences/l.json": []}}[part.key]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    real = urllib.request.urlopen

    def local_only(url, *a, **k):
        assert str(url).startswith("file:"), f"a test tried to download {url}"
        return real(url, *a, **k)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture
def mirror(tmp_path):
    """The vetted repositories at their commits, with small files in their real formats."""
    root = tmp_path / "mirror"
    for part in COPYPASTA_PARTS:
        base = root / part.repo / part.commit
        for name, data in upstream(part).items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        for name in part.license_files:
            (base / name).write_text(f"{part.license} licence text of {part.repo}", encoding="utf-8")
    return root


def items(path):
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n\n")


def test_every_part_is_pinned_and_credited_and_the_default_is_permissive():
    keys = [p.key for p in COPYPASTA_PARTS]
    assert len(set(keys)) == len(keys)
    for p in COPYPASTA_PARTS:
        assert p.url == f"https://github.com/{p.repo}" and len(p.commit) >= 7 and int(p.commit, 16) >= 0
        assert p.files and p.license_files and p.author and p.license_where and p.style
    defaults = copypasta_parts()
    assert [p.key for p in defaults] == ["kfc", "kfc-nthily", "fabing", "duanzi", "tuwei", "xiehouyu"]
    assert {license_class(p.license) for p in defaults} == {"permissive"}
    (hitokoto,) = [p for p in COPYPASTA_PARTS if not p.default]
    assert (hitokoto.key, license_class(hitokoto.license)) == ("hitokoto", "copyleft")
    with pytest.raises(GoushiError, match=r"--parts ruozhiba: choose from kfc, kfc-nthily, fabing"):
        copypasta_parts(["kfc", "ruozhiba"])


def test_recipe_downloads_from_the_pinned_commits_on_github(tmp_path, monkeypatch, mirror):
    asked = []

    def fake_fetch(url, env):
        asked.append(url)
        return (mirror / url.removeprefix(COPYPASTA_URL)).read_bytes()

    monkeypatch.setattr(corpora, "_fetch", fake_fetch)
    get_corpus("copypasta", tmp_path / "c", parts=["tuwei"])
    assert asked == ["https://raw.githubusercontent.com/zerosoul/honeyed-words-generator/19edb20e50f5/src/assets/words.json",
                     "https://raw.githubusercontent.com/zerosoul/honeyed-words-generator/19edb20e50f5/package.json"]


def test_recipe_parses_each_format_dedupes_and_credits_every_repository(tmp_path, mirror):
    out = tmp_path / "c"
    src = get_corpus("copypasta", out, base_url=mirror.as_uri())
    assert src.id == "copypasta-kfc"
    d = out / "copypasta"
    assert items(d / "kfc.txt") == ["今天是肯德基疯狂星期四，\n谁请我吃？v我50", "我是秦始皇，v我50，封你为大将军"]
    assert items(d / "kfc-nthily.txt") == ["疯四文学，周周都来"]  # its first item is already in kfc
    fabing = items(d / "fabing.txt")
    assert "[name]" not in "".join(fabing) and fabing[0].startswith("我好想做") and fabing[0].endswith("小姐的狗啊")
    assert fabing[0][4:-5] in FABING_NAMES
    get_corpus("copypasta", tmp_path / "again", base_url=mirror.as_uri(), parts=["fabing"])
    assert items(tmp_path / "again" / "copypasta" / "fabing.txt") == fabing  # the same name for an item every time
    assert items(d / "duanzi.txt") == [DUANZI[0], DUANZI[1].strip(), DAD[0]]
    assert items(d / "tuwei.txt") == ["我想在你那里买一块地，买什么地？买你的死心塌地", "落叶归根，你归我"]
    assert items(d / "xiehouyu.txt") == ["做贼的说梦话——想偷", "嘴上抹石灰——白说；白吃"]
    assert not (d / "hitokoto.txt").exists()
    assert sorted(f.name for f in (d / "LICENSES").iterdir()) == [
        "duanzi_LICENSE", "fabing_LICENSE", "kfc-nthily_README.md", "kfc_README.md", "tuwei_package.json",
        "xiehouyu_LICENSE"]
    readme = (d / "README.md").read_text(encoding="utf-8")
    assert "| copypasta-tuwei | 土味情话" in readme and "zerosoul/honeyed-words-generator" in readme
    assert "`hitokoto`" in readme  # what was not fetched, and how to add it

    srcs = {s.id: s for s in load_manifest(out / "sources.toml")}
    assert list(srcs) == [f"copypasta-{p.key}" for p in copypasta_parts()]
    for p in copypasta_parts():
        s = srcs[f"copypasta-{p.key}"]
        assert (s.url, s.license, s.author, s.separator) == (p.url, p.license, p.author, "blank")
        assert p.commit in s.note and s.files() == [d / f"{p.key}.txt"]

    meta = build_dataset(out / "sources.toml", tmp_path / "data", options=BuildOptions(provenance=False))
    assert meta["sources"]["copypasta-xiehouyu"]["docs"] == 2 and meta["sources"]["copypasta-kfc"]["docs"] == 2
    card = (tmp_path / "data" / "DATA_CARD.md").read_text(encoding="utf-8")
    assert ("| copypasta-fabing | © 2022-present Viki; collected by Viki and contributors from the internet | "
            "https://github.com/vikiboss/60s | MIT |") in card
    assert "- ISC: copypasta-tuwei" in card


def test_parts_force_and_a_failed_download_leave_nothing_half_written(tmp_path, mirror, capsys):
    out = tmp_path / "c"
    (out).mkdir()
    (out / "sources.toml").write_text('[[source]]\nid = "mine"\npath = "mine.txt"\n', encoding="utf-8")
    (out / "mine.txt").write_text("我的文字", encoding="utf-8")
    p = argparse.ArgumentParser(prog="goushi")
    data_cli.register(p.add_subparsers())
    args = p.parse_args(["data", "get", "copypasta", "--out", str(out), "--base-url", mirror.as_uri(),
                         "--parts", "kfc,hitokoto"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "copypasta-hitokoto: copypasta/hitokoto.txt, licence AGPL-3.0, https://github.com/hitokoto-osc/" in printed
    assert [s.id for s in load_manifest(out / "sources.toml")] == ["mine", "copypasta-kfc", "copypasta-hitokoto"]
    with pytest.raises(GoushiError, match="already has sources 'copypasta-kfc', 'copypasta-hitokoto'.*--force"):
        get_corpus("copypasta", out, base_url=mirror.as_uri(), parts=["kfc", "hitokoto"])
    # again with other parts: the earlier run's parts leave the manifest with their folder
    get_corpus("copypasta", out, base_url=mirror.as_uri(), parts=["tuwei"], force=True)
    assert [s.id for s in load_manifest(out / "sources.toml")] == ["mine", "copypasta-tuwei"]
    before = (out / "sources.toml").read_bytes()
    (mirror / "pwxcoo/chinese-xinhua/fe6d6c2e8baa/data/xiehouyu.json").unlink()
    with pytest.raises(GoushiError, match=r"cannot download file:.*xiehouyu.json .*GOUSHI_COPYPASTA_URL"):
        get_corpus("copypasta", out, base_url=mirror.as_uri(), force=True)
    assert (out / "sources.toml").read_bytes() == before and items(out / "copypasta" / "tuwei.txt")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    (mirror / "pwxcoo/chinese-xinhua/fe6d6c2e8baa/data/xiehouyu.json").write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"xiehouyu.json: expected a JSON array"):
        get_corpus("copypasta", out, base_url=mirror.as_uri(), parts=["xiehouyu"], force=True)
