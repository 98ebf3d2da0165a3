"""The watch flow: a complete file from a watched folder becomes one ``track_tagged`` (or error) event.

A folder's files do not go through the streaming ``SourcePipeline``: the daemon hands each
``TrackReady`` to the source's ``TrackTagger``, which analyses the whole file (``tracks/analysis.py``),
publishes the event through the callable the daemon gives it, indexes the file into the
library database when ``watch.library_db`` is set, and only then tells the source the file
is done (recorded, perhaps moved). That order is the delivery guarantee: a daemon killed
between publishing and recording tags the file again at its next start rather than losing it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..audio.decode import AudioError
from ..audio.sanitize import SILENCE_DBFS
from ..model.calibration import UncertaintyRule
from ..model.engine import Engine
from ..sinks.messages import GenreEvent, Message
from ..tracks import TRACK_HOP_SECONDS
from ..tracks.analysis import Cancelled, TrackResult, analyse_file

log = logging.getLogger(__name__)

Publish = Callable[[Message], None]


@runtime_checkable
class TrackLedger(Protocol):
    """What the tagger tells the source whose files it tags: the watch source keeps this state, so
    ``Source`` itself carries no watch-only methods."""

    def retry_later(self, path: Path) -> bool:
        """A handed-on file failed to decode: True when the source will hand it on again (no result yet)."""
        ...

    def mark_done(self, path: Path, ok: bool) -> None:
        """The file's outcome is published (and indexed): record it, so it is not tagged again."""
        ...


def tag_track(source_id: str, path: Path, engine: Engine, hop_seconds: float = TRACK_HOP_SECONDS,
              uncertainty: UncertaintyRule | None = None,
              silence_dbfs: float = SILENCE_DBFS, stop: threading.Event | None = None) -> tuple[GenreEvent, TrackResult | None]:
    """Classify a whole file: a ``track_tagged`` event and the analysis, or an ``error`` event naming the file and None.

    The event's ``state`` is "uncertain" when ``uncertainty`` (default: the model's own rule) says so,
    and "silence" when the track's level is below ``silence_dbfs`` (the daemon's ``pipeline.silence_dbfs``).
    Raises ``Cancelled`` when ``stop`` is set before the file is done.
    """
    try:
        result = analyse_file(path, engine, hop_seconds, stop)
    except AudioError as exc:
        log.warning("%s: %s", source_id, exc)
        return GenreEvent.error(source_id, str(exc), path=str(path)), None
    state, genre = result.verdict(uncertainty or UncertaintyRule.for_model(engine.info.calibration), silence_dbfs)
    event = GenreEvent(
        "track_tagged",
        source_id,
        {
            "path": str(path),
            "genre": genre,
            "state": state,
            "confidence": result.confidence,
            "probabilities": {label: float(p) for label, p in zip(result.labels, result.probabilities)},
            "duration": round(result.duration, 3),
            "model": result.model,
            **({} if result.not_music is None else {"not_music": round(result.not_music, 6)}),
        },
    )
    return event, result


@dataclass(frozen=True)
class TrackTagger:
    """Tags the files one source hands on; holds no state, so a reload simply builds a new one."""

    source_id: str
    ledger: TrackLedger  # the source that handed the files on
    engine: Engine
    hop_seconds: float = TRACK_HOP_SECONDS
    uncertainty: UncertaintyRule | None = None
    library_db: Path | None = None  # watch.library_db: index every tagged file into this `genre-stream library` database
    silence_dbfs: float = SILENCE_DBFS  # pipeline.silence_dbfs: the same silence level as the live windows

    def tag(self, path: Path, publish: Publish, stop: threading.Event | None = None) -> None:
        """Tag ``path`` and publish the outcome; call in the source's thread.

        A file that fails to decode may still be being written: when the source says it will
        hand it on again (``retry_later``), nothing is published yet. When ``stop`` is set meanwhile (the
        daemon is stopping), nothing is published or recorded: the next start tags the file.
        """
        try:
            event, result = tag_track(self.source_id, path, self.engine, self.hop_seconds, self.uncertainty, self.silence_dbfs, stop)
        except Cancelled:
            log.info("%s: stopping: %s left for the next start", self.source_id, path)
            return
        if event.type == "error" and self.ledger.retry_later(path):
            return
        publish(event)
        if result is not None and self.library_db is not None:
            self._index(path, result, publish)
        self.ledger.mark_done(path, ok=event.type == "track_tagged")

    def _index(self, path: Path, result: TrackResult, publish: Publish) -> None:
        """Add the file to the library database, so a growing collection is indexed as files arrive.

        The database is opened for each file, in the calling thread (SQLite connections are
        per thread); a database problem becomes an error event and never stops the source.
        """
        from ..library.db import LibraryDB, LibraryError  # only for folders that feed a library

        try:
            with LibraryDB(self.library_db) as db:
                db.upsert_track(path, result)
        except (LibraryError, OSError, sqlite3.Error, ValueError) as exc:  # ValueError: a name SQLite cannot store
            log.error("%s: cannot index %s into %s: %s", self.source_id, path, self.library_db, exc)
            publish(GenreEvent.error(self.source_id, f"library index: {exc}", str(path)))
