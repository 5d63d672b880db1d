import json

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from goushi.data import build as build_mod
from goushi.data import textindex
from goushi.data.build import BuildOptions, build_dataset
from goushi.data.clean import CleanOptions
from goushi.errors import GoushiError
from goushi.tokenizer import Tokenizer

POEMS = [f"《第{i}首》 唐·诗人{i % 7}\n床前明月光{i}，疑是地上霜。\n举头望明月{i * 3}，低头思故乡。" for i in range(60)]
JOKES = [f"段子{i}：车到山前必有路{i}，船到桥头自然直{i * 11}。😀" for i in range(40)]
REVIEWS = [f"第{i}条评论 物流很快 东西不错 good {i} 下次还来！" for i in range(50)]


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    (d / "poems").mkdir(parents=True)
    (d / "poems" / "tang.txt").write_text("\n\n".join(POEMS) + "\n", encoding="utf-8")
    (d / "poems" / "LICENSE").write_text("MIT licence text that must not be read as corpus", encoding="utf-8")
    (d / "jokes.jsonl").write_text("".join(json.dumps({"body": j}, ensure_ascii=False) + "\n" for j in JOKES),
                                   encoding="utf-8")
    (d / "reviews.csv").write_text("stars,text\n" + "".join(f"5,{r}\n" for r in REVIEWS), encoding="utf-8")
    (d / "sources.toml").write_text(
        '[[source]]\nid = "poems"\npath = "poems"\nurl = "https://example.org/poems"\nauthor = "诗人们"\nlicense = "MIT"\n\n'
        '[[source]]\nid = "jokes"\npath = "jokes.jsonl"\nfield = "body"\nauthor = "网友"\nlicense = "CC-BY-4.0"\n'
        'url = "https://example.org/jokes"\n\n'
        '[[source]]\nid = "reviews"\npath = "reviews.csv"\nauthor = "顾客 | buyers"\n',
        encoding="utf-8")
    return d


def fast(**kw):
    return BuildOptions(provenance=False, **kw)


def docs_of(out, name, meta):
    ids = np.fromfile(out / name, dtype=meta["dtype"])
    tok = Tokenizer.from_file(out / "tokenizer.json")
    cuts = np.flatnonzero(ids == tok.eot_id)
    assert len(ids) == 0 or cuts[-1] == len(ids) - 1  # every document is followed by <|endoftext|>
    out_docs, start = [], 0
    for c in cuts:
        out_docs.append(tok.decode(ids[start:c].tolist()))
        start = c + 1
    return out_docs


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_build_writes_everything_and_round_trips(corpus, tmp_path, kind):
    out = tmp_path / "data"
    meta = build_dataset(corpus / "sources.toml", out, options=fast(tokenizer=kind, vocab_size=400, val_fraction=0.1))
    for name in ("tokenizer.json", "train.bin", "val.bin", "meta.json", "DATA_CARD.md", "report.json",
                 "sources.toml", "val.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*"))  # no temporary files left behind
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == meta
    assert meta["tokenizer_kind"] == kind and meta["dtype"] == "uint16"
    assert meta["train_docs"] + meta["val_docs"] == 150 and meta["val_docs"] == 15
    assert meta["tokenizer_hash"] == Tokenizer.from_file(out / "tokenizer.json").hash()
    train, val = docs_of(out, "train.bin", meta), docs_of(out, "val.bin", meta)
    assert sorted(train + val) == sorted(POEMS + JOKES + REVIEWS)  # whole documents, never split
    assert [json.loads(x)["text"] for x in (out / "val.jsonl").read_text(encoding="utf-8").splitlines()] == val
    assert meta["train_tokens"] == len(np.fromfile(out / "train.bin", dtype="uint16"))
    assert meta["val_tokens"] == len(np.fromfile(out / "val.bin", dtype="uint16"))
    assert set(meta["sources"]) == {"poems", "jokes", "reviews"}
    assert meta["sources"]["reviews"]["license"] == "unknown"
    assert abs(sum(s["share"] for s in meta["sources"].values()) - 1) < 1e-3
    assert meta["options"]["tokenizer"] == kind and meta["options"]["seed"] == 1337
    hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert hf.encode(val[0], add_special_tokens=False) == Tokenizer.from_file(out).encode(val[0])


def test_data_card_credits_every_source(corpus, tmp_path):
    out = tmp_path / "data"
    build_dataset(corpus / "sources.toml", out, options=fast())
    card = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "| poems | 诗人们 | https://example.org/poems | MIT | 60 |" in card
    assert "| jokes | 网友 | https://example.org/jokes | CC-BY-4.0 | 40 |" in card
    assert "| reviews | 顾客 \\| buyers | — | unknown | 50 |" in card
    assert "no licence is recorded for reviews" in card
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["files"]["poems"] == [str(corpus / "poems" / "tang.txt")]


