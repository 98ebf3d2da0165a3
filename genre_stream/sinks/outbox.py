"""A bounded, ordered, on-disk queue of MQTT messages (SQLite), so nothing is lost while the
broker is away or across a daemon restart.

Rows leave the table only when the broker acknowledged them, so delivery is at least once and
in insertion order. Retained messages are "current value" topics (states): a newer one for the
same topic replaces the queued older one, which keeps the queue small during long outages
without losing any event. When the bound is reached the oldest rows are dropped, counted and
logged: a bounded queue has to give somewhere, and the oldest news is the least useful.

A write that fails (disk full, I/O error) is rolled back, so the next one starts clean. Writes
wait at most ``write_wait`` for another process holding the file (a backup, ``sqlite3`` by hand)
and then fail with SQLITE_BUSY (``is_locked``), so no thread of the daemon sits out SQLite's
usual 5 s busy timeout; the sink keeps such messages in memory and retries. A queue
file that SQLite cannot read is never deleted: it is moved aside under a timestamped name
(``mqtt-queue.sqlite3.damaged-20260101T120000Z``), logged, and a fresh queue is started.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common.sqlite import open_db

log = logging.getLogger(__name__)

WRITE_WAIT = 0.01  # seconds a statement waits for another process's lock before failing with SQLITE_BUSY


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_messages: int, write_wait: float = WRITE_WAIT) -> None:
        self.path = path
        self.max_messages = max_messages
        self.dropped = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = _open(path)
        except _Damaged as exc:
            aside = _move_aside(path, exc)
            log.error(
                "MQTT queue %s is damaged (%s); moved it to %s and started an empty queue "
                "(the messages in it were not delivered; inspect or delete that file)", path, exc, aside,
            )
            self._db = _open(path)
        # Opening waited the usual busy timeout (a file held at start); from now on only briefly.
        self._db.execute(f"PRAGMA busy_timeout = {int(write_wait * 1000)}")
        pending = len(self)
        if pending:
            log.info("%d queued MQTT message(s) from an earlier run will be delivered first", pending)

    def put(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Queue one message; on failure (sqlite3.Error, e.g. disk full) nothing is queued and the error propagates."""
        self.put_many([(topic, payload, qos, retain)])

    def put_many(self, messages: Sequence[tuple[str, bytes, int, bool]]) -> None:
        """Queue (topic, payload, qos, retain) messages in order, in one transaction: all of them or, on error, none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for topic, payload, qos, retain in messages:
                    if retain:
                        self._db.execute("DELETE FROM outbox WHERE topic = ? AND retain = 1", (topic,))
                    self._db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)", (topic, payload, qos, int(retain))
                    )
                excess = self._count() - self.max_messages
                if excess > 0:
                    self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
                    self.dropped += excess
                    log.warning("MQTT queue full (%d messages): dropped the %d oldest", self.max_messages, excess)
                self._db.execute("COMMIT")
            except BaseException:
                # An open transaction would make every later BEGIN fail ("within a transaction").
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def peek(self, after_id: int, limit: int) -> list[QueuedMessage]:
        """The oldest ``limit`` messages with an id above ``after_id`` (those not yet handed to the client)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [QueuedMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def remove(self, message_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or the file system's quota) is full; worth retrying once space returns."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)


def is_locked(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the file, worth retrying (unlike a full disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Damaged(Exception):
    """The queue file exists but is not a readable SQLite database (as opposed to, say, a permission problem)."""


_DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _open(path: Path) -> sqlite3.Connection:
    """Open (or create) the queue; _Damaged for a corrupt file, OSError for anything else that prevents it."""
    try:
        db = open_db(path, threads=True)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) in _DAMAGED_CODES:
            raise _Damaged(str(exc)) from exc
        raise OSError(f"{path}: cannot open the MQTT queue database ({exc})") from exc
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
        )
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        db.close()
        if getattr(exc, "sqlite_errorcode", None) in _DAMAGED_CODES:
            raise _Damaged(str(exc)) from exc
        raise OSError(f"{path}: cannot open the MQTT queue database ({exc})") from exc
    if check != "ok":
        db.close()
        raise _Damaged(f"integrity check: {check}")
    return db


def _move_aside(path: Path, why: Exception) -> Path:
    """Rename a damaged queue (and its WAL/SHM companions) to ``<name>.damaged-<UTC time>``; never delete it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    try:
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.rename(aside.with_name(aside.name + suffix))
        path.rename(aside)
    except OSError as exc:
        raise OSError(f"{path}: the MQTT queue database is damaged ({why}) and cannot be moved aside ({exc.strerror}); "
                      "move or remove it by hand") from exc
    return aside
