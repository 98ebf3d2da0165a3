"""Network audio (HTTP/Icecast radio, RTSP, anything ffmpeg opens) decoded by an ffmpeg subprocess.

A live stream has no end, so ffmpeg exiting for any reason (server closed the
connection, network error, server restart) or going quiet for ``stall_seconds``
counts as a drop: it is logged, reported as a ``SourceProblem``, and ffmpeg is
started again after an exponential backoff that restarts from 1 s once audio
flowed again for a while. Stream time jumps across a drop to wall-clock time since the
source started, which tells the pipeline that continuity was lost.

HTTP(S) comes through ``icy.IcyStream``: the station's ``StreamTitle`` becomes a
``TitleChanged`` item, and a plain file on a web server (a ``Content-Length``, no ICY
headers) is paced to real time (ffmpeg ``-re``); when such a file ends the backoff is
not reset, so a file served in a loop is fetched again after 1, 2, 4 ... s, not at once.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ..audio.frontend import SAMPLE_RATE
from ..common.backoff import Backoff
from ..common.redact import redact_text, redact_url
from .base import AudioChunk, Emit, Source, SourceProblem, StreamClock, TitleChanged
from .ffmpeg import LIVE_INPUT_ARGS, FfmpegPcm
from .icy import HttpStreamError, IcyStream, is_http

log = logging.getLogger(__name__)

PACED_INPUT_ARGS = ("-re",)  # a finite file over HTTP: read at its own pace (real time), like a radio would send it
LONG_CONNECTION_SECONDS = 300.0  # a connection that delivered audio this long resets the reconnect backoff


class StreamSource(Source):
    finite = False

    def __init__(
        self,
        source_id: str,
        url: str,
        *,
        chunk_seconds: float = 0.1,
        stall_seconds: float = 15.0,
        reconnect_max_seconds: float = 30.0,
    ) -> None:
        self.id = source_id
        self.url = url
        self.chunk_samples = max(1, int(round(chunk_seconds * SAMPLE_RATE)))
        self.stall_seconds = stall_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self._reconnects = 0
        self._clock = StreamClock()
        self._connected = False
        self._title: str | None = None  # the station's latest StreamTitle, not yet emitted
        self._title_lock = threading.Lock()

    def stats(self) -> dict[str, float | int]:
        return {"reconnects": self._reconnects, "connected": int(self._connected)}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        backoff = Backoff(maximum=self.reconnect_max_seconds)
        self._clock = StreamClock()
        first = True
        while not stop.is_set():
            if not first:
                self._clock.reconnected()
            first = False
            log.info("%s: connecting to %s", self.id, redact_url(self.url))
            started = time.monotonic()
            try:
                decoder, feeder, live = self._open(stop)
            except HttpStreamError as exc:
                reason, detail, live = "cannot connect", str(exc), True
            else:
                try:
                    reason = self._pump(decoder, emit, stop)
                finally:
                    status, errors = decoder.close()  # first: a feeder blocked writing into ffmpeg gets EPIPE
                    if feeder is not None:
                        feeder.close()
                    self._connected = False
                if reason is None:
                    return
                detail = errors or (feeder.error if feeder is not None and feeder.error else None) or (
                    f"ffmpeg exit status {status}" if status else "end of stream")
            detail = redact_text(detail, self.url)  # ffmpeg may quote the URL it failed on
            message = f"stream {redact_url(self.url)} dropped: {reason} ({detail}); reconnecting in {backoff.next_delay:.0f} s"
            if not live:
                message += " (a finite file, not a live stream: it was played at real time and is fetched again with backoff)"
            emit(SourceProblem(self.id, message))  # the daemon logs it, once
            self._reconnects += 1
            if self._clock.samples and (live or time.monotonic() - started >= LONG_CONNECTION_SECONDS):
                backoff.reset()
            if not backoff.wait(stop):
                return

    def _open(self, stop: threading.Event) -> tuple[FfmpegPcm, _Feeder | None, bool]:
        """ffmpeg over the URL: HTTP(S) fed through ``IcyStream`` (titles; finite files paced), anything else read by ffmpeg."""
        if not is_http(self.url):
            return FfmpegPcm(self.url, LIVE_INPUT_ARGS, live=True), None, True
        http = IcyStream(self.url, timeout=2 * self.stall_seconds + 1)  # the stall rule on decoded audio speaks first
        live = http.head.live
        if not live:
            log.info("%s: %s is a file (%s bytes, no ICY headers): playing it at real time", self.id,
                     redact_url(self.url), http.head.content_length)
        args = LIVE_INPUT_ARGS if live else (*LIVE_INPUT_ARGS, *PACED_INPUT_ARGS)
        decoder = FfmpegPcm("pipe:0", args, live=True, fed=True)
        return decoder, _Feeder(self, http, decoder, stop), live

    def title_arrived(self, title: str) -> None:
        """Called by the feeder thread; emitted by the source's own thread before its next chunk."""
        log.info("%s: now playing %r", self.id, title)
        with self._title_lock:
            self._title = title

    def _pump(self, decoder: FfmpegPcm, emit: Emit, stop: threading.Event) -> str | None:
        """Emit chunks until the stream drops (returns why) or stop is set (returns None)."""
        pending = np.zeros(0, dtype=np.float32)
        last_data = time.monotonic()
        while not stop.is_set():
            data = decoder.read(self.chunk_samples - pending.size, timeout=0.2)
            if data is None:
                if time.monotonic() - last_data > self.stall_seconds:
                    return f"no data for {self.stall_seconds:.0f} s"
                continue
            if data.size == 0:
                if pending.size:
                    self._emit(pending, emit)
                return "connection ended"
            with self._title_lock:
                title, self._title = self._title, None
            if title is not None:
                emit(TitleChanged(self.id, title))
            if not self._connected:
                log.info("%s: receiving audio from %s", self.id, redact_url(self.url))
                self._connected = True
            last_data = time.monotonic()
            pending = np.concatenate([pending, data]) if pending.size else data
            if pending.size >= self.chunk_samples:
                self._emit(pending, emit)
                pending = np.zeros(0, dtype=np.float32)
        return None

    def _emit(self, samples: np.ndarray, emit: Emit) -> None:
        emit(AudioChunk(self.id, samples, self._clock.stamp(samples.size), time.monotonic()))


class _Feeder:
    """A thread that copies an HTTP stream's audio bytes into ffmpeg's stdin and reports its titles."""

    def __init__(self, owner: StreamSource, http: IcyStream, decoder: FfmpegPcm, stop: threading.Event) -> None:
        self.http, self.decoder, self.owner, self.stop = http, decoder, owner, stop
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"http-{owner.id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for data, title in self.http.chunks():
                if self.stop.is_set():
                    break
                if title is not None:
                    self.owner.title_arrived(title)
                if data and not self.decoder.write(data):
                    break
        except (OSError, ValueError) as exc:  # a reset, a timeout (stall), a response closed by close()
            self.error = str(exc) or type(exc).__name__
        finally:
            self.decoder.end_input()

    def close(self) -> None:
        self.http.close()
        self._thread.join(3.0)
