"""The dashboard as the daemon sees it: one more sink, and a listener of the audio pipelines.

As a sink (``sinks.base.Sink``) it gets every state, event and availability change, and
the running sources with their counters (``SourceInfo.stats``, read when /metrics is
scraped). As a ``pipeline.PipelineListener`` it hears what only the pipeline sees: new mel
frames (copied only while a page is open), each window's inference time and RMS level, and
the audio itself (the last 30 s kept per source for the page's play button). The daemon
calls nothing else; ``watch_mqtt`` and ``watch_history`` are wired once where the outputs
are composed (``compose.py``), since only there are the MQTT sink and the history known.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..audio.frontend import FrontendConfig
from ..config import ConfigError, DashboardConfig
from ..history.reader import HistoryReader
from ..sinks.base import ModelSummary, SourceAvailability, SourceInfo
from ..sinks.history import HistoryStats
from ..sinks.messages import GenreEvent, GenreState
from .corrections import Corrections
from .limits import raise_fd_limit
from .metrics import SinkMetrics, SourceMetrics
from .server import DashboardError, DashboardServer
from .state import DashboardState, MelSource

if TYPE_CHECKING:  # the dashboard does not load the inference stack itself
    from ..live.pipeline import ClassifiedWindow

log = logging.getLogger(__name__)


class MqttLike(Protocol):
    """What the metrics read from genre_stream.sinks.mqtt.MqttSink."""

    connected: threading.Event
    delivered: int

    @property
    def queue_depth(self) -> int: ...


def source_metrics(stats: Mapping[str, Any]) -> SourceMetrics:
    """A source's counters (the ``/stats`` MQTT payload) -> metrics."""
    return SourceMetrics(
        real_time_factor=float(stats.get("real_time_factor", 0.0)),
        overflows=int(stats.get("overflows", 0)),
        queue_depth=int(stats.get("queue_depth", 0)),
        reconnects=int(stats.get("reconnects", 0)),
    )


class DashboardSink:
    """Owns the dashboard's state and HTTP server for the daemon's lifetime."""

    def __init__(self, config: DashboardConfig, labels: list[str], model: str,
                 history_path: Path | None = None, frontend: FrontendConfig | None = None, precision: str = "",
                 library_db: Path | None = None, chosen: str = "") -> None:
        self.config = config
        self.state = DashboardState(labels, model, config.mel_interval_seconds, frontend, precision, chosen)
        reader = HistoryReader(history_path) if history_path is not None else None
        corrections = Corrections(library_db, labels) if library_db is not None else None
        self.server = DashboardServer(config, self.state, reader, corrections)

    # -- Sink protocol -------------------------------------------------------------------
    def start(self) -> None:
        """Listen; an address that cannot be used (in use, not permitted) is an error of ``http.listen``,
        so the daemon refuses to start (exit status 78) rather than run without the dashboard asked for.

        First the soft file descriptor limit is raised towards the hard one (systemd's soft default,
        1024, is what open pages ran out of); the server's connection cap is planned from the result.
        """
        before, after = raise_fd_limit()
        if after != before:
            log.info("file descriptor limit raised from %d to %d", before, after)
        try:
            self.server.start()
        except DashboardError as exc:
            raise ConfigError(f"http.listen: {exc}") from None

    def publish(self, message: object) -> None:
        if isinstance(message, GenreState | GenreEvent | SourceAvailability):  # stats are served by /metrics
            self.state.publish(message)

    def model_changed(self, model: ModelSummary) -> None:
        """The export in use (a SIGHUP may load another): the header's id, precision and choice follow it."""
        self.state.model, self.state.precision, self.state.chosen = model.id, model.precision, model.chosen

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        """Show the running sources, and serve each one's counters on /metrics (read only when scraped)."""
        self.state.model = model
        for info in sources:
            if info.stats is not None:
                self.state.add_source(info.id, lambda stats=info.stats: source_metrics(stats()))
        self.state.set_sources(sources)

    def stats(self) -> dict[str, int | float]:
        return {}

    def close(self, timeout: float) -> bool:
        self.server.stop(timeout)
        return True

    # -- PipelineListener ----------------------------------------------------------------
    def mel_updated(self, source: str, ring: MelSource) -> None:
        self.state.offer_mel(source, ring)

    def window_classified(self, window: ClassifiedWindow) -> None:
        if window.inference_seconds is not None:  # the model ran (not a silent window)
            self.state.observe_inference(window.source, window.inference_seconds)
        if window.level_dbfs is not None:
            self.state.observe_level(window.source, window.level_dbfs, window.silence_dbfs)

    def audio_received(self, source: str, samples: np.ndarray) -> None:
        """Keep the newest 30 s (``recent_audio.py``): a conversion and a copy per chunk, page open or not."""
        self.state.recent_audio.add(source, samples)

    # -- wired by the composition ----------------------------------------------------------
    def watch_mqtt(self, sink: MqttLike) -> None:
        """Serve the MQTT sink's connection and queue on /metrics and to open pages."""
        self.state.set_sink_metrics(
            lambda: SinkMetrics(sink.connected.is_set(), sink.delivered, sink.queue_depth)
        )

    def watch_history(self, stats: Callable[[], HistoryStats]) -> None:
        """Serve the history writer's counters on /metrics."""
        self.state.set_history_metrics(stats)
