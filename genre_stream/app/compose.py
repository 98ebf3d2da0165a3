"""Composition: the parts `genre-stream run` is made of, chosen and wired from its configuration.

The model is opened by ``model.choice.open_engine``, as for every command. The daemon (``daemon.py``) supervises; it knows sources, sinks and pipeline listeners only by
their protocols. This is the one place that names the concrete parts and connects them:

* the outputs: ``build_outputs`` -- the sinks (dashboard, JSON lines, MQTT, history, in the order
  they start) and the pipeline listeners (the dashboard), with the dashboard shown the MQTT
  sink's connection and the history writer's counters;
* per source: ``make_pipeline`` (audio -> states and events) and ``make_tagger`` (whole files).

The sources themselves are built by ``sources.make_sources``, which ``config check`` shares
without loading any of the above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import DaemonConfig
from ..live.pipeline import PipelineListener, SourcePipeline, uncertainty_rule
from ..model.engine import Engine
from ..sinks import Fanout, Sink
from ..sinks.history import History
from ..sinks.jsonl import JsonlSink
from ..sources import Source
from ..watch.tagger import TrackLedger, TrackTagger


@dataclass
class Outputs:
    """Where the daemon's results go: messages to ``sinks``, the audio path's details to ``listeners``."""

    sinks: Fanout
    listeners: list[PipelineListener] = field(default_factory=list)


def build_outputs(config: DaemonConfig, engine: Engine) -> Outputs:
    """JSON lines when asked for (or when there is no broker), MQTT when a URL is configured,
    the tag history (on by default) and the dashboard (off by default)."""
    dash_config = config.http.dashboard()
    sinks: list[Sink] = []
    if config.jsonl_target:
        sinks.append(JsonlSink(config.jsonl_target))
    mqtt = None
    if config.mqtt.url:
        from ..sinks.homeassistant import dashboard_url
        from ..sinks.mqtt import MqttSink

        mqtt = MqttSink(config.mqtt, config.homeassistant, config.state_dir, dashboard_url(dash_config))
        sinks.append(mqtt)
    history = History(config.history.config(config.state_dir)) if config.history.enabled else None
    if history is not None:
        sinks.append(history)
    if dash_config is None:
        return Outputs(Fanout(sinks))
    from ..dashboard.sink import DashboardSink  # the HTTP stack is loaded only when asked for

    dashboard = DashboardSink(dash_config, engine.labels, engine.model_id, history.config.path if history is not None else None,
                              engine.info.frontend, engine.precision, config.watch.library_db, engine.chosen)
    if history is not None:
        dashboard.watch_history(history.counters)
    if mqtt is not None:
        dashboard.watch_mqtt(mqtt)
    # started first: a busy port stops the daemon before MQTT connects
    return Outputs(Fanout([dashboard, *sinks]), [dashboard])


def make_pipeline(source_id: str, engine: Engine, config: DaemonConfig, listeners: Sequence[PipelineListener]) -> SourcePipeline:
    """A source's audio path: its chunks -> states and genre changes, told to ``listeners`` as it goes."""
    return SourcePipeline(source_id, engine, config.pipeline, listeners=listeners)


def make_tagger(source: Source, engine: Engine, config: DaemonConfig) -> TrackTagger | None:
    """A source's whole-file path (watch folders): the same "uncertain" rule and silence level as its windows.
    None for sources that hand on no files (they keep no ``TrackLedger``)."""
    if not isinstance(source, TrackLedger):
        return None
    return TrackTagger(source.id, source, engine, config.track_hop_seconds, uncertainty_rule(engine, config.pipeline),
                       config.watch.library_db, config.pipeline.silence_dbfs)
