"""Is it music at all? The "not_music" answer (speech, talk, noise), from the network's own embedding.

A genre model that has only ever seen music names a genre for everything: radio talk,
news and adverts came out hip hop or blues (issue 23: 45 of 63 real speech clips). The
32-d embedding the network computes anyway separates them well, so a model may carry a
``MusicGate``: a logistic regression on the embedding of each 30 s window, fitted by
``scripts/fit_gate.py`` on labelled real speech, noise and music with folds split by
speaker and source, and stored in the model's metadata beside its calibration (each
export gets its own fit: int8 embeddings differ a little from fp32's).

``probability`` gives P(not music) per window; a window, a track (the mean over its
windows) or the daemon's smoothed value at or above ``threshold`` is "not_music".
Models without a gate never say "not_music".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MusicGate:
    weights: tuple[float, ...]  # one per embedding dimension (standardisation folded in)
    bias: float
    threshold: float = 0.5  # P(not music) at or above this: "not_music"
    fitted_on: str = ""  # the data of the fit, in words (provenance, never parsed)
    measurements: dict[str, Any] = field(default_factory=dict)  # cross-validated figures of the fit

    def __post_init__(self) -> None:
        if not self.weights or not all(np.isfinite(self.weights)) or not np.isfinite(self.bias):
            raise ValueError("music gate needs finite weights and bias")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"music gate threshold must be in (0, 1), got {self.threshold}")

    def probability(self, embeddings: np.ndarray) -> np.ndarray:
        """P(not music) for each row of (N, dims) embeddings."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.shape[-1] != len(self.weights):
            raise ValueError(f"music gate expects {len(self.weights)}-d embeddings, got {e.shape[-1]}")
        z = e @ np.asarray(self.weights, dtype=np.float64) + self.bias
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))).astype(np.float32)

    def is_not_music(self, probability: float) -> bool:
        return bool(probability >= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weights"] = list(self.weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MusicGate":
        if "weights" not in data or "bias" not in data:
            raise ValueError("music gate has no 'weights' or 'bias'")
        return cls(
            weights=tuple(float(w) for w in data["weights"]),
            bias=float(data["bias"]),
            threshold=float(data.get("threshold", 0.5)),
            fitted_on=str(data.get("fitted_on", "")),
            measurements=dict(data.get("measurements", {})),
        )
