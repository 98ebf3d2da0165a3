"""Home Assistant MQTT discovery: a bridge device for the daemon and one device per source.

What Home Assistant shows (configs are retained, so it picks them up whenever it (re)starts):

* the bridge device named after the instance (``genre-stream``; identifier ``node_id``;
  ``configuration_url`` is the dashboard when it runs): a *Status* connectivity sensor on ``<prefix>/status``.
* one device per source, ``<instance> <source>`` (``genre-stream radio``), linked to the bridge with ``via_device``:

  - audio sources (mic, stream, file): *Genre* (an enum sensor: the model's labels plus
    ``NON_GENRE_STATES``), *Genre confidence* (%), a *Genre change* event entity;
  - watch sources, which publish whole tracks rather than a running state: *Last track genre*
    (with path, confidence and duration as attributes) and a *Track tagged* event entity;
  - every source: an *Input* sensor of class ``running`` (Running / Not running: audio flows, the
    folder is watched) on the source's availability topic and, when periodic stats are on,
    diagnostic sensors (*Errors*; *Real-time factor* for audio sources; *Reconnects* for mic and
    stream sources).

A dead source must not look alive: the source entities are available only while the daemon's
status topic AND the source's own availability topic say ``online`` (``availability_mode:
all``), and the state sensors also expire when no state arrives for a few hops.

``DiscoveryLedger`` remembers in the state dir what was announced, so entities of a source
that was renamed or removed (also across a restart) are retracted instead of lingering; a
one-off run keeps it in memory and retracts its sources' entities at its end (``sinks.mqtt``).

Entity ids come from ``default_entity_id`` (Home Assistant 2025.10 and later); older versions
drop that key, as MQTT discovery drops every key it does not know, and derive the ids from the
device and entity names (docs/DAEMON.md lists both).
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..common.fsutil import atomic_path
from ..config import DashboardConfig, HomeAssistantConfig
from ..config.mqtt import Instance
from ..sources import TRACK_KINDS
from .base import SourceInfo
from .messages import NON_GENRE_STATES
from .topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

# NON_GENRE_STATES (messages.py): states a source's genre sensor takes besides the model's labels, the
# state payload's ``state`` whenever it is not ``music``. Home Assistant rejects enum states missing from ``options``.

BIRTH_WINDOW = 1.0  # seconds: Home Assistant births heard within this window make one re-announcement
EXPIRE_HOPS = 4  # a state sensor goes unavailable after this many hops without a state...
EXPIRE_MIN_SECONDS = 30  # ...but never sooner than this (short hops on a loaded machine)
STATS_EXPIRE_INTERVALS = 3  # diagnostic sensors expire after this many missed stats messages
ATTRIBUTE_DECIMALS = 3
ATTRIBUTE_STEP = 0.05  # re-publish the probabilities attribute once one of them moved this much
LEDGER_FILE = "homeassistant-discovery.json"
ORIGIN = {"name": "genre-stream", "sw_version": __version__}
RECONNECTING_SOURCES = ("mic", "stream")  # kinds whose stats count reconnects
BRIDGE_KEY = "bridge_status"  # the daemon's own entity (its Status), under the node id like every key


@dataclass(frozen=True)
class Discovery:
    topic: str
    payload: bytes  # b"" retracts the entity
    source: str | None = None  # the source whose entity this is; None: the daemon's own (shared by its instance)


def slug(source: str) -> str:
    """Home Assistant ids allow [a-zA-Z0-9_-]; anything else in a source id becomes _."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", source)


def dashboard_url(dashboard: DashboardConfig | None) -> str | None:
    """The dashboard's address for the device page: a wildcard bind is reached through this host's name;
    a random port (0) is unknown before it binds, so no link; the token is a secret and stays out."""
    if dashboard is None or dashboard.port == 0:
        return None
    host = dashboard.host
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{dashboard.port}/"


def expire_after(hop_seconds: float) -> int:
    return max(EXPIRE_MIN_SECONDS, math.ceil(EXPIRE_HOPS * hop_seconds))


