"""The watch source's memory: which files were already handled, in a small SQLite file.

A file is identified by its path plus size and modification time (ns): the same
path with other content (a replaced file) is new again. Paths are stored as text,
except names that are not valid UTF-8 (which SQLite cannot hold as text): those
are stored as their raw bytes, so one odd name never stops the watch. Only files whose result
was delivered are recorded, so a crash between "file ready" and "result
published" makes the file come back after a restart instead of being lost.

A result that cannot be written (the state dir's disk is full) is kept in memory, logged
once, and written as soon as the disk allows, so a full disk neither stops the watch nor
makes it tag the same files again and again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from ..common.sqlite import migrate, open_db
from ..sources.base import SourceError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,          -- tagged | failed | unsupported
    updated REAL NOT NULL          -- unix time of the last change
)
"""

FileKey = tuple[int, int]  # (size, mtime_ns)


class WatchState:
    """Thread-safe: the source's thread reads it, the daemon's thread records results."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = open_db(self.path, threads=True)
            migrate(self._db, [lambda db: db.execute(SCHEMA)])
        except (sqlite3.Error, OSError) as exc:
            raise SourceError(f"watch state file {self.path}: cannot be used ({exc}); fix its permissions or remove it") from exc
        self._lock = threading.Lock()
        self._backlog: dict[str | bytes, tuple[FileKey, str, float]] = {}  # results not yet written
        self._failing = False  # the last write failed (logged once per outage)

    def lookup(self, path: Path) -> tuple[FileKey, str] | None:
        with self._lock:
            held = self._backlog.get(_db_key(path))
            if held is not None:
                return held[0], held[1]
            row = self._db.execute("SELECT size, mtime_ns, status FROM files WHERE path = ?", (_db_key(path),)).fetchone()
        return ((row[0], row[1]), row[2]) if row else None

    def is_done(self, path: Path, key: FileKey) -> bool:
        found = self.lookup(path)
        return found is not None and found[0] == key

    def record(self, path: Path, key: FileKey, status: str) -> None:
        with self._lock:
            self._backlog[_db_key(path)] = (key, status, time.time())
            self._write_backlog()

    def retry(self) -> None:
        """Write results held back by a failed write (called from the source's loop)."""
        with self._lock:
            if self._backlog:
                self._write_backlog()

    def _write_backlog(self) -> None:
        rows = [(p, k[0], k[1], status, when) for p, (k, status, when) in self._backlog.items()]
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO files (path, size, mtime_ns, status, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "status=excluded.status, updated=excluded.updated",
                    rows,
                )
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if not self._failing:
                log.error("watch state %s cannot be written (%s); results are kept in memory until it can",
                          self.path, exc)
            self._failing = True
            return
        if self._failing:
            log.warning("watch state %s is writable again; %d held result(s) written", self.path, len(rows))
        self._failing = False
        self._backlog.clear()

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _db_key(path: Path) -> str | bytes:
    """The path as SQLite stores it: text when it is valid UTF-8 (as always before), else its bytes."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name arrive as lone surrogates
        return bytes(path)
    return text
