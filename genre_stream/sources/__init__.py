"""Inputs of the daemon, built from the ``--source`` syntax.

``parse_source`` turns ``mic``, ``mic:DEVICE``, ``watch:DIR``, ``file:PATH``,
``stream:URL``, each optionally prefixed by ``ID=``, into a ``Source``. The id is
used in MQTT topics, so it is restricted to letters, digits, ``-`` and ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..config import ConfigError
from .base import AudioChunk, Source, SourceError, SourceItem, SourceProblem, TitleChanged, TrackReady

if TYPE_CHECKING:
    from ..config import DaemonConfig

__all__ = [
    "AudioChunk",
    "TrackReady",
    "SourceProblem",
    "TitleChanged",
    "SourceItem",
    "Source",
    "SourceError",
    "parse_source",
    "source_id_for",
    "source_kind",
    "source_from_config",
    "make_sources",
    "SourceFactory",
    "KINDS",
    "TRACK_KINDS",
]

KINDS = ("mic", "watch", "file", "stream")
TRACK_KINDS = ("watch",)  # deliver whole files (TrackReady), not a running audio stream
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _slug(text: str) -> str:
    """Topic-safe form of a name: runs of other characters become '-'."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-_").lower()
    return slug[:48] or "x"


def _split(spec: str) -> tuple[str | None, str, str]:
    """(id or None, kind, argument) of a spec, or ValueError naming what is wrong."""
    text = spec.strip()
    if not text:
        raise ValueError("empty source spec; use mic[:DEVICE], watch:DIR, file:PATH or stream:URL")
    source_id = None
    head = text.split(":", 1)[0]
    if "=" in head:
        source_id, text = text.split("=", 1)
        source_id = source_id.strip()
        if not _ID_RE.match(source_id):
            raise ValueError(
                f"source {spec!r}: id {source_id!r} must start with a letter or digit and contain only letters, digits, '-' and '_' "
                "(it becomes part of MQTT topics), at most 64 characters"
            )
        text = text.strip()
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"source {spec!r}: unknown kind {kind!r}; use mic[:DEVICE], watch:DIR, file:PATH or stream:URL")
    if kind != "mic" and not arg.strip():
        raise ValueError(f"source {spec!r}: {kind} needs an argument ({kind}:{ {'watch': 'DIR', 'file': 'PATH', 'stream': 'URL'}[kind]})")
    return source_id, kind, arg.strip()


def source_kind(spec: str) -> str | None:
    """The kind (one of ``KINDS``) a spec names, or None when it is not in the ``--source`` syntax."""
    try:
        return _split(spec)[1]
    except ValueError:
        return None


def source_id_for(kind: str, arg: str) -> str:
    """The default id: mic, mic-<device>, watch-<dirname>, file-<stem>, stream-<host>."""
    if kind == "mic":
        return "mic" if not arg else f"mic-{_slug(arg)}"
    if kind == "watch":
        return f"watch-{_slug(Path(arg).expanduser().absolute().name or 'root')}"
    if kind == "file":
        return f"file-{_slug(Path(arg).stem)}"
    host = urlsplit(arg).hostname
    return f"stream-{_slug(host)}" if host else f"stream-{_slug(Path(arg).stem)}"


def parse_source(
    spec: str,
    *,
    state_dir: Path,
    realtime: bool = True,
    chunk_seconds: float = 0.1,
    done_dir: Path | None = None,
    failed_dir: Path | None = None,
    settle_seconds: float = 2.0,
    poll_seconds: float = 2.0,
    use_watchdog: bool = True,
    block_seconds: float = 0.05,
    queue_seconds: float = 5.0,
    stall_seconds: float | None = None,
    reconnect_max_seconds: float = 30.0,
) -> Source:
    """Build the source a spec describes; ValueError with the spec and the reason when it is wrong.

    ``state_dir`` holds the watch source's SQLite file (``<id>.sqlite3``);
    ``realtime`` and ``chunk_seconds`` apply to file sources, ``done_dir``,
    ``failed_dir``, ``settle_seconds``, ``poll_seconds`` and ``use_watchdog`` to
    watch sources, ``block_seconds``/``queue_seconds`` to mic sources,
    ``stall_seconds``/``reconnect_max_seconds`` to mic and stream sources.
    Nothing is opened here except the watch state file, so a bad device or an
    unreachable stream shows up as ``SourceProblem`` once the source runs.
    """
    source_id, kind, arg = _split(spec)
    source_id = source_id or source_id_for(kind, arg)
    if kind == "mic":
        from .mic import MicSource

        return MicSource(
            source_id,
            arg or None,
            block_seconds=block_seconds,
            queue_seconds=queue_seconds,
            stall_seconds=stall_seconds or 5.0,
            reconnect_max_seconds=reconnect_max_seconds,
        )
    if kind == "watch":
        from ..watch.source import WatchSource

        directory = Path(arg).expanduser()
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"source {spec!r}: {directory} is not a folder")
        return WatchSource(
            source_id,
            directory,
            state_path=Path(state_dir) / f"{source_id}.sqlite3",
            settle_seconds=settle_seconds,
            poll_seconds=poll_seconds,
            done_dir=done_dir,
            failed_dir=failed_dir,
            use_watchdog=use_watchdog,
        )
    if kind == "file":
        from .file import FileSource

        return FileSource(source_id, Path(arg).expanduser(), realtime=realtime, chunk_seconds=chunk_seconds)
    from .stream import StreamSource

    if "://" not in arg:
        raise ValueError(f"source {spec!r}: stream needs a URL such as http://host:8000/radio.mp3 or rtsp://...")
    return StreamSource(
        source_id,
        arg,
        chunk_seconds=chunk_seconds,
        stall_seconds=stall_seconds or 15.0,
        reconnect_max_seconds=reconnect_max_seconds,
    )


def source_from_config(spec: str, config: DaemonConfig) -> Source:
    """The default factory: the ``--source`` syntax with the config's state dir and watch options."""
    w = config.watch
    return parse_source(
        spec,
        state_dir=config.state_dir,
        realtime=config.realtime,
        done_dir=w.done_dir,
        failed_dir=w.failed_dir,
        settle_seconds=w.settle_seconds,
        poll_seconds=w.poll_seconds,
    )


SourceFactory = Callable[[str, "DaemonConfig"], Source]


def make_sources(specs: Iterable[str], config: DaemonConfig, factory: SourceFactory = source_from_config,
                 running: Mapping[str, str] | None = None) -> list[tuple[str, Source]]:
    """Build every spec as the daemon runs it, or ConfigError naming the spec: a bad spec, or an id taken twice.

    ``running`` maps the ids of sources already running (on a reload) to their specs. The daemon
    and ``config check`` both build sources here, so they accept and refuse the same configurations.
    """
    taken = dict(running or {})
    made: list[tuple[str, Source]] = []
    for spec in specs:
        try:
            source = factory(spec, config)
        except (ValueError, SourceError) as exc:
            raise ConfigError(f"sources: {exc}") from None
        if source.id in taken:
            raise ConfigError(f"sources: two sources have the id {source.id!r} ({taken[source.id]!r} and {spec!r}); "
                              f"give one an id with ID={spec}")
        taken[source.id] = spec
        made.append((spec, source))
    return made
