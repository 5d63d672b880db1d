"""`goushi chat RUN_DIR`: talk to a chat fine-tuned model in the terminal, answers streamed as they are written.

Formatting only: every answer is one `Engine.stream_chat` call over the whole conversation (system prompt,
earlier turns, the new message); the template, the stop at the end of the turn and sampling are the engine's.
This module keeps the conversation: each answer goes back into it, `/reset` empties it, and when it no longer
fits the model's context the oldest turns are dropped (the system prompt stays), measured with the run's
chat template. With stdin not a terminal, each line is one message and only the answers are printed:
`echo 讲个笑话 | goushi chat RUN_DIR`. Notes and command replies go to stderr, answers to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from goushi import rundir
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError
from goushi.generation.options import MAX_NEW_TOKENS

# The web page's chat defaults: a little less random than plain sampling, and a mild repetition penalty,
# which small models need in a conversation.
TEMPERATURE, TOP_P, REPETITION_PENALTY, MAX_NEW = 0.7, 0.9, 1.1, 150

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (the role the model plays); /system alone clears it
  /help           this list
  /exit           quit (also Ctrl-D; Ctrl-C stops an answer, or quits at the prompt)
a message that starts with / is written //..."""

NOT_CHAT = ("{run}: not chat fine-tuned (its config.json has no \"sft\"), so it only continues text; "
            "run `goushi sft BASE_RUN --data FILE.jsonl --out RUN_DIR` first and chat with that RUN_DIR "
            "(or use `goushi sample {run}`)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat", help="chat with a chat fine-tuned model in the terminal",
        description="Chat with the model in RUN_DIR (a run made by `goushi sft`). Answers stream as they are "
        "written and the conversation is kept between turns. Commands: /reset, /system TEXT, /help, /exit. "
        "When stdin is not a terminal, every line is one message and only the answers are printed.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `goushi sft`")
    p.add_argument("--system", default="", metavar="TEXT",
                   help="system prompt: the role the model plays, e.g. 你是一个段子手 (default: none)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE,
                   help=f">1 more random, <1 more predictable, 0 = always the likeliest token (default: {TEMPERATURE})")
    p.add_argument("--top-p", type=float, default=TOP_P,
                   help=f"only from the smallest set of likely tokens whose probability reaches p, 1 = off "
                   f"(default: {TOP_P})")
    p.add_argument("--top-k", type=int, default=0, help="only from the k most likely tokens (default: 0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY,
                   help=f"make tokens already in the conversation less likely, 1 = off (default: {REPETITION_PENALTY})")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW,
                   help=f"longest answer in tokens, 1..{MAX_NEW_TOKENS} (default: {MAX_NEW})")
    p.add_argument("--seed", type=int,
                   help="make answers repeatable: the same conversation gets the same answer (default: random)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile-decode", action="store_true",
                   help="decode with a torch.compile'd step, kept only if it measures faster than the eager one here "
                   "(15-35 s of compiling the first time on a machine; printed at start)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> SampleConfig:
    return SampleConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                        seed=args.seed).validate()


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)  # refuse bad options before spending seconds loading the model
    run_dir = rundir.check_run_dir(args.run_dir)
    if not rundir.read_run(run_dir).is_chat:  # what Engine.is_chat asks, without loading the weights
        raise GoushiError(NOT_CHAT.format(run=args.run_dir))
    engine = Engine.load(run_dir, device=args.device, compile_decode=args.compile_decode)
    if args.compile_decode:
        engine.compiled_step()
        print(engine.compile_note, file=sys.stderr)
    session = ChatSession(engine, cfg)
    try:
        session.set_system(args.system)
    except GoushiError as e:
        raise GoushiError(f"--system: {e}") from None
    if sys.stdin.isatty():
        session.interactive()
        return 0
    return 0 if session.piped(sys.stdin) else 2


def conversation_tokens(engine: Engine, messages: list[dict[str, str]]) -> int:
    """Ids the model is fed for `messages` (asking for the next answer), as the engine renders them."""
    ids, _ = engine.chat_template.encode(engine.tokenizer, messages, add_generation_prompt=True)
    return len(ids)


