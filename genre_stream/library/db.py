"""The library index: one SQLite file holding what the model heard in every track.

Each finished track is committed on its own, so an interrupted scan loses at most
the tracks still being analysed. The database runs in WAL mode with a busy
timeout, so the daemon's watch source can add tracks while a user runs
``library similar`` or ``export`` against the same file.

Vectors are stored as little-endian float32 blobs; the labels they are ordered by
are stored once per database (``meta``), because every track in one index must be
comparable. Tracks analysed by another model are treated as stale by the scanner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..audio.decode import Tags, read_tags
from ..common.sqlite import open_db
from ..sinks.messages import utc_now_iso

if TYPE_CHECKING:  # the daemon and the CLI import the database without loading torch/onnxruntime
    from ..tracks.analysis import TrackResult

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: artist and title tags (a version-1 database is migrated on open)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tracks (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    duration REAL NOT NULL,
    genre TEXT NOT NULL,
    confidence REAL NOT NULL,
    probabilities BLOB NOT NULL,
    embedding BLOB NOT NULL,
    model TEXT NOT NULL,
    analysed_at TEXT NOT NULL,
    artist TEXT,  -- NULL: tags not read yet; '' : the file has none
    title TEXT
);
CREATE INDEX IF NOT EXISTS tracks_hash ON tracks(hash);
CREATE TABLE IF NOT EXISTS errors (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"""


class LibraryError(Exception):
    """A library database or request that cannot be used; the message says which and why."""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/genre-stream/library.sqlite`` (XDG default ``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "genre-stream" / "library.sqlite"


def file_hash(path: str | Path) -> str:
    """BLAKE2b-128 of the file's bytes: spots moved or touched-but-identical files cheaply."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "FileStamp":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns)


@dataclass
class Track:
    """One indexed track as stored."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    duration: float
    genre: str
    confidence: float
    probabilities: np.ndarray
    embedding: np.ndarray
    model: str
    analysed_at: str
    artist: str | None = None  # from the file's tags; None: not read yet, "" : none
    title: str | None = None


@dataclass
class TrackError:
    """A file the scanner could not index, kept so the user can see why."""

    path: str
    reason: str
    failed_at: str
    size: int | None = None
    mtime_ns: int | None = None


@dataclass
class LibraryMatrix:
    """All tracks as aligned arrays, the form clustering and similarity work on."""

    paths: list[str]
    genres: list[str]
    durations: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, C)
    embeddings: np.ndarray  # (N, 32)

    def __len__(self) -> int:
        return len(self.paths)


