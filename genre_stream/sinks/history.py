"""The tag history's writer: every GenreState and GenreEvent the daemon produces, kept in SQLite.

Writes happen on a background thread fed by a bounded queue, because the daemon
calls :meth:`History.publish` from its audio/pipeline threads and a slow or broken
disk must never stall classification or MQTT publishing. When the queue is full, or
the database cannot be written (read-only path, disk full), the message is dropped,
the problem is logged once per cause and counted in :meth:`History.counters`; the
daemon goes on.

Reading is ``genre_stream.history.reader`` (the ``history`` command and the dashboard): it opens
its own read-only connection, so queries run while the daemon writes (WAL mode).

Retention is applied relative to the newest stored entry as well as the clock (``plan_prune``):
a daemon started with its clock 400 days ahead deleted the whole history at its first prune. A
clock that is ahead cannot be told from a long pause by looking at the clock, so the rule bounds
what any pass may do instead: never rows within the retention of the newest entry, and never most
of the history while what would stay covers only a fraction of the retention period.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..common.jsonsafe import dumps
from ..common.sqlite import open_db
from ..config import HistoryConfig
from .base import SourceInfo
from .messages import GenreEvent, GenreState, Message, iso_utc, parse_payload_time

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS states (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    genre TEXT,
    confidence REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS states_source_ts ON states (source, ts);
CREATE INDEX IF NOT EXISTS states_ts ON states (ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_source_ts ON events (source, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""


@dataclass
class HistoryStats:
    """Counters of the writer, exported as metrics by the dashboard."""

    written: int = 0
    dropped: int = 0
    write_errors: int = 0
    pruned: int = 0
    prunes_withheld: int = 0  # prune passes that kept rows because the clock looked wrong (see plan_prune)
    queued: int = 0
    last_error: str | None = None


class History:
    """Appends messages to ``history.sqlite`` from a writer thread; prunes old rows there too.

    Usable as a daemon sink: ``publish(message)`` never blocks and never raises. ``clock`` is the
    wall clock that retention is measured against (injectable: tests give it a clock that is wrong).
    """

    def __init__(self, config: HistoryConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=max(1, config.queue_size))
        self._stats = HistoryStats()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()
        self._last_prune = float("-inf")  # prune once at start: a daemon restarted daily still prunes

    # -- daemon side -------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
            self._thread.start()

    def publish(self, message: object) -> None:
        """Queue a GenreState/GenreEvent for writing; drops (and counts) it if the writer is behind.

        Other messages (periodic stats) are not history and are ignored.
        """
        if not isinstance(message, GenreState | GenreEvent):
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            with self._lock:
                self._stats.dropped += 1
            self._report("queue-full", "history: write queue full (%d); dropping messages until the disk catches up",
                         self.config.queue_size)

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        """Sink protocol: nothing to do, the history keeps whatever sources it has seen."""

    def stats(self) -> dict[str, int | float]:
        return {}  # the history's own counters go to the dashboard's metrics (counters), not to MQTT

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued (bounded wait) and stop the writer; False if messages were left unwritten."""
        if self._thread is None:
            return self._queue.empty()
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self._queue.qsize()
        if self._thread.is_alive() or left:
            log.warning("history: writer did not finish in %.1f s; %d messages not recorded", timeout, left)
            return False
        self._thread = None
        return True

    def counters(self) -> HistoryStats:
        with self._lock:
            snapshot = HistoryStats(**vars(self._stats))
        snapshot.queued = self._queue.qsize()
        return snapshot

    # -- writer thread -----------------------------------------------------------------
    def _report(self, cause: str, msg: str, *args: Any) -> None:
        """Log each distinct cause once (at error level), so a broken disk does not flood the log."""
        with self._lock:
            first = cause not in self._reported
            self._reported.add(cause)
        if first:
            log.error(msg, *args)

    def _fail(self, exc: Exception, count: int) -> None:
        reason = f"cannot write tag history to {self.config.path}: {exc}"
        with self._lock:
            self._stats.write_errors += count
            self._stats.last_error = reason
        self._report(f"write:{type(exc).__name__}:{exc}", "history: %s; history is not recorded, the daemon goes on",
                     reason)

    def _connect(self) -> sqlite3.Connection:
        self.config.path.parent.mkdir(parents=True, exist_ok=True)
        conn = open_db(self.config.path)
        conn.executescript(SCHEMA)
        return conn

    def _next_batch(self) -> tuple[list[Message], bool]:
        """Wait up to a second for messages; take a burst at once so one transaction covers it."""
        batch: list[Message] = []
        try:
            item = self._queue.get(timeout=1.0)
        except queue.Empty:
            return batch, False
        while True:
            if item is None:
                return batch, True
            batch.append(item)
            if len(batch) >= 500:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if not batch and not self._prune_due():
                continue
            try:
                if conn is None:
                    conn = self._connect()
                if batch:
                    self._write(conn, batch)
                if self._prune_due():
                    self._prune(conn)
            except (sqlite3.Error, OSError) as exc:
                self._fail(exc, len(batch))
                if conn is not None:
                    conn.close()
                conn = None  # reopen next time: the disk may have been fixed meanwhile
                self._last_prune = time.monotonic()  # do not retry a failing prune every second
        if conn is not None:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[Message]) -> None:
        states, events = [], []
        for msg in batch:
            payload = msg.to_dict()
            ts = self._message_time(msg)
            if isinstance(msg, GenreState):
                states.append((msg.source, ts, msg.state, msg.genre, float(msg.confidence), dumps(payload)))
            elif isinstance(msg, GenreEvent):
                events.append((msg.source, ts, msg.type, dumps(payload)))
        with _transaction(conn):
            conn.executemany(
                "INSERT INTO states (source, ts, state, genre, confidence, payload) VALUES (?, ?, ?, ?, ?, ?)", states
            )
            conn.executemany("INSERT INTO events (source, ts, type, payload) VALUES (?, ?, ?, ?)", events)
        with self._lock:
            self._stats.written += len(batch)

    def _prune_due(self) -> bool:
        return self.config.retention_days > 0 and time.monotonic() - self._last_prune >= self.config.prune_interval_seconds

    def _prune(self, conn: sqlite3.Connection) -> None:
        self._last_prune = time.monotonic()
        plan = plan_prune(conn, self._clock(), self.config.retention_days * 86400.0)
        if plan.withheld:
            with self._lock:
                self._stats.prunes_withheld += 1
            self._report("suspect-clock", "history: %s", plan.withheld)
        if plan.cutoff is None:
            return
        removed = prune(conn, plan.cutoff)
        if removed:
            log.info("history: pruned %d entries older than %g days (before %s)", removed,
                     self.config.retention_days, iso_utc(plan.cutoff))
            with self._lock:
                self._stats.pruned += removed

    def _message_time(self, msg: Message) -> float:
        try:
            return parse_payload_time(msg.timestamp)
        except ValueError:
            return self._clock()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True)