class ChatSession:
    """One conversation: the system prompt and the finished (user, assistant) turns, oldest first."""

    def __init__(self, engine: Engine, cfg: SampleConfig, *, out: TextIO | None = None, err: TextIO | None = None):
        self.engine, self.cfg = engine, cfg
        self._out, self._err = out, err
        self.system = ""
        self.turns: list[tuple[str, str]] = []
        self.trim_noted = False  # the "oldest turns dropped" note is said once a session
        self.refused = 0  # messages the engine refused (piped input exits 2 if any)
        self.at_terminal = False  # Ctrl-C stops only the answer (piped: it stops everything)

    # stdout/stderr looked up at each write, so redirection after construction (tests, pytest) is followed
    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # ---- the conversation -----------------------------------------------------------------------------
    def set_system(self, text: str) -> None:
        """Set (or with blank text clear) the system prompt; GoushiError if the template refuses it."""
        text = text.strip()
        if text:
            self.engine.chat_template.render([{"role": "system", "content": text}], add_generation_prompt=False)
        self.system = text

    def messages(self, user: str) -> list[dict[str, str]]:
        """The conversation the engine answers: system prompt, earlier turns, then `user`."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in self.turns:
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": user}]

    def fit(self, user: str) -> list[dict[str, str]]:
        """messages(user), after dropping the oldest turns until it leaves room for an answer in the context
        (max_new_tokens, at most half the context). Dropped turns are gone for good: the model cannot see them."""
        ctx = self.engine.context_length
        room = min(self.cfg.max_new_tokens, ctx // 2)
        msgs = self.messages(user)
        n = conversation_tokens(self.engine, msgs)
        dropped = 0
        while self.turns and n + room > ctx:
            del self.turns[0]
            dropped += 1
            msgs = self.messages(user)
            n = conversation_tokens(self.engine, msgs)
        if dropped and not self.trim_noted:
            self.trim_noted = True
            self.note(f"note: the conversation outgrew the model's context of {ctx} tokens, so its oldest turns are "
                      "dropped from now on (the system prompt stays); /reset starts afresh")
        if n > ctx:
            what = "this message and the system prompt take" if self.system else "this message takes"
            self.note(f"note: {what} {n} tokens, more than the model's context of {ctx}; it sees only the end")
        return msgs

    def ask(self, user: str) -> str | None:
        """Stream the answer to `user` to stdout and keep the turn; None if the engine refused the message.
        At a terminal Ctrl-C stops the answer, and what was written so far stays in the conversation."""
        try:
            events = self.engine.stream_chat(self.fit(user), self.cfg)
        except GoushiError as e:
            self.note(f"error: {e}")
            self.refused += 1
            return None
        answer, finish = "", None
        try:
            for ev in events:
                print(ev.delta, end="", file=self.out, flush=True)
                answer += ev.delta
                if ev.result is not None:
                    finish = ev.finish_reason
        except KeyboardInterrupt:
            print(file=self.out, flush=True)
            if not self.at_terminal:
                raise
            self.note("(answer stopped)")
            finish = "interrupted"
        else:
            print(file=self.out, flush=True)
        finally:
            events.close()  # the engine's generator must not keep running
        if finish == "length":
            self.note(f"[the answer reached --max-new-tokens {self.cfg.max_new_tokens}]")
        if answer.strip():
            self.turns.append((user, answer))
        elif finish != "interrupted":
            self.note("[the model ended its turn without a word; this turn is not kept]")
        return answer

    # ---- input ----------------------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """One line of input: a command or a message. False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self.command(text)
        self.ask(text[1:] if text.startswith("//") else text)
        return True

    def command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.turns.clear()
            self.trim_noted = False
            self.note("(conversation cleared" + ("; the system prompt stays)" if self.system else ")"))
        elif name == "/system":
            try:
                self.set_system(rest)
            except GoushiError as e:
                self.note(f"error: {e}")
            else:
                self.note(f"(system prompt: {self.system})" if self.system else "(system prompt cleared)")
        elif name == "/help":
            self.note(HELP)
        else:
            self.note(f"unknown command {name}; /help lists them (write //... to send a message starting with /)")
        return True

    def interactive(self) -> None:
        """Read from the terminal until /exit, Ctrl-D or Ctrl-C at the prompt."""
        e = self.engine
        self.at_terminal = True
        self.note(f"chat with {e.run_dir} · context {e.context_length} tokens · /help for commands, "
                  "/exit or Ctrl-D to quit" + (f"\nsystem prompt: {self.system}" if self.system else ""))
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print(file=self.err, flush=True)
                return
            if not self.handle(line):
                return

    def piped(self, lines: Iterable[str]) -> bool:
        """Answer each line of `lines` (commands work too); False if any message was refused (the others are
        still answered)."""
        for line in lines:
            if not self.handle(line):
                break
        return not self.refused
