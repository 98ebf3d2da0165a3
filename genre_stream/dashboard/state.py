"""What the dashboard knows: ``DashboardSink`` pushes into it, the HTTP server reads from it.

This is the whole interface between the daemon's side (``sink.py``) and the server, and
every method is safe to call from any thread:

* ``add_source(id, metrics=...)`` once per source; ``metrics`` is called only when
  ``/metrics`` is scraped;
* ``set_sources(infos)`` when the running sources change (their kind and hop);
* ``publish(message)`` for every GenreState/GenreEvent/SourceAvailability (the same call as a sink);
* ``observe_inference(id, seconds)`` after each classified window, ``observe_level(id, dbfs, threshold)``
  with the window's RMS level and the silence threshold it was judged against (the page's level meter);
* ``recent_audio.add(id, samples)`` for every chunk of audio (the last 30 s, for the play button);
* ``offer_mel(id, ring)`` from the pipeline thread after new mel frames: it copies the
  rolling mel buffer only while a page is open and at most every
  ``mel_interval_seconds``, so a closed dashboard costs one comparison per chunk;
* ``set_sink_metrics(provider)`` / ``set_history_metrics(provider)`` for the MQTT
  sink's and the history writer's counters.

Listeners (the server's live streams) are called in the publishing thread and must
only hand the item over to their own loop. Per classified window a listener gets one
``state`` item, as before; everything an operator needs besides (availability, recent
changes and tracks, the folded error, the reconnect time) changes only on events and
travels as a whole ``source`` item then; the level travels as a small ``level`` item per window.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..audio.frontend import FrontendConfig
from ..audio.frontend import _hz_to_mel as hz_to_mel  # the frontend's own (Slaney) mel scale
from ..sinks.base import SourceAvailability, SourceInfo
from ..sinks.history import HistoryStats
from ..sinks.messages import GenreEvent, GenreState, Message, parse_payload_time
from ..sources import TRACK_KINDS
from .metrics import DashboardMetrics, SinkMetrics, SourceMetrics
from .recent_audio import RecentAudio

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]

# Live spectrogram encoding: mel power in dB, 0.5 dB steps from -80 dB, one byte per bin.
MEL_DB_MIN = -80.0
MEL_DB_STEP = 0.5
STALE_HOPS = 3  # a live source with no window for this many hops is shown as stale, not as current
RECENT_CHANGES = 8  # genre changes kept per source for the "recent changes" list
RECENT_TRACKS = 12  # tagged (or failed) files kept per watched folder
FREQ_TICKS_HZ = (500, 1000, 2000, 4000, 8000)
LEVEL_FLOOR_DBFS = -120.0  # digital silence (-inf dBFS) is shown as this: below anything 16 or 24 bits can carry
# The stream source states its backoff only in its message ("...; reconnecting in 4 s").
RETRY_RE = re.compile(r"reconnecting in (\d+(?:\.\d+)?) s")


class MelSource(Protocol):
    """What ``offer_mel`` reads: genre_stream.audio.frontend.MelRingBuffer fits."""

    @property
    def total_frames(self) -> int: ...

    def latest(self) -> np.ndarray: ...


@dataclass
class _MelSnapshot:
    frames: np.ndarray  # (n, n_mels) uint8, oldest first
    total: int  # frames ever written to the source's buffer; the newest frame has index total-1
    taken: float  # time.monotonic()


def encode_mel(power: np.ndarray) -> np.ndarray:
    """Mel power frames -> uint8 dB (see MEL_DB_MIN/MEL_DB_STEP); 4x smaller than float32 on the wire."""
    db = 10.0 * np.log10(np.maximum(power, 1e-10))
    return np.clip((db - MEL_DB_MIN) / MEL_DB_STEP, 0, 255).astype(np.uint8)


def level_db(frames: np.ndarray, count: int) -> float | None:
    """The loudest mel band of the newest ``count`` encoded frames, in the spectrogram's dB (``level_db`` of the
    ``mel`` message, kept for its readers); None when there are no frames. Not the page's level meter, which
    shows the window's RMS level in dBFS (``observe_level``): this number has no full-scale reference.
    """
    if frames.size == 0 or count <= 0:
        return None
    return round(MEL_DB_MIN + float(frames[-count:].max()) * MEL_DB_STEP, 1)


def mel_payload(source: str, frames: np.ndarray, total: int, full: bool, level: float | None) -> dict[str, Any]:
    """The ``mel`` live message: frames as base64 rows, the last one being frame ``total - 1``."""
    return {
        "source": source,
        "full": full,
        "total": total,
        "count": int(frames.shape[0]),
        "n_mels": int(frames.shape[1]) if frames.ndim == 2 else 0,
        "db_min": MEL_DB_MIN,
        "db_step": MEL_DB_STEP,
        "level_db": level,
        "frames": base64.b64encode(np.ascontiguousarray(frames).tobytes()).decode("ascii"),
    }


def spectrogram_axes(frontend: FrontendConfig, frames: int) -> dict[str, Any]:
    """Where the page puts its axis labels: the span of the rolling buffer in seconds, and a few
    frequencies with their height (0 = bottom, 1 = top) on the frontend's mel scale."""
    lo, hi = (float(hz_to_mel(np.array(f))) for f in (frontend.f_min, frontend.f_max))
    ticks = [{"hz": hz, "at": round((float(hz_to_mel(np.array(float(hz)))) - lo) / (hi - lo), 4)}
             for hz in FREQ_TICKS_HZ if frontend.f_min < hz < frontend.f_max]
    return {"seconds": round(frontend.frames_to_seconds(frames), 2), "freq_ticks": ticks}


