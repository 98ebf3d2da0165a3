"""Helpers shared by the history and dashboard tests."""

from __future__ import annotations

from conftest import REPO

from genre_stream.sinks.messages import GenreEvent, GenreState, iso_utc

ARTIFACTS = REPO / "test-artifacts"
LABELS = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def state(source: str, genre: str | None, confidence: float, ts: float, kind: str = "music") -> GenreState:
    """A GenreState stamped at unix time ``ts`` (as if recorded then)."""
    if kind != "music":
        return GenreState(source, None, 0.0, {}, kind, 0.0, 30.0, "test-model", timestamp=iso_utc(ts))  # type: ignore[arg-type]
    probs = {label: (confidence if label == genre else (1 - confidence) / (len(LABELS) - 1)) for label in LABELS}
    return GenreState(source, genre, confidence, probs, "music", 0.0, 30.0, "test-model", timestamp=iso_utc(ts))


def changed(source: str, old: str, new: str, ts: float) -> GenreEvent:
    event = GenreEvent.genre_changed(source, old, new, 0.8)
    event.timestamp = iso_utc(ts)
    return event
