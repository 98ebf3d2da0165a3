"""``[mqtt]`` (the broker connection) and ``[homeassistant]`` (its discovery configs); used by sinks.mqtt."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from .fields import check_ranges, flag, option, setting


@dataclass
class MqttConfig:
    url: str | None = option(None, cli=flag("--mqtt", help="Broker URL, mqtt://host[:port] or mqtts://host[:port].", default_text="no MQTT"))
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


@dataclass
class HomeAssistantConfig:
    enabled: bool = option(True, cli=flag("--homeassistant/--no-homeassistant", help="Publish Home Assistant discovery configs (with MQTT)."))
    discovery_prefix: str = "homeassistant"
    node_id: str = "genre_stream"