def test_split_is_deterministic_for_a_seed(corpus, tmp_path):
    a = build_dataset(corpus / "sources.toml", tmp_path / "a", options=fast(seed=1))
    b = build_dataset(corpus / "sources.toml", tmp_path / "b", options=fast(seed=1))
    c = build_dataset(corpus / "sources.toml", tmp_path / "c", options=fast(seed=2))
    for name in ("train.bin", "val.bin", "val.jsonl", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b
    assert (tmp_path / "a" / "val.jsonl").read_bytes() != (tmp_path / "c" / "val.jsonl").read_bytes()
    assert c["val_docs"] == a["val_docs"]


def test_weights_repeat_training_documents(corpus, tmp_path):
    toml = (corpus / "sources.toml").read_text(encoding="utf-8")
    (corpus / "sources.toml").write_text(toml.replace('field = "body"', 'field = "body"\nweight = 3'), encoding="utf-8")
    meta = build_dataset(corpus / "sources.toml", tmp_path / "w", options=fast(val_fraction=0))
    jokes = meta["sources"]["jokes"]
    assert jokes["train_tokens"] == 3 * (jokes["tokens"] + jokes["train_docs"])  # + one <|endoftext|> per document
    assert "jokes ×3" in (tmp_path / "w" / "DATA_CARD.md").read_text(encoding="utf-8")


def test_existing_out_refused_then_replaced_with_force(corpus, tmp_path):
    out = tmp_path / "data"
    build_dataset(corpus / "sources.toml", out, options=fast())
    with pytest.raises(GoushiError, match="already exists.*--force"):
        build_dataset(corpus / "sources.toml", out, options=fast())
    meta = build_dataset(corpus / "sources.toml", out, force=True, options=fast(tokenizer="bpe", vocab_size=300))
    assert meta["tokenizer_kind"] == "bpe"


def test_interrupted_build_leaves_previous_build_intact(corpus, tmp_path, monkeypatch):
    out = tmp_path / "data"
    build_dataset(corpus / "sources.toml", out, options=fast())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "_write_shards", boom)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(corpus / "sources.toml", out, force=True, options=fast(seed=99))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_empty_corpus_after_cleaning(tmp_path):
    (tmp_path / "a.txt").write_text("短\n\n\u200b\n\n字", encoding="utf-8")
    (tmp_path / "sources.toml").write_text('[[source]]\nid = "a"\npath = "a.txt"\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"corpus is empty after cleaning \(3 documents read; dropped: too_short 2, empty 1\)"):
        build_dataset(tmp_path / "sources.toml", tmp_path / "out", options=fast(clean=CleanOptions(min_chars=2)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opts, match", [
    (dict(tokenizer="word"), "--tokenizer"),
    (dict(val_fraction=1.0), "--val-fraction"),
    (dict(tokenizer="bpe", vocab_size=10), "--vocab-size"),
    (dict(max_vocab=5), "--max-vocab"),
])
def test_bad_build_options(corpus, tmp_path, opts, match):
    with pytest.raises(GoushiError, match=match):
        build_dataset(corpus / "sources.toml", tmp_path / "out", options=fast(**opts))
    assert not (tmp_path / "out").exists()


def test_out_may_not_swallow_the_sources(corpus):
    with pytest.raises(GoushiError, match="would replace the folder holding the sources"):
        build_dataset(corpus / "sources.toml", corpus, force=True, options=fast())


def test_bad_encoding_file_is_named(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("中文".encode("gb18030"))
    (tmp_path / "sources.toml").write_text('[[source]]\nid = "g"\npath = "gbk.txt"\n', encoding="utf-8")
    with pytest.raises(GoushiError, match=r"gbk.txt: not valid utf-8 at byte 0.*--encoding gb18030"):
        build_dataset(tmp_path / "sources.toml", tmp_path / "out", options=fast())
    meta = build_dataset(tmp_path / "sources.toml", tmp_path / "out", options=fast(encoding="gb18030", val_fraction=0))
    assert meta["train_chars"] == 2


def test_provenance_index_is_built(corpus, tmp_path):
    out = tmp_path / "data"
    meta = build_dataset(corpus / "sources.toml", out, options=BuildOptions())
    index = json.loads((out / "provenance" / "index.json").read_text(encoding="utf-8"))
    assert index["docs"] == meta["train_docs"]
    assert index["sources"]["poems"]["license"] == "MIT"


def test_provenance_in_pieces_answers_as_one_piece(corpus, tmp_path, monkeypatch):
    one = tmp_path / "one"
    build_dataset(corpus / "sources.toml", one, options=BuildOptions())
    monkeypatch.setattr(textindex, "PIECE_BYTES", 300)  # a few documents per suffix array
    many = tmp_path / "many"
    build_dataset(corpus / "sources.toml", many, options=BuildOptions())
    for name in ("train.bin", "val.bin", "val.jsonl", "tokenizer.json", "provenance/corpus.bin", "provenance/docs.npy"):
        assert (one / name).read_bytes() == (many / name).read_bytes(), name
    a, b = textindex.TextIndex.load(one), textindex.TextIndex.load(many)
    assert len(a.meta["pieces"]) == 1 and len(b.meta["pieces"]) > 5
    for text in ["我想起" + POEMS[3][4:30] + "和" + JOKES[7][:12], REVIEWS[2] + POEMS[9], "车到山前必有路，船到桥头"]:
        spans = b.find_copied_spans(text, 4)
        assert spans and spans == a.find_copied_spans(text, 4)
        assert all(s.source_id in ("poems", "jokes", "reviews") for s in spans)


def test_interrupted_index_build_leaves_nothing_behind(corpus, tmp_path, monkeypatch):
    out = tmp_path / "data"
    build_dataset(corpus / "sources.toml", out, options=fast())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = textindex._build_suffix_array, []

    def boom(*a, **k):  # the second piece's sort is interrupted
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(textindex, "_build_suffix_array", boom)
    monkeypatch.setattr(textindex, "PIECE_BYTES", 300)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(corpus / "sources.toml", out, force=True, options=BuildOptions(seed=99))
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_progress_bars_only_when_asked_or_on_a_terminal(corpus, tmp_path, capsys):
    build_dataset(corpus / "sources.toml", tmp_path / "a", options=BuildOptions())  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    build_dataset(corpus / "sources.toml", tmp_path / "b", options=BuildOptions(), progress=False)
    assert capsys.readouterr().err == ""
    lines = []
    build_dataset(corpus / "sources.toml", tmp_path / "c", options=BuildOptions(), progress=True, log=lines.append)
    err = capsys.readouterr().err
    for stage in ("scanning", "reading", "tokenizer", "encoding", "provenance index"):
        assert f"{stage}:" in err, stage
    assert lines[-1].startswith("wrote ")
    assert (tmp_path / "b" / "train.bin").read_bytes() == (tmp_path / "c" / "train.bin").read_bytes()


def test_cli_build_takes_no_progress(corpus, tmp_path, capsys):
    from goushi.cli import main

    assert main(["data", "build", "--sources", str(corpus / "sources.toml"), "--out", str(tmp_path / "d"),
                 "--no-progress", "--no-provenance"]) == 0
    out = capsys.readouterr()
    assert "data card:" in out.out and out.err == ""


def test_a_borrowed_tokenizer_says_how_much_of_the_new_text_it_covers(corpus, tmp_path):
    from collections import Counter

    from goushi.data.build import tokenizer_coverage

    base = Tokenizer.train_char(POEMS)  # knows the poems' characters only
    base.save(tmp_path / "base.json")
    meta = build_dataset(corpus / "sources.toml", tmp_path / "out", options=fast(tokenizer_from=str(tmp_path / "base.json")))
    cov = meta["tokenizer_coverage"]
    text = "".join(POEMS + JOKES + REVIEWS)
    assert 0.3 < cov["char_coverage"] < 1.0 and "物" in cov["unknown_top"] and "床" not in cov["unknown_top"]
    assert cov == tokenizer_coverage(base, Counter("".join(docs_of(tmp_path / "out", "train.bin", meta) +
                                                               docs_of(tmp_path / "out", "val.bin", meta))))
    assert set(text) >= set(cov["unknown_top"])
    card = (tmp_path / "out" / "DATA_CARD.md").read_text(encoding="utf-8")
    assert f"covers {cov['char_coverage']:.2%} of this text's characters" in card
    assert "tokenizer_coverage" not in build_dataset(corpus / "sources.toml", tmp_path / "own", options=fast())


def test_a_big_corpus_gets_a_capped_char_vocabulary_unless_told(corpus, tmp_path, monkeypatch):
    from goushi.data import layout

    every = build_dataset(corpus / "sources.toml", tmp_path / "every", options=fast(val_fraction=0.1))
    # the fixture corpus is "big" once the threshold is below its size
    monkeypatch.setattr(layout, "BIG_CORPUS_CHARS", every["train_chars"])
    monkeypatch.setattr(build_mod, "BIG_CHAR_VOCAB", every["vocab_size"] - 10)
    capped = build_dataset(corpus / "sources.toml", tmp_path / "capped", options=fast(val_fraction=0.1))
    assert capped["vocab_size"] == every["vocab_size"] - 10 and capped["options"]["max_vocab"] == capped["vocab_size"]
    assert capped["train_tokens"] > every["train_tokens"]  # the rarest characters are spelled in bytes
    # and decode to the very same documents
    assert docs_of(tmp_path / "capped", "train.bin", capped) == docs_of(tmp_path / "every", "train.bin", every)
    told = build_dataset(corpus / "sources.toml", tmp_path / "told", options=fast(val_fraction=0.1, max_vocab=0))
    assert told["vocab_size"] == every["vocab_size"]
    monkeypatch.setattr(layout, "BIG_CORPUS_CHARS", every["train_chars"] + 1)
    small = build_dataset(corpus / "sources.toml", tmp_path / "small", options=fast(val_fraction=0.1))
    assert small["vocab_size"] == every["vocab_size"]
