"""`genre-stream run` (the daemon) and `genre-stream config check|show`.

Every flag defaults to "not given" (None) so that, after the TOML file and the
``GENRE_STREAM_*`` environment, only the flags the user actually typed override anything.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .config import ConfigError, DaemonConfig, describe, describe_outputs, load_config, require_sources
from .providers import PROVIDERS

log = logging.getLogger(__name__)

# option name -> dotted config key
FLAG_KEYS = {
    "sources": "sources",
    "realtime": "realtime",
    "state_dir": "state_dir",
    "log_level": "log_level",
    "stats_interval": "stats_interval",
    "model_path": "model.path",
    "device": "model.device",
    "threads": "model.threads",
    "hop": "pipeline.hop_seconds",
    "min_fill": "pipeline.min_fill_seconds",
    "silence_dbfs": "pipeline.silence_dbfs",
    "hold_windows": "pipeline.hold_windows",
    "margin": "pipeline.margin",
    "uncertain_threshold": "pipeline.uncertain_threshold",
    "uncertain_margin": "pipeline.uncertain_margin",
    "mqtt_url": "mqtt.url",
    "mqtt_protocol": "mqtt.protocol",
    "client_id": "mqtt.client_id",
    "username": "mqtt.username",
    "password": "mqtt.password",
    "prefix": "mqtt.prefix",
    "ca_file": "mqtt.ca_file",
    "cert_file": "mqtt.cert_file",
    "key_file": "mqtt.key_file",
    "homeassistant": "homeassistant.enabled",
    "jsonl": "jsonl.path",
    "http": "http.listen",
    "http_allow_remote": "http.allow_remote",
    "http_token": "http.token",
    "history": "history.enabled",
    "history_days": "history.retention_days",
}


def _fail_config(exc: ConfigError) -> None:
    from .daemon import EXIT_CONFIG

    click.echo(f"genre-stream: configuration error: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config file (default: $GENRE_STREAM_CONFIG, else /etc/genre-stream/config.toml when present).")
@click.option("-s", "--source", "sources", multiple=True,
              help="Input, repeatable: mic[:DEVICE], watch:DIR, file:PATH, stream:URL, optionally ID=SPEC.")
@click.option("--realtime/--fast", default=None, help="Play file: sources at recording speed (default) or as fast as possible.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where the MQTT queue and watch state live.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--stats-interval", type=float, default=None, help="Seconds between stats messages (0 = off).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ONNX model file, or fp32 / int8 for the bundled exports (default: auto, int8 where measured faster here and accurate enough, else fp32; cached in the state directory).")
@click.option("--provider", "--device", "device", type=click.Choice(PROVIDERS), default=None,
              help="onnxruntime execution provider (default auto: TensorRT/CUDA when available, else CPU; --device is the old spelling).")
@click.option("--threads", type=int, default=None, help="CPU inference threads (default 1).")
@click.option("--hop", type=float, default=None, help="Seconds between classifications (default 5).")
@click.option("--min-fill", type=float, default=None, help="Seconds buffered before the first classification (default 10).")
@click.option("--silence-dbfs", type=float, default=None, help="RMS level below which a window is 'silence' (default -60).")
@click.option("--hold-windows", type=int, default=None, help="Windows a new genre must lead before it is announced (default 2).")
@click.option("--margin", type=float, default=None, help="Probability lead a new genre needs (default 0.1).")
@click.option("--uncertain-threshold", type=float, default=None,
              help="State 'uncertain' below this calibrated top probability (default: the model's; 0 = never).")
@click.option("--uncertain-margin", type=float, default=None,
              help="State 'uncertain' when the top genre leads the second by less (default: the model's; 0 = off).")
@click.option("--mqtt", "mqtt_url", default=None, help="Broker URL, mqtt://host[:port] or mqtts://host[:port].")
@click.option("--mqtt-protocol", type=click.Choice(["3.1.1", "5"]), default=None)
@click.option("--client-id", default=None)
@click.option("--username", default=None)
@click.option("--password", default=None, help="Prefer GENRE_STREAM_MQTT_PASSWORD: flags are visible in ps.")
@click.option("--prefix", default=None, help="Topic prefix (default genre-stream).")
@click.option("--ca-file", type=click.Path(path_type=Path), default=None)
@click.option("--cert-file", type=click.Path(path_type=Path), default=None)
@click.option("--key-file", type=click.Path(path_type=Path), default=None)
@click.option("--homeassistant/--no-homeassistant", default=None, help="Publish Home Assistant discovery configs (default on).")
@click.option("--jsonl", default=None, help="Also write JSON lines to FILE (- = stdout; the default without --mqtt).")
@click.option("--http", default=None, metavar="HOST:PORT",
              help="Serve the dashboard, JSON API and /metrics here (e.g. 127.0.0.1:8080; off by default).")
@click.option("--http-allow-remote", is_flag=True, default=None,
              help="Allow --http on a non-loopback address (the dashboard is then reachable from the network).")
@click.option("--http-token", default=None,
              help="Bearer token required by everything but /healthz; prefer GENRE_STREAM_HTTP_TOKEN.")
@click.option("--history/--no-history", default=None, help="Record states and events in <state dir>/history.sqlite (default on).")
@click.option("--history-days", type=float, default=None, help="Days of tag history to keep (default 90; 0 = forever).")
def run(config_path: Path | None, **options: Any) -> None:
    """Tag live inputs, folders and streams continuously; publish to MQTT and/or JSON lines.

    Runs until SIGTERM/SIGINT, or until all sources are files that have ended.
    SIGHUP reloads the configuration (sources, pipeline, stats) without dropping
    the MQTT connection. Exit status: 0 ok, 1 model error, 75 finished with
    messages still queued for the broker (kept for the next start), 78 bad configuration.
    """
    from .daemon import EXIT_MODEL, Daemon
    from .engine import ModelError

    flags = {FLAG_KEYS[name]: value for name, value in options.items()}
    try:
        config = load_config(config_path, flags)
    except ConfigError as exc:
        _fail_config(exc)
        return
    # A service should say what it does: start, genre changes and sources going up or down are INFO,
    # shown unless the config asks for less (-v/-vv still ask for more).
    root = logging.getLogger()
    root.setLevel(config.log_level.upper() if config.log_level else min(root.level, logging.INFO))
    daemon = Daemon(config, reload_config=lambda: load_config(config_path, flags))
    daemon.install_signal_handlers()
    try:
        code = daemon.run()
    except ConfigError as exc:
        _fail_config(exc)
        return
    except ModelError as exc:
        click.echo(f"genre-stream: {exc}", err=True)
        sys.exit(EXIT_MODEL)
    except OSError as exc:  # an output file or the state dir that cannot be created
        click.echo(f"genre-stream: {exc}", err=True)
        sys.exit(EXIT_MODEL)
    sys.exit(code)


@click.group("config")
def config_group() -> None:
    """Validate or show daemon configurations."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (with the current GENRE_STREAM_* environment); name the offending key and why.

    Exit status 0 when valid, 78 when not. Source specs are parsed but nothing is opened.
    """
    try:
        config = load_config(file, {})
        require_sources(config)
    except ConfigError as exc:
        _fail_config(exc)
        return
    try:
        _check_sources(config)
    except ConfigError as exc:
        _fail_config(ConfigError(f"{file}: {exc}"))
        return
    click.echo(f"{file}: ok ({len(config.sources)} source(s), outputs: {', '.join(describe_outputs(config))})")


@config_group.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Same as FILE (the option `run` takes).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
def show(file: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Print the effective configuration of FILE (default: as `run` finds it) with the environment and defaults.

    TOML by default, so the output can be saved as a config file; secrets are masked,
    unset keys are comments, and derived defaults (the MQTT client id) show their value.
    """
    if file and config_path and file != config_path:
        raise click.UsageError(f"two config files given: {file} and --config {config_path}")
    try:
        config = load_config(file or config_path, {})
    except ConfigError as exc:
        _fail_config(exc)
        return
    data = describe(config)
    click.echo(json.dumps(data, indent=2) if as_json else to_toml(data), nl=as_json)


