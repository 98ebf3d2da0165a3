"""``[mqtt]`` (the broker connection) and ``[homeassistant]`` (its discovery configs); used by sinks.mqtt."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from .fields import check_ranges, flag, option, setting

DEFAULT_INSTANCE = "genre-stream"
MAX_CLIENT_ID = 64  # MQTT 3.1.1 promises 23 bytes, brokers take 64 or more
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


@dataclass(frozen=True)
class Instance:
    """What tells one genre-stream from another on a broker, every name derived here from ``mqtt.instance``.

    Like Zigbee2MQTT's base topic: one name, from which the topic prefix, the Home Assistant node id
    and device names and the MQTT client id follow, so two daemons on one broker (a second config, a
    one-off run beside the service) differ in all of them by choosing one setting. The default
    instance gives exactly the names of earlier versions (``genre-stream/...``, node ``genre_stream``,
    client ``genre-stream-<hostname>``). Explicit ``mqtt.prefix``, ``mqtt.client_id`` and
    ``homeassistant.node_id`` still win. A one-off run (``one_off``: files only, it ends by itself)
    adds its process id to the client id, so it never takes over the service's connection.
    """

    name: str = DEFAULT_INSTANCE
    one_off: bool = False

    @property
    def prefix(self) -> str:
        return self.name

    @property
    def node_id(self) -> str:
        """Home Assistant's node id: entity ids are lower case with ``_`` (``genre-stream`` -> ``genre_stream``)."""
        return self.name.lower().replace("-", "_")

    @property
    def device_name(self) -> str:
        """The daemon's own device in Home Assistant."""
        return self.name

    def source_device_name(self, source: str) -> str:
        """A source's device: ``genre-stream radio``, so a device list says whose ``radio`` it is."""
        return f"{self.name} {source}"

    @property
    def client_id(self) -> str:
        """``<instance>-<hostname>`` for a service (stable across restarts, so a stale session is taken over),
        ``<instance>-<hostname>-<pid>`` for a one-off run (never the service's, nor another run's)."""
        base = f"{self.name}-{socket.gethostname()}"
        suffix = f"-{os.getpid()}" if self.one_off else ""
        return base[: MAX_CLIENT_ID - len(suffix)] + suffix

    def state_file(self, filename: str) -> str:
        """A file of this instance in the state dir: the default instance keeps the names it always had
        (``mqtt-queue.sqlite3``), another gets its own (``mqtt-queue-studio.sqlite3``), so instances sharing
        a state dir never share a queue or a discovery ledger; a one-off run's queue is its own too."""
        stem, dot, suffix = filename.partition(".")
        if self.name != DEFAULT_INSTANCE:
            stem = f"{stem}-{self.name}"
        if self.one_off:
            stem = f"{stem}-one-off"
        return f"{stem}{dot}{suffix}"


def instance_problem(name: str) -> str | None:
    """Why ``name`` cannot be an instance name, or None (it becomes a topic level, a node id and part of a client id)."""
    if _INSTANCE_RE.match(name):
        return None
    return "must be 1 to 48 letters, digits, - or _, starting with a letter or digit"


