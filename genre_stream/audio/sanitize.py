"""Audio samples the model can digest: finite, and small enough that power spectra do not overflow.

Decoders and devices can hand over NaN or Inf (a corrupt float WAV, a driver glitch) and float
files can hold absurd magnitudes (1e18). One NaN in the live pipeline's running RMS sum kept every
later window "silence" forever; an Inf or a huge value overflowed the float32 mel power and gave
NaN probabilities. Everything is fixed here, at the entry, and counted so it is visible:

* non-finite samples become 0 (silence), in live audio and in files alike;
* a live stream cannot know its future peak, so its samples are clipped to +-``LOUD``;
* a file's level can be known (``FileRepair``, used by ``decode.py``): its typical one-second
  peak is measured, a file whose music itself sits far beyond full scale is scaled down as a
  whole (each window is normalised to its own maximum, so nothing else changes), and a broken
  sample far above the music around it is brought down to the music's level *locally*. Scaling
  the whole file by one absurd peak (1e30 in 60 s of music) had made the whole track "silence".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# Far above any real audio ([-1, 1], a little more in float files) and far below float32 overflow
# in the mel power: (LOUD * n_fft/2)^2 ~ 3e17 << 3.4e38.
LOUD = 1e6

# Audio quieter than this (RMS, dB below full scale) is "silence": the daemon's windows and
# classify's whole tracks use this one rule, so a file and a stream of it get the same answer.
SILENCE_DBFS = -60.0


def dbfs(mean_square: float) -> float:
    """An RMS level in dB relative to full scale (-inf for digital silence)."""
    return 10.0 * math.log10(mean_square) if mean_square > 0 else -math.inf


@dataclass
class Repaired:
    """What ``repair`` changed in one block of live samples."""

    nonfinite: int = 0  # NaN/Inf samples set to 0
    clipped: int = 0  # samples beyond +-LOUD

    def __bool__(self) -> bool:
        return bool(self.nonfinite or self.clipped)


def repair(samples: np.ndarray) -> tuple[np.ndarray, Repaired]:
    """Live ``samples`` made finite and bounded (a copy only when something had to change)."""
    finite = np.isfinite(samples)
    bad = int(samples.size - np.count_nonzero(finite))
    if bad:
        samples = np.where(finite, samples, np.float32(0.0)).astype(samples.dtype, copy=False)
    if float(np.max(np.abs(samples), initial=0.0)) <= LOUD:
        return samples, Repaired(bad, 0)
    loud = int(np.count_nonzero(np.abs(samples) > LOUD))
    return np.clip(samples, -LOUD, LOUD), Repaired(bad, loud)


# A file's music sits within a few dB of full scale (float masters a little above). Beyond HEADROOM
# (+24 dBFS) its typical level says the whole file is mis-scaled (1e18 was seen); a sample more than
# ABSURD_RATIO (60 dB) above the typical one-second peak, and beyond HEADROOM, is a broken sample, not
# a transient: a drum hit after a -60 dB intro stays below HEADROOM, a 1e30 glitch does not.
HEADROOM = 16.0
ABSURD_RATIO = 1000.0
SPAN = 1024  # samples repaired together: a few broken samples are clipped, a broken stretch is scaled
ISOLATED = 8  # broken samples in one span that are still clipped one by one
FLOAT32_SAFE = 1e30  # float64 samples are capped here before float32 (whose Inf would lose them)


def second_peaks(samples: np.ndarray, rate: int) -> list[float]:
    """The peak |sample| of each second of ``samples`` ((frames,) or (frames, channels)), digital silence
    left out (a track that is half silence still has the level of its music), and so is a second with a
    NaN or Inf in it (its peak says nothing about the music's level).

    Channel by channel: numpy reduces a short inner axis (max over 2 channels) element by element,
    which had made decoding four times slower.
    """
    frames = samples.reshape(samples.shape[0], -1)
    rate = max(1, rate)
    whole = frames.shape[0] - frames.shape[0] % rate
    peaks = np.zeros(whole // rate + (whole < frames.shape[0]))
    for channel in range(frames.shape[1]):
        mag = np.abs(frames[:, channel])
        column = mag[:whole].reshape(-1, rate).max(axis=1) if whole else np.zeros(0)
        if whole < mag.size:
            column = np.append(column, mag[whole:].max())
        peaks = np.maximum(peaks, column)  # NaN stays NaN
    return [float(p) for p in peaks if 0.0 < p < math.inf]


@dataclass
class FileRepair:
    """The repair of one file's samples at its native rate: ``scale`` each block, mix it down, ``repair`` it.

    With ``peaks`` (a first pass over the whole file: ``second_peaks`` of every block) the file's level
    is known before its first sample is used; without, it is learnt from the blocks seen so far (the
    ffmpeg path, formats that cannot hold absurd values anyway). The counts say what was changed.
    """

    rate: int
    peaks: Sequence[float] | None = None
    nonfinite: int = 0  # NaN/Inf samples set to 0
    clipped: int = 0  # broken samples brought down to the music's level
    spans: int = 0  # stretches of broken samples scaled down to it
    worst: float = 0.0  # the largest broken sample
    _seen: list[float] = field(init=False, repr=False)
    _level: float = field(init=False, default=0.0)
    _fixed: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fixed = self.peaks is not None
        self._seen = list(self.peaks or [])
        self._level = float(np.median(self._seen)) if self._seen else 0.0

    @property
    def level(self) -> float:
        """The typical one-second peak of the file as decoded (before ``gain``)."""
        return self._level

    @property
    def gain(self) -> float:
        """1, or what brings a file whose music sits far beyond full scale to a typical peak of 1."""
        return 1.0 / self._level if self._level > HEADROOM else 1.0

    def scale(self, data: np.ndarray) -> np.ndarray:
        """``data`` times ``gain``, as float32; float64 is scaled before it is narrowed (1e300 would be Inf)."""
        if not self._fixed:
            self._seen.extend(second_peaks(data, self.rate))
            self._level = float(np.median(self._seen)) if self._seen else 0.0
        if self.gain != 1.0:
            data = data * np.asarray(self.gain, dtype=data.dtype)
        if data.dtype == np.float32:
            return data
        with np.errstate(over="ignore"):
            narrow = data.astype(np.float32)
        lost = ~np.isfinite(narrow)
        if lost.any():  # finite float64 beyond float32: kept as a (broken) finite sample for ``repair``
            lost &= np.isfinite(data)
            narrow[lost] = np.sign(data[lost]) * FLOAT32_SAFE
        return narrow

    def repair(self, mono: np.ndarray) -> np.ndarray:
        """``mono`` (already scaled) with non-finite samples set to 0 and broken ones brought to the music's level.

        A few broken samples in a span are clipped to the typical peak (sign kept); a span with more
        is scaled down as a whole to it, so a stretch of music at 1e18 keeps its shape. Nothing
        outside those spans changes, so the rest of the track keeps its sound and its level.
        """
        finite = np.isfinite(mono)
        bad = int(mono.size - np.count_nonzero(finite))
        if bad:
            self.nonfinite += bad
            mono = np.where(finite, mono, np.float32(0.0)).astype(np.float32)
        typical = self._level * self.gain
        limit = max(HEADROOM, ABSURD_RATIO * typical)
        mag = np.abs(mono)
        if float(mag.max(initial=0.0)) <= limit:
            return mono
        mono = mono.copy() if not bad else mono
        broken = mag > limit
        self.worst = max(self.worst, float(mag.max()))
        for start in np.unique(np.flatnonzero(broken) // SPAN) * SPAN:
            part, hit = mono[start : start + SPAN], broken[start : start + SPAN]
            count = int(np.count_nonzero(hit))
            if count > ISOLATED:
                part *= np.float32(typical / float(mag[start : start + SPAN].max()))
                self.spans += 1
            else:
                part[hit] = np.sign(part[hit]) * np.float32(typical)
            self.clipped += count
        return mono

    def summary(self) -> str:
        """What was changed, for one warning per file ("" when nothing was)."""
        parts = []
        if self.gain != 1.0:
            parts.append(f"peak level {self._level:.3g} is far beyond full scale: scaled by {self.gain:.3g} before analysis")
        if self.nonfinite:
            parts.append(f"{self.nonfinite} NaN/infinite sample(s) set to 0 (silent)")
        if self.clipped:
            stretch = f", {self.spans} stretch(es) of them scaled" if self.spans else ""
            parts.append(f"{self.clipped} broken sample(s) up to {self.worst:.3g} brought down to the music's level "
                         f"({self._level * self.gain:.3g}){stretch}")
        return "; ".join(parts)
