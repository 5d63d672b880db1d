"""A provenance index cut into pieces answers exactly as one suffix array over the whole corpus; version 1 still reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from pydivsufsort import divsufsort

from goushi.data.textindex import TextIndex, TextIndexWriter
from goushi.errors import GoushiError
from goushi.eval.provenance import load_index

SOURCES = {"a": {"author": "甲", "url": "https://example.org/a", "license": "MIT"},
           "b": {"author": "乙", "url": "https://example.org/b", "license": "CC-BY-4.0"}}
ALPHABET = "甲乙丙丁a，"


def build(path: Path, docs: list[tuple[str, str]], **kw) -> Path:
    w = TextIndexWriter(path, **kw)
    for text, sid in docs:
        w.add(text, sid)
    w.close(SOURCES)
    return path / "provenance"


def write_v1(path: Path, docs: list[tuple[str, str]]) -> Path:
    """An index as goushi wrote it before pieces (version 1): one sa.npy over all of corpus.bin."""
    d = path / "provenance"
    d.mkdir(parents=True)
    data = b"".join(t.encode("utf-8") + b"\x00" for t, _ in docs)
    (d / "corpus.bin").write_bytes(data)
    sa = divsufsort(np.frombuffer(data, dtype=np.uint8).copy()) if data else np.zeros(0, dtype=np.int32)
    np.save(d / "sa.npy", sa)
    starts = np.cumsum([0] + [len(t.encode("utf-8")) + 1 for t, _ in docs[:-1]]) if docs else []
    np.save(d / "docs.npy", np.asarray(starts, dtype=np.int64))
    ids = list(dict.fromkeys(sid for _, sid in docs))
    np.save(d / "doc_src.npy", np.asarray([ids.index(sid) for _, sid in docs], dtype=np.int32))
    meta = {"version": 1, "encoding": "utf-8", "separator": "\\u0000", "bytes": len(data), "docs": len(docs),
            "sa_dtype": str(sa.dtype), "source_ids": ids, "sources": {sid: SOURCES[sid] for sid in ids}}
    (d / "index.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return d


def random_docs(rng: random.Random) -> list[tuple[str, str]]:
    return [("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))), rng.choice("ab"))
            for _ in range(rng.randint(1, 25))]


def queries(rng: random.Random, docs: list[tuple[str, str]]) -> list[str]:
    out = ["".join(rng.choice(ALPHABET + "戊") for _ in range(rng.randint(0, 40))) for _ in range(6)]
    for text, _ in rng.sample(docs, min(3, len(docs))):
        i = rng.randint(0, len(text))
        out.append("戊" + text[i:i + rng.randint(0, 25)] + "戊" + rng.choice(docs)[0])
    return out


def brute(docs: list[tuple[str, str]], s: str) -> tuple[int, int]:
    """(occurrences, first document holding it)."""
    n = sum(sum(t.startswith(s, p) for p in range(len(t))) for t, _ in docs)
    return n, next(i for i, (t, _) in enumerate(docs) if s in t)


@pytest.mark.parametrize("piece_bytes", [1, 9, 50])
def test_pieces_give_exactly_the_spans_counts_and_sources_of_one_array(tmp_path, piece_bytes):
    rng = random.Random(piece_bytes)
    cut = 0
    for trial in range(12):
        docs = random_docs(rng)
        one = TextIndex.load(build(tmp_path / f"one{trial}", docs))
        many = TextIndex.load(build(tmp_path / f"many{trial}", docs, piece_bytes=piece_bytes))
        cut += len(many.meta["pieces"]) > 1
        assert len(one.meta["pieces"]) == 1 and len(many) == len(one)
        for text in queries(rng, docs):
            for k in (1, 2, 4):
                spans = many.find_copied_spans(text, k)
                assert spans == one.find_copied_spans(text, k), (docs, text, k)
                for s in spans:
                    assert (s.count, s.doc_index) == brute(docs, s.text)
                    assert s.source_id == docs[s.doc_index][1] and s.license == SOURCES[s.source_id]["license"]
            for i in range(len(text)):
                piece = text[i:i + rng.randint(1, 6)]
                assert many.count(piece) == one.count(piece)
    assert cut >= 9  # the small pieces did split most corpora


def test_pieces_hold_whole_documents_within_the_limit(tmp_path):
    docs = [("甲乙丙" * n, "a") for n in (1, 2, 30, 1, 1, 4, 1)]  # 30 * 9 bytes: longer than a piece alone
    d = build(tmp_path, docs, piece_bytes=40)
    meta = json.loads((d / "index.json").read_text(encoding="utf-8"))
    starts = np.load(d / "docs.npy").tolist()
    assert sum(p["bytes"] for p in meta["pieces"]) == meta["bytes"] == (d / "corpus.bin").stat().st_size
    for p in meta["pieces"]:
        assert starts[p["first_doc"]] == p["start"]  # a piece starts where a document does
        assert p["bytes"] <= 40 or p["bytes"] == 30 * 9 + 1
        assert np.load(d / p["file"]).dtype == np.int32
    assert [p["first_doc"] for p in meta["pieces"]] == [0, 2, 3, 5, 6]
    spans = TextIndex.load(d).find_copied_spans("丁" + "甲乙丙" * 5 + "丁", 3)
    assert [(s.count, s.doc_index) for s in spans] == [brute(docs, "甲乙丙" * 5)] == [(26, 2)]
    with pytest.raises(GoushiError, match="piece_bytes=0"):
        TextIndexWriter(tmp_path / "x", piece_bytes=0)


def test_version_1_index_still_reads(tmp_path):
    rng = random.Random(3)
    for trial in range(10):
        docs = random_docs(rng)
        old = TextIndex.load(write_v1(tmp_path / f"v1-{trial}", docs))
        new = TextIndex.load(build(tmp_path / f"v2-{trial}", docs, piece_bytes=20))
        assert old.meta["version"] == 1 and new.meta["version"] == 2
        for text in queries(rng, docs):
            assert old.find_copied_spans(text, 2) == new.find_copied_spans(text, 2)
            assert old.count(text[:3]) == new.count(text[:3])
    # through the cached loader the CLI and the page use, from a DATA_DIR
    idx = load_index(tmp_path / "v1-0")
    assert idx.meta["version"] == 1
    empty = TextIndex.load(write_v1(tmp_path / "v1-empty", []))
    assert len(empty) == 0 and empty.find_copied_spans("甲乙丙", 1) == []


def test_unknown_version_and_missing_piece_are_refused(tmp_path):
    d = build(tmp_path, [("甲乙丙丁" * 3, "a"), ("丁丙乙甲" * 3, "b")], piece_bytes=10)
    (d / "sa-00001.npy").unlink()
    with pytest.raises(GoushiError, match=r"sa-00001\.npy missing.*goushi data build"):
        TextIndex.load(d)
    toc = d / "index.json"
    meta = json.loads(toc.read_text(encoding="utf-8"))
    toc.write_text(json.dumps({**meta, "version": 99}), encoding="utf-8")
    with pytest.raises(GoushiError, match=r"version=99, this goushi reads 1 and 2; rebuild"):
        TextIndex.load(d)
    toc.write_text(json.dumps({**meta, "pieces": meta["pieces"][:1]}), encoding="utf-8")
    with pytest.raises(GoushiError, match=r"pieces cover \d+ bytes of a \d+-byte corpus.bin"):
        TextIndex.load(d)
