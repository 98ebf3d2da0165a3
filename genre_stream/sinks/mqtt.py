"""MQTT output (paho-mqtt 2.x, MQTT 3.1.1 or 5, optional TLS).

Topics and their QoS and retain rules: ``topics.py``. Stats are dropped while offline (they are
only news); with Home Assistant discovery, attributes are re-published only on a real change.

States and events go through the on-disk ``Outbox`` and leave it only when the broker has
acknowledged them, so a broker restart or a daemon restart loses nothing and order is kept.
One network thread owns the paho client's connect/loop cycle; it logs why a connection failed
(refused, TLS, DNS, credentials) and retries with exponential backoff while classification
carries on.
"""

from __future__ import annotations

import functools
import logging
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..common.backoff import Backoff
from ..common.jsonsafe import dumps
from ..common.redact import redact_url
from ..config import ConfigError, HomeAssistantConfig, MqttConfig
from .base import Publishable, SourceAvailability, SourceInfo
from .homeassistant import LEDGER_FILE, AttributeGate, DiscoveryLedger, discovery_messages
from .messages import GenreEvent, GenreState, SourceStats
from .outbox import Outbox
from .topics import OFFLINE, ONLINE, Topics, availability_word, home_assistant_status

log = logging.getLogger(__name__)

QUEUE_FILE = "mqtt-queue.sqlite3"
INFLIGHT_WINDOW = 64  # unacknowledged QoS 1 messages handed to paho at once
LOOP_TIMEOUT = 0.5  # network loop tick; publishing threads wake the loop themselves (paho socketpair)
SHORT_CONNECTION = 10.0  # a connection closed sooner than this after CONNACK counts as "kicked right away"
FLAP_LIMIT = 3  # that many in a row: say that another client probably uses our client id


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Build the TLS context up front so a bad CA/cert/key file is a config error naming the file."""
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"mqtt.ca_file = {str(config.ca_file)!r}: not a usable PEM CA certificate file ({exc})") from None
    if config.cert_file:
        try:
            ctx.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
        except (ssl.SSLError, OSError) as exc:
            files = f"{config.cert_file}" + (f" / {config.key_file}" if config.key_file else "")
            raise ConfigError(
                f"mqtt.cert_file/mqtt.key_file = {files!r}: client certificate and key do not load ({exc})"
            ) from None
    if config.tls_insecure:
        ctx.check_hostname = False
    return ctx


class MqttSink:
    def __init__(
        self, config: MqttConfig, homeassistant: HomeAssistantConfig, state_dir: Path, configuration_url: str | None = None
    ) -> None:
        if not config.url:
            raise ValueError("MqttSink needs mqtt.url")
        self.config = config
        self.ha = homeassistant
        self.url = redact_url(config.url)  # for log lines: never the password
        self.topics = Topics(config.prefix)
        self.status_topic = self.topics.status
        self.configuration_url = configuration_url  # the dashboard, shown on the Home Assistant device page
        context = tls_context(config) if config.tls else None  # fail on bad files before creating anything
        self.outbox = Outbox(state_dir / QUEUE_FILE, config.queue_max)
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
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        self.client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        self.client.on_connect = _contained(self._on_connect)
        self.client.on_disconnect = _contained(self._on_disconnect)
        self.client.on_publish = _contained(self._on_publish)
        self.client.on_message = _contained(self._on_message)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._last_handed = 0  # highest outbox id handed to paho
        self._lock = threading.Lock()  # guards _inflight, _acked_early, _last_handed, _sources
        self._pump_lock = threading.Lock()  # one pump at a time, so rows go out in queue order
        self._acked_early: set[int] = set()  # acks that overtook the recording of their mid
        self._unremoved: set[int] = set()  # acknowledged rows the queue could not delete yet (disk full)
        self.lost = 0  # messages that could not be queued in the current outage of the queue file
        self._publishing = False  # a queued row is inside client.publish right now
        self._sources: list[SourceInfo] = []
        self._model = ""
        self._announce_lock = threading.Lock()  # network thread (connect, HA restart) vs. reloads
        self._ledger = DiscoveryLedger(state_dir / LEDGER_FILE)
        self._attributes = AttributeGate()
        self._thread = threading.Thread(target=self._network, name="mqtt", daemon=True)
        self.connects = 0
        self.delivered = 0  # messages the broker acknowledged since start (dashboard metrics)

    # ----------------------------------------------------------- sink interface

    def start(self) -> None:
        self._thread.start()

    def publish(self, message: Publishable) -> None:
        topics = self.topics
        if isinstance(message, SourceAvailability):
            self._queue(topics.availability(message.source), availability_word(message.online).encode(), retain=True)
            if self.connected.is_set():
                self._pump()
            return
        payload = dumps(message.to_dict()).encode()
        if isinstance(message, GenreState):
            self._queue(topics.state(message.source), payload, retain=True)
            attributes = self._attributes.update(message.source, message.probabilities) if self.ha.enabled else None
            if attributes is not None:
                self._queue(topics.attributes(message.source), attributes, retain=True)
        elif isinstance(message, GenreEvent):
            self._queue(topics.event(message.source), payload, retain=False)
            if message.type == "track_tagged" and self.ha.enabled:
                self._queue(topics.track(message.source), payload, retain=True)
        elif isinstance(message, SourceStats):
            if self.connected.is_set():
                self.client.publish(topics.stats(message.source), payload, qos=0, properties=self._props)
            return
        else:  # pragma: no cover - the Publishable union is closed
            raise TypeError(f"cannot publish {type(message).__name__}")
        if self.connected.is_set():
            # Send right away from this thread (paho wakes its loop) instead of waiting for the
            # network thread's next tick: that tick was most of the delivery latency.
            self._pump()

    def _queue(self, topic: str, payload: bytes, retain: bool) -> None:
        """Put one QoS 1 message into the outbox; while it cannot be written (disk full) messages are counted as lost."""
        try:
            self.outbox.put(topic, payload, qos=1, retain=retain)
        except sqlite3.Error as exc:
            if not self.lost:
                log.error("MQTT queue %s cannot be written (%s); states and events are lost until it can",
                          self.outbox.path, exc)
            self.lost += 1
            return
        if self.lost:
            log.warning("MQTT queue %s is writable again; %d message(s) were lost meanwhile", self.outbox.path, self.lost)
            self.lost = 0

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        with self._lock:
            self._sources = list(sources)
            self._model = model
        if self.connected.is_set():
            _contained(self._announce)()  # called from the daemon's thread: a discovery fault must not end a reload

    def stats(self) -> dict[str, int | float]:
        return {"mqtt_queue": self.queue_depth}

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to drain, publish ``offline``, disconnect.

        Whatever is still queued stays on disk and is delivered first on the next start.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pending():
            time.sleep(0.02)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()) + 1.0)
        # The network thread is gone: this thread owns the client now.
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            end = time.monotonic() + max(1.0, deadline - time.monotonic())
            while not info.is_published() and time.monotonic() < end:
                if self.client.loop(timeout=LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            self.client.disconnect()
            self.client.loop(timeout=LOOP_TIMEOUT)
        left = len(self.outbox)
        if left:
            log.warning(
                "%d MQTT message(s) not delivered to %s; kept in %s and sent first on the next start",
                left, self.url, self.outbox.path,
            )
        self.outbox.close()
        return left == 0

    @property
    def queue_depth(self) -> int:
        return len(self.outbox)

    # ----------------------------------------------------------- network thread

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._inflight) or len(self.outbox) > 0

    def _network(self) -> None:
        """The connect/loop cycle; an unexpected error is logged and the cycle goes on (it is the only sender)."""
        while not self._stop.is_set():
            try:
                self._connect_and_loop()
            except Exception:
                log.exception("MQTT network thread: unexpected error; reconnecting in %.1f s", self.config.reconnect_max)
                self.connected.clear()
                try:
                    self.client.disconnect()
                except Exception:  # already down; the next cycle connects afresh
                    pass
                self._stop.wait(self.config.reconnect_max)

    def _connect_and_loop(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        need_connect = True
        first = True
        connected_since: float | None = None  # when this loop first saw the current connection up
        short_lived = 0  # connections in a row that the broker closed right after accepting them
        while not self._stop.is_set():
            if need_connect:
                try:
                    if first:
                        self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)
                        first = False
                    else:
                        self.client.reconnect()
                    need_connect = False
                except (OSError, ValueError) as exc:
                    first = first and not self.client.host  # connect() stored host/port before failing
                    log.warning(
                        "MQTT broker %s unreachable (%s); retrying in %.1f s, %d message(s) queued on disk",
                        self.url, _describe(exc), backoff.next_delay, len(self.outbox),
                    )
                    backoff.wait(self._stop)
                    continue
            rc = self.client.loop(timeout=LOOP_TIMEOUT)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                was_connected = self.connected.is_set()
                self.connected.clear()
                need_connect = True
                if connected_since is not None and time.monotonic() - connected_since < SHORT_CONNECTION:
                    short_lived += 1
                    if short_lived == FLAP_LIMIT:
                        log.error(
                            "MQTT broker %s closed the connection %d times in a row right after accepting it; another "
                            "client (a second daemon?) probably uses the client id %r: give each one its own "
                            "mqtt.client_id", self.url, short_lived, self.config.effective_client_id,
                        )
                elif was_connected:
                    backoff.reset()
                connected_since = None
                log.warning("MQTT connection to %s lost (%s); reconnecting in %.1f s", self.url, mqtt.error_string(rc), backoff.next_delay)
                backoff.wait(self._stop)
                continue
            if self.connected.is_set():
                now = time.monotonic()
                if connected_since is None:
                    connected_since = now
                elif now - connected_since >= SHORT_CONNECTION:
                    backoff.reset()  # a stable connection: the next outage starts fast again
                    short_lived = 0
                self._pump()

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
            for row in self.outbox.peek(after, free):
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
        if reason.is_failure:
            hint = " (check mqtt.username / mqtt.password)" if reason.value in (0x04, 0x05, 0x86, 0x87) else ""
            log.error("MQTT broker %s refused the connection: %s%s", self.url, reason, hint)
            return
        self.connects += 1
        log.info("connected to MQTT broker %s (%s)", self.url, "MQTT 5" if self.config.protocol == "5" else "MQTT 3.1.1")
        with self._lock:
            # paho re-sends what it still holds in flight; everything else restarts from the queue.
            self._last_handed = max(self._inflight.values(), default=0)
        client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        self.connected.set()  # before discovery: a failing announcement must not hold up states and events
        if self.ha.enabled:
            client.subscribe(home_assistant_status(self.ha.discovery_prefix), qos=1)
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
        # Home Assistant publishes "online" on <discovery_prefix>/status when it (re)starts.
        if message.payload == ONLINE.encode():
            log.info("Home Assistant came online; re-announcing discovery configs")
            self._announce()

    def _announce(self) -> None:
        """Publish the discovery configs, retracting what the ledger says was announced before and is gone now."""
        if not self.ha.enabled:
            return
        with self._lock:
            sources, model = list(self._sources), self._model
        if not sources:
            return  # not told yet (connected before the daemon started its sources): nothing to compare with
        with self._announce_lock:
            messages = discovery_messages(self.ha, self.topics, sources, model, self.configuration_url)
            for m in self._ledger.plan(messages):
                self.client.publish(m.topic, m.payload, qos=1, retain=True)
            self._ledger.record(messages)


def _contained(callback: Callable[..., None]) -> Callable[..., None]:
    """Log a paho callback's exception instead of letting it end the network loop (and with it every delivery)."""

    @functools.wraps(callback)
    def wrapper(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT %s failed; the connection carries on", callback.__name__)

    return wrapper


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"host name does not resolve: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
