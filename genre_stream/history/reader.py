"""Reading the tag history (the ``history`` command and the dashboard): states, events and segments.

Each query opens its own read-only connection, so it runs while the daemon's writer
(``sinks.history.History``) appends (the database is in WAL mode).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from ..common.sqlite import open_db
from ..sinks.history import SCHEMA
from ..sinks.messages import State, iso_utc

DEFAULT_MAX_GAP_SECONDS = 60.0


class HistoryError(Exception):
    """A history database that cannot be read; the message names the file and why."""


@dataclass(frozen=True)
class Segment:
    """A stretch of time with one genre (or silence) on one source: one airplay report row."""

    source: str
    start: float  # unix time of the first state of the segment
    end: float  # unix time the next segment started, or of the last state
    state: str  # a messages.State word: each non-music state is a segment of its own
    genre: str | None  # of its first state: for an uncertain segment only the first best guess (see ``to_dict``)
    confidence: float  # mean confidence over the segment's states
    windows: int
    title: str | None = None  # what a radio stream said it played (a new title starts a new segment)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def is_music(self) -> bool:
        return self.state == State.MUSIC

    def to_dict(self) -> dict[str, Any]:
        """One report row. ``genre`` and ``confidence`` only for music: an uncertain segment merges windows whose
        best guesses differ, and silence or not-music has no genre, so a genre or a 0.00 there would be made up."""
        return {
            "source": self.source,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "duration": round(self.duration, 3),
            "state": self.state,
            "genre": self.genre if self.is_music else None,
            "confidence": round(self.confidence, 4) if self.is_music else None,
            "windows": self.windows,
            "title": self.title,
        }


def segments_csv(segments: list[Segment]) -> str:
    """Segments as CSV (one row per ``Segment.to_dict``), the export of the CLI and the dashboard alike."""
    buf = io.StringIO()
    fields = ["source", "start", "end", "duration", "state", "genre", "confidence", "windows", "title"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in segments:
        writer.writerow(s.to_dict())
    return buf.getvalue()


class HistoryReader:
    """Read-only queries over a history database (the CLI and the dashboard)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _open(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise HistoryError(f"{self.path}: no tag history here (the daemon creates it when it runs)")
        try:
            conn = open_db(self.path, read_only=True)
            conn.execute("SELECT 1 FROM states LIMIT 1")
        except sqlite3.Error as exc:
            if _not_created_yet(self.path):
                return _empty()
            raise HistoryError(f"{self.path}: not a readable genre-stream history ({exc})") from exc
        return conn

    def exists(self) -> bool:
        return self.path.is_file()

    def sources(self) -> list[str]:
        with closing(self._open()) as conn:
            rows = conn.execute("SELECT DISTINCT source FROM states UNION SELECT DISTINCT source FROM events")
            return sorted(r[0] for r in rows)

    def _select(self, table: str, source: str | None, since: float | None, until: float | None,
                limit: int | None, payload: bool = True) -> list[tuple[Any, ...]]:
        where, args = ["1=1"], []
        if source:
            where.append("source = ?")
            args.append(source)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts <= ?")
            args.append(until)
        cols = "source, ts, state, genre, confidence" if table == "states" else "source, ts, type"
        if payload:
            cols += ", payload"
        elif table == "states":  # segments need only the title of the payload: a week of states is megabytes of JSON
            cols += ", json_extract(payload, '$.title')"
        # Newest first so that ``limit`` keeps the latest rows; reversed below to oldest first.
        sql = f"SELECT {cols} FROM {table} WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        try:
            with closing(self._open()) as conn:
                rows = conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise HistoryError(f"{self.path}: cannot read history ({exc})") from exc
        rows.reverse()
        return rows

    def states(self, source: str | None = None, since: float | None = None, until: float | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """State payloads exactly as published on ``<prefix>/<source>/state``, oldest first."""
        return [json.loads(r[5]) for r in self._select("states", source, since, until, limit)]

    def events(self, source: str | None = None, since: float | None = None, until: float | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Event payloads exactly as published on ``<prefix>/<source>/event``, oldest first."""
        return [json.loads(r[3]) for r in self._select("events", source, since, until, limit)]

    def segments(self, source: str | None = None, since: float | None = None, until: float | None = None,
                 max_gap: float = DEFAULT_MAX_GAP_SECONDS) -> list[Segment]:
        """Airplay-style segments, per source in time order (see :func:`merge_segments`)."""
        rows = self._select("states", source, since, until, None, payload=False)
        return merge_segments(
            [StateRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows], max_gap=max_gap
        )


def _not_created_yet(path: Path) -> bool:
    """A history file the writer has just created and not yet given its tables (a moment after the first start)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def _empty() -> sqlite3.Connection:
    """An in-memory database with the history's tables and no rows: what a history not created yet holds."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    return conn


@dataclass(frozen=True)
class StateRow:
    source: str
    ts: float
    state: str
    genre: str | None
    confidence: float
    title: str | None = None  # what the stream said it played (ICY StreamTitle)


@dataclass
class _Open:
    first: StateRow
    last: StateRow
    confidences: list[float] = field(default_factory=list)


def merge_segments(rows: list[StateRow], max_gap: float = DEFAULT_MAX_GAP_SECONDS) -> list[Segment]:
    """Merge consecutive states of the same genre and title (silence counts as its own genre) into segments.

    A segment ends where the next one starts, so a report has no holes while the
    daemon ran; when two states are more than ``max_gap`` seconds apart (the daemon
    was stopped, the source was down) the segment ends at its last state instead.
    Segments are ordered by source, then time.
    """
    out: list[Segment] = []
    by_source: dict[str, list[StateRow]] = {}
    for row in sorted(rows, key=lambda r: (r.source, r.ts)):
        by_source.setdefault(row.source, []).append(row)

    def close(seg: _Open, end: float) -> None:
        conf = sum(seg.confidences) / len(seg.confidences)
        out.append(Segment(seg.first.source, seg.first.ts, end, seg.first.state, seg.first.genre, conf,
                           len(seg.confidences), seg.first.title))

    for source_rows in by_source.values():
        cur: _Open | None = None
        for row in source_rows:
            key = (row.state, row.genre if row.state == State.MUSIC else None, row.title)
            if cur is not None:
                gap = row.ts - cur.last.ts
                same = key == (cur.first.state, cur.first.genre if cur.first.state == State.MUSIC else None, cur.first.title)
                if gap > max_gap:
                    close(cur, cur.last.ts)
                    cur = None
                elif not same:
                    close(cur, row.ts)
                    cur = None
            if cur is None:
                cur = _Open(row, row)
            cur.last = row
            cur.confidences.append(row.confidence)
        if cur is not None:
            close(cur, cur.last.ts)
    return out


def local_midnight(day: date) -> float:
    """Unix time of the start of ``day`` in local time (the daemon's zone; across a DST change too)."""
    return datetime.combine(day, datetime.min.time()).timestamp()


def daily_minutes(segments: Iterable[Segment], first_day: date, days: int) -> list[dict[str, Any]]:
    """Minutes of music per genre on each local day from ``first_day`` (``days`` days, oldest first, empty days
    included): each music segment's duration, split at local midnight; other states are not counted.

    ``[{"date": "2026-03-02", "minutes": {"jazz": 20.0, ...}, "total": 20.0}, ...]``, genres by minutes, most first.
    """
    bounds = [local_midnight(first_day + timedelta(days=i)) for i in range(days + 1)]
    seconds: list[dict[str, float]] = [{} for _ in range(days)]
    for seg in segments:
        if not seg.is_music or seg.genre is None:
            continue
        for i in range(days):
            overlap = min(seg.end, bounds[i + 1]) - max(seg.start, bounds[i])
            if overlap > 0:
                seconds[i][seg.genre] = seconds[i].get(seg.genre, 0.0) + overlap
    out = []
    for i, per_genre in enumerate(seconds):
        minutes = {g: round(s / 60.0, 2) for g, s in sorted(per_genre.items(), key=lambda kv: (-kv[1], kv[0]))}
        out.append({"date": (first_day + timedelta(days=i)).isoformat(), "minutes": minutes,
                    "total": round(sum(per_genre.values()) / 60.0, 2)})
    return out
