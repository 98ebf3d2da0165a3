"""`genre-stream run` (the daemon) and `genre-stream config check|show`.

Every flag defaults to "not given" (None) so that, after the TOML file and the
``GENRE_STREAM_*`` environment, only the flags the user actually typed override anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError, DaemonConfig, describe, describe_outputs, load_config, require_sources
from ..config.fields import Flag, flagged_fields

log = logging.getLogger(__name__)

def _param(key: str) -> str:
    return key.replace(".", "__")


def _option(key: str, fld: dataclasses.Field[Any], tp: Any, cli: Flag) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one setting, from its declaration (config dataclasses, config.fields.flag)."""
    args = typing.get_args(tp)
    base = next((a for a in args if a is not type(None)), tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    kwargs: dict[str, Any] = {"default": None, "metavar": cli.metavar}
    if cli.is_flag:
        kwargs["is_flag"] = True
    elif typing.get_origin(base) is typing.Literal:
        kwargs["type"] = click.Choice([str(a) for a in typing.get_args(base)])
    elif typing.get_origin(base) is list:
        kwargs["multiple"] = True
    elif base is Path:
        kwargs["type"] = click.Path(path_type=Path)
    elif base in (int, float):
        kwargs["type"] = base
    if cli.default_text is not None:
        shown = cli.default_text
    elif isinstance(fld.default, bool) and "/" in cli.decls[0]:
        shown = cli.decls[0].split("/")[0 if fld.default else 1].strip()  # --realtime/--fast -> "--realtime"
    elif fld.default is not dataclasses.MISSING:
        shown = ("on" if fld.default else "off") if isinstance(fld.default, bool) else fld.default
    else:
        shown = None
    kwargs["help"] = f"{cli.help} [default: {shown}]" if shown not in (None, "") else cli.help
    if "multiple" in kwargs:
        kwargs["default"] = ()
    return click.option(*cli.decls, _param(key), **kwargs)


FLAGGED = list(flagged_fields(DaemonConfig))
FLAG_KEYS = {_param(key): key for key, *_ in FLAGGED}  # option parameter -> dotted config key


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting that declares a flag becomes an option of `run`, in declaration order."""
    for key, fld, tp, cli in reversed(FLAGGED):
        f = _option(key, fld, tp, cli)(f)
    return f


def _fail_config(exc: ConfigError) -> None:
    from ..app.daemon import EXIT_CONFIG

    click.echo(f"genre-stream: configuration error: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config file (default: $GENRE_STREAM_CONFIG, else /etc/genre-stream/config.toml when present).")
@config_options
def run(config_path: Path | None, **options: Any) -> None:
    """Tag live inputs, folders and streams continuously; publish to MQTT and/or JSON lines.

    Runs until SIGTERM/SIGINT, or until all sources are files that have ended.
    SIGHUP reloads the configuration (sources, pipeline, stats) without dropping
    the MQTT connection. Exit status: 0 ok, 1 model error, 66 a file: input could not be read, 75 finished with
    messages still queued for the broker (kept for the next start), 78 bad configuration.
    """
    from ..app.daemon import EXIT_MODEL, Daemon
    from ..model.session import ModelError

    flags = {FLAG_KEYS[name]: value for name, value in options.items()}
    try:
        config = load_config(config_path, flags)
    except ConfigError as exc:
        _fail_config(exc)
        return
    config.mqtt.one_off = one_off(config.sources)
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
    _exit(code)


def one_off(sources: list[str]) -> bool:
    """Only ``file:`` sources: the run ends by itself. Its MQTT client id gets the process id (it must not take over
    the service's connection), it retains nothing of its sources and retracts their entities at its end
    (``sinks.mqtt``, docs/DAEMON.md "Instances and one-off runs")."""
    from ..sources import source_kind

    return bool(sources) and all(source_kind(spec) == "file" for spec in sources)


def _exit(code: int) -> None:
    """Exit with ``code``. A source thread the daemon had to leave behind (stuck in a C call past the
    stop timeout) would make the interpreter's shutdown abort (SIGABRT, exit 134) and systemd count a
    failure; its work is already given up and the outputs are flushed, so leave without waiting for it."""
    from ..app.daemon import SOURCE_THREAD_PREFIX

    if any(t.is_alive() and t.name.startswith(SOURCE_THREAD_PREFIX) for t in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
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
    """Build every spec as the daemon will (``sources.make_sources``), with a throw-away state dir so checking writes nothing."""
    import dataclasses
    import tempfile

    from ..sources import make_sources
    from ..sources.file import FileSource

    with tempfile.TemporaryDirectory() as scratch:
        for spec, source in make_sources(config.sources, dataclasses.replace(config, state_dir=Path(scratch))):
            if isinstance(source, FileSource):
                _check_file_source(spec, source.path)


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


