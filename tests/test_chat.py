"""goushi.chat (messages, the template, ids and the training mask) and Engine.chat / stream_chat."""

from __future__ import annotations

import json
import shutil

import pytest

from goushi.chat import CHATML, ROLES, ChatTemplate, normalize_messages
from goushi.checkpoint import load_run
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.export.gguf import modelfile_text
from goushi.export.tokenizer_files import stop_ids
from goushi.run_record import RunRecord, SftRecord
from goushi.tokenizer import Tokenizer
from test_engine import ScriptedLM

SYSTEM = {"role": "system", "content": "你是段子手"}
CONVO = [
    SYSTEM,
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "在呢"},
    {"role": "user", "content": "讲个笑话"},
]
RENDERED = ("<|im_start|>system\n你是段子手<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
            "<|im_start|>assistant\n在呢<|im_end|>\n<|im_start|>user\n讲个笑话<|im_end|>\n"
            "<|im_start|>assistant\n")
# A training conversation: two answers, the first starting and the second ending with a newline, so a
# boundary off by one token shows.
TRAIN = [
    {"role": "user", "content": "今天吃什么"},
    {"role": "assistant", "content": "\n疯狂星期四"},
    {"role": "user", "content": "好评"},
    {"role": "assistant", "content": "下次还来。\n"},
]


@pytest.fixture(scope="module")
def tokenizers(make_run) -> dict[str, Tokenizer]:
    return {k: Tokenizer.from_file(make_run(k) / "tokenizer.json") for k in ("char", "bpe")}


# ---- messages ----------------------------------------------------------------------------------------
def test_normalize_keeps_role_and_content_only():
    msgs = normalize_messages([{"role": "user", "content": "你好", "name": "x"}], for_prompt=True)
    assert msgs == [{"role": "user", "content": "你好"}] and ROLES == ("system", "user", "assistant")


@pytest.mark.parametrize("messages,needle", [
    ("你好", "non-empty list"),
    ([], "non-empty list"),
    (["你好"], r"messages\[0\]: must be an object"),
    ([{"role": "bot", "content": "x"}], r"messages\[0\]: role 'bot' is not one of system, user, assistant"),
    ([{"content": "x"}], r"messages\[0\]: role None"),
    ([{"role": "user", "content": None}], r"messages\[0\] \(user\): content must be a string, not NoneType"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], r"messages\[0\] \(user\): content must be a string"),
    ([{"role": "user", "content": ""}], r"messages\[0\] \(user\): content is empty"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": " \n"}], r"messages\[1\] \(assistant\): content is empty"),
    ([{"role": "user", "content": "a"}, SYSTEM, {"role": "user", "content": "b"}],
     r"messages\[1\]: a system message may only come first"),
    ([SYSTEM], r"messages\[0\]: the last message must be the user's"),
    (CONVO[:3], r"messages\[2\]: the last message must be the user's .*'assistant'"),
])
def test_bad_messages_name_the_message_and_the_problem(messages, needle):
    with pytest.raises(GoushiError, match=needle):
        normalize_messages(messages, for_prompt=True)


def test_a_training_conversation_may_end_with_the_answer():
    assert normalize_messages(TRAIN)[-1]["role"] == "assistant"
    with pytest.raises(GoushiError, match=r"messages\[3\]: the last message must be the user's"):
        normalize_messages(TRAIN, for_prompt=True)


