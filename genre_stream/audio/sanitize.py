"""Audio samples the model can digest: finite, and small enough that power spectra do not overflow.

Decoders and devices can hand over NaN or Inf (a corrupt float WAV, a driver glitch) and float
files can hold absurd magnitudes (1e18). One NaN in the live pipeline's running RMS sum kept every
later window "silence" forever; an Inf or a huge value overflowed the float32 mel power and gave
NaN probabilities. Everything is fixed here, at the entry, and counted so it is visible:

* non-finite samples become 0 (silence);
* a float file whose peak exceeds ``LOUD`` is scaled down to peak 1 (``decode.py``), which
  changes nothing else: each window is normalised relative to its own maximum;
* a live stream cannot know its future peak, so its samples are clipped to +-``LOUD``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

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
