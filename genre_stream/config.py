"""The daemon's configuration: defaults < TOML file < ``GENRE_STREAM_*`` environment < CLI flags.

Every layer is a nested dict keyed like the TOML file (``mqtt.url``, ``pipeline.hop_seconds``);
the layers are merged and only then turned into typed dataclasses, so one code path coerces
and validates values whatever their origin, and an error can say which key was wrong, where
the value came from (file, environment variable or flag) and why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
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
from .sinks.history import HistorySettings
from .providers import Provider
from .redact import MASK, redact_url
from .sanitize import SILENCE_DBFS
from .settings import RangeError, check_ranges, flag, option, setting, topic_problem

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/genre-stream/config.toml")
ENV_PREFIX = "GENRE_STREAM_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key, its origin and why."""


@dataclass
class PipelineConfig:
    """When and how a live source is classified (see pipeline.SourcePipeline)."""

    hop_seconds: float = setting(5.0, 0, 3600, lo_open=True, cli=flag("--hop", help="Seconds between classifications."))
    # reuse the previous window's computation (fp32 models with a streaming pack, on the CPU); the hop is
    # then rounded down to whole 4-frame columns (1 s -> 0.93 s, 5 s unchanged): docs/STREAMING.md
    streaming: bool = option(True, cli=flag("--streaming/--no-streaming", help="Compute only what each hop adds to the "
                             "window (fp32 on the CPU; the hop is rounded down to a multiple of 4 mel frames)."))
    min_fill_seconds: float = setting(10.0, 0, 30, lo_open=True, note="(the window is 30 s)",
                                      cli=flag("--min-fill", help="Seconds buffered before the first classification."))
    silence_dbfs: float = setting(SILENCE_DBFS, -200, 0, hi_open=True, note="(dB below full scale)",
                                  cli=flag("--silence-dbfs", help="RMS level below which a window is 'silence'."))
    ema_alpha: float = setting(0.5, 0, 1, lo_open=True)
    hold_windows: int = setting(2, 1, 1000, cli=flag("--hold-windows", help="Windows a new genre must lead before it is announced."))
    margin: float = setting(0.1, 0, 1, hi_open=True, cli=flag("--margin", help="Smoothed probability lead a new genre needs."))
    # "uncertain" below this top probability, or below this lead over the second; None: the model's own default
    uncertain_threshold: float | None = setting(
        None, 0, 1, hi_open=True, note="(0 = never uncertain)", cli=flag(
            "--uncertain-threshold", help="State 'uncertain' below this calibrated top probability; 0 = never.", default_text="the model's"))
    uncertain_margin: float | None = setting(
        None, 0, 1, hi_open=True, note="(0 = off)", cli=flag(
            "--uncertain-margin", help="State 'uncertain' when the top genre leads the second by less; 0 = off.", default_text="the model's"))

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ModelConfig:
    path: Path | None = option(None, cli=flag(  # None: the bundled model chosen by --model auto
        "--model", help="ONNX model file, or auto / fp32 / int8 for the bundled exports (auto: int8 where it is measured "
        "faster here and accurate enough, else fp32; cached in the state directory).", default_text="auto"))
    device: Provider = option("auto", cli=flag(
        "--provider", "--device", help="onnxruntime execution provider: auto uses TensorRT/CUDA when available, else CPU "
        "(--device is the old spelling)."))
    # one intra-op thread: a daemon shares the machine
    threads: int = setting(1, 0, 256, note="(0 = one per core)", cli=flag("--threads", help="CPU inference threads; 0 = one per core."))

    def __post_init__(self) -> None:
        check_ranges(self)


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


@dataclass
class JsonlConfig:
    path: str | None = option(None, cli=flag(
        "--jsonl", help="Also write JSON lines to FILE (- = stdout).", default_text="stdout when there is no --mqtt", metavar="FILE"))


@dataclass
class WatchConfig:
    done_dir: Path | None = None  # tagged files are moved here; None = never touch user files
    failed_dir: Path | None = None  # files that failed to decode are moved here; None = leave them
    settle_seconds: float = setting(2.0, 0, 3600)  # a file's size must hold this long before it is read
    poll_seconds: float = setting(2.0, 0, 3600, lo_open=True)  # folder rescan interval (also the fallback without inotify)
    library_db: Path | None = None  # also index tagged files into this `genre-stream library` database

    def __post_init__(self) -> None:
        check_ranges(self)