_COLUMNS = "path, size, mtime_ns, hash, duration, genre, confidence, probabilities, embedding, model, analysed_at, artist, title"


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class LibraryDB:
    """Access to one library database; use as a context manager, one per thread.

    ``sqlite3`` connections must stay in the thread that made them, so a daemon that
    feeds the library from a worker thread opens its own ``LibraryDB`` there.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        if self.path.is_dir():
            raise LibraryError(f"{self.path}: is a directory, not a library database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = open_db(self.path, busy_timeout=30.0)
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"{self.path}: not a usable library database ({exc})") from exc
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        elif version == "1":
            self._migrate_from_1()
        elif version != str(SCHEMA_VERSION):
            raise LibraryError(
                f"{self.path}: library schema version {version}, this genre-stream reads {SCHEMA_VERSION}"
            )

    def _migrate_from_1(self) -> None:
        """Version 1 had no tag columns: add them empty (NULL = not read; the next scan reads them)."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(tracks)")}
            for column in ("artist", "title"):
                if column not in columns:
                    self.conn.execute(f"ALTER TABLE tracks ADD COLUMN {column} TEXT")
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        log.info("%s: library schema upgraded 1 -> %d (artist/title tags)", self.path, SCHEMA_VERSION)

    def __enter__(self) -> "LibraryDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- meta ---------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def labels(self) -> list[str] | None:
        """The genre labels every stored probability vector is ordered by (None while empty)."""
        raw = self._meta("labels")
        return json.loads(raw) if raw else None

    def ensure_labels(self, labels: list[str]) -> None:
        """Adopt ``labels`` for an empty index; refuse a model whose genres differ from the index's."""
        stored = self.labels
        if stored is None or (stored != labels and self.count() == 0):
            self._set_meta("labels", json.dumps(labels))
        elif stored != labels:
            raise LibraryError(
                f"{self.path}: indexed with labels {stored}, the model gives {labels}; "
                "use another --db for a model with different genres"
            )

    # -- tracks -------------------------------------------------------------------------

    def upsert_track(
        self,
        path: str | Path,
        result: TrackResult,
        stamp: FileStamp | None = None,
        content_hash: str | None = None,
        tags: Tags | None = None,
    ) -> None:
        """Store (or replace) the analysis of one file and clear any error recorded for it.

        This is the entry point for anything that analyses files outside ``library scan``
        (the daemon's watch source): pass the ``TrackResult`` of ``tracks.analyse_file``.
        ``stamp``, ``content_hash`` and ``tags`` are read from the file when not given, so
        they describe the file as it is now; the path is stored absolute.
        """
        path = Path(os.path.abspath(path))
        stamp = stamp or FileStamp.of(path)
        content_hash = content_hash or file_hash(path)
        tags = tags or read_tags(path)
        labels = list(result.labels)
        probs = np.asarray(result.probabilities, dtype=np.float32)
        if probs.shape != (len(labels),):
            raise LibraryError(f"{path}: {probs.shape[0]} probabilities for {len(labels)} labels")
        self.ensure_labels(labels)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                f"INSERT OR REPLACE INTO tracks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(path),
                    stamp.size,
                    stamp.mtime_ns,
                    content_hash,
                    float(result.duration),
                    result.genre,
                    result.confidence,
                    _blob(probs),
                    _blob(result.embedding),
                    result.model,
                    utc_now_iso(),
                    tags.artist,
                    tags.title,
                ),
            )
            self.conn.execute("DELETE FROM errors WHERE path = ?", (str(path),))

    def copy_track(self, source: str, dest: str | Path, stamp: FileStamp, content_hash: str) -> None:
        """Index ``dest`` with the stored analysis (and tags) of ``source`` (same bytes: moved or touched file)."""
        dest = os.path.abspath(dest)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            if source == dest:  # touched: only the stamp changed
                self.conn.execute(
                    "UPDATE tracks SET size = ?, mtime_ns = ?, hash = ? WHERE path = ?",
                    (stamp.size, stamp.mtime_ns, content_hash, dest),
                )
                return
            self.conn.execute(
                f"INSERT OR REPLACE INTO tracks ({_COLUMNS}) SELECT ?, ?, ?, ?, duration, genre, confidence, probabilities, "
                "embedding, model, analysed_at, artist, title FROM tracks WHERE path = ?",
                (str(dest), stamp.size, stamp.mtime_ns, content_hash, source),
            )
            self.conn.execute("DELETE FROM errors WHERE path = ?", (str(dest),))

    def record_error(self, path: str | Path, reason: str, stamp: FileStamp | None = None) -> None:
        """Remember why a file could not be indexed (and drop any older analysis of it)."""
        path = os.path.abspath(path)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM tracks WHERE path = ?", (path,))
            self.conn.execute(
                "INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?, ?)",
                (path, stamp.size if stamp else None, stamp.mtime_ns if stamp else None, reason, utc_now_iso()),
            )

    def remove(self, paths: Iterable[str]) -> int:
        """Forget tracks and errors of files that no longer exist; returns how many tracks went."""
        paths = list(paths)
        removed = 0
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for p in paths:
                removed += self.conn.execute("DELETE FROM tracks WHERE path = ?", (p,)).rowcount
                self.conn.execute("DELETE FROM errors WHERE path = ?", (p,))
        return removed

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0])

    def stamps(self) -> dict[str, tuple[FileStamp, str, str]]:
        """path -> (stamp, content hash, model) of every track, for the scanner's change check."""
        rows = self.conn.execute("SELECT path, size, mtime_ns, hash, model FROM tracks")
        return {p: (FileStamp(s, m), h, model) for p, s, m, h, model in rows}

    def error_stamps(self) -> dict[str, FileStamp | None]:
        rows = self.conn.execute("SELECT path, size, mtime_ns FROM errors")
        return {p: (FileStamp(s, m) if s is not None else None) for p, s, m in rows}

    def get(self, path: str | Path) -> Track | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM tracks WHERE path = ?", (os.path.abspath(path),)).fetchone()
        return self._track(row) if row else None

    def tracks(self) -> Iterator[Track]:
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM tracks ORDER BY path"):
            yield self._track(row)

    @staticmethod
    def _track(row: tuple) -> Track:
        path, size, mtime_ns, h, duration, genre, conf, probs, emb, model, at, artist, title = row
        return Track(path, size, mtime_ns, h, duration, genre, conf, _vec(probs), _vec(emb), model, at, artist, title)

    def untagged(self) -> list[str]:
        """Tracks whose tags were never read (indexed before schema 2)."""
        return [r[0] for r in self.conn.execute("SELECT path FROM tracks WHERE artist IS NULL OR title IS NULL")]

    def set_tags(self, path: str, tags: Tags) -> None:
        self.conn.execute("UPDATE tracks SET artist = ?, title = ? WHERE path = ?", (tags.artist, tags.title, path))

    def duplicates(self) -> list[list[Track]]:
        """Groups of tracks with the same content hash (identical bytes), largest files first."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM tracks WHERE hash IN (SELECT hash FROM tracks GROUP BY hash HAVING COUNT(*) > 1) "
            "ORDER BY size DESC, hash, path"
        )
        groups: dict[str, list[Track]] = {}
        for row in rows:
            track = self._track(row)
            groups.setdefault(track.hash, []).append(track)
        return list(groups.values())

    def errors(self) -> list[TrackError]:
        rows = self.conn.execute("SELECT path, reason, failed_at, size, mtime_ns FROM errors ORDER BY path")
        return [TrackError(*r) for r in rows]

    def matrix(self) -> LibraryMatrix:
        """Every track's vectors in one pass (joined blobs, one ``frombuffer`` per column)."""
        rows = self.conn.execute("SELECT path, genre, duration, probabilities, embedding FROM tracks ORDER BY path").fetchall()
        n_labels = len(self.labels or [])
        if not rows:
            return LibraryMatrix([], [], np.zeros(0, np.float32), np.zeros((0, n_labels), np.float32), np.zeros((0, 32), np.float32))
        paths, genres, durations, probs, embs = zip(*rows)
        p = np.frombuffer(b"".join(probs), dtype="<f4").reshape(len(rows), -1)
        e = np.frombuffer(b"".join(embs), dtype="<f4").reshape(len(rows), -1)
        return LibraryMatrix(
            list(paths), list(genres), np.asarray(durations, np.float32), p.astype(np.float32), e.astype(np.float32)
        )