class PrunePlan:
    """What one retention pass may delete: entries older than ``cutoff`` (None: nothing), and, when the
    clock asked for more than the rule allows, ``withheld`` saying what was kept and why."""

    cutoff: float | None
    withheld: str | None = None


def _one(conn: sqlite3.Connection, sql: str, *args: float) -> list[Any]:
    """One value over both tables: ``sql`` is run on states and events (``{t}``), and combined by the caller."""
    return [conn.execute(sql.format(t=table), args).fetchone()[0] for table in ("states", "events")]


def plan_prune(conn: sqlite3.Connection, now: float, retention_seconds: float) -> PrunePlan:
    """The bounded retention rule; ``now`` is the wall clock, which may be wrong.

    1. Entries within ``retention_seconds`` of the newest stored entry are never deleted: a clock set
       ahead (400 days: everything "expired") finds the newest entry old and deletes only what had
       expired by then. The cutoff is ``min(now, newest) - retention``.
    2. Once the wrong clock has stamped new entries, the newest entry is wrong too. Its trace is a
       gap longer than the retention between the entries to delete and those to keep: the clock
       looks wrong. Such a pass may not delete more entries than it keeps, so the real history stays
       until the entries after the gap outnumber it. A daemon that was off for longer than the
       retention leaves the same trace: its old entries then go late, not never.

    A clock ahead by less than the retention loses at most the entries that would have expired
    within that much time anyway.
    """
    if retention_seconds <= 0:
        return PrunePlan(None)
    newest = max((v for v in _one(conn, "SELECT max(ts) FROM {t}") if v is not None), default=None)
    if newest is None:
        return PrunePlan(None)
    cutoff = min(now, newest) - retention_seconds
    old = sum(_one(conn, "SELECT count(*) FROM {t} WHERE ts < ?", cutoff))
    if not old:
        return PrunePlan(None)
    kept = sum(_one(conn, "SELECT count(*) FROM {t} WHERE ts >= ?", cutoff))
    last_old = max(v for v in _one(conn, "SELECT max(ts) FROM {t} WHERE ts < ?", cutoff) if v is not None)
    first_kept = min((v for v in _one(conn, "SELECT min(ts) FROM {t} WHERE ts >= ?", cutoff) if v is not None),
                     default=newest)
    gap = first_kept - last_old
    if gap > retention_seconds and old > kept:
        return PrunePlan(None, (
            f"retention by the clock ({iso_utc(now)}) would delete {old} of {old + kept} entries: all up to "
            f"{iso_utc(last_old)}, after which nothing was recorded for {gap / 86400:.0f} days until {iso_utc(first_kept)}. "
            "The clock looks wrong (set ahead), so none are deleted while they outnumber the entries kept; if it is "
            "right (the daemon was off that long), they go once the new history outnumbers them"))
    return PrunePlan(cutoff)


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete states and events older than ``before`` (unix time); returns how many rows went."""
    with _transaction(conn):
        n = conn.execute("DELETE FROM states WHERE ts < ?", (before,)).rowcount
        n += conn.execute("DELETE FROM events WHERE ts < ?", (before,)).rowcount
    return n