def default_state_dir() -> Path:
    """$STATE_DIRECTORY under systemd (StateDirectory=), else the XDG state folder of the user."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "genre-stream"


@dataclass
class DaemonConfig:
    sources: list[str] = option(default_factory=list, cli=flag(
        "-s", "--source", help="Input, repeatable: mic[:DEVICE], watch:DIR, file:PATH, stream:URL, optionally ID=SPEC.",
        default_text="none"))
    realtime: bool = option(True, cli=flag("--realtime/--fast", help="Play file: sources at recording speed or as fast as possible."))
    state_dir: Path = option(default_factory=default_state_dir, cli=flag(
        "--state-dir", help="Where the MQTT queue, watch state and history live.",
        default_text="$STATE_DIRECTORY or ~/.local/state/genre-stream"))
    log_level: Literal["debug", "info", "warning", "error"] | None = option(None, cli=flag(
        "--log-level", help="Log level of the daemon.", default_text="info, or what -v asks for"))
    stats_interval: float = setting(60.0, 0, 86400, note="(0 turns stats off)",  # seconds between stats messages
                                    cli=flag("--stats-interval", help="Seconds between stats messages; 0 = off."))
    track_hop_seconds: float = setting(10.0, 0, 300, lo_open=True)  # window hop when a watched file is tagged as a whole track
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    http: HttpSettings = field(default_factory=HttpSettings)
    history: HistorySettings = field(default_factory=HistorySettings)

    def __post_init__(self) -> None:
        check_ranges(self)

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
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
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
    try:
        config = DaemonConfig(**kwargs)
    except RangeError as exc:
        raise ConfigError(f"{exc.name} = {exc.value!r} (from {merged.origins.get(exc.name, 'default')}): {exc.why}") from None
    _validate(config, merged.origins)
    return config


def require_sources(config: DaemonConfig) -> None:
    """A daemon without sources would only idle: refused by ``config check``, ``run`` and reloads alike."""
    if not config.sources:
        raise ConfigError("sources: none configured; give --source SPEC (or sources = [...] in the config file)")


def describe_outputs(config: DaemonConfig) -> list[str]:
    """Where the daemon's results go, for the start banner and `config check`."""
    outs = []
    if config.mqtt.url:
        outs.append(redact_url(config.mqtt.url))  # a password may sit in the URL; logs and terminals must not show it
    if config.jsonl_target:
        outs.append("stdout" if config.jsonl_target == "-" else config.jsonl_target)
    if config.history.enabled:
        outs.append(f"history {config.history.config(config.state_dir).path}")
    if config.http.listen:
        outs.append(f"dashboard {config.http.listen}")
    return outs


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
    except RangeError as exc:  # a setting outside the range declared next to it
        key = f"{section}.{exc.name}"
        origin = origins.get(key, "default")
        raise ConfigError(f"{key} = {_shown(key, exc.value)} (from {origin}): {exc.why}") from None
    except ValueError as exc:  # a section's own __post_init__ check
        where = sorted({origins[f"{section}.{n}"] for n in values})
        raise ConfigError(f"[{section}] (from {', '.join(where)}): {exc}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Turn a TOML/env/flag value into ``tp``; strings from the environment are parsed."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{key} = {_shown(key, value)} (from {origin}): {why}")

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
        if tp is float and not math.isfinite(number):
            raise fail("must be a finite number")
        return number
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise fail("must be a path")
        return Path(value).expanduser()
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail("must be a string")
        if "\0" in str(value):
            raise fail("must not contain a NUL character")
        return str(value)
    raise fail(f"unsupported type {tp}")  # pragma: no cover - a new field type without a coercion


def _validate(config: DaemonConfig, origins: dict[str, str]) -> None:
    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            value = _lookup(config, key)
            origin = origins.get(key, "default")
            raise ConfigError(f"{key} = {_shown(key, value)} (from {origin}): {why}")

    # Numeric ranges are declared next to each setting (settings.setting); these are the other rules.
    m = config.mqtt
    check(is_auto(config.model.path) or resolve_model(config.model.path).is_file(), "model.path", "file not found (give an ONNX file, or auto / fp32 / int8)")
    if m.url is not None:
        parts = urlsplit(m.url)
        check(parts.scheme in ("mqtt", "mqtts"), "mqtt.url", "scheme must be mqtt:// or mqtts://")
        check(bool(parts.hostname), "mqtt.url", "has no host name")
        try:
            parts.port
        except ValueError:
            check(False, "mqtt.url", "port must be a number between 0 and 65535")
        check(parts.path in ("", "/"), "mqtt.url", "must not have a path (set the topic prefix with mqtt.prefix)")
    check(m.reconnect_min <= m.reconnect_max, "mqtt.reconnect_min", "must be <= mqtt.reconnect_max")
    check(topic_problem(m.prefix) is None, "mqtt.prefix", f"{topic_problem(m.prefix)} (an MQTT topic prefix)")
    check(m.password is None or m.username is not None, "mqtt.password", "given without mqtt.username")
    check(m.key_file is None or m.cert_file is not None, "mqtt.key_file", "given without mqtt.cert_file")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(m, key)
        check(path is None or path.is_file(), f"mqtt.{key}", "file not found")
        check(path is None or os.access(path, os.R_OK), f"mqtt.{key}", "file not readable by this user")
    check(m.ca_file is None and m.cert_file is None or m.tls, "mqtt.url", "TLS files are configured but the URL is not mqtts://")
    ha = config.homeassistant
    check(bool(ha.node_id) and all(c.isalnum() or c in "_-" for c in ha.node_id), "homeassistant.node_id", "must be letters, digits, _ or -")
    check(topic_problem(ha.discovery_prefix) is None, "homeassistant.discovery_prefix",
          f"{topic_problem(ha.discovery_prefix)} (an MQTT topic prefix)")
    check(config.jsonl.path != "", "jsonl.path", "must be a file path or - for stdout")


def _lookup(config: DaemonConfig, key: str) -> Any:
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


SECRET_KEYS = frozenset({"mqtt.password", "http.token"})
URL_KEYS = frozenset({"mqtt.url"})


def _shown(key: str, value: Any) -> str:
    """A value as it may appear in a message: secrets masked, URL passwords redacted."""
    if key in SECRET_KEYS and value not in (None, ""):
        return repr(MASK)
    if key in URL_KEYS and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value)


def describe(config: DaemonConfig) -> dict[str, Any]:
    """The effective configuration as plain data (``config show``), with secrets masked and URLs redacted."""
    data = dataclasses.asdict(config)
    data["mqtt"]["client_id"] = config.mqtt.effective_client_id
    for key in SECRET_KEYS | URL_KEYS:
        section, _, name = key.partition(".")
        value = data[section][name]
        if value:
            data[section][name] = redact_url(value) if key in URL_KEYS else MASK

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return plain(data)
