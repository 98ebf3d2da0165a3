"""What the dashboard knows: the daemon pushes into it, the HTTP server reads from it.

This is the whole interface between the daemon and the dashboard, and every method
is safe to call from any thread:

* ``add_source(id, metrics=...)`` once per source; ``metrics`` is called only when
  ``/metrics`` is scraped;
* ``publish(message)`` for every GenreState/GenreEvent (the same call as a sink);
* ``observe_inference(id, seconds)`` after each classified window;
* ``offer_mel(id, ring)`` from the pipeline thread after feeding audio: it copies the
  rolling mel buffer only while a page is open and at most every
  ``mel_interval_seconds``, so a closed dashboard costs one comparison per chunk;
* ``set_sink_metrics(provider)`` / ``set_history_metrics(provider)`` for the MQTT
  sink's and the history writer's counters.

Listeners (the server's live streams) are called in the publishing thread and must
only hand the item over to their own loop.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..history import HistoryStats
from ..messages import GenreEvent, GenreState, Message
from .metrics import DashboardMetrics, SinkMetrics, SourceMetrics

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]

# Live spectrogram encoding: mel power in dB, 0.5 dB steps from -80 dB, one byte per bin.
MEL_DB_MIN = -80.0
MEL_DB_STEP = 0.5


class MelSource(Protocol):
    """What ``offer_mel`` reads: genre_stream.frontend.MelRingBuffer fits."""

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


def mel_payload(source: str, frames: np.ndarray, total: int, full: bool) -> dict[str, Any]:
    """The ``mel`` live message: frames as base64 rows, the last one being frame ``total - 1``."""
    return {
        "source": source,
        "full": full,
        "total": total,
        "count": int(frames.shape[0]),
        "n_mels": int(frames.shape[1]) if frames.ndim == 2 else 0,
        "db_min": MEL_DB_MIN,
        "db_step": MEL_DB_STEP,
        "frames": base64.b64encode(np.ascontiguousarray(frames).tobytes()).decode("ascii"),
    }


class DashboardState:
    """Latest state per source, live listeners, the mel snapshots and the metrics."""

    def __init__(self, labels: list[str], model: str, mel_interval_seconds: float = 1.0, precision: str = "") -> None:
        self.labels = list(labels)
        self.model = model
        self.precision = precision  # of the export in use (fp32 / int8), e.g. what --model auto chose
        self.mel_interval_seconds = mel_interval_seconds
        self.metrics = DashboardMetrics()
        self.started = time.time()
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, dict[str, Any]] = {}
        self._mel: dict[str, _MelSnapshot] = {}
        self._listeners: list[Listener] = []

    # -- daemon side -------------------------------------------------------------------
    def add_source(self, source: str, metrics: Callable[[], SourceMetrics] | None = None) -> None:
        with self._lock:
            if source not in self._order:
                self._order.append(source)
        if metrics is not None:
            self.metrics.add_source(source, metrics)

    def set_sources(self, sources: list[str]) -> None:
        """The daemon's running sources changed (start, reload): forget the ones that went away."""
        with self._lock:
            gone = [s for s in self._order if s not in sources]
            self._order = list(sources)
            for source in gone:
                for table in (self._states, self._events, self._errors, self._mel):
                    table.pop(source, None)
        for source in gone:
            self.metrics.remove_source(source)

    def set_sink_metrics(self, provider: Callable[[], SinkMetrics]) -> None:
        self.metrics.set_sink(provider)

    def set_history_metrics(self, provider: Callable[[], HistoryStats]) -> None:
        self.metrics.set_history(provider)

    def observe_inference(self, source: str, seconds: float) -> None:
        self.metrics.observe_inference(source, seconds)

    def publish(self, message: Message) -> None:
        """Record a message and pass it to open pages; never raises into the daemon."""
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
            if kind == "state":
                self._states[message.source] = payload
                self._errors.pop(message.source, None)  # a classification means the source works again
            else:
                self._events[message.source] = payload
                if message.type == "error":
                    self._errors[message.source] = payload
            listeners = list(self._listeners)
        self.metrics.count_message(message)
        self._notify(listeners, kind, payload)

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
        self._notify(listeners, "mel", mel_payload(source, frames[-new:] if not full else frames, total, full))

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

    def sources(self) -> dict[str, Any]:
        """The ``/api/sources`` document: per source its last state and event payloads."""
        with self._lock:
            items = []
            for source in self._order:
                state = self._states.get(source)
                error = self._errors.get(source)
                status = "error" if error else (state["state"] if state else "waiting")
                items.append({
                    "source": source,
                    "status": status,
                    "state": state,
                    "last_event": self._events.get(source),
                    "error": error,
                })
        return {"model": self.model, "precision": self.precision, "labels": self.labels, "sources": items}

    def mel_snapshots(self) -> list[dict[str, Any]]:
        """Full ``mel`` messages of the latest snapshots, for a page that just connected."""
        with self._lock:
            snaps = dict(self._mel)
        return [mel_payload(source, s.frames, s.total, True) for source, s in snaps.items()]

    @staticmethod
    def _notify(listeners: list[Listener], kind: str, payload: dict[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(kind, payload)
            except Exception:  # a broken page must not break the daemon
                log.exception("dashboard: live listener failed")
