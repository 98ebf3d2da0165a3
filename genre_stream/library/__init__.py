"""Organising a music collection by what the model hears (issue 5).

``scan`` fills a SQLite index (``db``) with each track's mean genre probabilities
and 32-d embedding; ``cluster`` groups the index, ``similar`` ranks tracks by
cosine similarity and ``export`` writes it out. Other features (the daemon's watch
source) add tracks through ``LibraryDB.upsert_track``.
"""

from .db import LibraryDB, LibraryError, default_db_path

__all__ = ["LibraryDB", "LibraryError", "default_db_path"]