GENRE_TEMPLATE = "{{ value_json.genre if value_json.state == 'music' else value_json.state }}"
CONFIDENCE_TEMPLATE = "{{ (value_json.confidence * 100) | round(1) }}"
# Event entities need {"event_type": ...}; other event types on the same topic render {} and are ignored.
GENRE_CHANGE_TEMPLATE = (
    "{% if value_json.type == 'genre_changed' %}"
    '{"event_type":"genre_changed","from":{{ value_json["from"] | tojson }},"to":{{ value_json.to | tojson }},'
    '"confidence":{{ value_json.confidence | round(3) }}}'
    "{% else %}{}{% endif %}"
)
TRACK_TAGGED_TEMPLATE = (
    "{% if value_json.type == 'track_tagged' %}"
    '{"event_type":"track_tagged","path":{{ value_json.path | tojson }},"genre":{{ value_json.genre | tojson }},'
    '"confidence":{{ value_json.confidence | round(3) }},"duration":{{ value_json.duration | round(1) }}}'
    "{% else %}{}{% endif %}"
)
TRACK_ATTRIBUTES_TEMPLATE = (
    "{{ {'path': value_json.path, 'confidence': value_json.confidence | round(3),"
    " 'duration': value_json.duration | round(1)} | tojson }}"
)


def discovery_messages(
    ha: HomeAssistantConfig, instance: Instance, topics: Topics, sources: Iterable[SourceInfo], model: str,
    configuration_url: str | None,
) -> list[Discovery]:
    """Every config the daemon announces: the bridge's, then each source's."""
    node = ha.node(instance)
    bridge: dict[str, Any] = {
        "identifiers": [node],
        "name": instance.device_name,
        "manufacturer": "genre-stream",
        "model": model,
        "sw_version": __version__,
    }
    if configuration_url:
        bridge["configuration_url"] = configuration_url
    messages = [
        _config(ha, node, "binary_sensor", BRIDGE_KEY, bridge, {
            "name": "Status",
            "state_topic": topics.status,
            "payload_on": ONLINE,
            "payload_off": OFFLINE,
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        })
    ]
    for info in sources:
        messages += _source_configs(ha, node, instance, topics, info)
    return messages


def _source_configs(ha: HomeAssistantConfig, node: str, instance: Instance, topics: Topics, info: SourceInfo) -> list[Discovery]:
    """One source's device: its input sensor, its genre entities (live or whole tracks) and its diagnostics."""
    s = slug(info.id)
    device = {
        "identifiers": [f"{node}_{s}"],
        "name": instance.source_device_name(info.id),
        "manufacturer": "genre-stream",
        "model": f"{info.kind or 'audio'} source",
        "via_device": node,
    }
    daemon_up = [{"topic": topics.status}]
    alive = {"availability": [*daemon_up, {"topic": topics.availability(info.id)}], "availability_mode": "all"}
    if instance.one_off:  # its availability is not retained (sinks.mqtt): Home Assistant could miss its "online"
        alive = {"availability": daemon_up}
    # "running" reads Running / Not running: audio flows (a folder: it is watched) or not. "connectivity" read
    # Connected / Disconnected, wrong for a microphone or a file; "sound" (Detected / Clear) would say "Detected"
    # for a stream that flows but is silent, which is the genre sensor's "silence", not this one's business.
    audio = {
        "name": "Input",
        "state_topic": topics.availability(info.id),
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "device_class": "running",
        "availability": daemon_up,
    }
    entities: list[Entity] = [("binary_sensor", "audio", audio)]  # key "audio" kept: unique ids (and history) stay
    entities += _track_entities(topics, info, alive) if info.kind in TRACK_KINDS else _live_entities(topics, info, alive)
    entities += _diagnostic_entities(topics, info, daemon_up)
    return [_config(ha, node, component, f"{s}_{key}", device, fields, info.id) for component, key, fields in entities]


Entity = tuple[str, str, dict[str, Any]]  # (component, key under the source's slug, config fields)


def _track_entities(topics: Topics, info: SourceInfo, alive: dict[str, Any]) -> list[Entity]:
    """A watch folder: the last tagged track's genre, and an event per tagged track."""
    return [
        ("sensor", "last_track", {
            **alive,
            "name": "Last track genre",
            "icon": "mdi:music-box",
            "state_topic": topics.track(info.id),
            "device_class": "enum",
            "options": list(info.labels),
            "value_template": "{{ value_json.genre }}",
            "json_attributes_topic": topics.track(info.id),
            "json_attributes_template": TRACK_ATTRIBUTES_TEMPLATE,
        }),
        ("event", "track_tagged", {
            **alive,
            "name": "Track tagged",
            "icon": "mdi:music-box-outline",
            "state_topic": topics.event(info.id),
            "event_types": ["track_tagged"],
            "value_template": TRACK_TAGGED_TEMPLATE,
        }),
    ]


