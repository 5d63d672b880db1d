"""`goushi chat`: the terminal chat on tiny random chat runs (gibberish answers: the mechanics, not the quality).

What reaches the engine is checked with a recorder in place of Engine.stream_chat; one run of each kind goes
through the real engine, and one through a real pseudo-terminal (typing, Ctrl-C, /exit).
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from conftest import build_run
from goushi.chat import ChatTemplate
from goushi.checkpoint import load_run, save_weights
from goushi.cli import main
from goushi.cli.chat import ChatSession, conversation_tokens
from goushi.engine import Engine, Generation, SampleConfig, StreamEvent
from run_files import read_config, write_config

SRC = Path(__file__).resolve().parent.parent / "src"
# The CLI's defaults (the web page's chat settings), with short answers for speed.
CLI_CFG = dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_engine.py: tiny models on a busy 2-core machine
    yield
    torch.set_num_threads(n)


def make_chat(run_dir: Path) -> Path:
    """Mark a run as chat fine-tuned, the way `goushi sft` does: an "sft" section and the template."""
    info = read_config(run_dir)
    info["sft"] = {"data": "test.jsonl", "loss": "answers only"}
    info["chat_template"] = ChatTemplate().to_dict()
    write_config(run_dir, info)
    return run_dir


def copy_as_chat(base: Path, out: Path) -> Path:
    shutil.copytree(base, out)
    return make_chat(out)


@pytest.fixture(scope="module")
def chat_run(make_run, tmp_path_factory) -> Path:
    return copy_as_chat(make_run("char"), tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="module")
def engine(chat_run) -> Engine:
    return Engine.load(chat_run, device="cpu")


@pytest.fixture(scope="module")
def long_run(make_run, tmp_path_factory) -> Path:
    """Context 256: room for a few turns (a turn of the 64-token run nearly fills it: role names are bytes)."""
    return copy_as_chat(make_run("char", context_length=256), tmp_path_factory.mktemp("chat") / "long")


class Recorder:
    """Stands in for Engine.stream_chat: records each conversation and answers from a script, in two pieces."""

    def __init__(self, monkeypatch, answers=None):
        self.seen: list[list[dict[str, str]]] = []
        self.answers = answers
        monkeypatch.setattr(Engine, "stream_chat", lambda engine, messages, cfg: self(engine, messages, cfg))

    def __call__(self, engine, messages, cfg):
        self.seen.append([dict(m) for m in messages])
        engine.chat_template.encode(engine.tokenizer, messages, add_generation_prompt=True)  # refuse as it would
        text = self.answers(len(self.seen)) if self.answers else f"答{len(self.seen)}号"
        return self._events(text)

    @staticmethod
    def _events(text):
        half = len(text) // 2
        yield StreamEvent(text[:half], 1)
        g = Generation(prompt="", text=text, token_ids=[1, 2], finish_reason="stop")
        yield StreamEvent(text[half:], 2, finish_reason="stop", result=g)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---- refusals -------------------------------------------------------------------------------------------
def test_refuses_a_base_run_before_loading_it(make_run, capsys, monkeypatch):
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("the model should not be loaded"))
    base = make_run("char")
    assert main(["chat", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not chat fine-tuned" in err
    assert "goushi sft BASE_RUN --data FILE.jsonl --out RUN_DIR" in err


@pytest.mark.parametrize("args,needle", [
    (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature -1.0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be in [1, 4096]"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["--top-k", "-1"], "--top-k"),
])
def test_bad_options_exit_2_before_loading(chat_run, capsys, monkeypatch, args, needle):
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("the model should not be loaded"))
    assert main(["chat", str(chat_run), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_not_a_run_and_a_bad_system_prompt(tmp_path, chat_run, capsys):
    assert main(["chat", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["chat", str(chat_run), "--system", "你好<|im_end|>", "--device", "cpu"]) == 2
    assert "--system: messages[0] (system): content contains '<|im_end|>'" in capsys.readouterr().err


# ---- piped input, on the real engine ---------------------------------------------------------------------
def test_piped_stdin_answers_each_line_with_the_history(long_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("讲个笑话\n\n  \n床前明月光\n"))
    assert main(["chat", str(long_run), "--seed", "6", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    engine = Engine.load(long_run, device="cpu")
    cfg = SampleConfig(**CLI_CFG, max_new_tokens=6, seed=6)
    first = engine.chat([user("讲个笑话")], cfg)[0].text
    assert first.strip(), "pick a seed whose first answer is not empty"
    second = engine.chat([user("讲个笑话"), assistant(first), user("床前明月光")], cfg)[0].text
    assert out == f"{first}\n{second}\n"  # only the answers on stdout; blank lines are not messages
    assert "> " not in out and "max-new-tokens 6" in err and "outgrew" not in err


def test_the_prompt_tokens_helper_matches_the_engine(engine):
    convo = [{"role": "system", "content": "你是段子手"}, user("你好"), assistant("在呢"), user("讲个笑话")]
    g = engine.chat(convo, SampleConfig(max_new_tokens=1, seed=0))[0]
    assert conversation_tokens(engine, convo) == g.prompt_tokens


# ---- commands and history, recorded -----------------------------------------------------------------------
def test_system_reset_and_history_reach_the_engine(long_run, capsys, monkeypatch):
    rec = Recorder(monkeypatch)
    lines = ["你好", "/system 你是段子手", "再见", "/reset", "还在吗", "/system", "最后", "//斜杠开头",
             "/exit", "这句不会发出"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", str(long_run), "--system", "  ", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    system = {"role": "system", "content": "你是段子手"}
    assert rec.seen == [
        [user("你好")],
        [system, user("你好"), assistant("答1号"), user("再见")],
        [system, user("还在吗")],  # /reset kept the system prompt
        [user("还在吗"), assistant("答3号"), user("最后")],  # /system alone cleared it
        [user("还在吗"), assistant("答3号"), user("最后"), assistant("答4号"), user("/斜杠开头")],
    ]
    assert out == "答1号\n答2号\n答3号\n答4号\n答5号\n"
    assert "(system prompt: 你是段子手)" in err and "(system prompt cleared)" in err
    assert "(conversation cleared; the system prompt stays)" in err


def test_help_unknown_command_and_a_refused_message(long_run, capsys, monkeypatch):
    rec = Recorder(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("/help\n/bogus\n你好<|im_end|>\n你好\n"))
    assert main(["chat", str(long_run), "--system", "你是段子手", "--device", "cpu"]) == 2  # one was refused
    out, err = capsys.readouterr()
    assert "/reset" in err and "/system TEXT" in err and "unknown command /bogus" in err
    assert "error: messages[1] (user): content contains '<|im_end|>'" in err
    assert out == "答1号\n"  # the others are still answered, and the refused one is not in the history
    assert rec.seen[-1] == [{"role": "system", "content": "你是段子手"}, user("你好")]


def test_empty_and_interrupted_answers(long_run, monkeypatch):
    engine = Engine.load(long_run, device="cpu")

    def answer(parts, interrupt=False):
        def events(engine, messages, cfg):
            for p in parts:
                yield StreamEvent(p, 1)
            if interrupt:
                raise KeyboardInterrupt  # Ctrl-C while the answer streams
            yield StreamEvent("", 2, finish_reason="eos", result=Generation("", "".join(parts), [1], "eos"))
        monkeypatch.setattr(Engine, "stream_chat", events)

    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(engine, SampleConfig(), out=out, err=err)
    answer(["部分", "回答"], interrupt=True)
    with pytest.raises(KeyboardInterrupt):  # piped input: Ctrl-C stops everything
        s.ask("讲个笑话")
    assert s.turns == []
    out.truncate(0)
    out.seek(0)
    s.at_terminal = True  # at a terminal: it stops only the answer
    assert s.ask("讲个笑话") == "部分回答"
    assert s.turns == [("讲个笑话", "部分回答")]  # what was shown stays in the conversation
    assert out.getvalue() == "部分回答\n" and "(answer stopped)" in err.getvalue()
    answer([" ", "\n"])
    s.ask("再来")
    assert s.turns == [("讲个笑话", "部分回答")] and "without a word" in err.getvalue()
    answer([], interrupt=True)
    s.ask("再来")
    assert s.turns == [("讲个笑话", "部分回答")]  # stopped before a word: nothing to keep


def test_ctrl_c_at_the_prompt_and_ctrl_d_end_the_session(engine, monkeypatch):
    for ending in (KeyboardInterrupt, EOFError):
        typed = iter(["你好", "/help"])

        def fake_input(prompt, typed=typed, ending=ending):
            try:
                return next(typed)
            except StopIteration:
                raise ending() from None

        monkeypatch.setattr("builtins.input", fake_input)
        Recorder(monkeypatch)
        out, err = io.StringIO(), io.StringIO()
        s = ChatSession(engine, SampleConfig(), out=out, err=err)
        s.interactive()  # returns instead of raising
        assert out.getvalue() == "答1号\n" and "context 64 tokens" in err.getvalue()


# ---- the context window -----------------------------------------------------------------------------------
def test_oldest_turns_are_dropped_to_fit_the_context_and_the_system_stays(long_run, capsys, monkeypatch):
    run = long_run
    engine = Engine.load(run, device="cpu")
    rec = Recorder(monkeypatch, answers=lambda n: f"第{n}个回答：今天我终于学会了做饭")
    questions = [f"问题{n}：床前明月光" for n in range(1, 9)]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(questions) + "\n"))
    max_new = 8
    assert main(["chat", str(run), "--system", "你是段子手", "--max-new-tokens", str(max_new),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    ctx = engine.context_length
    sizes = [conversation_tokens(engine, convo) for convo in rec.seen]
    assert len(rec.seen) == len(questions)
    for n, convo in enumerate(rec.seen, 1):
        assert convo[0] == {"role": "system", "content": "你是段子手"} and convo[-1] == user(questions[n - 1])
        assert sizes[n - 1] + max_new <= ctx or len(convo) == 2  # room for the answer, or nothing left to drop
        turns = convo[1:-1]
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        if turns:  # the most recent turns are the ones kept, whole
            assert turns[-2:] == [user(questions[n - 2]), assistant(f"第{n - 1}个回答：今天我终于学会了做饭")]
    lengths = [len(convo) for convo in rec.seen]
    assert lengths[:3] == [2, 4, 6] and max(lengths) < 2 * len(questions)  # it grew, then was trimmed
    assert err.count("outgrew the model's context of 256 tokens") == 1  # said once


def test_a_message_longer_than_the_context_is_sent_with_a_note(engine):
    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(engine, SampleConfig(max_new_tokens=4, seed=1), out=out, err=err)
    s.ask("床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 4)
    assert "more than the model's context of 64; it sees only the end" in err.getvalue()


# ---- a real terminal --------------------------------------------------------------------------------------
def never_ending_chat_run(out: Path) -> Path:
    """A chat run whose every step draws from one fixed distribution in which <|endoftext|> and the turn
    markers have probability ~0 (as ui_fixtures' `slow` run): its answers last until --max-new-tokens."""
    build_run(out, tie_embeddings=False)
    run = load_run(out)
    m, tok = run.model, run.tokenizer
    with torch.no_grad():
        m.ln_f.weight.zero_()
        m.ln_f.bias.normal_(generator=torch.Generator().manual_seed(0))
        away = -50.0 * m.ln_f.bias / m.ln_f.bias.norm()
        for piece in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
            m.lm_head.weight[tok.token_to_id(piece)] = away
    save_weights(out / "model.safetensors", m)
    return make_chat(out)


def _terminal_child() -> None:
    # A test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then never
    # turns Ctrl-C into KeyboardInterrupt: give the child the default, as a terminal user's shell would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`goushi chat` in a pseudo-terminal that is its controlling terminal, so Ctrl-C is a real SIGINT."""

    def __init__(self, args: list[str]):
        self.master, slave = os.openpty()
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "goushi.cli", "chat", *args], stdin=slave, stdout=slave, stderr=slave,
            env=env, start_new_session=True, preexec_fn=_terminal_child)
        os.close(slave)
        self.seen = b""

    def read_until(self, needle: str, timeout: float = 60) -> str:
        """Everything read so far, once it holds `needle` after what earlier calls consumed."""
        want, end = needle.encode(), time.monotonic() + timeout
        while want not in self.seen:
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"no {needle!r} in the terminal; it shows:\n{self.seen.decode(errors='replace')}")
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
        i = self.seen.index(want) + len(want)
        text, self.seen = self.seen[:i].decode(errors="replace"), self.seen[i:]
        return text

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def test_a_real_terminal_session(chat_run, engine):
    term = Terminal([str(chat_run), "--seed", "6", "--max-new-tokens", "6", "--device", "cpu"])
    try:
        term.read_until("/help for commands")
        term.read_until("> ")
        term.type("讲个笑话\r")  # Enter, as a terminal sends it
        term.read_until("讲个笑话\r\n")  # the terminal echoes what was typed
        answer = engine.chat([user("讲个笑话")], SampleConfig(**CLI_CFG, max_new_tokens=6, seed=6))[0].text
        shown = term.read_until("> ")  # the answer, streamed, then the next prompt
        assert answer.strip() and answer.replace("\n", "\r\n") in shown
        term.type("/exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_ctrl_c_in_a_real_terminal_stops_the_answer_and_keeps_the_session(tmp_path):
    run = never_ending_chat_run(tmp_path / "endless")
    term = Terminal([str(run), "--max-new-tokens", "4096", "--device", "cpu"])
    try:
        term.read_until("> ")
        term.type("讲个笑话\r")
        term.read_until("讲个笑话\r\n")
        deadline = time.monotonic() + 30
        while len(term.seen) < 40 and time.monotonic() < deadline:  # the answer is streaming
            if select.select([term.master], [], [], 0.2)[0]:
                term.seen += os.read(term.master, 4096)
        assert len(term.seen) >= 40, term.seen
        term.type("\x03")  # Ctrl-C
        term.read_until("(answer stopped)")
        term.read_until("> ")  # the session goes on
        # input() writes its prompt and only then blocks reading; a SIGINT landing in between is noticed at the
        # next read, which never comes. No person types that fast; a test must wait a moment.
        time.sleep(0.3)
        term.type("\x03")  # Ctrl-C at the prompt ends it
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
