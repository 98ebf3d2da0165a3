"""The dashboard as the daemon sees it: one more sink, plus a hook after each audio chunk.

The daemon already hands every message to its sinks; being a sink means the
dashboard needs no other call for states and events. ``after_feed`` is the only
addition to the audio path: it offers the pipeline's rolling mel buffer (copied only
while a page is open) and records the inference time of a window just classified.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..frontend import FrontendConfig
from ..sinks.history import HistoryReader, HistoryStats
from ..messages import GenreEvent, GenreState
from ..sinks.base import SourceAvailability, SourceInfo
from .config import DashboardConfig
from .corrections import Corrections
from .metrics import SinkMetrics, SourceMetrics
from .server import DashboardServer
from .state import DashboardState, MelSource

log = logging.getLogger(__name__)


class MqttLike(Protocol):
    """What the metrics read from genre_stream.sinks.mqtt.MqttSink."""

    connected: threading.Event
    delivered: int

    @property
    def queue_depth(self) -> int: ...


class FedPipeline(Protocol):
    """What ``after_feed`` reads from genre_stream.pipeline.SourcePipeline."""

    ring: MelSource

    def stats(self) -> Mapping[str, Any]: ...


StatsProvider = Callable[[], Mapping[str, Any]]


def source_metrics(source_stats: Mapping[str, Any], pipeline_stats: Mapping[str, Any]) -> SourceMetrics:
    """The daemon's per-source stats dictionaries (the ``/stats`` MQTT payload) -> metrics."""
    return SourceMetrics(
        real_time_factor=float(pipeline_stats.get("real_time_factor", 0.0)),
        overflows=int(source_stats.get("overflows", 0)),
        queue_depth=int(source_stats.get("queue_depth", 0)),
        reconnects=int(source_stats.get("reconnects", 0)),
    )


class DashboardSink:
    """Owns the dashboard's state and HTTP server for the daemon's lifetime."""

    def __init__(self, config: DashboardConfig, labels: list[str], model: str,
                 history_path: Path | None = None, frontend: FrontendConfig | None = None, precision: str = "",
                 library_db: Path | None = None) -> None:
        self.config = config
        self.state = DashboardState(labels, model, config.mel_interval_seconds, frontend, precision)
        reader = HistoryReader(history_path) if history_path is not None else None
        corrections = Corrections(library_db, labels) if library_db is not None else None
        self.server = DashboardServer(config, self.state, reader, corrections)

    # -- Sink protocol -------------------------------------------------------------------
    def start(self) -> None:
        """Listen; raises DashboardError (address in use...) so the daemon can refuse to start."""
        self.server.start()

    def publish(self, message: object) -> None:
        if isinstance(message, GenreState | GenreEvent | SourceAvailability):  # stats are served by /metrics
            self.state.publish(message)

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        self.state.model = model
        self.state.set_sources(sources)

    def stats(self) -> dict[str, int | float]:
        return {}

    def close(self, timeout: float) -> bool:
        self.server.stop(timeout)
        return True

    # -- daemon hooks --------------------------------------------------------------------
    def watch_source(self, source_id: str, source_stats: StatsProvider, pipeline_stats: StatsProvider) -> None:
        """Serve a source's counters on /metrics; the providers are called only when scraped."""
        self.state.add_source(source_id, lambda: source_metrics(source_stats(), pipeline_stats()))

    def watch_mqtt(self, sink: MqttLike) -> None:
        self.state.set_sink_metrics(
            lambda: SinkMetrics(sink.connected.is_set(), sink.delivered, sink.queue_depth)
        )

    def watch_history(self, stats: Callable[[], HistoryStats]) -> None:
        self.state.set_history_metrics(stats)

    def after_feed(self, source_id: str, pipeline: FedPipeline, messages: Sequence[object]) -> None:
        """Call in the source's thread right after ``pipeline.feed`` (under the same lock)."""
        self.state.offer_mel(source_id, pipeline.ring)
        if any(isinstance(m, GenreState) and m.state != "silence" for m in messages):  # the model ran
            self.state.observe_inference(source_id, float(pipeline.stats().get("inference_ms_last", 0.0)) / 1000.0)
