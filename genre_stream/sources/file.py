"""A recording played as if it were live (``realtime``) or as fast as the pipeline takes it.

Useful to try the daemon without a sound card, to replay a broadcast through
the same chain as a live input, and for long-run benchmarks. The file is
decoded by ffmpeg as a stream, so memory stays flat however long it is. When
not real-time, ``emit`` is expected to block while the daemon is busy
(backpressure); that is what keeps a fast file source from flooding memory.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from ..audio.frontend import SAMPLE_RATE
from .base import AudioChunk, Emit, Source, SourceProblem
from .ffmpeg import FfmpegPcm

log = logging.getLogger(__name__)


class FileSource(Source):
    finite = True

    def __init__(self, source_id: str, path: Path, *, realtime: bool = True, chunk_seconds: float = 0.1) -> None:
        self.id = source_id
        self.path = Path(path)
        self.realtime = realtime
        self.chunk_samples = max(1, int(round(chunk_seconds * SAMPLE_RATE)))
        self._samples = 0

    def stats(self) -> dict[str, float | int]:
        return {"position_seconds": self._samples / SAMPLE_RATE}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "no such file"
            emit(SourceProblem(self.id, f"{self.path}: {what}", str(self.path)))
            return
        decoder = FfmpegPcm(str(self.path))
        start = time.monotonic()
        pending = np.zeros(0, dtype=np.float32)
        ended = False
        try:
            while not stop.is_set() and not ended:
                data = decoder.read(self.chunk_samples - pending.size, timeout=0.5)
                if data is None:
                    continue
                if data.size == 0:
                    ended = True
                else:
                    pending = np.concatenate([pending, data]) if pending.size else data
                if pending.size >= self.chunk_samples or (ended and pending.size):
                    self._emit(pending, emit, stop, start)
                    pending = np.zeros(0, dtype=np.float32)
        finally:
            status, errors = decoder.finished() if ended else decoder.close()
        if stop.is_set() and not ended:
            log.info("%s: stopped at %.1f s of %s", self.id, self._samples / SAMPLE_RATE, self.path)
            return
        if status != 0 or self._samples == 0:
            reason = errors or ("no audio samples" if status == 0 else f"ffmpeg exited with status {status}")
            emit(SourceProblem(self.id, f"{self.path}: not decodable audio ({reason})", str(self.path)))
            return
        log.info("%s: finished %s (%.1f s)", self.id, self.path, self._samples / SAMPLE_RATE)

    def _emit(self, samples: np.ndarray, emit: Emit, stop: threading.Event, start: float) -> None:
        t = self._samples / SAMPLE_RATE
        self._samples += samples.size
        if self.realtime:
            # The chunk's last sample is "captured" when the real-time clock reaches it.
            due = start + self._samples / SAMPLE_RATE
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        emit(AudioChunk(self.id, samples, t, time.monotonic()))
