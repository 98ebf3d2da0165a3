"""Every MQTT topic name and availability word, in one place.

The MQTT sink publishes on these topics, the Home Assistant discovery configs point at them,
and the sink listens on Home Assistant's birth topic; keeping the names here means a topic is
spelled once (Frigate keeps its topics in one module for the same reason).

Topics under ``prefix`` (``mqtt.prefix``, by default the instance name, ``genre-stream``: ``config.Instance``):

* ``<prefix>/status``                retained ``online``/``offline``; ``offline`` is also the last will
* ``<prefix>/<source>/state``        retained, QoS 1, the latest ``GenreState``
* ``<prefix>/<source>/event``        QoS 1, ``GenreEvent`` (genre_changed, track_tagged, error)
* ``<prefix>/<source>/stats``        QoS 0, periodic counters
* ``<prefix>/<source>/availability`` retained ``online`` while audio flows
* ``<prefix>/<source>/attributes``   retained, the probabilities Home Assistant shows as attributes
* ``<prefix>/<source>/track``        retained, the last tagged track (watch folders)

A one-off run (only ``file:`` sources) retains none of the ``<prefix>/<source>/...`` topics (``sinks.mqtt``).
"""

from __future__ import annotations

from dataclasses import dataclass

ONLINE, OFFLINE = "online", "offline"  # the payloads of every availability topic (ours and Home Assistant's birth)


def availability_word(online: bool) -> str:
    return ONLINE if online else OFFLINE


def home_assistant_status(discovery_prefix: str) -> str:
    """Home Assistant's birth / last-will topic: it publishes ``online`` there when it (re)starts."""
    return f"{discovery_prefix}/status"


@dataclass(frozen=True)
class Topics:
    """The daemon's topic names under one prefix."""

    prefix: str

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def state(self, source: str) -> str:
        return f"{self.prefix}/{source}/state"

    def event(self, source: str) -> str:
        return f"{self.prefix}/{source}/event"

    def stats(self, source: str) -> str:
        return f"{self.prefix}/{source}/stats"

    def availability(self, source: str) -> str:
        return f"{self.prefix}/{source}/availability"

    def attributes(self, source: str) -> str:
        return f"{self.prefix}/{source}/attributes"

    def track(self, source: str) -> str:
        return f"{self.prefix}/{source}/track"