def to_toml(data: dict[str, Any]) -> str:
    """``describe()`` output as TOML: top-level keys first, then one table per section; None = a comment."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    def lines(table: dict[str, Any]) -> list[str]:
        return [f"# {k} (unset)" if v is None else f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]

    out = lines(data)
    for name, table in data.items():
        if isinstance(table, dict):
            out += ["", f"[{name}]", *lines(table)]
    return "\n".join(out) + "\n"


def _check_sources(config: DaemonConfig) -> None:
    """Parse every spec as the daemon will, with a throw-away state dir so checking writes nothing."""
    import dataclasses
    import tempfile

    from .sources import source_from_config

    from .sources.file import FileSource

    if not config.sources:
        raise ConfigError("sources: none configured; the daemon would exit at once (add e.g. sources = [\"mic\"])")
    ids: set[str] = set()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_config = dataclasses.replace(config, state_dir=Path(scratch))
        for spec in config.sources:
            try:
                source = source_from_config(spec, scratch_config)
            except ValueError as exc:
                raise ConfigError(f"sources: {exc}") from None
            if isinstance(source, FileSource):
                _check_file_source(spec, source.path)
            if source.id in ids:
                raise ConfigError(f"sources: two sources have the id {source.id!r}; give one an id with ID=SPEC")
            ids.add(source.id)


def _check_file_source(spec: str, path: Path) -> None:
    """A file: source must name an existing file by its absolute path.

    A relative path is resolved against the daemon's working directory, which is ``/``
    under systemd: a config that works from a shell would play nothing there, the
    source would end at once and the service exit 0 as if done.
    """
    if not path.is_absolute():
        raise ConfigError(f"sources: {spec!r}: {path} is a relative path; the daemon resolves it against its working "
                          "directory (/ under systemd): give an absolute path")
    if not path.is_file():
        raise ConfigError(f"sources: {spec!r}: {path}: " + ("is a directory" if path.is_dir() else "no such file"))


