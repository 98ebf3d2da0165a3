"""The run's figures, like the seed's: loss/accuracy curves and a normalised confusion matrix.

matplotlib's Agg backend is selected explicitly so plotting works on headless
machines and inside torchrun workers; files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from genre_stream.common.fsutil import atomic_path  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], style, marker="o", ms=3, label=key)
        ax_acc.plot(epochs, [h[f"{key}_accuracy"] for h in history], style, marker="o", ms=3, label=key)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def plot_confusion(confusion: list[list[int]] | np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    return _save(confusion_figure(confusion, labels, title), Path(path))


def confusion_figure(confusion: list[list[int]] | np.ndarray, labels: list[str], title: str = "") -> Any:
    """Row-normalised confusion matrix (recall on the diagonal); each cell also gives its clip count
    and each true label its total, so a perfect score on two clips does not pass for a measurement."""
    counts = np.asarray(confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), [f"{label} ({int(n)})" for label, n in zip(labels, rows[:, 0])])
    ax.set(xlabel="predicted", ylabel="true (clips)", title=title or "normalised confusion matrix")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def plot_reliability(bins: list[dict[str, float]], path: str | Path, title: str = "", n_bins: int = 10) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the tracks per bin.

    ``bins`` is ``metrics.reliability_bins`` output; a bar below the diagonal is over-confidence.
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    width = 1.0 / n_bins
    lows = [b["low"] for b in bins]
    ax.bar(lows, [b["accuracy"] for b in bins], width=width, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black", ms=4, label="accuracy at the mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for b in bins:
        ax.text(b["low"] + width / 2, min(b["accuracy"] + 0.02, 0.97), str(b["count"]), ha="center", fontsize=8)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=title or "reliability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, Path(path))
