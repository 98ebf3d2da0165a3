"""Loading the daemon's configuration: defaults < TOML file < ``GENRE_STREAM_*`` environment < CLI flags.

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
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..common.redact import MASK, redact_url
from ..model.bundled import is_auto, named_model
from .daemon import SECTIONS, DaemonConfig
from .errors import ConfigError
from .fields import RangeError, topic_problem
from .mqtt import MqttConfig, instance_problem, url_credentials, url_problem

log = logging.getLogger("genre_stream.config")  # the name its warnings had before config/ was a package

DEFAULT_CONFIG_PATH = Path("/etc/genre-stream/config.toml")
ENV_PREFIX = "GENRE_STREAM_"


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


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; more is a mistake (a log or a device named by accident)


def _read_config_bytes(path: Path) -> bytes:
    """The file's bytes, refusing what is not a regular file *before* reading: opening a FIFO for
    reading blocks until a writer comes (on SIGHUP that froze the main loop), and a device never ends."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file (a FIFO, device or socket); give the path of a TOML file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {st.st_size} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})")
        return fh.read(MAX_CONFIG_BYTES + 1)


def file_layer(path: Path) -> Layer:
    """Read a TOML file; unreadable or malformed files are ConfigErrors naming the file."""
    try:
        data = tomllib.loads(_read_config_bytes(path).decode("utf-8"))
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
    if config.homeassistant.node_id is None:  # derived from mqtt.instance, like the prefix: shown and checked as such
        config.homeassistant.node_id = config.homeassistant.node(config.mqtt.identity)
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

    # Numeric ranges are declared next to each setting (fields.setting); these are the other rules.
    m = config.mqtt
    check(instance_problem(m.instance) is None, "mqtt.instance", instance_problem(m.instance) or "")
    check(is_auto(config.model.path) or named_model(config.model.path).is_file(), "model.path", "file not found (give an ONNX file, or auto / fp32 / int8)")
    if m.url is not None:
        problem = url_problem(m.url)
        check(problem is None, "mqtt.url", problem or "")
        _check_url_credentials(m, origins)
    check(m.reconnect_min <= m.reconnect_max, "mqtt.reconnect_min", "must be <= mqtt.reconnect_max")
    check(topic_problem(m.prefix) is None, "mqtt.prefix", f"{topic_problem(m.prefix)} (an MQTT topic prefix)")
    check(m.password is None or m.credentials[0] is not None, "mqtt.password", "given without mqtt.username")
    check(url_credentials(m.url)[1] is None or m.credentials[0] is not None, "mqtt.url", "has a password but no user name")
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


def _check_url_credentials(m: MqttConfig, origins: dict[str, str]) -> None:
    """User info in ``mqtt.url`` and the ``mqtt.username``/``mqtt.password`` keys must not disagree.

    Either place may be used (the URL is what broker docs show; the password key can come from
    the environment, out of ``ps`` and the file), but two different answers leave the user
    guessing which one the broker got, so both keys are named (the password in neither).
    """
    url_user, url_password = url_credentials(m.url)
    where = f"from {origins.get('mqtt.url', 'default')}"
    if url_user is not None and m.username is not None and url_user != m.username:
        raise ConfigError(f"mqtt.url ({where}) and mqtt.username (from {origins.get('mqtt.username', 'default')}) disagree: "
                          f"the URL names user {url_user!r}, mqtt.username = {m.username!r}; give the user name in one place")
    if url_password is not None and m.password is not None and url_password != m.password:
        raise ConfigError(f"mqtt.url ({where}) and mqtt.password (from {origins.get('mqtt.password', 'default')}) disagree: "
                          f"the URL's password is not mqtt.password = {MASK!r}; give the password in one place "
                          "(preferably GENRE_STREAM_MQTT_PASSWORD)")


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
    if isinstance(value, Path):
        return repr(str(value))  # the path as written, not PosixPath('...')
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
