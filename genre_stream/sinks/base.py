"""The sink interface the daemon talks to, and the fan-out that feeds several sinks at once."""

from __future__ import annotations

import logging
from typing import Protocol

from ..messages import GenreEvent, GenreState, SourceStats

log = logging.getLogger(__name__)

Publishable = GenreState | GenreEvent | SourceStats


class Sink(Protocol):
    """A destination for messages. ``publish`` must be cheap and never block on the network.

    Sources call it from their own threads, so implementations are thread-safe.
    """

    def start(self) -> None:
        """Open files / start connecting; called once before the first ``publish``."""

    def publish(self, message: Publishable) -> None:
        """Deliver (or durably queue) one message."""

    def sources_changed(self, source_ids: list[str], model: str) -> None:
        """The set of running sources changed (start, SIGHUP): announce or retract them."""

    def close(self, timeout: float) -> bool:
        """Flush within ``timeout`` seconds and release resources; False when something is left undelivered."""


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

    def sources_changed(self, source_ids: list[str], model: str) -> None:
        for sink in self.sinks:
            sink.sources_changed(source_ids, model)

    def close(self, timeout: float) -> bool:
        ok = True
        for sink in self.sinks:
            ok = sink.close(timeout) and ok
        return ok
