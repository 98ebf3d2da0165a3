"""Grouping the library into named clusters, with playlists and a map.

Clustering works on ``features.track_features`` (unit vectors), where k-means'
Euclidean distance orders pairs exactly like cosine similarity. ``k`` may be
chosen by the silhouette score, which rewards compact, well separated groups and
so does not simply grow with k. A cluster is named after the genres that dominate
its mean probabilities, which is what a user recognises in a playlist name.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

from ..common.fsutil import atomic_path
from .db import LibraryError, LibraryMatrix
from .features import track_features

log = logging.getLogger(__name__)

Method = Literal["kmeans", "agglomerative"]
PLAYLIST_MARK = "#PLAYLIST:genre-stream cluster"
SECOND_GENRE_SHARE = 0.5  # a second genre joins the name when it has half the first one's weight


@dataclass(frozen=True)
class ClusterConfig:
    k: int | None = None  # None: chosen by silhouette
    method: Method = "kmeans"
    k_max: int = 12
    seed: int = 0


@dataclass
class Cluster:
    number: int  # 1-based, largest cluster first
    name: str
    paths: list[str]
    genres: list[tuple[str, float]]  # dominant genres with their mean probability
    mean_duration: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.number,
            "name": self.name,
            "size": len(self.paths),
            "genres": {g: round(p, 4) for g, p in self.genres},
            "mean_duration": round(self.mean_duration, 2),
            "tracks": self.paths,
        }


@dataclass
class Clustering:
    clusters: list[Cluster]
    assignment: np.ndarray  # (N,) cluster number per track, in matrix order
    k: int
    method: Method
    silhouette: float | None
    silhouettes: dict[int, float] = field(default_factory=dict)  # the scores ``auto`` compared
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def _fit(x: np.ndarray, k: int, config: ClusterConfig) -> np.ndarray:
    if k == 1:
        return np.zeros(len(x), dtype=int)
    if config.method == "kmeans":
        with warnings.catch_warnings():  # identical tracks: reported by cluster_library instead
            warnings.simplefilter("ignore", ConvergenceWarning)
            return KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit_predict(x)
    return AgglomerativeClustering(n_clusters=k, linkage="average", metric="cosine").fit_predict(x)


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    if not 2 <= len(set(labels.tolist())) <= len(x) - 1:
        return None
    return float(silhouette_score(x, labels, metric="cosine"))


def _choose_k(x: np.ndarray, config: ClusterConfig) -> tuple[int, np.ndarray, dict[int, float]]:
    distinct = len(np.unique(x.round(6), axis=0))
    top = min(config.k_max, len(x) - 1, distinct)
    if top < 2:
        raise LibraryError(f"--k auto needs at least 3 distinct tracks, the library has {distinct}; give --k N")
    scores: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(2, top + 1):
        labels = _fit(x, k, config)
        score = _silhouette(x, labels)
        if score is None:
            continue
        scores[k] = score
        if best is None or score > best[0]:
            best = (score, k, labels)
    if best is None:
        raise LibraryError("no k gave a usable clustering (all tracks nearly identical?); give --k N")
    log.info("silhouette by k: %s; chose k=%d", {k: round(s, 3) for k, s in scores.items()}, best[1])
    return best[1], best[2], scores


def _name(mean_probs: np.ndarray, labels: list[str]) -> tuple[str, list[tuple[str, float]]]:
    order = np.argsort(mean_probs)[::-1]
    genres = [(labels[i], float(mean_probs[i])) for i in order[:3]]
    parts = [genres[0][0]]
    if len(genres) > 1 and genres[1][1] >= SECOND_GENRE_SHARE * genres[0][1]:
        parts.append(genres[1][0])
    return "/".join(parts), genres


def cluster_library(matrix: LibraryMatrix, labels: list[str], config: ClusterConfig | None = None) -> Clustering:
    """Cluster every track of ``matrix``; raises ``LibraryError`` when k does not fit the library."""
    config = config or ClusterConfig()
    n = len(matrix)
    if n < 2:
        raise LibraryError(f"the library holds {n} track(s); scan a folder first (clustering needs 2 or more)")
    x = track_features(matrix.embeddings, matrix.probabilities)
    scores: dict[int, float] = {}
    if config.k is None:
        k, raw, scores = _choose_k(x, config)
    else:
        if not 1 <= config.k <= n:
            raise LibraryError(f"--k {config.k} does not fit a library of {n} tracks (use 1..{n})")
        k, raw = config.k, _fit(x, config.k, config)
    used, raw = np.unique(raw, return_inverse=True)
    if len(used) < k:  # k-means leaves clusters empty when tracks are identical
        log.warning("only %d distinct groups among %d tracks; made %d clusters instead of %d", len(used), n, len(used), k)
        k = len(used)
    # number clusters 1.. by size, largest first, so names and files are stable across runs
    sizes = np.bincount(raw, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], min(np.flatnonzero(raw == c))))
    renumber = {old: new + 1 for new, old in enumerate(order)}
    assignment = np.array([renumber[c] for c in raw])
    clusters: list[Cluster] = []
    used: dict[str, int] = {}
    for number in range(1, k + 1):
        idx = np.flatnonzero(assignment == number)
        name, genres = _name(matrix.probabilities[idx].mean(axis=0), labels)
        used[name] = used.get(name, 0) + 1
        if used[name] > 1:
            name = f"{name} {used[name]}"
        clusters.append(
            Cluster(number, name, [matrix.paths[i] for i in idx], genres, float(matrix.durations[idx].mean()))
        )
    return Clustering(clusters, assignment, k, config.method, _silhouette(x, assignment), scores, x)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cluster"


def write_playlists(clustering: Clustering, durations: dict[str, float], out_dir: str | Path) -> list[Path]:
    """One extended M3U per cluster; playlists an earlier run wrote there (and only those) are replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LibraryError(f"{out}: exists and is not a directory (playlists need a folder)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for c in clustering.clusters:
        dest = out / f"cluster-{c.number:02d}-{_slug(c.name)}.m3u"
        lines = ["#EXTM3U", f"{PLAYLIST_MARK} {c.number}: {c.name}"]
        for p in c.paths:
            lines += [f"#EXTINF:{round(durations.get(p, -1))},{Path(p).stem}", p]
        with atomic_path(dest) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(dest)
    for old in out.glob("cluster-*.m3u"):
        if old not in written and _ours(old):
            old.unlink()
            log.info("removed playlist of an earlier clustering: %s", old)
    return written


def _ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = [fh.readline(), fh.readline()]
    except (OSError, UnicodeDecodeError):
        return False
    return head[1].startswith(PLAYLIST_MARK)


def plot_clusters(clustering: Clustering, dest: str | Path) -> Path:
    """A PCA projection of the track vectors coloured by cluster, written atomically as an image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LibraryError("--plot needs matplotlib, which comes with the [plot] extra (and [train]): pip install 'genre-stream[plot]'") from exc
    dest = Path(dest)
    x = clustering.features
    xy = PCA(n_components=2, random_state=0).fit_transform(x)  # clustering needs >= 2 tracks, so 2 components fit
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    cmap = plt.get_cmap("tab20" if clustering.k > 10 else "tab10")
    for c in clustering.clusters:
        sel = clustering.assignment == c.number
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap((c.number - 1) % cmap.N), label=f"{c.number}: {c.name} ({len(c.paths)})")
    ax.set_title(f"Library clusters ({clustering.method}, k={clustering.k}), PCA of embedding + genre probabilities")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    suffix = dest.suffix.lstrip(".").lower() or "png"
    try:
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format=suffix)
    except ValueError as exc:
        raise LibraryError(f"{dest}: cannot write a plot in format {suffix!r} ({exc})") from exc
    finally:
        plt.close(fig)
    return dest
