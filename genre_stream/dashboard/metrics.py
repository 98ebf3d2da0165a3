"""Prometheus metrics of the daemon, served on ``/metrics``.

Counters that the daemon's parts already keep (overflows, queue depth, MQTT queue)
are read from providers only when Prometheus scrapes, so the audio path pays
nothing for them; only the inference latency histogram is observed as it happens.
A private registry keeps these apart from whatever else runs in the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..sinks.history import HistoryStats
from ..sinks.messages import GenreEvent, GenreState, Message

log = logging.getLogger(__name__)

# Inference of one 30 s window takes ~35 ms on a laptop core; buckets span a fast GPU to a struggling Pi.
INFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass
class SourceMetrics:
    """One source's live figures, as the daemon's pipeline and source report them."""

    real_time_factor: float = 0.0  # inference time / audio time; < 1 keeps up
    overflows: int = 0  # capture buffer overflows (audio lost) since start
    queue_depth: int = 0  # chunks waiting between capture and pipeline
    reconnects: int = 0  # device reopened / stream reconnected


@dataclass
class SinkMetrics:
    """The publishing side: MQTT connection and its on-disk queue."""

    mqtt_connected: bool | None = None  # None: no MQTT broker configured
    events_published: int = 0  # messages handed to the broker since start
    events_queued: int = 0  # messages waiting in the on-disk queue


class _ProviderCollector(Collector):
    """Turns the providers' dataclasses into metric families at scrape time."""

    def __init__(self, owner: DashboardMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        rtf = GaugeMetricFamily("genre_stream_real_time_factor",
                                "Inference time divided by audio time (below 1 keeps up)", labels=["source"])
        overflows = CounterMetricFamily("genre_stream_overflows", "Capture buffer overflows (audio lost)",
                                        labels=["source"])
        depth = GaugeMetricFamily("genre_stream_queue_depth", "Audio chunks waiting for the pipeline",
                                  labels=["source"])
        reconnects = CounterMetricFamily("genre_stream_source_reconnects", "Device reopens and stream reconnects",
                                         labels=["source"])
        for source, provider in self.owner.source_providers():
            try:
                m = provider()
            except Exception:
                log.exception("metrics: stats of source %s failed", source)
                continue
            rtf.add_metric([source], float(m.real_time_factor))
            overflows.add_metric([source], float(m.overflows))
            depth.add_metric([source], float(m.queue_depth))
            reconnects.add_metric([source], float(m.reconnects))
        yield from (rtf, overflows, depth, reconnects)

        yield from self._history()
        sink = self.owner.sink_provider()
        if sink is None:
            return
        try:
            s = sink()
        except Exception:
            log.exception("metrics: sink stats failed")
            return
        if s.mqtt_connected is not None:
            yield GaugeMetricFamily("genre_stream_mqtt_connected", "1 while connected to the MQTT broker",
                                    value=1.0 if s.mqtt_connected else 0.0)
        yield CounterMetricFamily("genre_stream_events_published", "Messages delivered to the broker",
                                  value=float(s.events_published))
        yield GaugeMetricFamily("genre_stream_events_queued", "Messages waiting in the on-disk queue",
                                value=float(s.events_queued))

    def _history(self) -> Iterator[Metric]:
        provider = self.owner.history_provider()
        if provider is None:
            return
        try:
            h = provider()
        except Exception:
            log.exception("metrics: history stats failed")
            return
        yield CounterMetricFamily("genre_stream_history_written", "Messages written to the tag history",
                                  value=float(h.written))
        yield CounterMetricFamily("genre_stream_history_dropped", "Messages not recorded: history write queue full",
                                  value=float(h.dropped))
        yield CounterMetricFamily("genre_stream_history_write_errors",
                                  "Messages not recorded: the history database could not be written",
                                  value=float(h.write_errors))
        yield GaugeMetricFamily("genre_stream_history_queued", "Messages waiting for the history writer",
                                value=float(h.queued))
        yield CounterMetricFamily("genre_stream_history_prunes_withheld",
                                  "Retention passes that deleted nothing because the clock looked wrong",
                                  value=float(h.prunes_withheld))


class DashboardMetrics:
    """The registry behind ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._sources: dict[str, Callable[[], SourceMetrics]] = {}
        self._sink: Callable[[], SinkMetrics] | None = None
        self._history: Callable[[], HistoryStats] | None = None
        self.inference = Histogram("genre_stream_inference_seconds", "Model inference time of one 30 s window",
                                   ["source"], buckets=INFERENCE_BUCKETS, registry=self.registry)
        self.states = Counter("genre_stream_states", "Genre states produced", ["source", "state"],
                              registry=self.registry)
        self.events = Counter("genre_stream_events", "Events produced", ["source", "type"], registry=self.registry)
        # what the dashboard refused (the log says it once a minute): connections beyond the cap, live
        # streams beyond http.max_clients, requests with a Host header it does not answer
        self.refused = Counter("genre_stream_http_refused", "Dashboard connections and requests refused",
                               ["reason"], registry=self.registry)
        self.registry.register(_ProviderCollector(self))

    def add_source(self, source: str, provider: Callable[[], SourceMetrics]) -> None:
        with self._lock:
            self._sources[source] = provider

    def remove_source(self, source: str) -> None:
        with self._lock:
            self._sources.pop(source, None)

    def set_sink(self, provider: Callable[[], SinkMetrics]) -> None:
        with self._lock:
            self._sink = provider

    def set_history(self, provider: Callable[[], HistoryStats]) -> None:
        with self._lock:
            self._history = provider

    def history_provider(self) -> Callable[[], HistoryStats] | None:
        with self._lock:
            return self._history

    def source_providers(self) -> list[tuple[str, Callable[[], SourceMetrics]]]:
        with self._lock:
            return list(self._sources.items())

    def sink_provider(self) -> Callable[[], SinkMetrics] | None:
        with self._lock:
            return self._sink

    def observe_inference(self, source: str, seconds: float) -> None:
        self.inference.labels(source=source).observe(seconds)

    def count_message(self, message: Message) -> None:
        if isinstance(message, GenreState):
            self.states.labels(source=message.source, state=message.state).inc()
        elif isinstance(message, GenreEvent):
            self.events.labels(source=message.source, type=message.type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
