"""Token ids -> text, one token at a time, never showing half a character, cutting at stop strings.

A byte-level BPE token (or a char tokenizer's byte-fallback token) can end in the middle of a
multi-byte UTF-8 character. Each token's raw bytes go through an incremental UTF-8 decoder, which
returns only complete characters and keeps the rest until the next token completes them.

Stop strings may span tokens, so the tracker also holds back any tail of the text that could be
the beginning of a stop string; once the next token shows it is not, the tail is released.
Streaming and non-streaming generation both use this one class, so their texts are equal.
"""

from __future__ import annotations

import codecs


class TextTracker:
    def __init__(self, token_bytes: list[bytes], stop: list[str]):
        self.token_bytes = token_bytes
        self.stop = stop
        self.longest_stop = max((len(s) for s in stop), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # complete characters so far, cut at a stop string once one appears
        self.emitted = 0  # how much of `text` has been handed out as deltas

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to show, whether a stop string was reached)."""
        new = self.decoder.decode(self.token_bytes[token_id])
        if not new:
            return "", False
        old_len = len(self.text)
        self.text += new
        if self.stop:
            cut = self._find_stop(old_len)
            if cut is not None:
                self.text = self.text[:cut]
                return self._release(len(self.text)), True
        return self._release(len(self.text) - self._held_tail()), False

    def copy(self) -> TextTracker:
        """An independent tracker in the same state (beam search forks hypotheses)."""
        other = TextTracker(self.token_bytes, self.stop)
        other.decoder.setstate(self.decoder.getstate())
        other.text, other.emitted = self.text, self.emitted
        return other

    def finish(self) -> str:
        """Release held-back text at the end. Bytes of an unfinished character are dropped: they
        would only show as a replacement character."""
        return self._release(len(self.text))

    def _find_stop(self, old_len: int) -> int | None:
        best = None
        for s in self.stop:
            # A match that completes now must end after old_len; earlier ones were found before.
            i = self.text.find(s, max(0, old_len - len(s) + 1))
            if i >= 0 and (best is None or i < best):
                best = i
        return best

    def _held_tail(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for k in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0

    def _release(self, end: int) -> str:
        end = max(end, self.emitted)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
