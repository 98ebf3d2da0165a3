"""The payloads genre-stream publishes: one contract for MQTT, JSONL, history and the dashboard.

Field names and shapes here are a public interface for subscribers (Home Assistant
automations, scripts), so they change only deliberately.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
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


class State(StrEnum):
    """What a state (and a tagged track) says about the audio: the one list of these words.

    A ``StrEnum``, so payloads, SQLite rows and comparisons with the plain words are unchanged.
    """

    MUSIC = "music"  # a genre is named
    UNCERTAIN = "uncertain"  # music, but too unsure to name: ``genre`` is the best guess
    NOT_MUSIC = "not_music"  # speech, talk or noise by the model's gate (genre_stream.model.musicgate): genre null
    SILENCE = "silence"  # below the silence level: genre null

    @property
    def names_genre(self) -> bool:
        """Whether a payload in this state carries a genre (while uncertain, the best guess)."""
        return self in (State.MUSIC, State.UNCERTAIN)

    def genre(self, best: str | None) -> str | None:
        """The ``genre`` field of a payload in this state whose best guess is ``best``."""
        return best if self.names_genre else None


NON_GENRE_STATES: tuple[str, ...] = tuple(s.value for s in State if s is not State.MUSIC)  # a genre sensor's other options


def verdict(*, silent: bool, not_music: bool, uncertain: bool) -> State:
    """The state of a window or a track: the one precedence of the rules (the live pipeline and whole
    tracks both decide here). Silence first (no model answer counts under it), then the music gate,
    then the uncertainty rule."""
    if silent:
        return State.SILENCE
    if not_music:
        return State.NOT_MUSIC
    return State.UNCERTAIN if uncertain else State.MUSIC


@dataclass
class GenreState:
    """Published retained on ``<prefix>/<source>/state`` after every classification."""

    source: str
    genre: str | None
    confidence: float
    probabilities: dict[str, float]
    state: State
    window_start: float  # seconds of stream time
    window_end: float
    model: str
    not_music: float | None = None  # smoothed P(not music) where the model carries a gate
    # The smoothed arg-max when it is not ``genre`` (a challenger held back by the hysteresis, or music too unsure
    # to announce a change): ``genre``/``confidence`` is what was announced, with its own current probability.
    leading: str | None = None
    leading_confidence: float | None = None
    title: str | None = None  # what the stream says it plays (Icecast/Shoutcast StreamTitle, "Artist - Title")
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenreEvent:
    """Published (QoS 1, not retained) on ``<prefix>/<source>/event``.

    ``type`` is ``genre_changed`` (with ``from``/``to``/``confidence``),
    ``track_changed`` (a stream's title changed: ``from``/``to`` titles),
    ``track_tagged`` (with ``path``/``genre``/``state``/``confidence``/``probabilities``/``duration``)
    or ``error`` (with ``reason`` and optionally ``path``); the type-specific fields
    live in ``data`` and are flattened into the payload.
    """

    type: Literal["genre_changed", "track_changed", "track_tagged", "error"]
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, **self.data, "timestamp": self.timestamp}

    @classmethod
    def genre_changed(cls, source: str, old: str | None, new: str, confidence: float) -> "GenreEvent":
        return cls("genre_changed", source, {"from": old, "to": new, "confidence": confidence})

    @classmethod
    def track_changed(cls, source: str, old: str | None, new: str) -> "GenreEvent":
        return cls("track_changed", source, {"from": old, "to": new})

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
