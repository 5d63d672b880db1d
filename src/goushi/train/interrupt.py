"""Ctrl-C during training: the first one asks the run to stop after its current step, with a checkpoint;
a second one stops at once. Only the main thread may install a signal handler; in any other (a web page's
worker, say) Ctrl-C keeps its usual meaning, and `on_step` raising KeyboardInterrupt is the way to stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopRequest:
    """`requested` once Ctrl-C was pressed (or the loop set it); `install` before the loop, `restore` after."""

    def __init__(self, log: Callable[[str], None]):
        self.requested = False
        self._log = log
        self._old: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:
            self._old = None

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._log("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit at once)")


__all__ = ["StopRequest"]
