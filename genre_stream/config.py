"""The daemon's configuration: defaults < TOML file < ``GENRE_STREAM_*`` environment < CLI flags.

Every layer is a nested dict keyed like the TOML file (``mqtt.url``, ``pipeline.hop_seconds``);
the layers are merged and only then turned into typed dataclasses, so one code path coerces
and validates values whatever their origin, and an error can say which key was wrong, where
the value came from (file, environment variable or flag) and why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .dashboard.config import HttpSettings
from .autoselect import is_auto
from .models import resolve_model
from .history import HistorySettings

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/genre-stream/config.toml")
ENV_PREFIX = "GENRE_STREAM_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key, its origin and why."""


@dataclass
class PipelineConfig:
    """When and how a live source is classified (see pipeline.SourcePipeline)."""

    hop_seconds: float = 5.0
    min_fill_seconds: float = 10.0
    silence_dbfs: float = -60.0
    ema_alpha: float = 0.5
    hold_windows: int = 2  # a new genre must lead for this many consecutive windows
    margin: float = 0.1  # ...by at least this much smoothed probability over the current one
    uncertain_threshold: float | None = None  # "uncertain" below this top probability; None: the model's own default
    uncertain_margin: float | None = None  # ...or below this lead over the second; None: the model's own default

    def __post_init__(self) -> None:
        if not self.hop_seconds > 0:
            raise ValueError(f"hop_seconds must be > 0, got {self.hop_seconds}")
        if not self.min_fill_seconds > 0:
            raise ValueError(f"min_fill_seconds must be > 0, got {self.min_fill_seconds}")
        if self.silence_dbfs > 0:
            raise ValueError(f"silence_dbfs must be <= 0 (dB relative to full scale), got {self.silence_dbfs}")


@dataclass
class ModelConfig:
    path: Path | None = None  # None: the bundled model
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    threads: int = 1  # one intra-op thread: a daemon shares the machine with everything else


@dataclass
class MqttConfig:
    url: str | None = None  # mqtt://host[:port] or mqtts://host[:port]; None = no MQTT
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str = ""  # "" = genre-stream-<hostname>
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    prefix: str = "genre-stream"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip host name verification (self-signed test brokers only)
    queue_max: int = 100_000  # messages kept on disk while the broker is unreachable
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    flush_timeout: float = 5.0  # how long a stop waits for queued messages to reach the broker

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
    enabled: bool = True  # only has an effect with MQTT
    discovery_prefix: str = "homeassistant"
    node_id: str = "genre_stream"


@dataclass
class JsonlConfig:
    path: str | None = None  # "-" = stdout; None = stdout only when there is no MQTT


@dataclass
class WatchConfig:
    done_dir: Path | None = None  # tagged files are moved here; None = never touch user files
    failed_dir: Path | None = None  # files that failed to decode are moved here; None = leave them
    settle_seconds: float = 2.0  # a file's size must hold this long before it is read
    poll_seconds: float = 2.0  # folder rescan interval (also the fallback without inotify)
    library_db: Path | None = None  # also index tagged files into this `genre-stream library` database


def default_state_dir() -> Path:
    """$STATE_DIRECTORY under systemd (StateDirectory=), else the XDG state folder of the user."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "genre-stream"


@dataclass
class DaemonConfig:
    sources: list[str] = field(default_factory=list)
    realtime: bool = True  # file: sources play at the speed of the recording
    state_dir: Path = field(default_factory=default_state_dir)
    log_level: Literal["debug", "info", "warning", "error"] | None = None  # None: keep the -v level
    stats_interval: float = 60.0  # seconds between <prefix>/<source>/stats messages; 0 = off
    track_hop_seconds: float = 10.0  # window hop when a watched file is tagged as a whole track
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    http: HttpSettings = field(default_factory=HttpSettings)
    history: HistorySettings = field(default_factory=HistorySettings)

    @property
    def jsonl_target(self) -> str | None:
        """Where JSON lines go: the configured path, or stdout when nothing else receives the messages."""
        if self.jsonl.path:
            return self.jsonl.path
        return None if self.mqtt.url else "-"


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(DaemonConfig)
    if dataclasses.is_dataclass(f.default_factory)
}


# ---------------------------------------------------------------- layers


@dataclass
class Layer:
    """One source of settings: nested values plus, per dotted key, a human-readable origin."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, origin: str) -> None:
        section, _, name = key.rpartition(".")
        target = self.values.setdefault(section, {}) if section else self.values
        target[name] = value
        self.origins[key] = origin


