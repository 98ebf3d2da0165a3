"""MQTT output (paho-mqtt 2.x, MQTT 3.1.1 or 5, optional TLS).

Topics and their QoS and retain rules: ``topics.py``. Stats are dropped while offline (they are
only news); with Home Assistant discovery, attributes are re-published only on a real change.

States and events go through the on-disk ``Outbox`` and leave it only when the broker has
acknowledged them, so a broker restart or a daemon restart loses nothing and order is kept.
``publish`` never waits for that file (``mqtt_intake``: a locked file leaves messages in a
bounded memory queue). One network thread owns the paho client's connect/loop cycle
(``mqtt_connection``); it logs why a connection failed (refused, TLS, DNS, credentials, no
answer to CONNECT) and retries with exponential backoff while classification carries on.
Home Assistant's birth messages are coalesced off paho's thread (``homeassistant.BirthWatch``).

Every name this sink uses on the broker (topic prefix, client id, node id, device names, its
files in the state dir) comes from the instance (``config.Instance``), so daemons of different
instances share a broker without touching each other. A one-off run (files only) leaves nothing
of its sources behind: their topics are not retained, and their discovery configs are retracted
at its clean end; what it found on its instance's own topics (a service of the same instance
online, that one's device config) it leaves or puts back as it was (``_take_back``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..common.jsonsafe import dumps
from ..common.redact import redact_url
from ..config import HomeAssistantConfig, MqttConfig
from .base import Publishable, SourceAvailability, SourceInfo
from .homeassistant import LEDGER_FILE, AttributeGate, BirthWatch, Discovery, DiscoveryLedger, bridge_config_topic, discovery_messages
from .messages import GenreEvent, GenreState, SourceStats
from .mqtt_connection import LOOP_TIMEOUT, Connection, contained, tls_context
from .mqtt_intake import Intake, Pending
from .outbox import Outbox
from .topics import OFFLINE, ONLINE, Topics, availability_word, home_assistant_status

log = logging.getLogger(__name__)

QUEUE_FILE = "mqtt-queue.sqlite3"
INFLIGHT_WINDOW = 64  # unacknowledged QoS 1 messages handed to paho at once
ANNOUNCE_ACK_TIMEOUT = 30.0  # seconds a re-announcement waits for the broker's acks before the next may start


class MqttSink:
    def __init__(
        self, config: MqttConfig, homeassistant: HomeAssistantConfig, state_dir: Path, configuration_url: str | None = None
    ) -> None:
        if not config.url:
            raise ValueError("MqttSink needs mqtt.url")
        self.config = config
        self.ha = homeassistant
        self.url = redact_url(config.url)  # for log lines: never the password
        self.instance = config.identity  # every name below derives from it (config.Instance)
        self.one_off = self.instance.one_off
        self.topics = Topics(config.prefix)
        self.status_topic = self.topics.status
        self.configuration_url = configuration_url  # the dashboard, shown on the Home Assistant device page
        context = tls_context(config) if config.tls else None  # fail on bad files before creating anything
        self.outbox = Outbox(state_dir / self.instance.state_file(QUEUE_FILE), config.queue_max)
        v5 = config.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.effective_client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,  # the network thread below reconnects, logging why
        )
        self._props: Properties | None = None
        if v5:
            self._props = Properties(PacketTypes.PUBLISH)
            self._props.ContentType = "application/json"
        if context is not None:
            self.client.tls_set_context(context)
        username, password = config.credentials  # the keys, else the URL's user info
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        self.client.on_connect = contained(self._on_connect)
        self.client.on_disconnect = contained(self._on_disconnect)
        self.client.on_publish = contained(self._on_publish)
        self.client.on_message = contained(self._on_message)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._intake = Intake(self.outbox, self._written)
        self._queued_on_disk = 0  # the outbox's length when last read (shown while the file cannot be read)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._last_handed = 0  # highest outbox id handed to paho
        self._lock = threading.Lock()  # guards _inflight, _acked_early, _last_handed, _sources
        self._pump_lock = threading.Lock()  # one pump at a time, so rows go out in queue order
        self._acked_early: set[int] = set()  # acks that overtook the recording of their mid
        self._unremoved: set[int] = set()  # acknowledged rows the queue could not delete yet (disk full, file locked)
        self._publishing = False  # a queued row is inside client.publish right now
        self._sources: list[SourceInfo] = []
        self._model = ""
        self._announce_lock = threading.Lock()  # network thread (connect, HA restart) vs. reloads
        # A one-off run keeps its ledger in memory: it retracts its entities itself at its end, and must neither
        # retract nor overwrite the record of a service of the same instance that shares the state dir.
        self._ledger = DiscoveryLedger(None if self.one_off else state_dir / self.instance.state_file(LEDGER_FILE))
        self._announced: list[Discovery] = []  # the configs of the last announcement
        # A one-off run: the instance's own topics (status, the daemon's device config), and what they held when it
        # first connected (None: nothing); learned from a subscription made before it publishes anything.
        self._instance_topics = {self.status_topic}
        if homeassistant.enabled:
            self._instance_topics.add(bridge_config_topic(homeassistant, self.instance))
        self._found: dict[str, bytes | None] = {}
        self._attributes = AttributeGate()
        self.births = BirthWatch(home_assistant_status(homeassistant.discovery_prefix), self._reannounce)
        self._connection = Connection(self.client, config, self.url, self._stop, self.connected, self._pump, self._queued)
        self._thread = threading.Thread(target=self._connection.run, name="mqtt", daemon=True)
        self.connects = 0
        self.delivered = 0  # messages the broker acknowledged since start (dashboard metrics)

    # ----------------------------------------------------------- sink interface

    def start(self) -> None:
        self._intake.start()
        if self.ha.enabled:
            self.births.start()
        self._thread.start()

    def publish(self, message: Publishable) -> None:
        """Queue ``message`` (QoS 1 via the outbox; stats QoS 0, only while connected); never waits for the queue file.

        A one-off run retains none of its sources' topics: a file that has ended has no current state, and
        emptying them at its end would hand every subscriber an empty "state" (no JSON) after the run's last word.
        """
        topics = self.topics
        keep = not self.one_off  # the retain flag of a source's state, availability, attributes and track
        if isinstance(message, SourceAvailability):
            queued = [Pending(topics.availability(message.source), availability_word(message.online).encode(), keep)]
        elif isinstance(message, SourceStats):
            if self.connected.is_set():
                self.client.publish(topics.stats(message.source), dumps(message.to_dict()).encode(), qos=0,
                                    properties=self._props)
            return
        elif isinstance(message, GenreState):
            payload = dumps(message.to_dict()).encode()
            queued = [Pending(topics.state(message.source), payload, keep)]
            attributes = self._attributes.update(message.source, message.probabilities) if self.ha.enabled else None
            if attributes is not None:
                queued.append(Pending(topics.attributes(message.source), attributes, keep))
        elif isinstance(message, GenreEvent):
            payload = dumps(message.to_dict()).encode()
            queued = [Pending(topics.event(message.source), payload, False)]
            if message.type == "track_tagged" and self.ha.enabled:
                queued.append(Pending(topics.track(message.source), payload, keep))
        else:  # pragma: no cover - the Publishable union is closed
            raise TypeError(f"cannot publish {type(message).__name__}")
        if self._intake.put(queued):
            self._written()

    @property
    def lost(self) -> int:
        """Messages that could not be queued in the current outage of the queue file (disk full)."""
        return self._intake.lost

    def _written(self) -> None:
        """Messages reached the outbox: send them right away from this thread (paho wakes its loop) instead of
        waiting for the network thread's next tick, which was most of the delivery latency."""
        if self.connected.is_set():
            self._pump()

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        with self._lock:
            self._sources = list(sources)
            self._model = model
        if self.connected.is_set():
            contained(self._announce)()  # called from the daemon's thread: a discovery fault must not end a reload

    def stats(self) -> dict[str, int | float]:
        return {"mqtt_queue": self.queue_depth}

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to drain, publish ``offline``, disconnect.

        Whatever is still queued stays on disk and is delivered first on the next start; what
        never got into the queue file (locked the whole time) is counted and logged as lost.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pending():
            time.sleep(0.02)
        unwritten = self._intake.close(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self.births.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()) + 1.0)
        # The network thread is gone: this thread owns the client now.
        if self.connected.is_set():
            if self.one_off:
                self._take_back(deadline)  # before "offline": the last word of a run stays its status
            if self._guest:
                log.info("%s was %s when this one-off run connected (a daemon of instance %r runs): left as it is",
                         self.status_topic, ONLINE, self.instance.name)
            else:
                self._settle([self.client.publish(self.status_topic, OFFLINE, qos=1, retain=True)], deadline)
            self.client.disconnect()
            self.client.loop(timeout=LOOP_TIMEOUT)
        left = self._queued()
        if unwritten:
            log.error("%d MQTT message(s) could not be written to %s (locked by another process until the stop) and are lost",
                      unwritten, self.outbox.path)
        if left:
            log.warning(
                "%d MQTT message(s) not delivered to %s; kept in %s and sent first on the next start",
                left, self.url, self.outbox.path,
            )
        self.outbox.close()
        return left == 0 and unwritten == 0

    @property
    def queue_depth(self) -> int:
        """Messages not delivered yet: on disk and, while the file is locked, in memory (never waits for the file)."""
        return self._queued() + len(self._intake)

    # ----------------------------------------------------------- network thread

    def _queued(self) -> int:
        """The outbox's length; the last one read while the file cannot be read (another process holds it)."""
        try:
            self._queued_on_disk = len(self.outbox)
        except sqlite3.Error:
            pass
        return self._queued_on_disk

    def _pending(self) -> bool:
        with self._lock:
            inflight = bool(self._inflight)
        return inflight or len(self._intake) > 0 or self._queued() > 0

    def _pump(self) -> None:
        """Hand the next queued messages to paho, oldest first, keeping at most INFLIGHT_WINDOW unacknowledged.

        Runs in the network thread and in publishing threads. paho's own lock is held while
        it calls ``_on_publish``, so ``self._lock`` is never held across ``client.publish``
        (that would deadlock); an ack that arrives before its mid is recorded is parked in
        ``_acked_early`` instead.
        """
        with self._pump_lock:
            self._retry_removals()
            with self._lock:
                free = INFLIGHT_WINDOW - len(self._inflight)
                after = self._last_handed
            if free <= 0:
                return
            try:
                rows = self.outbox.peek(after, free)
            except sqlite3.Error:
                return  # the file is held by another process even for reading: the next tick tries again
            for row in rows:
                with self._lock:
                    self._publishing = True
                info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain, properties=self._props)
                with self._lock:
                    self._publishing = False
                    acked = info.mid in self._acked_early
                    self._acked_early.clear()
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return  # not connected: the row stays queued and goes out after the reconnect
                    self._last_handed = row.id
                    if not acked:
                        self._inflight[info.mid] = row.id
                if acked:
                    self._acknowledged(row.id)

    # ----------------------------------------------------------- paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason, properties) -> None:
        self._connection.answered(not reason.is_failure)
        if reason.is_failure:
            hint = (" (check the user name and password: mqtt.username / mqtt.password, or user:password@ in mqtt.url)"
                    if reason.value in (0x04, 0x05, 0x86, 0x87) else "")
            log.error("MQTT broker %s refused the connection: %s%s", self.url, reason, hint)
            return
        self.connects += 1
        log.info("connected to MQTT broker %s (%s)", self.url, "MQTT 5" if self.config.protocol == "5" else "MQTT 3.1.1")
        with self._lock:
            # paho re-sends what it still holds in flight; everything else restarts from the queue.
            self._last_handed = max(self._inflight.values(), default=0)
        if self.one_off and self.connects == 1:
            # Before publishing anything: what arrives retained on these was there before this run (a service of the
            # same instance); what arrives live is this run's own message (the broker keeps the order of a connection).
            client.subscribe([(topic, 0) for topic in sorted(self._instance_topics)])
        client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        self.connected.set()  # before discovery: a failing announcement must not hold up states and events
        if self.ha.enabled:
            # QoS 0: Home Assistant sends its birth at QoS 0, and a flood then costs no PUBACK per message.
            client.subscribe(self.births.topic, qos=0)
        self._announce()

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason, properties) -> None:
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata, mid: int, reason, properties) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            if row is None and self._publishing:
                self._acked_early.add(mid)
        if row is not None:
            self._acknowledged(row)

    def _acknowledged(self, row_id: int) -> None:
        """The broker has the message: drop it from the queue, or remember to once the disk allows."""
        self.delivered += 1
        try:
            self.outbox.remove(row_id)
        except sqlite3.Error as exc:
            with self._lock:
                first = not self._unremoved
                self._unremoved.add(row_id)
            if first:
                log.error("MQTT queue %s: cannot delete delivered messages (%s); retrying (they are not sent twice "
                          "unless the daemon restarts meanwhile)", self.outbox.path, exc)

    def _retry_removals(self) -> None:
        with self._lock:
            pending = sorted(self._unremoved)
        if not pending:
            return
        try:
            for row_id in pending:
                self.outbox.remove(row_id)
                with self._lock:
                    self._unremoved.discard(row_id)
        except sqlite3.Error:
            return  # still failing; logged when it started
        log.warning("MQTT queue %s: delivered messages deleted again (%d)", self.outbox.path, len(pending))

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        # Home Assistant publishes "online" on <discovery_prefix>/status when it (re)starts; the watcher
        # coalesces them (a flood is one re-announcement) and announces from its own thread.
        if message.topic == self.births.topic:
            self.births.heard_message(message.payload)
        elif message.topic in self._instance_topics and self.one_off and message.topic not in self._found:
            self._found[message.topic] = bytes(message.payload) if message.retain else None  # the first answer counts

    @property
    def _guest(self) -> bool:
        """A one-off run that found its instance's status ``online``: a daemon of the same instance runs, and owns it."""
        return self.one_off and self._found.get(self.status_topic) == ONLINE.encode()

    def _reannounce(self, births: int) -> None:
        """The birth watcher's thread: announce once for ``births`` messages, and return only when the broker has it all."""
        if not self.connected.is_set():
            return  # the next connection announces anyway
        log.info("Home Assistant came online (%d birth message%s coalesced); re-announcing discovery configs",
                 births, "" if births == 1 else "s")
        infos = self._announce()
        end = time.monotonic() + ANNOUNCE_ACK_TIMEOUT
        while not all(_settled(i) for i in infos) and self.connected.is_set() and time.monotonic() < end:
            if self._stop.wait(0.05):
                return

    # ----------------------------------------------------------- a one-off run's end (the closing thread owns the client)

    def _take_back(self, deadline: float) -> None:
        """Retract the discovery configs of the run's sources: their entities leave Home Assistant (their topics were
        never retained). The instance's own device config is not the run's to retract: the one it found (a service's)
        is put back as it was, else it stays like the status, as after a service's stop."""
        configs = [m.topic for m in self._announced if m.source is not None]
        messages = [(topic, b"") for topic in configs]
        messages += [(topic, found) for topic, found in sorted(self._found.items()) if found and topic != self.status_topic]
        left = self._settle([self.client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages], deadline)
        log.info("one-off run: took back %d discovery config(s)%s%s", len(configs),
                 ", put back the daemon's device config it found" if len(messages) > len(configs) else "",
                 f" ({left} not acknowledged)" if left else "")

    def _settle(self, infos: list[mqtt.MQTTMessageInfo], deadline: float) -> int:
        """Run the client's loop until the broker has acknowledged ``infos`` or ``deadline`` (at least 1 s from now)
        passed; how many were not acknowledged."""
        end = time.monotonic() + max(1.0, deadline - time.monotonic())
        while not all(_settled(i) for i in infos) and time.monotonic() < end:
            if self.client.loop(timeout=LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        return sum(not _settled(i) for i in infos)

    def _announce(self) -> list[mqtt.MQTTMessageInfo]:
        """Publish the discovery configs, retracting what the ledger says was announced before and is gone now."""
        if not self.ha.enabled:
            return []
        with self._lock:
            sources, model = list(self._sources), self._model
        if not sources:
            return []  # not told yet (connected before the daemon started its sources): nothing to compare with
        with self._announce_lock:
            messages = discovery_messages(self.ha, self.instance, self.topics, sources, model, self.configuration_url)
            infos = [self.client.publish(m.topic, m.payload, qos=1, retain=True) for m in self._ledger.plan(messages)]
            self._ledger.record(messages)
            self._announced = messages
        return infos


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Acknowledged, or never going to be (paho refused to queue it): nothing left to wait for."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):  # ERR_QUEUE_SIZE / not connected: paho raises instead of answering
        return True
