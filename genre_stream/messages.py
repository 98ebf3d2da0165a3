"""The payloads genre-stream publishes: one contract for MQTT, JSONL, history and the dashboard.

Field names and shapes here are a public interface for subscribers (Home Assistant
automations, scripts), so they change only deliberately.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal


def iso_utc(ts: float) -> str:
    """Unix time -> the timestamp format of every payload: ISO 8601 UTC with milliseconds and a 'Z'."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso() -> str:
    """Now, in the payload timestamp format."""
    return iso_utc(time.time())


def parse_payload_time(stamp: str) -> float:
    """The ``timestamp`` of a payload -> unix time; a naive stamp is taken as UTC like every payload."""
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# What a state (and a tagged track) says about the audio; the one list of these words.
#   music: a genre is named; uncertain: music, but too unsure to name (genre is the best guess);
#   not_music: speech, talk or noise by the model's gate (genre_stream.musicgate; genre null);
#   silence: below the silence level (genre null).
State = Literal["music", "uncertain", "not_music", "silence"]
STATES: tuple[str, ...] = ("music", "uncertain", "not_music", "silence")
NON_GENRE_STATES: tuple[str, ...] = STATES[1:]  # what a genre sensor shows besides the model's labels
GENRELESS_STATES: tuple[str, ...] = ("not_music", "silence")  # states whose genre is null


@dataclass
class GenreState:
    """Published retained on ``<prefix>/<source>/state`` after every classification."""

    source: str
    genre: str | None
    confidence: float
    probabilities: dict[str, float]
    state: State  # see STATES
    window_start: float  # seconds of stream time
    window_end: float
    model: str
    not_music: float | None = None  # smoothed P(not music) where the model carries a gate
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenreEvent:
    """Published (QoS 1, not retained) on ``<prefix>/<source>/event``.

    ``type`` is ``genre_changed`` (with ``from``/``to``/``confidence``),
    ``track_tagged`` (with ``path``/``genre``/``state``/``confidence``/``probabilities``/``duration``)
    or ``error`` (with ``reason`` and optionally ``path``); the type-specific fields
    live in ``data`` and are flattened into the payload.
    """

    type: Literal["genre_changed", "track_tagged", "error"]
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, **self.data, "timestamp": self.timestamp}

    @classmethod
    def genre_changed(cls, source: str, old: str | None, new: str, confidence: float) -> "GenreEvent":
        return cls("genre_changed", source, {"from": old, "to": new, "confidence": confidence})

    @classmethod
    def error(cls, source: str, reason: str, path: str | None = None) -> "GenreEvent":
        data: dict[str, Any] = {"reason": reason}
        if path is not None:
            data["path"] = path
        return cls("error", source, data)


@dataclass
class SourceStats:
    """Published (QoS 0, not retained) on ``<prefix>/<source>/stats`` every ``stats_interval`` seconds.

    ``values`` merges the source's counters (overflows, reconnects, queue depth) with the
    pipeline's (inference ms, real-time factor, windows); they are flattened into the payload.
    """

    source: str
    values: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.values, "timestamp": self.timestamp}


Message = GenreState | GenreEvent
