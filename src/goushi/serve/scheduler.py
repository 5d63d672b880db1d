"""Continuous batching for the server: the running requests of a model decoded in batches, each on its own thread.

A request's rows (Engine.request / Engine.chat_request) join a DecodeBatch at the next token boundary, in free
slots, and leave as they finish; their slots go to the next rows at once. A decode thread (a `Lane`) runs one step
at a time: admit waiting rows (their prompts prefilled alone, a bounded number of prompt tokens per step so the
running rows never wait long), choose every row's next token, hand the events to the event loop, run the model
once for all rows. A request abandoned by its client (cancel) leaves at the next boundary.

Every lane runs torch on one intra-op thread (goushi serve sets it): on more threads BLAS splits a matmul by its row
count, and a row's floats would depend on how many rows run beside it. On one thread a seeded request's text is the
same whatever else is in its batch (goushi.generation.slots says how), and the same as
Engine(batch_invariant=True).generate alone; a plain Engine call with a single row runs the faster single-row
kernels, the same text except at float near-ties. A batch always has at least 2 slots, so it never takes that path.

One lane leaves the machine's other cores idle, so a model can have several (`lanes`; how many by default:
goushi.serve.app.decode_threads, measured): the lanes share the weights, each has its own batch and KV cache, and a
new request goes to the lane with the fewest rows (a request's rows stay together: its samples share one prefill).
The lanes are threads of one process: their kernels run in parallel, their Python takes turns on the GIL, so they
pay for a model whose kernels are most of a step. Since a row's floats never depend on its
neighbours, which lane decodes it does not change its text. Beam search is not batched: the server runs it per
request, as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from goushi.engine import Engine, SampleConfig
from goushi.generation.batch import DecodeBatch
from goushi.generation.sampling import RowSpec, Vocab

log = logging.getLogger("goushi.serve")


@dataclass(eq=False)
class Ticket:
    """One request in the scheduler. `put(kind, value)` runs in the event loop: ("events", [StreamEvent, ...]) per
    step, then ("done", None) or ("error", exception); `ended()` once its rows are out of the batch."""

    cfg: SampleConfig
    specs: list[RowSpec]
    vocab: Vocab
    put: Callable[[str, Any], None]
    ended: Callable[[], None]
    rows_left: int = 0
    lane: Lane | None = None
    messages: list = field(default_factory=list)  # decode thread only: what the next delivery hands over


class Scheduler:
    """A model's lanes: `max_batch` slots in all, split over `lanes` decode threads (fewer when that would leave a
    lane under 2 slots)."""

    def __init__(self, engine: Engine, max_batch: int, lanes: int = 1):
        if max_batch < 2:
            raise ValueError(f"max_batch {max_batch}: a batch needs at least 2 slots")
        n = max(1, min(lanes, max_batch // 2))
        self.lanes = [Lane(engine, -(-max_batch // n), f"goushi-batch-{i}") for i in range(n)]
        self.rows = [0] * n  # rows submitted to each lane and not yet ended (event loop only)

    def submit(self, request: tuple[SampleConfig, list[RowSpec], Vocab], put: Callable[[str, Any], None],
               ended: Callable[[], None]) -> Ticket:
        i = min(range(len(self.lanes)), key=self.rows.__getitem__)
        rows = len(request[1])

        def _ended() -> None:  # runs in the event loop, as submit does, after submit has returned
            self.rows[i] -= rows
            ended()

        ticket = self.lanes[i].submit(request, put, _ended)
        self.rows[i] += rows
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Its rows leave at the next token boundary (nothing happens if it has finished)."""
        ticket.lane.cancel(ticket)

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()


