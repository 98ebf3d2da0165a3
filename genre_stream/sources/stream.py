"""Network audio (HTTP/Icecast radio, RTSP, anything ffmpeg opens) decoded by an ffmpeg subprocess.

A live stream has no end, so ffmpeg exiting for any reason (server closed the
connection, network error, server restart) or going quiet for ``stall_seconds``
counts as a drop: it is logged, reported as a ``SourceProblem``, and ffmpeg is
started again after an exponential backoff that restarts from 1 s once audio
flowed again. Stream time jumps across a drop to wall-clock time since the
source started, which tells the pipeline that continuity was lost.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from ..audio.frontend import SAMPLE_RATE
from ..common.backoff import Backoff
from ..common.redact import redact_text, redact_url
from .base import AudioChunk, Emit, Source, SourceProblem, StreamClock
from .ffmpeg import LIVE_INPUT_ARGS, FfmpegPcm

log = logging.getLogger(__name__)


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
            decoder = FfmpegPcm(self.url, LIVE_INPUT_ARGS, live=True)
            try:
                reason = self._pump(decoder, emit, stop)
            finally:
                status, errors = decoder.close()
                self._connected = False
            if reason is None:
                return
            detail = errors or (f"ffmpeg exit status {status}" if status else "end of stream")
            detail = redact_text(detail, self.url)  # ffmpeg may quote the URL it failed on
            message = f"stream {redact_url(self.url)} dropped: {reason} ({detail}); reconnecting in {backoff.next_delay:.0f} s"
            emit(SourceProblem(self.id, message))  # the daemon logs it, once
            self._reconnects += 1
            if self._clock.samples:
                backoff.reset()
            if not backoff.wait(stop):
                return

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
