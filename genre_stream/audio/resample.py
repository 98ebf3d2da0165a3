"""The one resampler, for files, sound cards and streams: libsoxr (python-soxr).

soxr's "HQ" setting is librosa's default resampler (``soxr_hq``), band-limited
and fast in C, with no torch behind it. Whole arrays and chunked streams go
through the same filter: a stream cut into chunks of any size gives exactly the
samples one call over the whole signal would (the tests hold it to that).
"""

from __future__ import annotations

import numpy as np
import soxr

QUALITY = "HQ"


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio in one call."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if orig_sr == target_sr or audio.size == 0:
        return audio
    return soxr.resample(audio, int(orig_sr), int(target_sr), quality=QUALITY)


class StreamResampler:
    """Resample a stream chunk by chunk without clicks at chunk edges.

    soxr keeps the filter state between calls, so output samples land exactly where
    one long resample would put them; the price is the filter's delay (a few ms),
    handed out by ``flush`` at the end of a finite stream.
    """

    def __init__(self, orig_rate: int, target_rate: int) -> None:
        self.orig_rate = int(orig_rate)
        self.target_rate = int(target_rate)
        self._stream = None if self.passthrough else soxr.ResampleStream(self.orig_rate, self.target_rate, 1, dtype="float32", quality=QUALITY)

    @property
    def passthrough(self) -> bool:
        return self.orig_rate == self.target_rate

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter; call once when the input has ended."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
