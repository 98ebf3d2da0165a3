"""Rate-limited log lines: the first occurrence in full, then at most one summary per interval.

A daemon that runs for a year meets floods: a script hammering the dashboard with a bad Host
header, a thousand pages held open, a disk that fails on every write. Logging each occurrence
turns one problem into megabytes of log (and the logging itself into the load), while logging
only the first hides how long it went on. ``RateLimitedLog`` keeps both: the first line in full,
then, while the problem repeats, one line per ``interval`` that says how many more there were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_INTERVAL_SECONDS = 60.0


@dataclass
class RateLimitedLog:
    """One kind of repeated problem, logged to ``logger`` without flooding it.

    ``hit(msg, *args)`` logs ``msg % args`` at ``level`` when nothing was logged for this problem
    during the last ``interval`` seconds; otherwise it only counts. A hit after the interval ends
    logs ``summary`` instead (``str.format`` fields ``count`` and ``seconds``: "refused {count:,}
    more requests in the last {seconds:.0f} s"); so does ``flush()``, which the owner calls from a
    timer (and at shutdown) so that the summary of a flood that stopped is not lost. The clock is
    injectable for tests; ``total`` counts every hit (for metrics). Safe to call from any thread.
    """

    logger: logging.Logger
    summary: str
    interval: float = DEFAULT_INTERVAL_SECONDS
    level: int = logging.WARNING
    clock: Callable[[], float] = time.monotonic
    total: int = 0
    _suppressed: int = field(default=0, init=False, repr=False)
    _window_end: float = field(default=float("-inf"), init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def hit(self, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Count one occurrence; log it in full when this problem was quiet. True when a line was written.

        ``exc_info`` goes with the full line only: one traceback says where, the count says how often."""
        with self._lock:
            now = self.clock()
            self.total += 1
            if now < self._window_end:
                self._suppressed += 1
                return False
            summary = self._take_summary()
            self._window_end = now + self.interval
            if summary is None:  # quiet before: this one in full
                full = True
            else:  # a flood goes on: this one is the first of the next summary
                self._suppressed = 1
                full = False
        if summary is not None:
            self.logger.log(self.level, summary)
        if full:
            self.logger.log(self.level, msg, *args, exc_info=exc_info)
        return True

    def flush(self, force: bool = False) -> bool:
        """Log the pending summary if the interval is over (or ``force``, at shutdown). True when logged."""
        with self._lock:
            now = self.clock()
            if not force and now < self._window_end:
                return False
            summary = self._take_summary()
            if summary is not None:  # the flood may go on: its next hits go to the next summary, not in full
                self._window_end = now + self.interval
        if summary is None:
            return False
        self.logger.log(self.level, summary)
        return True

    @property
    def pending(self) -> int:
        """Occurrences counted but not yet reported in a summary."""
        with self._lock:
            return self._suppressed

    def _take_summary(self) -> str | None:
        """The summary of the suppressed occurrences (and reset the count); None when there were none."""
        if not self._suppressed:
            return None
        text = self.summary.format(count=self._suppressed, seconds=self.interval)
        self._suppressed = 0
        return text
