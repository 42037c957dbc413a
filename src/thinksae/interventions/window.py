"""The steering window of one sequence: which positions a steering setting applies to.

A :class:`WindowScanner` follows the sequence token by token with the one thinking-region
tracker (:class:`thinksae.chat.ThinkTracker`) and applies the window (:class:`.spec.Window`) on
top: from ``start`` (``prompt``: the prompt's last token on; ``think``: the opening marker on;
``sentence``: after the first sentence of thinking; N: N tokens after the opening) up to ``end``
(``think_end``: the closing marker, which is not steered; ``none``; M tokens after the opening).
A position's verdict depends only on the tokens up to it, so a cached generation and one
teacher-forced pass over the finished sequence steer the same positions. Generation stops
steering at the first generated stop token.
"""

from __future__ import annotations

from collections.abc import Callable

from ..chat import ThinkMarkers, ThinkTracker
from .spec import Window


class WindowScanner:
    """Follows one sequence token by token and says which positions are steered."""

    def __init__(self, window: Window, markers: ThinkMarkers, prompt_len: int,
                 text_of: Callable[[list[int]], str] | None = None):
        self.window, self.markers, self.prompt_len = window, markers, prompt_len
        self.think = ThinkTracker(markers, prompt_len, text_of)
        self.start_pos: int | None = None
        self.end_pos: int | None = None

    @property
    def pos(self) -> int:
        return self.think.pos

    @property
    def open_pos(self) -> int | None:
        return self.think.open_pos

    @property
    def close_pos(self) -> int | None:
        return self.think.close_pos

    @property
    def stop_pos(self) -> int | None:
        return self.think.stop_pos

    @property
    def think_tokens(self) -> int | None:
        return self.think.think_tokens

    def push(self, token: int) -> bool:
        """Take the token at the next position; whether that position is steered."""
        t = self.think.pos
        was_stopped = self.think.stop_pos is not None
        self.think.push(token)
        if was_stopped or self.think.stop_pos is not None:
            return False
        w, opened = self.window, self.open_pos is not None
        if self.end_pos is None and (
                (w.end == "think_end" and self.close_pos == t)
                or (isinstance(w.end, int) and opened and t == self.open_pos + w.end)):
            self.end_pos = t
        if self.start_pos is None and self.end_pos is None and (
                (w.start == "prompt" and t >= self.prompt_len - 1)
                or (w.start == "think" and opened and t == self.open_pos)
                or (isinstance(w.start, int) and opened and t == self.open_pos + w.start)
                or (w.start == "sentence" and opened and t > self.open_pos + 1
                    and self.close_pos is None and self.markers.ends_sentence(token))):
            self.start_pos = t
        return self.start_pos is not None and self.end_pos is None


def scan(window: Window, markers: ThinkMarkers, tokens: list[int], prompt_len: int,
         text_of: Callable[[list[int]], str] | None = None) -> tuple[list[bool], WindowScanner]:
    """Steered flags of every position of one sequence, and the scanner (markers found)."""
    row = WindowScanner(window, markers, prompt_len, text_of)
    return [row.push(int(t)) for t in tokens], row
