"""Classification metrics computed the same way for training, evaluation and fine-tuning.

numpy only (no scikit-learn at run time); the confusion matrix has true labels as
rows and predictions as columns, in the order of the label list.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cross_entropy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, from probabilities (clipped, never inf)."""
    if len(targets) == 0:
        return float("nan")
    p = np.clip(probabilities[np.arange(len(targets)), targets], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def classification_report(targets: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, loss, per-class precision/recall/F1/support and the confusion matrix."""
    targets = np.asarray(targets, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = len(labels)
    predicted = probabilities.argmax(axis=1) if len(targets) else np.zeros(0, dtype=int)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (targets, predicted), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        predicted_i = int(confusion[:, i].sum())
        support = int(confusion[i].sum())
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    supported = [v for v in per_class.values() if v["support"]]
    return {
        "n": int(len(targets)),
        "accuracy": float((predicted == targets).mean()) if len(targets) else float("nan"),
        "loss": cross_entropy(probabilities, targets),
        "macro_f1": float(np.mean([v["f1"] for v in supported])) if supported else float("nan"),
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width confidence bin: count, mean confidence and accuracy of the top answer (empty bins left out)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(targets)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin i holds (i/bins, (i+1)/bins]
    out = []
    for i in range(bins):
        m = index == i
        if m.any():
            out.append({"low": i / bins, "high": (i + 1) / bins, "count": int(m.sum()),
                        "confidence": float(confidence[m].mean()), "accuracy": float(correct[m].mean())})
    return out


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over ``bins`` equal-width bins."""
    n = len(targets)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probabilities, targets, bins)))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval of a proportion: honest at 0 or n successes and for small n,
    where the normal approximation gives impossible bounds."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement_figures(candidate: list[np.ndarray], reference: list[np.ndarray], targets: np.ndarray, names: list[str],
                      labels: list[str]) -> dict[str, object]:
    """How a candidate export's answers compare with the reference's on the same clips (each a (windows, classes)
    array): track top-1 agreement (answer = mean over windows), per-clip max |dp|, accuracy of both, and each clip
    whose answer changed with the reference's lead over its second answer (near-ties flip first). The one
    definition for benchmarks/int8_agreement.py and scripts/cpu_matrix.py."""
    per_clip = np.array([np.abs(c - r).max() for c, r in zip(candidate, reference)])
    cand = np.array([c.mean(axis=0).argmax() for c in candidate])
    ref = np.array([r.mean(axis=0).argmax() for r in reference])
    window_top1 = np.concatenate([c.argmax(1) == r.argmax(1) for c, r in zip(candidate, reference)])
    return {
        "clips": int(len(targets)),
        "windows": int(window_top1.size),
        "top1_agreement": round(float((cand == ref).mean()), 4),
        "window_top1_agreement": round(float(window_top1.mean()), 4),
        "mean_max_abs_dp": round(float(per_clip.mean()), 4),
        "max_max_abs_dp": round(float(per_clip.max()), 4),
        "accuracy_fp32": round(float((ref == targets).mean()), 4),
        "accuracy": round(float((cand == targets).mean()), 4),
        "changed_answers": [
            {"clip": names[i], "fp32": labels[ref[i]], "candidate": labels[cand[i]],
             "fp32_lead": round(float(np.diff(np.sort(reference[i].mean(axis=0))[-2:])[0]), 4)}
            for i in np.flatnonzero(cand != ref)
        ],
    }