def _live_entities(topics: Topics, info: SourceInfo, alive: dict[str, Any]) -> list[Entity]:
    """A running stream: the genre (or a non-genre state), its confidence, and genre-change events."""
    expire = expire_after(info.hop_seconds)
    return [
        ("sensor", "genre", {
            **alive,
            "name": "Genre",
            "icon": "mdi:music",
            "state_topic": topics.state(info.id),
            "device_class": "enum",
            "options": [*info.labels, *NON_GENRE_STATES],
            "value_template": GENRE_TEMPLATE,
            "json_attributes_topic": topics.attributes(info.id),
            "expire_after": expire,
        }),
        ("sensor", "confidence", {
            **alive,
            "name": "Genre confidence",
            "icon": "mdi:percent",
            "state_topic": topics.state(info.id),
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "value_template": CONFIDENCE_TEMPLATE,
            "expire_after": expire,
        }),
        ("event", "genre_change", {
            **alive,
            "name": "Genre change",
            "icon": "mdi:swap-horizontal",
            "state_topic": topics.event(info.id),
            "event_types": ["genre_changed"],
            "value_template": GENRE_CHANGE_TEMPLATE,
        }),
    ]


def _diagnostic_entities(topics: Topics, info: SourceInfo, daemon_up: list[dict[str, str]]) -> list[Entity]:
    """The source's counters, where stats are published: available while the daemon is (a down source's
    counters are exactly what one wants to see)."""
    if info.stats_interval <= 0:
        return []
    diagnostic = {
        "availability": daemon_up,
        "state_topic": topics.stats(info.id),
        "entity_category": "diagnostic",
        "expire_after": math.ceil(STATS_EXPIRE_INTERVALS * info.stats_interval),
    }
    out: list[Entity] = [("sensor", "errors", {
        **diagnostic, "name": "Errors", "icon": "mdi:alert-circle-outline",
        "state_class": "total_increasing", "value_template": "{{ value_json.errors }}",
    })]
    if info.kind not in TRACK_KINDS:
        out.append(("sensor", "real_time_factor", {
            **diagnostic, "name": "Real-time factor", "icon": "mdi:speedometer",
            "state_class": "measurement", "suggested_display_precision": 3,
            "value_template": "{{ value_json.real_time_factor | round(3) }}",
        }))
    if info.kind in RECONNECTING_SOURCES:
        out.append(("sensor", "reconnects", {
            **diagnostic, "name": "Reconnects", "icon": "mdi:connection",
            "state_class": "total_increasing", "value_template": "{{ value_json.reconnects }}",
        }))
    return out


def bridge_config_topic(ha: HomeAssistantConfig, instance: Instance) -> str:
    """The daemon's own (the instance's) discovery config: its device and *Status*."""
    return _config_topic(ha, ha.node(instance), "binary_sensor", BRIDGE_KEY)


def _config_topic(ha: HomeAssistantConfig, node: str, component: str, key: str) -> str:
    return f"{ha.discovery_prefix}/{component}/{node}/{key}/config"


def _config(ha: HomeAssistantConfig, node: str, component: str, key: str, device: dict[str, Any], fields: dict[str, Any],
            source: str | None = None) -> Discovery:
    unique_id = f"{node}_{key}"
    payload = {
        **fields,
        "unique_id": unique_id,
        # HA 2025.10+ (it replaces object_id, deprecated there); older versions drop the key and name the entity
        # after the device and entity names, which the "<instance> <source>" device names keep close to this id.
        "default_entity_id": f"{component}.{unique_id}",
        "device": device,
        "origin": ORIGIN,
    }
    return Discovery(_config_topic(ha, node, component, key), _dumps(payload), source)


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class AttributeGate:
    """The genre sensor's attributes (the class probabilities), rounded and published only on a real change.

    Home Assistant records a new state row whenever attributes change; ten unrounded floats
    every hop would fill its database with noise. Sources publish from their own threads.
    """

    def __init__(self) -> None:
        self._last: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def update(self, source: str, probabilities: dict[str, float]) -> bytes | None:
        """The payload to publish for this source now, or None while nothing moved by ``ATTRIBUTE_STEP``."""
        if not probabilities:  # silence: no probabilities, keep the last ones
            return None
        rounded = {label: round(float(p), ATTRIBUTE_DECIMALS) for label, p in probabilities.items()}
        with self._lock:
            last = self._last.get(source)
            if last is not None and last.keys() == rounded.keys() and all(
                abs(rounded[k] - last[k]) < ATTRIBUTE_STEP for k in rounded
            ):
                return None
            self._last[source] = rounded
        return _dumps(rounded)


