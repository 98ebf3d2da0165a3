"""The one way genre-stream opens its SQLite files (history, library, MQTT queue, watch state).

Every file gets the same settings: write-ahead logging (readers never block the writer,
a crash never leaves a half-written page), ``synchronous=NORMAL`` (durable at each
checkpoint, no fsync per transaction), a busy timeout instead of an instant "database is
locked", and autocommit so each module states its own transactions. The schema version
lives in SQLite's ``user_version``; ``migrate`` brings a file up to date in steps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

Migration = Callable[[sqlite3.Connection], None]


def open_db(path: str | Path, *, busy_timeout: float = 5.0, threads: bool = False, read_only: bool = False) -> sqlite3.Connection:
    """Open (or create) ``path``; ``threads``: the connection is shared by threads (the caller locks)."""
    path = Path(path)
    if read_only:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout,
                               check_same_thread=not threads, isolation_level=None)
    conn = sqlite3.connect(str(path), timeout=busy_timeout, check_same_thread=not threads, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Run the migrations a file has not had yet (``migrations[k]`` takes it to version k + 1).

    A file written by a newer genre-stream (a version beyond the list) is refused rather
    than misread.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this genre-stream knows ({len(migrations)})")
    for target in range(version + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(migrations)
