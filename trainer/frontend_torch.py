"""The mel frontend's definition run with torch/torchaudio: what the trainer computes.

``genre_stream.audio.frontend.MelFrontend`` holds the definition (parameters, padding,
filterbank, blocks) and computes the STFT with numpy so the runtime needs no torch.
This subclass swaps only that STFT for ``torchaudio.functional.spectrogram``; the
tests keep the two equal (and equal to librosa), which is what "no train/serve
skew" rests on.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF

from genre_stream.audio.frontend import FrontendConfig, MelFrontend


class TorchMelFrontend(MelFrontend):
    """``MelFrontend`` with torchaudio's float64 spectrogram."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        super().__init__(config)
        self._window = torch.hann_window(self.config.n_fft, periodic=True, dtype=torch.float64)
        self._fbank_t = torch.from_numpy(self._fbank)

    def _power_block(self, segment: np.ndarray, n_frames: int) -> np.ndarray:
        c = self.config
        power = AF.spectrogram(
            torch.from_numpy(segment),
            pad=0,
            window=self._window,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.n_fft,
            power=2.0,
            normalized=False,
            center=False,
        )  # (freq, frames)
        return (power.transpose(0, 1) @ self._fbank_t).numpy()
