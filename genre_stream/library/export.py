"""Writing the whole index as CSV (one row per track, flat columns) or JSON (nested)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any, Literal, TextIO

from .db import LibraryDB, Track

Format = Literal["csv", "json"]


def track_record(track: Track, labels: list[str]) -> dict[str, Any]:
    return {
        "path": track.path,
        "size": track.size,
        "mtime_ns": track.mtime_ns,
        "hash": track.hash,
        "duration": round(track.duration, 3),
        "genre": track.genre,
        "confidence": round(track.confidence, 6),
        "model": track.model,
        "analysed_at": track.analysed_at,
        "artist": track.artist or "",
        "title": track.title or "",
        "probabilities": {g: round(float(p), 6) for g, p in zip(labels, track.probabilities)},
        "embedding": [round(float(v), 6) for v in track.embedding],
    }


def _csv_rows(records: Iterator[dict[str, Any]], labels: list[str], dims: int) -> Iterator[list[Any]]:
    scalar = ["path", "size", "mtime_ns", "hash", "duration", "genre", "confidence", "model", "analysed_at", "artist", "title"]
    yield scalar + [f"p_{g}" for g in labels] + [f"emb_{i}" for i in range(dims)]
    for r in records:
        yield [r[k] for k in scalar] + [r["probabilities"][g] for g in labels] + r["embedding"]


def export(db: LibraryDB, fmt: Format, out: TextIO) -> int:
    """Write every track to ``out``; returns the number of tracks written."""
    labels = db.labels or []
    records = (track_record(t, labels) for t in db.tracks())
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        for count, row in enumerate(_csv_rows(records, labels, 32)):
            writer.writerow(row)
        return count
    if fmt == "json":
        out.write('{"labels": ' + json.dumps(labels) + ', "tracks": [')
        for count, rec in enumerate(records, start=1):
            out.write(("," if count > 1 else "") + "\n  " + json.dumps(rec))
        out.write("\n]}\n")
        return count
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")
