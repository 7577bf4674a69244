"""Incremental detokenisation with stop strings, one object per generated sequence.

New text is decoded over a short window of tokens (the offsets method of vLLM and TGI), so each
token costs the same whatever the length. Text that ends in an incomplete UTF-8 character waits
for the next token. While stop strings are set, the last ``len(longest stop) - 1`` characters
are held back, so streamed text never holds a stop string's beginning that is later cut. The
response text of a non-streamed request is the concatenation of the same deltas, so a stream and
a plain response carry the same text.
"""

from __future__ import annotations

from typing import Any


class TextState:
    def __init__(self, tokenizer: Any, stop: list[str], include_stop: bool = False,
                 skip_special: bool = True) -> None:
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.include_stop = include_stop
        self.skip_special = skip_special
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded so far (stop strings not yet cut)
        self.sent = 0  # characters of ``text`` already handed out
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped: str | None = None  # the stop string that ended the text

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token: int) -> str:
        """Take one token; returns the text that may be handed out now."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        now = self._decode(self.ids[self.prefix_offset:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += now[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if self.stop and self._cut():
            return self.flush()
        limit = len(self.text) - self.hold if self.stop else len(self.text)
        if limit <= self.sent:
            return ""
        out = self.text[self.sent:limit]
        self.sent = limit
        return out

    def _cut(self) -> bool:
        start = max(0, self.sent - self.hold - 1)
        best = None
        for s in self.stop:
            at = self.text.find(s, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, s)
        if best is None:
            return False
        at, s = best
        self.text = self.text[:at + len(s)] if self.include_stop else self.text[:at]
        self.stopped = s
        return True

    def flush(self) -> str:
        """The rest of the text (at the end of the sequence)."""
        if self.read_offset < len(self.ids) and self.stopped is None:
            tail = self._decode(self.ids[self.prefix_offset:])
            before = self._decode(self.ids[self.prefix_offset:self.read_offset])
            if len(tail) > len(before):
                self.text += tail[len(before):]
                self.read_offset = len(self.ids)
                if self.stop:
                    self._cut()
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out
