"""Corrections from the dashboard: "this file was jazz", written where the trainer learns from it.

A page may label only a file that a watch source tagged and the page lists (the
state's recent tracks), never a path it makes up: the dashboard stays a window on
what the daemon did, not a way to write arbitrary names into the library. The label
goes through ``library.labels.label_track``, the same validation and table as
``genre-stream library label``, with ``origin = "dashboard"``; ``genre-trainer
finetune --library DB`` then learns from it.

The label is written on the HTTP server's worker thread with a connection of its own
(SQLite connections belong to one thread), opened per correction: corrections are
rare, and a short-lived connection never holds the database against the watch
source's indexer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..library.db import LibraryDB
from ..library.labels import UserLabel, label_track

log = logging.getLogger(__name__)

ORIGIN = "dashboard"


@dataclass(frozen=True)
class Corrections:
    """Where the dashboard's corrections go: the watch sources' library database."""

    db_path: Path
    labels: Sequence[str]

    def label(self, path: str, genre: str) -> UserLabel:
        """Record ``genre`` for ``path``; raises LibraryError (unknown genre, missing file, bad database)."""
        with LibraryDB(self.db_path) as db:
            label = label_track(db, path, genre, self.labels, origin=ORIGIN)
        log.info("dashboard: %s labelled %s (in %s)", path, genre, self.db_path)
        return label
