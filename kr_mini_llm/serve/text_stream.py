"""Token ids -> text pieces for streaming, with OpenAI `stop` strings.

The whole answer is decoded again at every token and only the new suffix is emitted (as the
Generator's stream does), so a character spread over several byte-fallback tokens comes out
whole. Text that could be the start of a stop string is held back until it is known not to be,
so a stop string never reaches the client, not even in part.
"""
from __future__ import annotations

from typing import Sequence


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.text = ""      # the answer so far (cut at a stop string once one is found)
        self.emitted = 0    # characters of self.text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Adds a token; returns the text that may be sent now (maybe ''). Sets .stopped on a stop string."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        hit = self._find_stop(text)
        if hit is not None:
            self.text, self.stopped = text[:hit], True
            return self._take(hit)
        self.text = text
        if text.endswith("\ufffd"):  # a character whose bytes are not all here yet
            return ""
        return self._take(len(text) - self._partial_stop(text))

    def flush(self) -> str:
        """The rest of the text, at the end of the answer."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece

    def _find_stop(self, text: str) -> int | None:
        # A stop string cannot begin inside text already emitted (that text held no stop prefix).
        hits = [i for i in (text.find(s, self.emitted) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of the unsent text that begins some stop string."""
        unsent = len(text) - self.emitted
        for n in range(min(unsent, max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
