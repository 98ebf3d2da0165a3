"""The vector a track is compared by, shared by clustering and similarity.

Embedding and genre probabilities are each L2-normalised before being joined, so
neither dominates by scale: the 32-d embedding carries timbre and texture the
labels do not name, the probabilities carry the genre decision itself.
Probabilities enter as square roots: the cosine of two such vectors is the
Bhattacharyya coefficient of the distributions, which, unlike the cosine of raw
probabilities, does not call two confident-but-neighbouring genres unrelated
while a near-tie looks close. The joined vector is normalised again, which makes
a dot product a cosine similarity.
"""

from __future__ import annotations

import numpy as np


def _l2(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def track_features(embeddings: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(N, 32) + (N, C) -> (N, 32 + C) float32 rows of unit length (1-D input gives 1-D output)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    probs = np.sqrt(np.clip(np.asarray(probabilities, dtype=np.float32), 0.0, None))
    joined = np.concatenate([_l2(emb), _l2(probs)], axis=-1)
    return _l2(joined).astype(np.float32)
