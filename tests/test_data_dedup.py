"""De-duplication in compact tables decides exactly as the plain set/dict version it replaced, batch size aside."""

from __future__ import annotations

import random

import numpy as np
import pytest

from goushi.data.clean import Cleaner, CleanOptions, KeyTable, NearDuplicates, clean_text, text_key


def reference(docs_by_source: list[tuple[str, list[str]]], opts: CleanOptions, seed: int = 0) -> list[list[str]]:
    """The documents kept per source, one document at a time with a Python set and a dict of (band, bytes)."""
    nd = NearDuplicates(opts.near_dup_threshold, seed=seed)  # only for its signatures and banding
    exact: set[int] = set()
    buckets: dict[tuple[int, bytes], int] = {}
    sigs: list[np.ndarray] = []
    out = []
    for _, docs in docs_by_source:
        kept = []
        for raw in docs:
            text = clean_text(raw, opts)
            if len(text) < max(1, opts.min_chars):
                continue
            if text_key(text) in exact:
                continue
            exact.add(text_key(text))
            if len(text) >= nd.ngram:
                sig = nd.signature(text)
                keys = [(b, sig[b * nd.rows:(b + 1) * nd.rows].tobytes()) for b in range(nd.bands)]
                cands = {buckets[k] for k in keys if k in buckets}
                if any(float(np.mean(sigs[c] == sig)) >= nd.threshold for c in cands):
                    continue
                for k in keys:
                    buckets.setdefault(k, len(sigs))
                sigs.append(sig)
            kept.append(text)
        out.append(kept)
    return out


def corpus(rng: random.Random) -> list[tuple[str, list[str]]]:
    words = ["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡", "春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少",
             "白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"]
    base = ["，".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + "。" + str(i) for i in range(300)]
    docs = []
    for _ in range(900):
        r = rng.random()
        d = rng.choice(base)
        if r < 0.2:
            d = d[:-1] + "改"  # a near copy (one character of many changed), or exactly another document
        elif r < 0.25:
            d = d[: rng.randint(0, 6)]  # short: below the n-gram size, or empty
        docs.append(d)
    return [("a", docs[:400]), ("b", docs[400:])]


@pytest.mark.parametrize("spill", [False, True])
def test_cleaner_keeps_exactly_what_the_set_and_dict_version_kept(tmp_path, spill):
    rng = random.Random(5)
    for trial in range(3):
        srcs = corpus(rng)
        opts = CleanOptions(min_chars=2)
        c = Cleaner(opts, seed=trial, spill_dir=tmp_path if spill else None, expected_docs=10 if trial else 0)
        got = [list(c.clean(sid, docs)) for sid, docs in srcs]
        want = reference(srcs, opts, seed=trial)
        assert got == want
        dropped = c.report()["sources"]["a"]["dropped"]
        assert dropped["exact_duplicate"] and dropped["near_duplicate"]  # the corpus exercises both
        c.close()
    assert list(tmp_path.iterdir()) == []  # the signatures' file is anonymous


def test_batch_boundaries_do_not_change_decisions(monkeypatch):
    srcs = corpus(random.Random(9))
    runs = []
    for batch in (1, 7, 1024):
        monkeypatch.setattr(Cleaner, "BATCH", batch)
        c = Cleaner()
        runs.append(([list(c.clean(sid, docs)) for sid, docs in srcs], c.report()))
    assert runs[0] == runs[1] == runs[2]


def test_signatures_are_the_minimum_of_each_permutation_over_each_documents_ngrams():
    nd = NearDuplicates(seed=3)
    rng = random.Random(4)
    texts = ["".join(rng.choice("甲乙丙丁戊己庚辛") for _ in range(rng.randint(5, 3000))) for _ in range(40)]
    got = nd.signatures(texts)
    prime = int(NearDuplicates._PRIME)
    for text, sig in zip(texts, got, strict=True):
        grams = []
        for i in range(len(text) - nd.ngram + 1):
            h = 0
            for ch in text[i:i + nd.ngram]:
                h = (h * prime + ord(ch)) % 2**64
            grams.append(h)
        g = np.array(grams, dtype=np.uint64)
        with np.errstate(over="ignore"):
            want = ((g[:, None] * nd._a[None, :] + nd._b[None, :]).min(axis=0) >> np.uint64(32)).astype(np.uint32)
        assert (sig == want).all()


def test_key_table_matches_a_dict_through_growth():
    rng = np.random.default_rng(0)
    t = KeyTable(0, values=True)
    ref: dict[int, int] = {}
    for _ in range(30):
        keys = rng.integers(0, 3000, size=rng.integers(0, 400), dtype=np.uint64)  # repeats within and across
        keys[:2] = 0  # key 0 is stored as 1
        vals = rng.integers(0, 1 << 30, size=len(keys), dtype=np.int32)
        before = [int(k or 1) in ref for k in keys]
        seen = t.add(keys, vals).tolist()
        batch: set[int] = set()
        for k, v, was, s in zip(keys.tolist(), vals.tolist(), before, seen, strict=True):
            k = k or 1
            assert s == (was or k in batch)
            batch.add(k)
            ref.setdefault(k, v)
        probe = np.arange(0, 3100, dtype=np.uint64)
        assert t.get(probe).tolist() == [ref.get(int(k) or 1, -1) for k in probe.tolist()]
    assert len(t) == len(ref)
    s = KeyTable(5)
    assert s.add(np.array([5, 5, 6], dtype=np.uint64)).tolist() == [False, True, False]
    assert s.get(np.array([5, 7], dtype=np.uint64)).tolist() == [0, -1]
