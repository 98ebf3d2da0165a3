"""What a model is fed at a place in a track: its normalisation applied the way the runtime applies it.

A model names its normalisation (``ModelInfo.normalization``, genre_stream/audio/normalization.py);
training, fine-tuning, evaluation and export build their inputs here, from that name, so a model is
never trained on other numbers than the runtime gives it.

* ``SEED`` normalises each window on its own: a training crop is normalised alone, and only the
  crop's frames are read from the cache (bit for bit what the trainer always did).
* ``RUNNING`` normalises each frame once, against the loudest frame of the model's window ending at
  it (during the first window: the first window's loudest frame). The runtime feeds the network a
  stretch of that normalised stream, so a crop must be cut out of the *whole* normalised track:
  normalised on its own, a crop's frames would get the crop's first window as their reference.
  Normalising a whole track costs ~3 ms per 30 s (Python steps per frame), ten times a seed crop and
  more for long tracks, so whole normalised tracks are kept, least recently used first out, up to
  ``KEEP_BYTES`` (a 30 s track is 331 kB: GTZAN's 1000 clips fit).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genre_stream.audio.frontend import normalize_window
from genre_stream.audio.normalization import NORMALIZATIONS, RUNNING, SEED, running_normalize, window_of
from genre_stream.model.info import ModelInfo

log = logging.getLogger(__name__)

# A new model's normalisation unless told otherwise: the bundled models' since issue 23 (so `finetune default`
# and a new model agree); `--normalization seed` trains the seed project's (docs/TRAINING.md).
DEFAULT_NORMALIZATION = RUNNING
KEEP_BYTES = 512 * 2**20  # whole RUNNING-normalised tracks kept per TrackInputs (per process under torchrun)

PowerReader = Callable[[int, int, int | None], np.ndarray]  # (track, start, length or None = to the end) -> power frames


@dataclass(frozen=True)
class ModelInput:
    """A model's input rule: its normalisation, its window (RUNNING's reference span) and the dB floor."""

    normalization: str
    window_frames: int
    top_db: float = 80.0

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; known: {', '.join(NORMALIZATIONS)}")
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")

    @classmethod
    def of(cls, info: ModelInfo) -> ModelInput:
        """The rule a model's metadata states: evaluate and export read it from there, never from an option."""
        return cls(info.normalization, info.frontend.window_frames, info.frontend.top_db)

    def window(self, power: np.ndarray) -> np.ndarray:
        """One window of power frames on its own, as the start of a stream (a clip's first window, a looped short clip)."""
        return window_of(self.normalization, power, self.top_db)


class TrackInputs:
    """Model inputs cut from whole tracks, which ``read`` gives as power frames.

    ``window(track, start, length)`` is what the runtime would feed the network for frames
    ``start .. start + length`` of ``track``. A track number must keep naming the same frames for
    this object's life.
    """

    def __init__(self, model_input: ModelInput, read: PowerReader, keep_bytes: int = KEEP_BYTES) -> None:
        self.model_input = model_input
        self._read = read
        self._keep_bytes = keep_bytes
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._evicted = False  # said once that the tracks do not all fit

    def window(self, track: int, start: int, length: int) -> np.ndarray:
        """Normalised frames (length, n_mels) of ``track`` from ``start``."""
        m = self.model_input
        if m.normalization == SEED:
            return normalize_window(self._read(track, start, length), m.top_db)
        frames = self._normalised(track)
        if start < 0 or start + length > len(frames):
            raise IndexError(f"frames {start}:{start + length} outside track {track!r} ({len(frames)} frames)")
        return frames[start : start + length]

    def _normalised(self, track: int) -> np.ndarray:
        kept = self._kept.get(track)
        if kept is not None:
            self._kept.move_to_end(track)
            return kept
        frames = running_normalize(self._read(track, 0, None), self.model_input.window_frames, self.model_input.top_db)
        frames.setflags(write=False)  # shared by every crop handed out
        self._kept[track] = frames
        self._bytes += frames.nbytes
        while self._bytes > self._keep_bytes and len(self._kept) > 1:
            if not self._evicted:
                log.info("normalised tracks exceed %d MiB: the least recently used are dropped and normalised again when "
                         "read next", self._keep_bytes >> 20)
                self._evicted = True
            _, old = self._kept.popitem(last=False)
            self._bytes -= old.nbytes
        return frames
