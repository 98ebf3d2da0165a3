"""The one SQLite opener: WAL for every file, schema versions that only move forward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from genre_stream.common.sqlite import migrate, open_db
from genre_stream.watch.state import WatchState


def test_every_file_is_opened_in_wal_mode(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "a.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    reader = open_db(tmp_path / "a.sqlite", read_only=True)
    assert reader.execute("SELECT x FROM t").fetchall() == [(1,)]
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("INSERT INTO t VALUES (2)")


def test_migrations_run_once_in_order_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "m.sqlite")
    steps = [lambda c: c.execute("CREATE TABLE a (x)"), lambda c: c.execute("ALTER TABLE a ADD COLUMN y")]
    assert migrate(conn, steps[:1]) == 1
    assert migrate(conn, steps) == 2  # only the second step runs now
    assert [row[1] for row in conn.execute("PRAGMA table_info(a)")] == ["x", "y"]
    assert migrate(conn, steps) == 2
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        migrate(conn, steps[:1])


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "f.sqlite")

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE b (x)")
        raise RuntimeError("disk said no")

    with pytest.raises(RuntimeError):
        migrate(conn, [broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None


def test_watch_state_has_a_schema_version_and_wal(tmp_path: Path) -> None:
    WatchState(tmp_path / "watch.sqlite")
    conn = sqlite3.connect(tmp_path / "watch.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
