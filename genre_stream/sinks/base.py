"""The sink interface the daemon talks to, and the fan-out that feeds several sinks at once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .messages import GenreEvent, GenreState, SourceStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """What a sink may need to know about a running source beyond its id (Home Assistant discovery
    announces different entities for a folder of tracks than for a live stream)."""

    id: str
    kind: str | None  # "mic", "stream", "file", "watch"; None for a source built from another spec syntax
    labels: tuple[str, ...]  # the genres its model can answer
    hop_seconds: float  # a state is published about this often while audio flows
    stats_interval: float  # periodic stats every this many seconds; 0 = none
    # The source's counters now, as its ``stats`` message carries them (the dashboard's /metrics
    # reads them when scraped); safe to call from any thread. None: it has none to report.
    stats: Callable[[], Mapping[str, Any]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SourceAvailability:
    """A source started or stopped delivering: audio flows (or a folder is watched), or it is down,
    reconnecting or ended. Without it a dead stream's last retained state would look current."""

    source: str
    online: bool


Publishable = GenreState | GenreEvent | SourceStats | SourceAvailability


@dataclass(frozen=True)
class ModelSummary:
    """The model in use as outputs show it: its id, precision and how it was chosen (``Engine.chosen``)."""

    id: str
    precision: str
    chosen: str


class Sink(Protocol):
    """A destination for messages. ``publish`` must be cheap and never block on the network.

    Sources call it from their own threads, so implementations are thread-safe.
    """

    def start(self) -> None:
        """Open files / start connecting; called once before the first ``publish``."""

    def publish(self, message: Publishable) -> None:
        """Deliver (or durably queue) one message."""

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        """The set of running sources changed (start, SIGHUP): announce or retract them."""

    def close(self, timeout: float) -> bool:
        """Flush within ``timeout`` seconds and release resources; False when something is left undelivered."""

    def stats(self) -> dict[str, int | float]:
        """Counters this sink adds to every source's stats message (the MQTT queue depth...); {} for none."""


class Fanout:
    """Hands each message to every sink; one failing sink is logged and does not starve the others."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def publish(self, message: Publishable) -> None:
        for sink in self.sinks:
            try:
                sink.publish(message)
            except Exception:  # a sink bug must not stop classification or the other sinks
                log.exception("sink %s failed to publish a %s", type(sink).__name__, type(message).__name__)

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        for sink in self.sinks:
            sink.sources_changed(sources, model)

    def model_changed(self, model: ModelSummary) -> None:
        """Tell the sinks that show more of the model than its id (an optional ``model_changed``: the dashboard)
        which export runs now: at start and after a reload loaded another one."""
        for sink in self.sinks:
            hook = getattr(sink, "model_changed", None)
            if hook is not None:
                hook(model)

    def close(self, timeout: float) -> bool:
        ok = True
        for sink in self.sinks:
            ok = sink.close(timeout) and ok
        return ok

    def stats(self) -> dict[str, int | float]:
        merged: dict[str, int | float] = {}
        for sink in self.sinks:
            merged.update(sink.stats())
        return merged
