import builtins

import pytest

from goushi.data.clean import Cleaner, CleanOptions, NearDuplicates, clean_text
from goushi.errors import GoushiError

DEFAULT = CleanOptions()


@pytest.mark.parametrize("raw, want", [
    ("\x1b[31m红字\x1b[0m", "红字"),
    ("零\u200b宽\ufeff字\u200c符\u2060", "零宽字符"),
    ("控制\x00字\x07符\x7f", "控制字符"),
    ("全角：，！？（）「」《》……——", "全角：，！？（）「」《》……——"),  # NFC keeps Chinese punctuation
    ("ＡＢＣｘｙｚ１２３", "ABCxyz123"),
    ("行一   行  一 \t\n\n\n\n行二\u3000\u3000", "行一 行 一\n\n行二"),
    ("a\r\nb\rc", "a\nb\nc"),
    ("一家人👨\u200d👩\u200d👧", "一家人👨\u200d👩\u200d👧"),  # ZWJ inside an emoji sequence stays
    ("字\u200d字", "字字"),
    ("\u2f08\uf900", "\u2f08\u8c48"),  # compatibility ideograph -> unified (NFC); Kangxi radical stays
])
def test_clean_text(raw, want):
    assert clean_text(raw, DEFAULT) == want


def test_nfkc_is_available_but_rewrites_punctuation():
    assert clean_text("你好，世界！", CleanOptions(normalize="nfkc")) == "你好,世界!"
    assert clean_text("a   b", CleanOptions(collapse_spaces=False)) == "a   b"


def test_cleaner_drops_and_reports_per_source():
    c = Cleaner(CleanOptions(min_chars=3, max_chars=20))
    a = list(c.clean("a", ["今天天气真好啊", "短", "   ", "今天天气真好啊", "这一篇实在是太长太长太长太长太长太长了了了了了"]))
    b = list(c.clean("b", ["今天天气真好啊", "另一篇不一样的文章"]))
    assert a == ["今天天气真好啊"] and b == ["另一篇不一样的文章"]
    r = c.report()["sources"]
    assert r["a"]["dropped"] == {"too_short": 1, "empty": 1, "exact_duplicate": 1, "too_long": 1}
    assert r["b"]["dropped"] == {"exact_duplicate": 1}  # duplicates across sources: the first source keeps it
    assert r["a"]["docs_in"] == 5 and r["a"]["docs_kept"] == 1
    assert r["a"]["examples"]["too_short"] == "短"


def test_near_duplicates_removed_distinct_kept():
    base = ("我好想做小红小姐的狗啊，可是小红小姐说她喜欢的是猫，于是我开始学猫叫，喵喵喵喵喵。"
            "今天疯狂星期四，谁请我吃肯德基，我就把这段话转发给十个群，保证不骗人，绝对真诚，"
            "如果你看到了这里，说明你也是个有故事的人，不如V我五十听听我的故事吧。")
    near = base.replace("学猫叫", "学狗叫")
    other = "床前明月光，疑是地上霜。举头望明月，低头思故乡。这是一首非常有名的唐诗。"
    c = Cleaner()
    kept = list(c.clean("s", [base, near, other]))
    assert kept == [base, other]
    assert c.report()["sources"]["s"]["dropped"] == {"near_duplicate": 1}
    assert list(Cleaner(CleanOptions(near_dup_threshold=0)).clean("s", [base, near])) == [base, near]


def test_near_duplicate_similarity_estimate():
    nd = NearDuplicates(threshold=0.85)
    a = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(400))
    b = a[:390] + "变了十个字的结尾部分"
    assert not nd.seen(a)
    assert nd.seen(b)
    assert not nd.seen(a[::-1])


def test_t2s():
    pytest.importorskip("opencc")
    assert list(Cleaner(CleanOptions(t2s=True)).clean("s", ["舉頭望明月，低頭思故鄉"])) == ["举头望明月，低头思故乡"]
    c = Cleaner()
    assert list(c.clean("s", ["國語"], t2s=True)) == ["国语"]
    assert c.report()["sources"]["s"]["changed"] == {"t2s": 1}


def test_t2s_without_opencc_is_a_clear_error(monkeypatch):
    real = builtins.__import__

    def no_opencc(name, *a, **k):
        if name == "opencc":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_opencc)
    with pytest.raises(GoushiError, match=r"needs OpenCC: pip install 'goushi\[opencc\]'"):
        list(Cleaner(CleanOptions(t2s=True)).clean("s", ["國"]))


@pytest.mark.parametrize("kw, match", [
    (dict(normalize="nfd"), "normalize"),
    (dict(min_chars=-1), "--min-chars"),
    (dict(min_chars=10, max_chars=5), "--max-chars"),
    (dict(near_dup_threshold=1.5), "--near-dup-threshold"),
])
def test_bad_options(kw, match):
    with pytest.raises(GoushiError, match=match):
        CleanOptions(**kw).validate()