class Lane:
    """One decode thread and its DecodeBatch of `max_batch` slots."""

    def __init__(self, engine: Engine, max_batch: int, name: str = "goushi-batch"):
        self.engine = engine
        self.max_batch = max_batch
        self.name = name
        self.batch: DecodeBatch | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cond = threading.Condition()
        self.incoming: list[Ticket] = []
        self.cancelled: list[Ticket] = []
        self.closed = False
        self.thread: threading.Thread | None = None

    # ---- called from the event loop ---------------------------------------------------------------------
    def submit(self, request: tuple[SampleConfig, list[RowSpec], Vocab], put: Callable[[str, Any], None],
               ended: Callable[[], None]) -> Ticket:
        cfg, specs, vocab = request
        ticket = Ticket(cfg, specs, vocab, put, ended, rows_left=len(specs), lane=self)
        with self.cond:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.loop = asyncio.get_running_loop()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
            self.incoming.append(ticket)
            self.cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Its rows leave at the next token boundary (nothing happens if it has finished)."""
        with self.cond:
            self.cancelled.append(ticket)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    # ---- the decode thread ------------------------------------------------------------------------------
    def _deliver(self, tickets: list[Ticket]) -> None:
        """Hand each ticket its messages in the event loop: one wake-up per step, not one per request."""
        batch = [(t, t.messages) for t in tickets]
        for t in tickets:
            t.messages = []
        try:
            self.loop.call_soon_threadsafe(_hand_over, batch)
        except RuntimeError:  # the event loop has closed (the server stopped): nobody is listening any more
            pass

    def _run(self) -> None:
        tickets: set[Ticket] = set()
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not (self.closed or self.incoming or self.cancelled or tickets):
                        self.cond.wait()
                    if self.closed:
                        break
                    new, gone = self.incoming, self.cancelled
                    self.incoming, self.cancelled = [], []
                if self.batch is None:
                    self.batch = DecodeBatch(self.engine.model, self.max_batch, self.engine.vocab.eot_id)
                ended = []
                for t in new:  # before the cancellations: a request may have been cancelled as soon as it came
                    if not t.specs:
                        t.messages.append(("done", None))
                        ended.append(t)
                        continue
                    self.batch.add(t, t.specs, t.cfg, t.vocab)
                    tickets.add(t)
                for t in gone:
                    if t in tickets:  # else it has finished already
                        self.batch.drop(t)
                        tickets.discard(t)
                        ended.append(t)
                try:
                    touched = self._step(tickets, ended) if tickets else []
                except BaseException as e:  # noqa: BLE001 - every request in the batch is told; the thread goes on
                    log.exception("decode step failed")
                    for t in tickets:
                        t.messages.append(("error", e))
                        ended.append(t)
                    touched, tickets = [], set()
                    self.batch = None
                for t in ended:
                    t.messages.append(("ended", None))
                if touched or ended:
                    self._deliver(list(dict.fromkeys([*touched, *ended])))
        # closed: whoever is still waiting hears of it
        for t in tickets:
            t.messages.append(("error", RuntimeError("the server is shutting down")))
            t.messages.append(("ended", None))
        if tickets and self.loop is not None:
            self._deliver(list(tickets))

    def _step(self, tickets: set[Ticket], ended: list[Ticket]) -> list[Ticket]:
        batch = self.batch
        batch.admit()
        touched: dict[Ticket, None] = {}
        for t, ev in batch.choose():
            t.messages.append(("event", ev))
            touched[t] = None
            if ev.result is not None:
                self.engine.add_copies(ev.result, t.cfg)
                t.rows_left -= 1
                if t.rows_left == 0:
                    t.messages.append(("done", None))
                    tickets.discard(t)
                    ended.append(t)
        if touched:
            # Events go out before the model runs the next step: a token reaches its client one step sooner.
            self._deliver(list(touched))
        batch.advance()
        return []


def _hand_over(batch: list[tuple[Ticket, list]]) -> None:
    for t, messages in batch:
        events = [v for k, v in messages if k == "event"]
        if events:
            t.put("events", events)
        for kind, value in messages:
            if kind in ("done", "error"):
                t.put(kind, value)
            elif kind == "ended":
                t.ended()


__all__ = ["Scheduler", "Lane", "Ticket"]
