"""A progress bar on a terminal that results, errors and log lines print above, never through.

click's bar redraws its line in place; anything else written meanwhile (a result on
stdout, an ``error:`` line, a log warning) lands in the middle of it when both go to
the same terminal. ``Progress`` clears its line before such a write and redraws itself
after it: the command writes through ``progress.out`` / ``progress.err`` and, while the
bar is open, the root logger's stderr handlers go through it too.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

CLEAR = "\r\x1b[K"
WIDTH = 28


@dataclass
class _Above:
    """A text stream that writes above the bar: clear the bar line, write, redraw after a complete line."""

    progress: Progress
    stream: TextIO

    def write(self, text: str) -> int:
        self.progress.clear()
        n = self.stream.write(text)
        self.stream.flush()
        if text.endswith("\n"):
            self.progress.draw()
        return n

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


@dataclass
class Progress:
    """``total`` steps; ``advance()`` after each. Draws only when ``tty`` is a terminal."""

    total: int
    label: str
    tty: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = field(default=0, init=False)
    item: str = field(default="", init=False)
    # A caller that knows better than "files left x mean time per file" (a cluster job: bytes left
    # at the byte rate) sets ``eta_s``; ``detail`` (rates, error count) is shown after the count.
    eta_s: float | None = field(default=None, init=False)
    detail: str = field(default="", init=False)
    _start: float = field(default_factory=time.monotonic, init=False)
    _shown: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.enabled = self.tty.isatty()

    def above(self, stream: TextIO) -> TextIO:
        """``stream`` wrapped so that what is written to it appears above the bar."""
        return _Above(self, stream) if self.enabled else stream  # type: ignore[return-value]

    def advance(self, n: int = 1, item: str = "") -> None:
        self.done += n
        self.item = item
        self.draw()

    def clear(self) -> None:
        if self._shown:
            self.tty.write(CLEAR)
            self.tty.flush()
            self._shown = False

    def draw(self) -> None:
        if not self.enabled:
            return
        filled = WIDTH * self.done // max(1, self.total)
        line = f"{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {self.done}/{self.total}"
        if self.detail:
            line += f"  {self.detail}"
        elapsed = time.monotonic() - self._start
        if self.eta_s is not None and self.done < self.total:
            line += f"  eta {duration_text(self.eta_s)}"
        elif 0 < self.done < self.total:
            line += f"  eta {duration_text(elapsed / self.done * (self.total - self.done))}"
        if self.item:
            line += f"  {self.item}"
        self.tty.write(CLEAR + line)
        self.tty.flush()
        self._shown = True

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        """Draw the bar, route the root logger's stderr handlers above it, and leave the terminal clean."""
        handlers = [h for h in logging.getLogger().handlers
                    if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr] if self.enabled else []
        for h in handlers:
            h.setStream(self.above(sys.stderr))
        self.draw()
        try:
            yield self
        finally:
            for h in handlers:
                h.setStream(sys.stderr)
            self.clear()


def duration_text(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