def file_layer(path: Path) -> Layer:
    """Read a TOML file; unreadable or malformed files are ConfigErrors naming the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    layer = Layer()
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise ConfigError(f"{path}: unknown section [{key}] (known: {', '.join(sorted(SECTIONS))})")
            for sub, subval in value.items():
                layer.set(f"{key}.{sub}", subval, f"{path}")
        else:
            layer.set(key, value, f"{path}")
    return layer


def env_layer(environ: typing.Mapping[str, str] | None = None) -> Layer:
    """``GENRE_STREAM_MQTT_URL`` -> ``mqtt.url``; ``GENRE_STREAM_SOURCES`` is comma-separated.

    Variables that match no key are ignored with a warning (other tools may share the
    prefix); a variable naming a known section but an unknown key is an error, because
    that is almost certainly a typo the user would otherwise never notice.
    """
    environ = os.environ if environ is None else environ
    layer = Layer()
    top = {f.name for f in dataclasses.fields(DaemonConfig)} - set(SECTIONS)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is not None:
            key = rest[len(section) + 1 :]
            if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
                raise ConfigError(f"environment variable {name}: [{section}] has no key {key!r}")
            layer.set(f"{section}.{key}", value, f"environment variable {name}")
        elif rest in top:
            layer.set(rest, value, f"environment variable {name}")
        else:
            log.warning("ignoring environment variable %s: not a genre-stream run setting", name)
    return layer


def flag_layer(flags: dict[str, Any]) -> Layer:
    """CLI flags as dotted keys; ``None`` means the flag was not given."""
    layer = Layer()
    for key, value in flags.items():
        if value is None or value == ():
            continue
        layer.set(key, list(value) if isinstance(value, tuple) else value, "command line")
    return layer


def default_config_path(environ: typing.Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_PREFIX + "CONFIG"):
        return Path(environ[ENV_PREFIX + "CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(
    path: Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> DaemonConfig:
    """Merge defaults, file (``path``, else $GENRE_STREAM_CONFIG, else /etc/... when present), env and flags."""
    path = path if path is not None else default_config_path(environ)
    layers = [file_layer(path)] if path is not None else []
    layers += [env_layer(environ), flag_layer(flags or {})]
    return build_config(layers)


def build_config(layers: list[Layer]) -> DaemonConfig:
    merged = Layer()
    for layer in layers:
        for key, origin in layer.origins.items():
            section, _, name = key.rpartition(".")
            value = (layer.values[section] if section else layer.values)[name]
            merged.set(key, value, origin)
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(DaemonConfig)
    for name, value in merged.values.items():
        if name in SECTIONS:
            kwargs[name] = _build_section(name, SECTIONS[name], value, merged.origins)
        elif name in hints:
            kwargs[name] = _coerce(value, hints[name], name, merged.origins[name])
        else:
            raise ConfigError(f"{merged.origins[name]}: unknown key {name!r}")
    config = DaemonConfig(**kwargs)
    _validate(config, merged.origins)
    return config


def _build_section(section: str, cls: type, values: dict[str, Any], origins: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in hints:
            raise ConfigError(f"{origins[key]}: [{section}] has no key {name!r} (known: {', '.join(hints)})")
        kwargs[name] = _coerce(value, hints[name], key, origins[key])
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own __post_init__ check, e.g. "hop_seconds must be > 0, got 0"
        name, _, why = str(exc).partition(" ")
        if name in kwargs:
            key = f"{section}.{name}"
            raise ConfigError(f"{key} = {kwargs[name]!r} (from {origins[key]}): {why}") from None
        where = sorted({origins[f"{section}.{n}"] for n in values})
        raise ConfigError(f"[{section}] (from {', '.join(where)}): {exc}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Turn a TOML/env/flag value into ``tp``; strings from the environment are parsed."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{key} = {value!r} (from {origin}): {why}")

    origin_tp = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin_tp in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value in (None, ""):
            return None
        return _coerce(value, inner[0], key, origin)
    if origin_tp is Literal:
        text = str(value).lower() if isinstance(value, str) else str(value)
        if text not in [str(a) for a in args]:
            raise fail(f"must be one of {', '.join(map(str, args))}")
        return text
    if origin_tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("must be a list of strings")
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise fail("must be true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise fail("must be a number, not a boolean")
        try:
            number = tp(value) if not (tp is int and isinstance(value, float)) else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise fail(f"must be {'an integer' if tp is int else 'a number'}")
        return number
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise fail("must be a path")
        return Path(value).expanduser()
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail("must be a string")
        return str(value)
    raise fail(f"unsupported type {tp}")  # pragma: no cover - a new field type without a coercion


def _validate(config: DaemonConfig, origins: dict[str, str]) -> None:
    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            value = _lookup(config, key)
            origin = origins.get(key, "default")
            raise ConfigError(f"{key} = {value!r} (from {origin}): {why}")

    p, m = config.pipeline, config.mqtt
    check(config.stats_interval >= 0, "stats_interval", "must be >= 0 (0 turns stats off)")
    check(config.track_hop_seconds > 0, "track_hop_seconds", "must be > 0")
    check(config.watch.settle_seconds >= 0, "watch.settle_seconds", "must be >= 0")
    check(config.watch.poll_seconds > 0, "watch.poll_seconds", "must be > 0")
    check(config.model.threads >= 0, "model.threads", "must be >= 0")
    check(is_auto(config.model.path) or resolve_model(config.model.path).is_file(), "model.path", "file not found (give an ONNX file, or auto / fp32 / int8)")
    check(p.hop_seconds > 0, "pipeline.hop_seconds", "must be > 0")
    check(0 < p.min_fill_seconds <= 30, "pipeline.min_fill_seconds", "must be between 0 and 30 (the window length)")
    check(p.silence_dbfs < 0, "pipeline.silence_dbfs", "must be negative (dB below full scale)")
    check(0 < p.ema_alpha <= 1, "pipeline.ema_alpha", "must be in (0, 1]")
    check(p.hold_windows >= 1, "pipeline.hold_windows", "must be >= 1")
    check(0 <= p.margin < 1, "pipeline.margin", "must be in [0, 1)")
    check(p.uncertain_threshold is None or 0 <= p.uncertain_threshold < 1, "pipeline.uncertain_threshold", "must be in [0, 1) (0 = never uncertain)")
    check(p.uncertain_margin is None or 0 <= p.uncertain_margin < 1, "pipeline.uncertain_margin", "must be in [0, 1) (0 = off)")
    if m.url is not None:
        parts = urlsplit(m.url)
        check(parts.scheme in ("mqtt", "mqtts"), "mqtt.url", "scheme must be mqtt:// or mqtts://")
        check(bool(parts.hostname), "mqtt.url", "has no host name")
        try:
            parts.port
        except ValueError:
            check(False, "mqtt.url", "port must be a number between 0 and 65535")
        check(parts.path in ("", "/"), "mqtt.url", "must not have a path (set the topic prefix with mqtt.prefix)")
    check(1 <= m.keepalive <= 65535, "mqtt.keepalive", "must be between 1 and 65535 seconds")
    check(m.queue_max >= 1, "mqtt.queue_max", "must be >= 1")
    check(0 < m.reconnect_min <= m.reconnect_max, "mqtt.reconnect_min", "must be > 0 and <= mqtt.reconnect_max")
    check(m.flush_timeout >= 0, "mqtt.flush_timeout", "must be >= 0")
    check(bool(m.prefix) and not any(c in m.prefix for c in "#+") and not m.prefix.endswith("/"), "mqtt.prefix", "must be non-empty, without # or + and without a trailing /")
    check(m.password is None or m.username is not None, "mqtt.password", "given without mqtt.username")
    check(m.key_file is None or m.cert_file is not None, "mqtt.key_file", "given without mqtt.cert_file")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(m, key)
        check(path is None or path.is_file(), f"mqtt.{key}", "file not found")
        check(path is None or os.access(path, os.R_OK), f"mqtt.{key}", "file not readable by this user")
    check(m.ca_file is None and m.cert_file is None or m.tls, "mqtt.url", "TLS files are configured but the URL is not mqtts://")
    ha = config.homeassistant
    check(bool(ha.node_id) and all(c.isalnum() or c in "_-" for c in ha.node_id), "homeassistant.node_id", "must be letters, digits, _ or -")
    check(bool(ha.discovery_prefix), "homeassistant.discovery_prefix", "must not be empty")
    check(config.jsonl.path != "", "jsonl.path", "must be a file path or - for stdout")


def _lookup(config: DaemonConfig, key: str) -> Any:
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def describe(config: DaemonConfig) -> dict[str, Any]:
    """The effective configuration as plain data (``config show``), with the password and token masked."""
    data = dataclasses.asdict(config)
    if data["mqtt"]["password"]:
        data["mqtt"]["password"] = "***"
    if data["http"]["token"]:
        data["http"]["token"] = "***"

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return plain(data)
