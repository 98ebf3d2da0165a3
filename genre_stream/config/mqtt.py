"""``[mqtt]`` (the broker connection) and ``[homeassistant]`` (its discovery configs); used by sinks.mqtt."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from .fields import check_ranges, flag, option, setting


@dataclass
class MqttConfig:
    url: str | None = option(None, cli=flag(
        "--mqtt", help="Broker URL, mqtt://[user[:password]@]host[:port] or mqtts://...; a password is better kept in "
        "GENRE_STREAM_MQTT_PASSWORD.", default_text="no MQTT"))
    protocol: Literal["3.1.1", "5"] = option("3.1.1", cli=flag("--mqtt-protocol", help="MQTT protocol version."))
    client_id: str = option("", cli=flag("--client-id", help="MQTT client id.", default_text="genre-stream-<hostname>"))
    username: str | None = option(None, cli=flag("--username", help="MQTT user name."))
    password: str | None = option(None, cli=flag("--password", help="MQTT password; prefer GENRE_STREAM_MQTT_PASSWORD: flags are visible in ps."))
    keepalive: int = setting(60, 1, 65535, note="seconds")
    prefix: str = option("genre-stream", cli=flag("--prefix", help="Topic prefix."))
    ca_file: Path | None = option(None, cli=flag("--ca-file", help="CA certificate for mqtts://."))
    cert_file: Path | None = option(None, cli=flag("--cert-file", help="Client certificate for mqtts://."))
    key_file: Path | None = option(None, cli=flag("--key-file", help="Client key for mqtts://."))
    tls_insecure: bool = False  # skip host name verification (self-signed test brokers only)
    queue_max: int = setting(100_000, 1, 10_000_000)  # messages kept on disk while the broker is unreachable
    reconnect_min: float = setting(1.0, 0, 3600, lo_open=True, note="seconds")
    reconnect_max: float = setting(60.0, 0, 86400, lo_open=True, note="seconds")
    flush_timeout: float = setting(5.0, 0, 3600, note="seconds")  # how long a stop waits for queued messages
    connect_timeout: float = setting(10.0, 0, 3600, lo_open=True, note="seconds")  # TCP/TLS connect, then CONNACK

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def effective_client_id(self) -> str:
        """The id the broker sees: the configured one, else ``genre-stream-<hostname>`` (MQTT 3.1.1 allows 23+ bytes; brokers take 64)."""
        return self.client_id or f"genre-stream-{socket.gethostname()}"[:64]

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
    node_id: str = "genre_stream"
