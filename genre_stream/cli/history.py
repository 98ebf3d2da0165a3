"""``genre-stream history``: an airplay-style report of what the daemon heard."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path

import click

from ..common.timespec import parse_time
from ..config import HISTORY_FILENAME
from ..history.reader import HistoryError, HistoryReader, Segment, segments_csv
from ..sinks.messages import State


def daemon_state_dir(config_path: Path | None) -> Path:
    """The state directory exactly as ``genre-stream run`` would resolve it (file, environment, defaults)."""
    from ..config import ConfigError, load_config

    try:
        return load_config(config_path).state_dir
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from exc


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render_table(segments: list[Segment]) -> str:
    """Aligned columns in local time, the way a person reads an airplay log."""
    titled = any(s.title for s in segments)  # radio streams that name their tracks: "artist - title: genre"
    header = ["source", "start", "end", "duration", *(["title"] if titled else []), "genre", "confidence"]
    rows = [
        [s.source, _local(s.start), _local(s.end), _duration(s.duration), *([s.title or "-"] if titled else []),
         s.genre if s.state == State.MUSIC else f"({s.state})", f"{s.confidence:.2f}" if s.state == State.MUSIC else "-"]
        for s in segments
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def render_json(segments: list[Segment]) -> str:
    return json.dumps([s.to_dict() for s in segments], indent=2) + "\n"


RENDERERS = {"table": render_table, "csv": segments_csv, "json": render_json}


class TimeParam(click.ParamType):
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class GapParam(click.ParamType):
    """Seconds >= 0, finite: click's FloatRange lets ``nan`` through (no comparison is true for it),
    and a NaN gap would silently merge everything into one segment."""

    name = "SECONDS"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r}: must be a finite number of seconds, 0 or more", param, ctx)
        return seconds


@click.command("history")
@click.option("--source", "-s", help="Only this source id (default: all sources).")
@click.option("--since", type=TimeParam(), default="-24h", show_default=True,
              help="Start: ISO timestamp, clock time today (14:00), or before now (-1h, -30m, -2d).")
@click.option("--until", type=TimeParam(), default="now", show_default=True, help="End, same forms as --since.")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="table", show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"The daemon's state directory holding {HISTORY_FILENAME} (default: the daemon's, from --config, "
                   "GENRE_STREAM_STATE_DIR, $STATE_DIRECTORY or ~/.local/state/genre-stream).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The daemon's TOML config, to find its state directory "
                   "(default: $GENRE_STREAM_CONFIG, else /etc/genre-stream/config.toml when present).")
@click.option("--max-gap", type=GapParam(), default=60.0, show_default=True,
              help="Seconds without a state after which a segment is closed (daemon or source was down).")
def history(source: str | None, since: float, until: float, fmt: str, state_dir: Path | None,
            config_path: Path | None, max_gap: float) -> None:
    """Genre segments (start, end, genre, mean confidence) between --since and --until."""
    if until < since:
        raise click.BadParameter(f"--until ({_local(until)}) is before --since ({_local(since)})", param_hint="--until")
    path = (state_dir or daemon_state_dir(config_path)) / HISTORY_FILENAME
    reader = HistoryReader(path)
    try:
        if source and source not in reader.sources():
            known = ", ".join(reader.sources()) or "none yet"
            raise click.ClickException(f"no source {source!r} in {path} (known: {known})")
        segments = reader.segments(source, since, until, max_gap=max_gap)
    except HistoryError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.stdout.write(RENDERERS[fmt](segments))