class DiscoveryLedger:
    """The discovery topics announced last time, kept in ``<state_dir>/homeassistant-discovery.json``.

    Without it a source renamed across a restart leaves its old entities in Home Assistant
    for ever ("unavailable" ghosts): the new run never heard of the old name. The file is
    small and rewritten atomically after each announcement. Each instance has its own file
    (``Instance.state_file``): a shared one made two daemons retract each other's entities.
    ``path=None`` keeps it in memory (a one-off run: it retracts its sources' entities at its end,
    and must not retract, nor forget, what a service of its instance beside it announced).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._topics = self._load()

    def _load(self) -> set[str]:
        if self.path is None:
            return set()
        try:
            data = json.loads(self.path.read_text())
            return {str(t) for t in data["topics"]}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s); entities announced by an earlier run cannot be retracted", self.path, exc)
            return set()

    def plan(self, messages: list[Discovery]) -> list[Discovery]:
        """Retractions (empty retained payloads) for what is no longer announced, then ``messages``."""
        current = {m.topic for m in messages}
        return [Discovery(t, b"") for t in sorted(self._topics - current)] + messages

    def record(self, messages: list[Discovery]) -> None:
        topics = {m.topic for m in messages}
        if self.path is None or topics == self._topics and self.path.exists():
            self._topics = topics
            return  # in memory, or a re-announcement of the same entities (Home Assistant restarted): nothing to write
        self._topics = topics
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"topics": sorted(self._topics)}, indent=1) + "\n")
        except OSError as exc:
            log.warning("cannot write %s (%s); a renamed source may leave stale entities after a restart", self.path, exc)


class BirthWatch:
    """Home Assistant's birth messages -> at most one re-announcement at a time, one per ``window`` at most.

    Home Assistant publishes ``online`` on ``<discovery_prefix>/status`` when it (re)starts, and
    the discovery configs are then sent again. But anyone allowed to publish there can send it
    20,000 times: announcing for each one inside paho's callback (a ledger write and a dozen
    QoS 1 publishes each) stalled state delivery for 20 s, grew paho's queue to ~500 MB, and
    made a stop take 47 s. Here a message costs one comparison in the callback (``heard``);
    this watcher's own thread waits out the window so a burst becomes one announcement, and
    ``reannounce(births)`` runs to its end (the sink waits for the broker's acks) before the
    next one can start. Anything but ``online``/``offline`` is counted and ignored.
    """

    def __init__(self, topic: str, reannounce: Callable[[int], None], window: float = BIRTH_WINDOW) -> None:
        self.topic = topic
        self.window = window
        self._reannounce = reannounce
        self._lock = threading.Lock()
        self._pending = 0  # births since the last re-announcement
        self.heard = 0  # "online" births since start
        self.ignored = 0  # other payloads on the topic since start (garbage: never acted on)
        self.announcements = 0  # re-announcements made
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-ha-birth", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def heard_message(self, payload: bytes) -> None:
        """paho's on_message for the birth topic: constant work whatever arrives."""
        if payload == _BIRTH:
            with self._lock:
                self._pending += 1
                self.heard += 1
            self._wake.set()
        elif payload != _LAST_WILL:
            with self._lock:
                self.ignored += 1
                n = self.ignored
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a garbage flood is not a log flood
                log.warning("ignoring a %d-byte message on %s: Home Assistant's status topic carries only %r or %r "
                            "(%d ignored so far)", len(payload), self.topic, ONLINE, OFFLINE, n)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.wait(self.window):  # let a burst finish: one announcement for all of it
                return
            with self._lock:
                births, self._pending = self._pending, 0
                self._wake.clear()
            if births:
                self.announcements += 1
                try:
                    self._reannounce(births)
                except Exception:  # a failing announcement must not end the watcher
                    log.exception("re-announcing discovery configs failed")


_BIRTH, _LAST_WILL = ONLINE.encode(), OFFLINE.encode()
