"""Between ``MqttSink.publish`` and the on-disk outbox, so that publishing never waits for the queue file.

A pipeline thread that publishes must not stall. When another process held the SQLite queue
in a transaction (a backup, ``sqlite3`` by hand), each write sat out SQLite's 5 s busy timeout
and then failed: classification fell behind and states were lost. Now a write that cannot get
the file at once (``outbox.is_locked``) leaves the message in a bounded memory queue, and the
intake's own thread moves it into the outbox as soon as the file is free, oldest first, then
lets the sink send it. While anything waits in memory, new messages queue behind it, so the
order is kept. A retained topic (a source's state, its availability) keeps only its newest
message in memory, as in the outbox; when the memory bound is reached the oldest messages are
dropped, counted and logged. A full disk is waited out the same way (issue 24: two
``track_tagged`` events were lost while the broker was up, and their files marked done): the
messages wait in memory and are queued once space returns. Any other failure loses the message,
counted and logged once per outage.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .outbox import Outbox, is_full, is_locked

log = logging.getLogger("genre_stream.sinks.mqtt")  # one logger for the MQTT path, the name it had before the split

MEMORY_MAX = 10_000  # messages held in memory while the queue file is locked (a few MB)
RETRY_DELAY = 0.1  # seconds between attempts to write to a locked queue file
FULL_RETRY_DELAY = 1.0  # ... to a queue file on a full disk


@dataclass(frozen=True)
class Pending:
    """One QoS 1 message on its way into the outbox."""

    topic: str
    payload: bytes
    retain: bool


class Intake:
    """``put`` from any thread, never waiting longer than one short write attempt; a thread drains memory to the outbox.

    ``written`` is called (from the calling or the intake's thread) after messages reached the
    outbox: the sink hands them to paho.
    """

    def __init__(self, outbox: Outbox, written: Callable[[], None], limit: int = MEMORY_MAX) -> None:
        self.outbox = outbox
        self.limit = limit
        self._written = written
        self._cond = threading.Condition()  # an RLock inside: the counters are updated with it held or not
        self._waiting: OrderedDict[Hashable, Pending] = OrderedDict()
        self._seq = itertools.count()
        self._writing = 0  # messages the thread took out of memory and is writing now
        self._closed = threading.Event()
        self.lost = 0  # messages that could not be queued in the current outage of the queue file (disk full)
        self.dropped = 0  # messages dropped from memory because it was full, since start
        self._dropped_now = 0  # ... in the current lock
        self._locked_since: float | None = None
        self._full_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="mqtt-intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, messages: list[Pending]) -> bool:
        """Queue one publish's messages; True when they are in the outbox already (send them now)."""
        with self._cond:
            if not self._waiting and not self._writing:
                outcome = self._write(messages)
                if outcome != "wait":
                    return outcome == "written"
            self._remember((self._key(m), m) for m in messages)
            self._cond.notify()
            return False

    def __len__(self) -> int:
        """Messages not in the outbox yet."""
        with self._cond:
            return len(self._waiting) + self._writing

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for memory to reach the outbox, stop the thread; how many messages never did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._waiting or self._writing) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(1.0)
        return len(self)

    # ----------------------------------------------------------- the intake's thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed.is_set():
                    self._cond.wait()
                if self._closed.is_set():
                    return
                batch = list(self._waiting.items())
                self._waiting.clear()
                self._writing = len(batch)
            outcome = self._write([m for _, m in batch])
            with self._cond:
                self._writing = 0
                if outcome == "wait":  # older than anything that came meanwhile: back in front
                    newer = self._waiting
                    self._waiting = OrderedDict(batch)
                    self._remember(newer.items())
                self._cond.notify_all()
            if outcome == "written":
                self._written()
            elif outcome == "wait":
                self._closed.wait(FULL_RETRY_DELAY if self._full_since is not None else RETRY_DELAY)

    # ----------------------------------------------------------- helpers

    def _key(self, message: Pending) -> Hashable:
        return ("retained", message.topic) if message.retain else ("event", next(self._seq))

    def _remember(self, items: Iterable[tuple[Hashable, Pending]]) -> None:
        """Append to memory (a retained topic's older message gives way, as in the outbox); drop the oldest beyond the bound."""
        for key, message in items:
            self._waiting.pop(key, None)
            self._waiting[key] = message
        excess = len(self._waiting) - self.limit
        if excess <= 0:
            return
        for _ in range(excess):
            self._waiting.popitem(last=False)
        self.dropped += excess
        self._dropped_now += excess
        if self._dropped_now == excess:
            log.error("MQTT queue %s is still not writable (locked or disk full) and %d messages wait in memory: dropping the oldest from now on "
                      "(counted; the total is logged when the file is free again)", self.outbox.path, self.limit)

    def _write(self, messages: list[Pending]) -> str:
        """Into the outbox: "written", "wait" (the file is locked or the disk full: try again) or "lost" (counted and logged)."""
        try:
            self.outbox.put_many([(m.topic, m.payload, 1, m.retain) for m in messages])
        except sqlite3.Error as exc:
            if is_full(exc):
                with self._cond:
                    if self._full_since is None:
                        self._full_since = time.monotonic()
                        log.error("MQTT queue %s cannot be written: the disk is full (%s); states and events wait in memory "
                                  "(up to %d) and are queued, in order, once space returns", self.outbox.path, exc, self.limit)
                return "wait"
            if is_locked(exc):
                with self._cond:
                    if self._locked_since is None:
                        self._locked_since = time.monotonic()
                        log.warning("MQTT queue %s is locked by another process (%s); messages wait in memory (up to %d) "
                                    "and are written, in order, once it is free", self.outbox.path, exc, self.limit)
                return "wait"
            with self._cond:
                if not self.lost:
                    log.error("MQTT queue %s cannot be written (%s); states and events are lost until it can",
                              self.outbox.path, exc)
                self.lost += len(messages)
            return "lost"
        with self._cond:
            if self._full_since is not None:
                log.warning("MQTT queue %s is writable again after %.1f s of full disk; %d message(s) dropped from memory "
                            "meanwhile", self.outbox.path, time.monotonic() - self._full_since, self._dropped_now)
                self._full_since = None
                self._dropped_now = 0
            if self._locked_since is not None:
                log.warning("MQTT queue %s is free again after %.1f s; %d message(s) dropped from memory meanwhile",
                            self.outbox.path, time.monotonic() - self._locked_since, self._dropped_now)
                self._locked_since = None
                self._dropped_now = 0
            if self.lost:
                log.warning("MQTT queue %s is writable again; %d message(s) were lost meanwhile", self.outbox.path, self.lost)
                self.lost = 0
        return "written"
