"""The MQTT sink's network thread: connect, run paho's loop, reconnect with backoff, and say why.

Split from ``mqtt.py`` (which owns the queue and what is published) because each way a
connection goes wrong needs its own words in the log, and those words were the probe's
complaints: a broker that accepts TCP but never answers CONNECT was reported only after the
60 s keepalive, as a lost connection; and a broker that went down shortly after accepting us
was called a client-id clash.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..common.backoff import Backoff
from ..config import ConfigError, MqttConfig

log = logging.getLogger("genre_stream.sinks.mqtt")  # one logger for the MQTT path, the name it had before the split

LOOP_TIMEOUT = 0.5  # network loop tick; publishing threads wake the loop themselves (paho socketpair)
SHORT_CONNECTION = 10.0  # a connection closed sooner than this after CONNACK counts as "kicked right away"
FLAP_LIMIT = 3  # that many in a row, the broker up all along: say that another client probably uses our client id
# MQTT 5: the largest packet the broker may send us. We only receive acks and Home Assistant's birth
# messages ("online", a few bytes); without a bound, 100 MB of retained garbage on the birth topic was
# read into memory whole. The broker drops what is larger (MQTT 5, 3.1.2.11.4); room for a long topic.
MAX_INCOMING_PACKET = 64 * 1024


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


def connect_properties(config: MqttConfig) -> Properties | None:
    """MQTT 5 CONNECT properties: the maximum packet size we accept (None for MQTT 3.1.1, which has no such field)."""
    if config.protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_INCOMING_PACKET
    return props


@dataclass
class FlapWatch:
    """Tells a client-id clash from a broker that goes down.

    Two clients with one id kick each other off a broker that stays up: our connection is cut
    soon after CONNACK and the very next attempt is accepted again. A broker that goes down
    also cuts the connection soon after CONNACK, but then refuses (or does not answer) an
    attempt, so a cut connection counts only once the next one is accepted, and any failed
    attempt or stable connection starts the count again.
    """

    limit: int = FLAP_LIMIT
    kicks: int = 0  # connections in a row cut short while the broker stayed up
    _cut: bool = False  # the last connection was cut short; it counts once the broker shows it is still up

    def cut_short(self) -> None:
        self._cut = True

    def accepted(self) -> bool:
        """A connection was accepted; True exactly when this makes ``limit`` kicks in a row (said once)."""
        if not self._cut:
            return False
        self._cut = False
        self.kicks += 1
        return self.kicks == self.limit

    def reset(self) -> None:
        """The broker was down (an attempt failed) or the connection held: no clash."""
        self.kicks = 0
        self._cut = False


class Connection:
    """The connect/loop cycle of one paho client, run by the sink's network thread (``run``).

    ``tick`` runs after each loop pass while connected (the sink hands queued messages to paho);
    ``queued`` says how many messages wait, for the log lines. The sink's ``on_connect`` calls
    ``answered`` so that a CONNECT without an answer is noticed after ``mqtt.connect_timeout``.
    """

    def __init__(self, client: mqtt.Client, config: MqttConfig, url: str, stop: threading.Event,
                 connected: threading.Event, tick: Callable[[], None], queued: Callable[[], int]) -> None:
        self.client = client
        self.config = config
        self.url = url  # redacted: for log lines
        self._stop = stop
        self.connected = connected
        self._tick = tick
        self._queued = queued
        self._answered = threading.Event()  # CONNACK received (accepted or refused) for the current attempt
        self._accepted_at: float | None = None
        self.flaps = FlapWatch()
        client.connect_timeout = config.connect_timeout  # TCP connect and TLS handshake

    def answered(self, accepted: bool) -> None:
        """paho's on_connect: the broker answered this attempt's CONNECT."""
        self._answered.set()
        if not accepted:
            return
        self._accepted_at = time.monotonic()
        if self.flaps.accepted():
            log.error(
                "MQTT broker %s closed the connection %d times in a row right after accepting it, while it stayed up; "
                "another client (a second daemon?) probably uses the client id %r: give each daemon its own mqtt.instance "
                "(or mqtt.client_id)",
                self.url, self.flaps.kicks, self.config.effective_client_id,
            )

    def run(self) -> None:
        """The thread's body; an unexpected error is logged and the cycle goes on (it is the only sender)."""
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:
                log.exception("MQTT network thread: unexpected error; reconnecting in %.1f s", self.config.reconnect_max)
                self.connected.clear()
                self._drop()
                self._stop.wait(self.config.reconnect_max)

    def _cycle(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        need_connect = True
        first = True
        sent_at = 0.0  # when the current attempt's CONNECT went out
        while not self._stop.is_set():
            if need_connect:
                self._answered.clear()
                self._accepted_at = None
                try:
                    if first:
                        self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive,
                                            properties=connect_properties(self.config))
                        first = False
                    else:
                        self.client.reconnect()
                    need_connect = False
                    sent_at = time.monotonic()
                except (OSError, ValueError) as exc:
                    first = first and not self.client.host  # connect() stored host/port before failing
                    self.flaps.reset()  # the broker is down, not kicking us
                    log.warning(
                        "MQTT broker %s unreachable (%s); retrying in %.1f s, %d message(s) queued on disk",
                        self.url, describe(exc), backoff.next_delay, self._queued(),
                    )
                    backoff.wait(self._stop)
                    continue
            rc = self.client.loop(timeout=LOOP_TIMEOUT)
            now = time.monotonic()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                was_connected = self.connected.is_set()
                self.connected.clear()
                need_connect = True
                lived = None if self._accepted_at is None else now - self._accepted_at
                if lived is not None and lived < SHORT_CONNECTION:
                    self.flaps.cut_short()  # a kick or a broker going down: the next attempt tells
                elif was_connected:
                    backoff.reset()
                log.warning("MQTT connection to %s lost (%s); reconnecting in %.1f s", self.url, mqtt.error_string(rc),
                            backoff.next_delay)
                backoff.wait(self._stop)
                continue
            if not self._answered.is_set():
                if now - sent_at >= self.config.connect_timeout:
                    self.flaps.reset()
                    log.warning(
                        "MQTT broker at %s:%d accepted TCP but did not answer CONNECT within %g s (is it an MQTT broker, "
                        "and is it overloaded?); retrying in %.1f s, %d message(s) queued on disk",
                        self.config.host, self.config.port, self.config.connect_timeout, backoff.next_delay, self._queued(),
                    )
                    self._drop()
                    need_connect = True
                    backoff.wait(self._stop)
                continue
            if self.connected.is_set():
                if self._accepted_at is not None and now - self._accepted_at >= SHORT_CONNECTION:
                    backoff.reset()  # a stable connection: the next outage starts fast again
                    self.flaps.reset()
                self._tick()

    def _drop(self) -> None:
        """Close the socket now (paho sends DISCONNECT and closes); the next attempt starts afresh."""
        try:
            self.client.disconnect()
        except Exception:  # already down; the next cycle connects afresh
            pass


def contained(callback: Callable[..., None]) -> Callable[..., None]:
    """Log a paho callback's exception instead of letting it end the network loop (and with it every delivery)."""

    @functools.wraps(callback)
    def wrapper(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT %s failed; the connection carries on", callback.__name__)

    return wrapper


def describe(exc: BaseException) -> str:
    """Why a connect attempt failed, in a user's words (TLS, DNS, refused...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"host name does not resolve: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