@dataclass
class MqttConfig:
    url: str | None = option(None, cli=flag(
        "--mqtt", help="Broker URL, mqtt://[user[:password]@]host[:port] or mqtts://...; a password is better kept in "
        "GENRE_STREAM_MQTT_PASSWORD.", default_text="no MQTT"))
    protocol: Literal["3.1.1", "5"] = option("3.1.1", cli=flag("--mqtt-protocol", help="MQTT protocol version."))
    instance: str = option(DEFAULT_INSTANCE, cli=flag(
        "--instance", help="This daemon's name on the broker: the topic prefix, Home Assistant node id and device names, "
        "and the client id derive from it; give a second daemon (or a one-off run beside the service) another one."))
    client_id: str = option("", cli=flag("--client-id", help="MQTT client id.", default_text="<instance>-<hostname>, "
                                         "a one-off run (only file: sources) adds -<pid>"))
    username: str | None = option(None, cli=flag("--username", help="MQTT user name."))
    password: str | None = option(None, cli=flag("--password", help="MQTT password; prefer GENRE_STREAM_MQTT_PASSWORD: flags are visible in ps."))
    keepalive: int = setting(60, 1, 65535, note="seconds")
    # None: the instance name (filled in by __post_init__); "" is refused like any unusable topic
    prefix: str = option(None, cli=flag("--prefix", help="Topic prefix.", default_text="the instance name"))
    ca_file: Path | None = option(None, cli=flag("--ca-file", help="CA certificate for mqtts://."))
    cert_file: Path | None = option(None, cli=flag("--cert-file", help="Client certificate for mqtts://."))
    key_file: Path | None = option(None, cli=flag("--key-file", help="Client key for mqtts://."))
    tls_insecure: bool = False  # skip host name verification (self-signed test brokers only)
    queue_max: int = setting(100_000, 1, 10_000_000)  # messages kept on disk while the broker is unreachable
    reconnect_min: float = setting(1.0, 0, 3600, lo_open=True, note="seconds")
    reconnect_max: float = setting(60.0, 0, 86400, lo_open=True, note="seconds")
    flush_timeout: float = setting(5.0, 0, 3600, note="seconds")  # how long a stop waits for queued messages
    connect_timeout: float = setting(10.0, 0, 3600, lo_open=True, note="seconds")  # TCP/TLS connect, then CONNACK

    # Not a setting (no key, no flag): `genre-stream run` sets it when every source is a file, i.e. the run
    # ends by itself. Such a run gets a client id of its own, retains nothing of its sources and retracts
    # their Home Assistant entities at its end (sinks.mqtt).
    one_off = False

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.prefix is None:
            self.prefix = Instance(self.instance).prefix

    @property
    def identity(self) -> Instance:
        """This daemon's names (``Instance``): the one place they are derived."""
        return Instance(self.instance, self.one_off)

    @property
    def effective_client_id(self) -> str:
        """The id the broker sees: the configured one, else the instance's (``Instance.client_id``)."""
        return self.client_id or self.identity.client_id

    @property
    def tls(self) -> bool:
        return bool(self.url) and urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "")
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        """(user name, password) the broker gets: the ``username``/``password`` keys, else the URL's user info.

        ``mqtt://bob:pw@host`` is the form users copy from broker docs; ignoring it meant "Not
        authorized" while ``config check`` said ok. The loader refuses a URL and keys that disagree.
        """
        user, password = url_credentials(self.url)
        return (self.username if self.username is not None else user,
                self.password if self.password is not None else password)


def url_credentials(url: str | None) -> tuple[str | None, str | None]:
    """The percent-decoded user name and password in ``url`` (None each when absent or empty)."""
    try:
        parts = urlsplit(url or "")
    except ValueError:
        return None, None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user or None, password or None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a broker address, or None.

    Checked up front because each of these otherwise surfaces later and worse: an unparsable
    IPv6 literal was a traceback (exit 1, restarted by systemd for ever), port 0 silently meant
    1883, and a host with a space only failed name resolution, retried every minute.
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL" for mqtt://[::1
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("mqtt", "mqtts"):
        return "scheme must be mqtt:// or mqtts://"
    if not parts.hostname:
        return "has no host name"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "port must be a number between 1 and 65535"
    host = parts.hostname
    if "[" in parts.netloc:
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif not all(c.isalnum() or c in "-._" for c in host):
        return f"host {host!r} has characters a host name cannot have"
    if parts.path not in ("", "/"):
        return "must not have a path (set the topic prefix with mqtt.prefix)"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must not have a query (?...) or fragment (#...)"
    return None


@dataclass
class HomeAssistantConfig:
    enabled: bool = option(True, cli=flag("--homeassistant/--no-homeassistant", help="Publish Home Assistant discovery configs (with MQTT)."))
    discovery_prefix: str = "homeassistant"
    node_id: str = None  # type: ignore[assignment]  # None: from mqtt.instance (Instance.node_id); "" is refused

    def node(self, instance: Instance) -> str:
        """The node id discovery uses: ``node_id`` when set, else the instance's."""
        return self.node_id if self.node_id is not None else instance.node_id
