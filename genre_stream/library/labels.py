"""User labels ("corrections"): the genre a person says a track has, kept in the library database.

``genre-stream library label PATH GENRE`` records one; ``genre-trainer finetune
--library DB`` learns from them. Anything else that takes corrections (the
dashboard) calls ``label_track`` with the same validation.

The labels live in their own table, keyed by absolute path and independent of
``tracks``: a label is the user's statement about a file, so a rescan, a
re-analysis by another model or the file dropping out of the index does not
erase it (the trainer reports labelled files that vanished and skips them).
Adding the table is the whole migration: ``CREATE TABLE IF NOT EXISTS`` on first
use, and older genre-stream versions, which never read it, open the database as
before, so the schema version stays the same.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..sinks.messages import utc_now_iso
from .db import LibraryDB, LibraryError

_TABLE = """
CREATE TABLE IF NOT EXISTS labels (
    path TEXT PRIMARY KEY,
    genre TEXT NOT NULL,
    origin TEXT NOT NULL,
    labelled_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class UserLabel:
    """One correction: ``path`` is ``genre``, said through ``origin`` (cli, dashboard...) at ``labelled_at``."""

    path: str
    genre: str
    origin: str
    labelled_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table(db: LibraryDB) -> LibraryDB:
    db.conn.execute(_TABLE)
    return db


def label_track(db: LibraryDB, path: str | Path, genre: str, valid: Sequence[str], origin: str = "cli") -> UserLabel:
    """Record (or replace) the user's genre for the audio file at ``path``; ``genre`` must be one of ``valid``.

    ``valid`` is the label list of the model that will learn from the label, so a
    typo is refused now rather than at training time. The file must exist when it
    is labelled (its absolute path is stored).
    """
    if genre not in valid:
        raise LibraryError(f"unknown genre {genre!r}; the model's genres are: {', '.join(valid)}")
    absolute = Path(os.path.abspath(path))
    if not absolute.is_file():
        raise LibraryError(f"{absolute}: no such file")
    label = UserLabel(str(absolute), genre, origin, utc_now_iso())
    with _table(db).conn:
        db.conn.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)", (label.path, label.genre, label.origin, label.labelled_at))
    return label


def remove_label(db: LibraryDB, path: str | Path) -> bool:
    """Forget the label of ``path`` (which may no longer exist); False when it had none."""
    with _table(db).conn:
        cursor = db.conn.execute("DELETE FROM labels WHERE path = ?", (os.path.abspath(path),))
    return cursor.rowcount > 0


def user_labels(db: LibraryDB) -> list[UserLabel]:
    """All labels, ordered by path."""
    rows = _table(db).conn.execute("SELECT path, genre, origin, labelled_at FROM labels ORDER BY path").fetchall()
    return [UserLabel(*row) for row in rows]
