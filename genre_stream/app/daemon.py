"""`genre-stream run`: sources -> per-source flows -> sinks, for as long as it is needed.

The daemon supervises and knows its parts only by their protocols (``sources.base.Source``,
``sinks.base.Sink``, ``pipeline.PipelineListener``); ``compose.py`` chooses and wires them.
Each source runs in its own thread and its items are handled in that thread: audio into the
source's ``SourcePipeline``, whose messages the daemon publishes; complete files into its
``TrackTagger``, which publishes through the daemon; problems into error events. A slow
source or a long track never holds up the others. The main thread only supervises: signals,
the systemd watchdog, periodic stats, configuration reloads, and noticing that all (finite)
sources have ended.

Exit status: 0 done or stopped by a signal; 1 unusable model; 75 a finite run ended with
messages still queued for an unreachable broker (they stay on disk for the next start);
78 configuration error (systemd's unit does not restart on it).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..common.backoff import Backoff
from ..config import ConfigError, DaemonConfig, ModelConfig, describe_outputs, require_sources
from ..model.choice import model_file_stamp, open_engine, resolve
from ..model.session import ModelError
from ..sinks import Fanout, ModelSummary, SourceAvailability, SourceInfo
from ..sinks.messages import GenreEvent, SourceStats
from ..sources import (
    TRACK_KINDS,
    AudioChunk,
    Source,
    SourceError,
    SourceFactory,
    SourceItem,
    SourceProblem,
    TitleChanged,
    TrackReady,
    make_sources,
    source_from_config,
    source_kind,
)
from .compose import build_outputs, make_pipeline, make_tagger
from .systemd import Notifier

if TYPE_CHECKING:
    from ..live.pipeline import PipelineListener, SourcePipeline
    from ..model.engine import Engine
    from ..watch.tagger import TrackTagger

log = logging.getLogger(__name__)


def open_model(model: ModelConfig) -> Engine:
    """``[model]`` opened the way every command opens its model (``model.choice.open_engine``)."""
    return open_engine(model.path, device=model.device, threads=model.threads)

EXIT_OK = 0
EXIT_MODEL = 1
EXIT_NOINPUT = 66  # EX_NOINPUT: a files-only run in which an input could not be read (missing, unreadable, undecodable)
EXIT_UNDELIVERED = 75  # EX_TEMPFAIL
EXIT_CONFIG = 78  # EX_CONFIG

TICK = 0.2  # main-loop period: bounds signal, watchdog and end-of-sources reaction time
JOIN_TIMEOUT = 3.0  # how long a stop waits for source threads before giving up on them
SOURCE_THREAD_PREFIX = "source-"  # the name of each source's thread (cli.run knows them by it at exit)
RESTART_MAX = 60.0  # ceiling of the backoff when a source crashes unexpectedly


@dataclass
class _Running:
    spec: str
    source: Source
    pipeline: SourcePipeline  # audio chunks -> messages
    tagger: TrackTagger | None  # complete files -> messages (watch folders; None for audio sources)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # pipeline swap on reload vs feed and stats
    thread: threading.Thread | None = None
    errors: int = 0
    ended: bool = False  # finished on its own (not stopped)
    input_failed: bool = False  # a finite source reported a problem with its input (a missing or undecodable file)
    online: bool | None = None  # last availability published: audio flows / folder watched

    @property
    def kind(self) -> str | None:
        return source_kind(self.spec)


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        engine: Engine | None = None,
        sinks: Fanout | None = None,
        listeners: Sequence[PipelineListener] = (),
        notifier: Notifier | None = None,
        source_factory: SourceFactory = source_from_config,
        reload_config: Callable[[], DaemonConfig] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.sinks = sinks  # None: composed from the config at start, with their listeners
        self.listeners = list(listeners)
        self.notifier = notifier or Notifier()
        self.source_factory = source_factory
        self.reload_config = reload_config
        self.running: dict[str, _Running] = {}
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._model_stamp: tuple[int, int, int] | None = None  # the running model file, to see it change

    # ---------------------------------------------------------------- control

    def request_stop(self, signum: int | None = None) -> None:
        if signum is not None:
            log.info("received %s; stopping", signal.Signals(signum).name)
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: self.request_stop(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: self.request_stop(signum))
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())
        # `kill -USR1 <pid>` writes every thread's stack to stderr (the journal): for a daemon that hangs.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    # ---------------------------------------------------------------- main

    def run(self) -> int:
        """Run until the finite sources end or a stop is requested; the exit status."""
        config = self.config
        require_sources(config)
        sources = make_sources(config.sources, config, self.source_factory)  # ConfigError before anything opens
        if self.engine is None:
            self.engine = open_model(config.model)
        self._model_stamp = model_file_stamp(self.engine.path)  # the file that runs (auto: the export it chose), as reload compares
        if self.sinks is None:
            outputs = build_outputs(config, self.engine)
            self.sinks, self.listeners = outputs.sinks, outputs.listeners
        self.sinks.start()  # ConfigError when the dashboard cannot listen
        for spec, source in sources:
            self._start(spec, source)
        self._announce_sources()
        self.notifier.ready(self._status_line())
        log.info("genre-stream %s: sources %s; model %s %s on %s [%s]; outputs %s", __version__,
                 ", ".join(f"{sid} ({r.kind})" for sid, r in self.running.items()), self.engine.model_id, self.engine.precision,
                 self.engine.providers[0].removesuffix("ExecutionProvider"), self.engine.chosen, ", ".join(describe_outputs(config)))
        next_stats = time.monotonic() + config.stats_interval if config.stats_interval else None
        by_signal = False
        while True:
            self.notifier.watchdog_due()
            if self._stop_requested:
                by_signal = True
                break
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            if next_stats is not None and time.monotonic() >= next_stats:
                self.publish_stats()
                next_stats = time.monotonic() + self.config.stats_interval if self.config.stats_interval else None
            if self._all_ended():
                log.info("all sources have ended")
                break
            self._wake.wait(TICK)
            self._wake.clear()
        return self._shutdown(by_signal)

    def _all_ended(self) -> bool:
        return all(r.source.finite and r.thread is not None and not r.thread.is_alive() for r in self.running.values())

    def _shutdown(self, by_signal: bool) -> int:
        self.notifier.stopping()
        self.notifier.status("stopping: flushing queued messages")
        for r in self.running.values():
            r.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for r in self.running.values():
            if r.thread is not None:
                r.thread.join(max(0.0, deadline - time.monotonic()))
                if r.thread.is_alive():
                    log.warning("source %s did not stop within %.0f s; leaving it behind", r.source.id, JOIN_TIMEOUT)
        if self.config.stats_interval:
            self.publish_stats()
        assert self.sinks is not None
        delivered = self.sinks.close(self.config.mqtt.flush_timeout)
        self.notifier.close()
        log.info("stopped")
        if by_signal:
            return EXIT_OK
        failed = sorted(sid for sid, r in self.running.items() if r.input_failed)
        if failed:
            log.error("input not read: %s (exit %d)", ", ".join(failed), EXIT_NOINPUT)
            return EXIT_NOINPUT
        return EXIT_OK if delivered else EXIT_UNDELIVERED

    # ---------------------------------------------------------------- sources

    def _start(self, spec: str, source: Source) -> None:
        assert self.engine is not None
        r = _Running(spec, source, make_pipeline(source.id, self.engine, self.config, self.listeners),
                     make_tagger(source, self.engine, self.config))
        r.thread = threading.Thread(target=self._source_thread, args=(r,), name=f"{SOURCE_THREAD_PREFIX}{source.id}", daemon=True)
        self.running[source.id] = r
        r.thread.start()

    def _announce_sources(self) -> None:
        """Tell the sinks the model in use and the running sources (at start and after a reload)."""
        assert self.sinks is not None and self.engine is not None
        self.sinks.model_changed(ModelSummary(self.engine.model_id, self.engine.precision, self.engine.chosen))
        self.sinks.sources_changed(self._source_infos(), self.engine.model_id)

    def _source_infos(self) -> list[SourceInfo]:
        assert self.engine is not None
        return [
            SourceInfo(sid, r.kind, tuple(self.engine.labels), self.config.pipeline.hop_seconds, self.config.stats_interval,
                       functools.partial(self._source_stats, r))
            for sid, r in self.running.items()
        ]

    def _set_online(self, r: _Running, online: bool) -> None:
        """Publish the source's availability when it changes, so a dead stream does not look alive."""
        if r.online != online:
            if online or r.online:  # not the initial "down" of a source that never came up
                log.info("%s: %s", r.source.id, ("up (watching)" if r.kind in TRACK_KINDS else "up (audio flowing)") if online else "down")
            r.online = online
            self._publish(SourceAvailability(r.source.id, online))

    def _source_thread(self, r: _Running) -> None:
        # A folder is "up" while it is watched; an audio source once audio flows.
        self._set_online(r, r.kind in TRACK_KINDS)
        try:
            self._run_source(r)
        finally:
            self._set_online(r, False)  # ended, failed or stopped

    def _run_source(self, r: _Running) -> None:
        """Run one source; a crash is reported and, for live sources, retried with backoff."""
        backoff = Backoff(1.0, RESTART_MAX)
        while not r.stop.is_set():
            try:
                r.source.run(lambda item: self._handle(r, item), r.stop)
                break
            except SourceError as exc:
                log.error("source %s cannot run: %s", r.source.id, exc)
                self._publish(GenreEvent.error(r.source.id, str(exc)))
                break
            except Exception as exc:  # a bug or an unforeseen fault must not take the daemon down
                log.exception("source %s failed", r.source.id)
                self._publish(GenreEvent.error(r.source.id, f"source failed: {exc}"))
                if r.source.finite:
                    break
                log.info("restarting source %s in %.0f s", r.source.id, backoff.next_delay)
                backoff.wait(r.stop)
        if r.stop.is_set():
            return
        r.ended = True
        if not r.source.finite:
            log.warning("live source %s returned without being stopped", r.source.id)
        with r.lock:
            for message in r.pipeline.flush():
                self._publish(message)
        self._wake.set()

    def _handle(self, r: _Running, item: SourceItem) -> None:
        try:
            if isinstance(item, AudioChunk):
                self._set_online(r, True)
                with r.lock:
                    messages = r.pipeline.feed(item)
                for message in messages:
                    self._publish(message)
            elif isinstance(item, TitleChanged):
                with r.lock:
                    messages = r.pipeline.title_changed(item.title)
                for message in messages:
                    self._publish(message)
            elif isinstance(item, TrackReady):
                if r.tagger is None:
                    raise TypeError(f"{type(r.source).__name__} hands on files but keeps no TrackLedger")
                r.tagger.tag(item.path, self._publish, r.stop)
            elif isinstance(item, SourceProblem):
                if r.source.finite and r.tagger is None:
                    r.input_failed = True
                if r.kind not in TRACK_KINDS:  # mic/stream drop, undecodable file: no audio now
                    self._set_online(r, False)
                log.warning("%s: %s", item.source, item.reason)
                self._publish(GenreEvent.error(item.source, item.reason, item.path))
        except Exception:  # one bad chunk or file must not end the source
            r.errors += 1
            log.exception("%s: failed to process a %s", r.source.id, type(item).__name__)

    def _publish(self, message: Any) -> None:
        assert self.sinks is not None
        self.sinks.publish(message)

    def publish_stats(self) -> None:
        for r in list(self.running.values()):
            values = self._source_stats(r)
            log.debug("stats %s: %s", r.source.id, values)
            self._publish(SourceStats(r.source.id, values))

    def _source_stats(self, r: _Running) -> dict[str, Any]:
        """A source's counters: its own, its pipeline's, the daemon's and the sinks' (the ``stats`` payload).

        Also what ``SourceInfo.stats`` gives the sinks, so it is safe to call from any thread.
        """
        values: dict[str, Any] = {}
        values.update(r.source.stats())
        with r.lock:
            values.update(r.pipeline.stats())
        values["errors"] = r.errors
        values["model_precision"] = self.engine.precision if self.engine else ""
        values["running"] = bool(r.thread and r.thread.is_alive())
        if self.sinks is not None:
            values.update(self.sinks.stats())
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}

    def _status_line(self) -> str:
        return f"{len(self.running)} source(s): {', '.join(self.running)}"

    # ---------------------------------------------------------------- reload

    def _reload(self) -> None:
        """SIGHUP: re-read file and environment; apply what can change without reconnecting."""
        if self.reload_config is None:
            log.warning("SIGHUP: no configuration to reload from")
            return
        self.notifier.reloading()
        try:
            new = self.reload_config()
            require_sources(new)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_line())
            return
        except Exception:  # a loader bug must not take a running daemon down on SIGHUP
            log.exception("reload failed unexpectedly, keeping the running configuration")
            self.notifier.ready(self._status_line())
            return
        old = self.config
        model_reloaded = self._reload_model(new.model)
        for section in ("mqtt", "homeassistant", "jsonl", "state_dir", "http", "history"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: %s changed; restart the daemon to apply it (the MQTT connection is kept)", section)
        new = dataclasses.replace(
            new, mqtt=old.mqtt, homeassistant=old.homeassistant, jsonl=old.jsonl, model=new.model if model_reloaded else old.model, state_dir=old.state_dir,
            http=old.http, history=old.history,
        )
        if new.log_level and new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        current = {r.spec: sid for sid, r in self.running.items()}
        removed = [sid for spec, sid in current.items() if spec not in new.sources]
        for sid in removed:
            r = self.running.pop(sid)
            r.stop.set()
            if r.thread is not None:
                r.thread.join(JOIN_TIMEOUT)
            log.info("reload: source %s removed", sid)
        try:
            running = {sid: r.spec for sid, r in self.running.items()}
            added = make_sources([s for s in new.sources if s not in current], new, self.source_factory, running)
        except ConfigError as exc:
            log.error("reload: %s; the new sources are not started", exc)
            added = []
        self.config = new
        assert self.engine is not None
        restart = new.pipeline != old.pipeline or model_reloaded
        if restart:
            log.info("reload: %s changed; buffers restart", "the model" if model_reloaded else "pipeline settings")
        for r in self.running.values():
            r.tagger = make_tagger(r.source, self.engine, new)  # holds nothing but settings: always the new ones
            if restart:
                with r.lock:
                    r.pipeline = make_pipeline(r.source.id, self.engine, new, self.listeners)
        for spec, source in added:
            self._start(spec, source)
            log.info("reload: source %s added (%s)", source.id, spec)
        assert self.sinks is not None and self.engine is not None
        self._announce_sources()
        log.info("configuration reloaded")
        self.notifier.ready(self._status_line())

    def _reload_model(self, model: ModelConfig) -> bool:
        """Load the model again when its settings or its file changed (a fine-tuned model written over the old one).

        A model that fails to load is logged and the running one kept, so a
        half-copied or broken file never stops tagging; the next SIGHUP tries again.
        """
        assert self.engine is not None
        try:
            stamp = model_file_stamp(resolve(model.path, model.device).path)
            if model == self.config.model and stamp == self._model_stamp:
                return False
            engine = open_model(model)
        except ModelError as exc:
            log.error("reload: keeping the running model %s (%s): %s", self.engine.path, self.engine.model_id, exc)
            return False
        log.info("reload: model %s (%s) replaces %s (%s)", engine.path, engine.model_id, self.engine.path, self.engine.model_id)
        self.engine, self._model_stamp = engine, stamp
        return True

