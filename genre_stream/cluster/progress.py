"""What a person watching a cluster job wants to know: how far, how fast, how much longer, what failed.

On a terminal the usual bar (``common.progress``) carries the rates and the ETA; anywhere else (a
job under nohup, a CI log) one status line goes to stderr every ``status_every`` seconds, so a log
shows the job moving without a line per file. The ETA is bytes left at the byte rate so far: an
archive mixes 3-minute tracks with 3-hour recordings, and a count of files would be off by the mix.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from ..common.progress import Progress, duration_text
from ..library.scan import Job, Outcome

AUDIO_S_PER_HOUR = 3600.0


@dataclass
class Throughput:
    """A job's counters; rates are per wall second since the job began."""

    files_total: int = 0
    bytes_total: int = 0
    files: int = 0  # finished, whatever the outcome
    bytes: int = 0
    audio_s: float = 0.0  # seconds of audio analysed
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, outcome: Outcome) -> None:
        self.files += 1
        self.bytes += outcome.stamp.size if outcome.stamp else 0
        if outcome.result is not None:
            self.audio_s += outcome.result.duration
        if outcome.error is not None:
            self.failed += 1

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def files_per_s(self) -> float:
        return self.files / self.elapsed

    @property
    def audio_hours_per_s(self) -> float:
        return self.audio_s / AUDIO_S_PER_HOUR / self.elapsed

    def eta_s(self) -> float | None:
        """Seconds left: bytes left at the byte rate (files left at the file rate without sizes); None before any."""
        if self.bytes_total and self.bytes:
            return max(0, self.bytes_total - self.bytes) / (self.bytes / self.elapsed)
        if self.files:
            return (self.files_total - self.files) / self.files_per_s
        return None

    def status(self) -> str:
        errors = f"{self.failed} error{'s' * (self.failed != 1)}"
        return f"{self.files_per_s:.3g} files/s  {self.audio_hours_per_s:.3g} audio h/s  {errors}"


class JobProgress:
    """The bar on a terminal, periodic status lines elsewhere; ``begin`` with the jobs, ``record`` each outcome."""

    def __init__(self, label: str = "tagging", tty: TextIO | None = None, status_every: float = 30.0) -> None:
        self.label = label
        self.tty = tty or sys.stderr
        self.status_every = status_every
        self.stats = Throughput()
        self._bar: Progress | None = None
        self._stack = contextlib.ExitStack()
        self._printed = time.monotonic()

    def begin(self, jobs: list[Job]) -> None:
        self.stats = Throughput(len(jobs), sum(j.size for j in jobs))
        if jobs and self.tty.isatty():
            self._bar = self._stack.enter_context(Progress(len(jobs), self.label, self.tty).shown())
        self._printed = time.monotonic()

    def above(self, stream: TextIO) -> TextIO:
        """``stream`` so that lines written to it appear above the bar."""
        return self._bar.above(stream) if self._bar else stream

    def record(self, outcome: Outcome) -> None:
        self.stats.add(outcome)
        self._show(outcome.path.rsplit("/", 1)[-1])

    def tick(self) -> None:
        self._show(None)

    def line(self) -> str:
        s = self.stats
        eta = s.eta_s()
        return (f"{self.label}: {s.files}/{s.files_total} files  {s.status()}"
                + (f"  eta {duration_text(eta)}" if eta is not None and s.files < s.files_total else ""))

    def _show(self, item: str | None) -> None:
        if self._bar is not None:
            self._bar.detail = self.stats.status()
            self._bar.eta_s = self.stats.eta_s()
            if item is None:
                self._bar.draw()
            else:
                self._bar.advance(item=item)
        elif self.status_every > 0 and time.monotonic() - self._printed >= self.status_every:
            self._printed = time.monotonic()
            print(self.line(), file=self.tty, flush=True)

    def close(self) -> None:
        self._stack.close()
