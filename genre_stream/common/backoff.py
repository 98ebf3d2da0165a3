"""Exponential retry delays, the one rule for every reconnect: sources, the MQTT client, crashed sources.

Waiting goes through a stop event, so a stopping daemon never sits out a delay.
"""

from __future__ import annotations

import threading


class Backoff:
    """Delays ``initial``, 2x, 4x ... up to ``maximum`` seconds; ``reset`` after a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the current delay and double it; False when stop was set meanwhile."""
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return not stop.wait(delay)

    @property
    def next_delay(self) -> float:
        return self._next
