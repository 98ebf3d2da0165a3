"""The last 30 s of each source's audio, so that a person can hear what was tagged (the page's play button).

The pipeline hands every chunk to its listeners (``PipelineListener.audio_received``: mono float32 at
the frontend's rate, already repaired); the dashboard keeps the newest ``RECENT_SECONDS`` of it per
source as 16-bit samples in a ring (at 22050 Hz: 1.3 MB per source, allocated with the source's first
chunk, never more), whether a page is open or not: the page is opened after something sounded wrong.
A chunk costs one conversion and at most two slice copies under a lock. ``GET
/api/sources/<id>/recent.wav`` serves a copy as a WAV file; a gap in the audio (a stream that
reconnected) is not marked in it, the samples simply follow each other.
"""

from __future__ import annotations

import io
import threading
import time
import wave
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from ..common.timespec import shown
from .responses import error_response

RECENT_SECONDS = 30.0
PCM_FULL_SCALE = 32767.0


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (full scale +-1) -> 16-bit integers, clipped (a repaired chunk may still exceed 1)."""
    return np.rint(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * PCM_FULL_SCALE).astype(np.int16)


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return buf.getvalue()


@dataclass
class _Ring:
    samples: np.ndarray  # int16, ``capacity`` long; the newest sample is at (written - 1) % capacity
    written: int = 0  # samples ever added
    updated: float = 0.0  # time.time() of the newest chunk


class RecentAudio:
    """Per source, the newest ``seconds`` of audio at ``sample_rate``; every method is thread-safe."""

    def __init__(self, sample_rate: int, seconds: float = RECENT_SECONDS) -> None:
        self.sample_rate = sample_rate
        self.capacity = max(1, int(round(seconds * sample_rate)))
        self._lock = threading.Lock()
        self._rings: dict[str, _Ring] = {}

    def add(self, source: str, samples: np.ndarray) -> None:
        """Append a chunk (the pipeline's thread); only its newest ``capacity`` samples can matter."""
        pcm = to_pcm16(np.asarray(samples).reshape(-1)[-self.capacity:])
        n = pcm.size
        if n == 0:
            return
        with self._lock:
            ring = self._rings.get(source)
            if ring is None:
                ring = self._rings[source] = _Ring(np.zeros(self.capacity, dtype=np.int16))
            start = ring.written % self.capacity
            first = min(n, self.capacity - start)
            ring.samples[start:start + first] = pcm[:first]
            ring.samples[:n - first] = pcm[first:]
            ring.written += n
            ring.updated = time.time()

    def latest(self, source: str) -> tuple[np.ndarray, float] | None:
        """A copy of the source's recent samples, oldest first, and when the newest arrived; None: no audio yet."""
        with self._lock:
            ring = self._rings.get(source)
            if ring is None or ring.written == 0:
                return None
            if ring.written < self.capacity:
                return ring.samples[:ring.written].copy(), ring.updated
            start = ring.written % self.capacity
            return np.concatenate([ring.samples[start:], ring.samples[:start]]), ring.updated

    def keep_only(self, sources: Iterable[str]) -> None:
        """Forget the audio of sources that are no longer running (removed on reload)."""
        keep = set(sources)
        with self._lock:
            for source in [s for s in self._rings if s not in keep]:
                del self._rings[source]


class RecentAudioRoute:
    """``GET /api/sources/{source}/recent.wav``: the source's last ``RECENT_SECONDS`` as 16-bit mono WAV."""

    def __init__(self, audio: RecentAudio) -> None:
        self.audio = audio

    async def recent_wav(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        recent = self.audio.latest(source)
        if recent is None:
            return error_response(404, f"no audio from source {shown(source)} (not running, no audio yet, or a "
                                       "watched folder, whose files are not kept)")
        pcm, updated = recent
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)  # a source id goes into a header
        return web.Response(body=wav_bytes(pcm, self.audio.sample_rate), content_type="audio/wav", headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="{safe}-recent.wav"',
            "X-Audio-Seconds": f"{pcm.size / self.audio.sample_rate:.3f}",
            "X-Audio-Ends-At": f"{updated:.3f}",  # unix time of the newest sample
        })
