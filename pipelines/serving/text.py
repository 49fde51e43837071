"""Generated token ids -> text deltas for streaming, cut at the request's stop strings.

Text is released only once it is final: a partial character (a byte-level token that ends inside
a UTF-8 sequence decodes to U+FFFD) and a tail that could still grow into a stop string are held
back, so the deltas joined are exactly the non-streamed reply. No torch here.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decoded so far (final characters only)
        self.sent = 0  # characters of `text` already released
        self.stopped = False  # a stop string was found; `text` ends before it
        self._prefix = 0  # decode window: ids[_prefix:_read] gave text already counted
        self._read = 0

    def push(self, token: int) -> str:
        """Add one token; the text now safe to release ("" while held back or stopped)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        self._decode_new()
        cut = self._stop_at()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def flush(self) -> str:
        """At the end of generation: whatever was held back for a stop string that never came."""
        return self._release(len(self.text))

    def _decode_new(self) -> None:
        """Incremental decoding over a small window, so spacing rules of the tokenizer (a leading
        space dropped at the start of a decode) see the same context as a full decode."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)

    def _stop_at(self) -> int | None:
        """Where the first stop string begins: never in released text (a possible start is
        held back until it is ruled out)."""
        found = [i for s in self.stop if (i := self.text.find(s, self.sent)) >= 0]
        return min(found) if found else None

    def _held(self) -> int:
        """Length of the longest unreleased tail that is a prefix of some stop string."""
        tail = self.text[self.sent :]
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : upto], upto
        return out