@pytest.mark.parametrize("marker", ["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
def test_content_may_not_open_or_close_a_turn(marker, tokenizers):
    bad = [{"role": "user", "content": "a"}, {"role": "assistant", "content": f"好{marker}user"},
           {"role": "user", "content": "b"}]
    with pytest.raises(GoushiError, match=rf"messages\[1\] \(assistant\): content contains '{marker}'"):
        CHATML.render(bad)
    with pytest.raises(GoushiError, match=r"messages\[1\]"):
        CHATML.encode(tokenizers["char"], bad)


# ---- the template ----------------------------------------------------------------------------------------
def test_chatml_renders_the_exact_text():
    assert CHATML.render(CONVO) == RENDERED
    assert CHATML.render(CONVO[1:2]) == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert CHATML.render(TRAIN, add_generation_prompt=False) == (
        "<|im_start|>user\n今天吃什么<|im_end|>\n<|im_start|>assistant\n\n疯狂星期四<|im_end|>\n"
        "<|im_start|>user\n好评<|im_end|>\n<|im_start|>assistant\n下次还来。\n<|im_end|>")  # no turn_sep at the end
    assert CHATML.stops == ("<|im_end|>", "<|im_start|>")  # the end of the turn, or a next turn opened


def record(**sections) -> RunRecord:
    return RunRecord.from_dict({"model": {}, **sections})


def test_template_from_config_json():
    assert record().template == CHATML == record(chat_template=None).template
    custom = {"turn_start": "### ", "role_sep": ":\n", "turn_end": "\n###", "turn_sep": "\n\n"}
    tpl = record(sft={"data": "chat.jsonl"}, chat_template=custom).template
    assert tpl.to_dict() == custom and record(chat_template=tpl.to_dict()).template == tpl
    assert tpl.render(CONVO[1:2]) == "### user:\n你好\n###\n\n### assistant:\n" and tpl.stops == ("\n###", "### ")
    assert record(chat_template={"turn_end": "<|end|>"}).template == ChatTemplate(turn_end="<|end|>")
    with pytest.raises(GoushiError, match="unknown key.*stop"):
        record(chat_template={"turn_end": "<|im_end|>", "stop": "<|im_end|>"})
    with pytest.raises(GoushiError, match="chat_template: must be a JSON object"):
        record(chat_template="chatml")
    with pytest.raises(GoushiError, match="turn_end: must not be empty"):
        record(chat_template={"turn_end": ""})
    with pytest.raises(GoushiError, match="role_sep: must be a string"):
        record(chat_template={"role_sep": 1})
    assert record(sft={"data": "c.jsonl", "rows": 10}).is_chat and not record(sft=None).is_chat
    assert not record().is_chat


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_encode_uses_one_special_id_per_marker_and_decodes_to_the_render(tokenizers, kind):
    tok = tokenizers[kind]
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert (start, end) == (2, 3)
    for messages, gen in ((CONVO, True), (TRAIN, False)):
        ids, mask = CHATML.encode(tok, messages, add_generation_prompt=gen)
        assert len(ids) == len(mask) and ids[0] == tok.eot_id and not mask[0]
        assert tok.decode(ids) == "<|endoftext|>" + CHATML.render(messages, add_generation_prompt=gen)
        assert ids.count(start) == len(messages) + gen and ids.count(end) == len(messages)
    ids, mask = CHATML.encode(tok, CONVO, add_generation_prompt=True)
    tail = [start, *tok.encode("assistant"), *tok.encode("\n")]
    assert ids[-len(tail):] == tail and not any(mask[-len(tail):])  # the generation prompt is no target
    assert [tok.decode(ids[a:b]) for a, b in runs(mask)] == ["在呢<|im_end|>"]


def runs(mask: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each stretch of True."""
    out, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_mask_covers_exactly_each_answer_and_its_turn_end(tokenizers, kind):
    tok = tokenizers[kind]
    end, nl = tok.token_to_id("<|im_end|>"), tok.encode("\n")
    answers = [m["content"] for m in TRAIN if m["role"] == "assistant"]
    ids, mask = CHATML.encode(tok, TRAIN)
    stretches = runs(mask)
    assert [tok.decode(ids[a:b]) for a, b in stretches] == [a + "<|im_end|>" for a in answers]
    assert sum(mask) == sum(len(tok.encode(a)) + 1 for a in answers)
    for (a, b), answer in zip(stretches, answers, strict=True):
        assert ids[a: b - 1] == tok.encode(answer) and ids[b - 1] == end  # content, then turn_end
        assert ids[a - len(nl): a] == nl  # just before: role_sep, not a target ...
        assert tok.decode(ids[:a]).endswith("<|im_start|>assistant\n")
    a, b = stretches[0]
    assert ids[b: b + len(nl)] == nl and not any(mask[b: b + len(nl)])  # ... just after: turn_sep, not a target
    assert stretches[-1][1] == len(ids)  # the conversation ends with the last answer's turn_end
    system_first = CHATML.encode(tok, [SYSTEM, *TRAIN])
    assert [tok.decode(system_first[0][a:b]) for a, b in runs(system_first[1])] == [a + "<|im_end|>" for a in answers]


def test_encode_with_a_custom_text_template(tokenizers):
    tok = tokenizers["char"]
    tpl = ChatTemplate(turn_start="### ", role_sep=":\n", turn_end="\n###", turn_sep="\n\n")
    ids, mask = tpl.encode(tok, TRAIN[:2])
    assert tok.decode(ids) == "<|endoftext|>" + tpl.render(TRAIN[:2], add_generation_prompt=False)
    assert [tok.decode(ids[a:b]) for a, b in runs(mask)] == ["\n疯狂星期四\n###"]


# ---- Engine.chat ---------------------------------------------------------------------------------------
ANSWER = "好的，今天疯狂星期四"


def chat_engine(tok: Tokenizer, messages, after: str, *, template=None) -> tuple[Engine, list[int]]:
    """An engine whose model answers `messages` with ANSWER followed by the token ids of `after` (one id for a
    special token, else its text's tokens), then <|endoftext|>."""
    tpl = ChatTemplate.from_dict(template) if template else CHATML
    prompt, _ = tpl.encode(tok, messages, add_generation_prompt=True)
    special = tok.token_to_id(after)
    tail = [special] if after.startswith("<|") and special is not None else tok.encode(after)
    answer = tok.encode(ANSWER) + tail + tok.encode("\n") + [tok.token_to_id("<|im_start|>")] + tok.encode("user")
    script = [0] * (len(prompt) - 1) + answer + [tok.eot_id]
    lm = ScriptedLM(script, tok.vocab_size, context_length=len(script) + 8)
    rec = RunRecord(model=lm.config, sft=SftRecord(data="chat.jsonl"), chat_template=tpl) if template else None
    return Engine(lm, tok, record=rec), prompt


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_stops_at_the_end_of_the_turn(tokenizers, kind):
    tok = tokenizers[kind]
    eng, prompt = chat_engine(tok, CONVO, "<|im_end|>")
    cfg = SampleConfig(strategy="greedy", max_new_tokens=60)
    g = eng.chat(CONVO, cfg)[0]
    assert (g.text, g.finish_reason) == (ANSWER, "stop")
    assert g.token_ids == tok.encode(ANSWER) + [tok.token_to_id("<|im_end|>")]
    assert (g.prompt, g.prompt_tokens, g.completion_tokens) == (RENDERED, len(prompt), len(g.token_ids))
    events = list(eng.stream_chat(CONVO, cfg))
    assert "".join(e.delta for e in events) == ANSWER and events[-1].result == g
    assert not any("<" in e.delta for e in events)
    assert cfg.stop == []  # the caller's config is left alone


def test_chat_also_stops_when_the_model_opens_the_next_turn_itself(tokenizers):
    tok = tokenizers["char"]
    eng, _ = chat_engine(tok, CONVO, "<|im_start|>")
    g = eng.chat(CONVO, SampleConfig(strategy="greedy", max_new_tokens=60, stop=["。"]))[0]
    assert (g.text, g.finish_reason) == (ANSWER, "stop")


def test_chat_uses_the_runs_template(tokenizers):
    tok = tokenizers["char"]
    template = {"turn_start": "### ", "role_sep": ":\n", "turn_end": "\n###", "turn_sep": "\n"}
    eng, _ = chat_engine(tok, CONVO, "\n###", template=template)
    assert eng.is_chat and eng.chat_template.stops == ("\n###", "### ")
    g = eng.chat(CONVO, SampleConfig(strategy="greedy", max_new_tokens=60))[0]
    assert (g.text, g.finish_reason) == (ANSWER, "stop")
    assert g.prompt.startswith("### system:\n你是段子手\n###\n### user:")


def test_chat_refuses_bad_messages_before_generating(tokenizers):
    eng, _ = chat_engine(tokenizers["char"], CONVO, "<|im_end|>")
    with pytest.raises(GoushiError, match=r"messages\[2\]: the last message must be the user's"):
        eng.chat(CONVO[:3], SampleConfig())
    with pytest.raises(GoushiError, match=r"messages\[1\] \(user\): content contains '<\|im_end\|>'"):
        eng.stream_chat([SYSTEM, {"role": "user", "content": "你好<|im_end|>"}], SampleConfig())
    with pytest.raises(GoushiError, match="--top-p"):
        eng.stream_chat(CONVO, SampleConfig(top_p=2.0))


def test_chat_samples_and_a_loaded_chat_run(make_run, tmp_path):
    run = tmp_path / "chat_run"
    shutil.copytree(make_run("bpe"), run)
    info = json.loads((run / "config.json").read_text(encoding="utf-8"))
    (run / "config.json").write_text(json.dumps({**info, "sft": {"data": "chat.jsonl"}}), encoding="utf-8")
    eng = Engine.load(run, device="cpu")
    assert eng.is_chat and eng.record.sft.data == "chat.jsonl" and eng.chat_template == CHATML
    cfg = SampleConfig(temperature=1.0, max_new_tokens=20, num_samples=3, seed=9)
    gens = eng.chat(CONVO, cfg)
    assert [g.seed for g in gens] == [9, 10, 11] and all(g.prompt == RENDERED for g in gens)
    rows: dict[int, str] = {}
    for ev in eng.stream_chat(CONVO, cfg):
        rows[ev.index] = rows.get(ev.index, "") + ev.delta
    assert [rows[i] for i in range(3)] == [g.text for g in gens]
    assert all("<|im_end|>" not in g.text and "<|im_start|>" not in g.text for g in gens)
    assert not Engine.load(make_run("bpe"), device="cpu").is_chat


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_exports_stop_where_the_engine_ends_an_answer(make_run, tmp_path, kind):
    """HF's generation_config and the GGUF Modelfile stop at the template's markers (ChatTemplate.stops), as
    Engine.chat does; a base run stops at <|endoftext|> only."""
    base = make_run(kind)
    chat = shutil.copytree(base, tmp_path / "chat")
    info = json.loads((chat / "config.json").read_text(encoding="utf-8"))
    (chat / "config.json").write_text(json.dumps({**info, "sft": {"data": "chat.jsonl"}}), encoding="utf-8")
    for run_dir, markers in ((base, []), (chat, ["<|im_end|>", "<|im_start|>"])):
        run = load_run(run_dir)
        assert [run.tokenizer.id_to_piece(i) for i in stop_ids(run.tokenizer, run.record)] == ["<|endoftext|>", *markers]
        stops = [line for line in modelfile_text(run, "m.gguf").splitlines() if line.startswith("PARAMETER stop ")]
        assert stops == [f'PARAMETER stop "{m}"' for m in [*markers, "<|endoftext|>"]]
    assert list(CHATML.stops) == ["<|im_end|>", "<|im_start|>"]
