"""Audio samples the model can digest: finite, and small enough that power spectra do not overflow.

Decoders and devices can hand over NaN or Inf (a corrupt float WAV, a driver glitch) and float
files can hold absurd magnitudes (1e18). One NaN in the live pipeline's running RMS sum kept every
later window "silence" forever; an Inf or a huge value overflowed the float32 mel power and gave
NaN probabilities. Everything is fixed here, at the entry, and counted so it is visible:

* non-finite samples become 0 (silence);
* a whole file whose peak exceeds ``LOUD`` is scaled down to peak 1, which changes nothing
  else: each window is normalised relative to its own maximum;
* a live stream cannot know its future peak, so its samples are clipped to +-``LOUD``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Far above any real audio ([-1, 1], a little more in float files) and far below float32 overflow
# in the mel power: (LOUD * n_fft/2)^2 ~ 3e17 << 3.4e38.
LOUD = 1e6


@dataclass
class Repaired:
    """What ``repair`` changed in one block of samples."""

    nonfinite: int = 0  # NaN/Inf samples set to 0
    clipped: int = 0  # live samples beyond +-LOUD
    peak: float | None = None  # a whole file's peak when it was scaled down from it

    def __bool__(self) -> bool:
        return bool(self.nonfinite or self.clipped or self.peak)


def repair(samples: np.ndarray, *, whole: bool) -> tuple[np.ndarray, Repaired]:
    """``samples`` made finite and bounded (a copy only when something had to change).

    ``whole``: the samples are a complete file, so a huge peak is scaled away instead of clipped.
    """
    finite = np.isfinite(samples)
    bad = int(samples.size - np.count_nonzero(finite))
    if bad:
        samples = np.where(finite, samples, np.float32(0.0)).astype(samples.dtype, copy=False)
    peak = float(np.max(np.abs(samples), initial=0.0))
    if peak <= LOUD:
        return samples, Repaired(bad, 0)
    if whole:
        return (samples / np.float32(peak)).astype(samples.dtype, copy=False), Repaired(bad, 0, peak)
    loud = int(np.count_nonzero(np.abs(samples) > LOUD))
    return np.clip(samples, -LOUD, LOUD), Repaired(bad, loud)


def repair_file(samples: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """A whole decoded file, repaired; what was changed is logged naming the file."""
    repaired_samples, repaired = repair(samples, whole=True)
    if repaired.nonfinite:
        log.warning("%s: %d non-finite samples (NaN/Inf) treated as silence", path, repaired.nonfinite)
    if repaired.peak:
        log.warning("%s: peak %g is far beyond full scale; scaled down to 1 before analysis", path, repaired.peak)
    return repaired_samples