@dataclass
class _Source:
    """What the page shows about one source besides its latest state."""

    kind: str | None = None
    stale_after: float | None = None  # seconds without a window before it looks stale; None: no windows (folders)
    online: bool | None = None  # None until the daemon says
    changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_CHANGES))
    tracks: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_TRACKS))
    corrected: dict[str, str] = field(default_factory=dict)  # path -> genre the user gave it on the page


class DashboardState:
    """Latest state per source, live listeners, the mel snapshots and the metrics."""

    def __init__(self, labels: list[str], model: str, mel_interval_seconds: float = 1.0,
                 frontend: FrontendConfig | None = None, precision: str = "", chosen: str = "") -> None:
        self.labels = list(labels)
        self.model = model
        self.precision = precision  # of the export in use (fp32 / int8), e.g. what --model auto chose
        self.chosen = chosen  # how the model file was chosen (Engine.chosen): "auto -> int8 (why)", "named: FILE"
        self.accepts_corrections = False  # the server can record "this file was X" (a library database is set)
        self.mel_interval_seconds = mel_interval_seconds
        frontend = frontend or FrontendConfig()
        self.axes = spectrogram_axes(frontend, frontend.window_frames)
        self.recent_audio = RecentAudio(frontend.sample_rate)  # the last 30 s per source (the play button)
        self.metrics = DashboardMetrics()
        self.started = time.time()
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, dict[str, Any]] = {}
        self._info: dict[str, _Source] = {}
        self._mel: dict[str, _MelSnapshot] = {}
        self._levels: dict[str, dict[str, Any]] = {}  # the latest ``level`` item per source
        self._listeners: list[Listener] = []

    # -- daemon side -------------------------------------------------------------------
    def add_source(self, source: str, metrics: Callable[[], SourceMetrics] | None = None) -> None:
        with self._lock:
            if source not in self._order:
                self._order.append(source)
        if metrics is not None:
            self.metrics.add_source(source, metrics)

    def set_sources(self, sources: Sequence[SourceInfo]) -> None:
        """The daemon's running sources changed (start, reload): forget the ones that went away."""
        ids = [s.id for s in sources]
        with self._lock:
            gone = [s for s in self._order if s not in ids]
            self._order = ids
            for source in gone:
                for table in (self._states, self._events, self._errors, self._info, self._mel, self._levels):
                    table.pop(source, None)
            for s in sources:
                info = self._info.setdefault(s.id, _Source())
                info.kind = s.kind
                info.stale_after = None if s.kind in TRACK_KINDS else STALE_HOPS * s.hop_seconds
            items, listeners = [self._source_item(source) for source in ids], list(self._listeners)
        self.recent_audio.keep_only(ids)
        for source in gone:
            self.metrics.remove_source(source)
        for item in items:  # open pages learn a reloaded source's kind and hop (rare: start and SIGHUP)
            self._notify(listeners, "source", item)

    def set_sink_metrics(self, provider: Callable[[], SinkMetrics]) -> None:
        self.metrics.set_sink(provider)

    def set_history_metrics(self, provider: Callable[[], HistoryStats]) -> None:
        self.metrics.set_history(provider)

    def observe_inference(self, source: str, seconds: float) -> None:
        self.metrics.observe_inference(source, seconds)

    def observe_level(self, source: str, level_dbfs: float, silence_dbfs: float | None) -> None:
        """A window's RMS level in dBFS and the silence threshold it was compared with: one ``level`` item."""
        item = {"source": source, "level_dbfs": round(max(level_dbfs, LEVEL_FLOOR_DBFS), 1),
                "silence_dbfs": silence_dbfs, "floor_dbfs": LEVEL_FLOOR_DBFS}
        with self._lock:
            self._levels[source] = item
            listeners = list(self._listeners)
        self._notify(listeners, "level", item)

    def publish(self, message: Message | SourceAvailability) -> None:
        """Record a message and pass it to open pages; never raises into the daemon.

        Pages get each state as a ``state`` item; an event or an availability change also
        sends the source's whole ``source`` item (see ``_source_item``), events being rare.
        """
        if isinstance(message, SourceAvailability):
            with self._lock:
                # Kept even before ``set_sources`` names the source (a thread says so as it starts), but
                # shown only for a running one: a source removed on reload must not come back as a card.
                self._info.setdefault(message.source, _Source()).online = message.online
                known = message.source in self._order
                item, listeners = self._source_item(message.source), list(self._listeners)
            if known:
                self._notify(listeners, "source", item)
            return
        payload = message.to_dict()
        if isinstance(message, GenreState):
            kind = "state"
        elif isinstance(message, GenreEvent):
            kind = "event"
        else:
            log.warning("dashboard: ignoring unknown message %r", type(message).__name__)
            return
        with self._lock:
            if message.source not in self._order:
                self._order.append(message.source)
            info = self._info.setdefault(message.source, _Source())
            recovered = False
            if kind == "state":
                self._states[message.source] = payload
                # A classification means the source works again; pages hear it through a ``source`` item.
                recovered = self._errors.pop(message.source, None) is not None
            else:
                self._events[message.source] = payload
                if message.type == "genre_changed":
                    info.changes.append(payload)
                elif message.type == "track_tagged" or (message.type == "error" and "path" in payload
                                                        and info.kind in TRACK_KINDS):
                    info.tracks.append(payload)  # one file of a watched folder: listed, not the folder's error
                elif message.type == "error":
                    self._errors[message.source] = payload
            item = self._source_item(message.source) if kind == "event" or recovered else None
            listeners = list(self._listeners)
        self.metrics.count_message(message)
        self._notify(listeners, kind, payload)
        if item is not None:
            self._notify(listeners, "source", item)

    def offer_mel(self, source: str, ring: MelSource) -> None:
        """Snapshot ``ring`` for open pages if one is due; call from the thread that writes ``ring``."""
        now = time.monotonic()
        with self._lock:
            if not self._listeners:
                return
            previous = self._mel.get(source)
            if previous is not None and now - previous.taken < self.mel_interval_seconds:
                return
            listeners = list(self._listeners)
        total = ring.total_frames
        frames = encode_mel(ring.latest())
        snapshot = _MelSnapshot(frames, total, now)
        with self._lock:
            self._mel[source] = snapshot
        if previous is not None and previous.total == total:
            return
        new = total - previous.total if previous is not None else len(frames)
        full = not 0 < new < len(frames)  # first snapshot, a gap longer than the buffer, or a new pipeline (reload)
        level = level_db(frames, new)
        self._notify(listeners, "mel", mel_payload(source, frames[-new:] if not full else frames, total, full, level))

    # -- server side -------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register a live listener; returns the function that unregisters it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                if not self._listeners:
                    self._mel.clear()  # the next page starts from a fresh full snapshot

        return unsubscribe

    @property
    def listener_count(self) -> int:
        with self._lock:
            return len(self._listeners)

    def mqtt_connected(self) -> bool | None:
        """The MQTT sink's connection, None without one."""
        provider = self.metrics.sink_provider()
        return None if provider is None else provider().mqtt_connected

    def sources(self) -> dict[str, Any]:
        """The ``/api/sources`` document (also the live ``hello``): per source its ``source`` item."""
        with self._lock:
            items = [self._source_item(source) for source in self._order]
            levels = {source: item for source, item in self._levels.items() if source in self._order}
        return {"model": self.model, "precision": self.precision, "chosen": self.chosen, "labels": self.labels,
                "corrections": self.accepts_corrections, "mqtt_connected": self.mqtt_connected(),
                "spectrogram": self.axes, "levels": levels, "sources": items}

    def _source_item(self, source: str) -> dict[str, Any]:
        """One source as the page shows it; call with the lock held.

        ``status`` is the one rule for what the big label may claim: offline (the daemon said
        the source is down) wins over error, which wins over the last state.
        """
        state = self._states.get(source)
        error = self._errors.get(source)
        info = self._info.get(source) or _Source()
        if info.online is False:
            status = "offline"
        elif error:
            status = "error"
        elif info.kind in TRACK_KINDS:
            status = "watching"  # a folder has no running state; its files are listed in ``tracks``
        else:
            status = state["state"] if state else "waiting"
        retry = RETRY_RE.search(error["reason"]) if error else None
        return {
            "source": source,
            "status": status,
            "state": state,
            "last_event": self._events.get(source),
            "error": error,
            "kind": info.kind,
            "online": info.online,
            "stale_after": info.stale_after,
            "retry_at": (parse_payload_time(error["timestamp"]) + float(retry.group(1))
                         if retry and error else None),
            "changes": list(info.changes),
            "tracks": list(info.tracks),
            # Only for files still listed: the dict cannot outgrow the recent-tracks list.
            "corrected": {t["path"]: info.corrected[t["path"]] for t in info.tracks if t.get("path") in info.corrected},
        }

    def lists_tagged_file(self, source: str, path: str) -> bool:
        """Whether ``source`` tagged ``path`` and the page lists it: the only files a page may correct."""
        with self._lock:
            info = self._info.get(source)
            return info is not None and any(t.get("type") == "track_tagged" and t.get("path") == path
                                            for t in info.tracks)

    def corrected(self, source: str, path: str, genre: str) -> None:
        """The user labelled a listed file: every open page shows it (a ``source`` item)."""
        with self._lock:
            info = self._info.setdefault(source, _Source())
            info.corrected[path] = genre
            listed = {t.get("path") for t in info.tracks}
            info.corrected = {p: g for p, g in info.corrected.items() if p in listed}
            listeners = list(self._listeners)
            item = self._source_item(source)
        self._notify(listeners, "source", item)

    def mel_snapshots(self) -> list[dict[str, Any]]:
        """Full ``mel`` messages of the latest snapshots, for a page that just connected."""
        with self._lock:
            snaps = dict(self._mel)
        return [mel_payload(source, s.frames, s.total, True, level_db(s.frames, 1)) for source, s in snaps.items()]

    @staticmethod
    def _notify(listeners: list[Listener], kind: str, payload: dict[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(kind, payload)
            except Exception:  # a broken page must not break the daemon
                log.exception("dashboard: live listener failed")
