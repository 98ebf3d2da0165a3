"""Fitting a model's ``Calibration`` (temperature and "uncertain" thresholds) on labelled real music.

Tracks are scored exactly like ``classify`` scores them: each window's raw
probabilities are calibrated, then averaged over the track's windows. The
temperature minimises the negative log-likelihood of the true genre (a 1-d
search on a log grid: robust with a few dozen tracks, no optimiser needed).

The thresholds are chosen for the target "a non-uncertain answer is right
often enough while most tracks still get an answer": among the (threshold,
margin) pairs whose coverage on the fitting tracks is at least
``min_coverage``, the one with the highest precision (ties: more coverage).

Every figure that is reported is cross-validated (``cross_validate``):
temperature and thresholds are fitted without the held-out tracks, so the
numbers are not in-sample. With a few dozen tracks they are still noisy;
``ece_noise_floor`` says how large ECE would be for a perfectly calibrated
model on that many tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from genre_stream.model.calibration import DEFAULT_FLOOR, Calibration, UncertaintyRule

from .metrics import cross_entropy, expected_calibration_error

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(50.0), 481))  # 1.1 % steps
THRESHOLDS = np.round(np.arange(0.0, 0.96, 0.05), 2)
MARGINS = np.round(np.arange(0.0, 0.51, 0.05), 2)
MIN_COVERAGE = 0.6
CURVE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CURVE_MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def track_probabilities(tracks: Sequence[np.ndarray], calibration: Calibration | None) -> np.ndarray:
    """(tracks, classes): per-window probabilities (calibrated when given) averaged per track, like classify."""
    return np.stack([(calibration.apply(w) if calibration else np.asarray(w)).mean(axis=0) for w in tracks])


def fit_temperature(tracks: Sequence[np.ndarray], targets: np.ndarray, floor: float = DEFAULT_FLOOR) -> float:
    """The temperature with the lowest track-level negative log-likelihood."""
    losses = [cross_entropy(track_probabilities(tracks, Calibration(float(t), floor)), targets) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


@dataclass
class Selective:
    """How a rule splits tracks into answered and "uncertain"."""

    coverage: float  # fraction of tracks answered (not uncertain)
    precision: float  # accuracy among the answered ones (nan when none)
    answered: int
    correct: int

    def to_dict(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "precision": self.precision, "answered": self.answered, "correct": self.correct}


def selective(probabilities: np.ndarray, targets: np.ndarray, rule: UncertaintyRule) -> Selective:
    answered = ~rule.uncertain_mask(probabilities)
    correct = (probabilities.argmax(axis=1) == targets) & answered
    n = int(answered.sum())
    return Selective(n / len(targets) if len(targets) else float("nan"), int(correct.sum()) / n if n else float("nan"), n, int(correct.sum()))


def rule_curves(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """What each value of ``--uncertain-threshold`` (margin off) and of ``--uncertain-margin`` (threshold off) would
    cost in coverage and buy in precision on these labelled tracks, so a user can tune the rule on their own music."""
    return {
        "by_threshold": [{"threshold": float(t), **selective(probabilities, targets, UncertaintyRule(float(t), 0.0)).to_dict()} for t in CURVE_THRESHOLDS],
        "by_margin": [{"margin": float(m), **selective(probabilities, targets, UncertaintyRule(0.0, float(m))).to_dict()} for m in CURVE_MARGINS],
    }


def choose_rule(probabilities: np.ndarray, targets: np.ndarray, min_coverage: float = MIN_COVERAGE) -> UncertaintyRule:
    """The most precise (threshold, margin) that still answers ``min_coverage`` of the tracks."""
    best: tuple[float, float, float, float] | None = None  # (precision, coverage, -threshold, -margin)
    for t in THRESHOLDS:
        for m in MARGINS:
            s = selective(probabilities, targets, UncertaintyRule(float(t), float(m)))
            if s.coverage < min_coverage or not s.answered:
                continue
            key = (s.precision, s.coverage, -float(t), -float(m))
            if best is None or key > best:
                best = key
    return UncertaintyRule(-best[2], -best[3]) if best else UncertaintyRule()


def fit(tracks: Sequence[np.ndarray], targets: np.ndarray, floor: float = DEFAULT_FLOOR, fitted_on: str = "",
        min_coverage: float = MIN_COVERAGE) -> Calibration:
    """Temperature, then thresholds on the calibrated tracks."""
    temperature = fit_temperature(tracks, targets, floor)
    cal = Calibration(temperature, floor, fitted_on=fitted_on)
    rule = choose_rule(track_probabilities(tracks, cal), targets, min_coverage)
    return replace(cal, uncertain_threshold=rule.threshold, uncertain_margin=rule.margin)


@dataclass
class CrossValidation:
    """Held-out results: each track calibrated and judged by a fit that never saw it."""

    raw: np.ndarray  # (tracks, classes) uncalibrated track probabilities
    calibrated: np.ndarray  # (tracks, classes) held-out calibrated
    uncertain: np.ndarray  # (tracks,) held-out "uncertain" decisions
    temperatures: list[float]
    folds: int

    def report(self, targets: np.ndarray, bins: int = 10) -> dict[str, Any]:
        answered = ~self.uncertain
        correct = self.calibrated.argmax(axis=1) == targets
        n_ans = int(answered.sum())
        return {
            "tracks": int(len(targets)),
            "folds": self.folds,
            "accuracy": float(correct.mean()),
            "ece_raw": expected_calibration_error(self.raw, targets, bins),
            "ece_calibrated": expected_calibration_error(self.calibrated, targets, bins),
            "ece_noise_floor": ece_noise_floor(self.calibrated, bins),
            "nll_raw": cross_entropy(self.raw, targets),
            "nll_calibrated": cross_entropy(self.calibrated, targets),
            "wrong_with_raw_confidence_ge_0.9": int(((self.raw.argmax(axis=1) != targets) & (self.raw.max(axis=1) >= 0.9)).sum()),
            "coverage": n_ans / len(targets),
            "precision": float(correct[answered].mean()) if n_ans else float("nan"),
            "temperature_range": [min(self.temperatures), max(self.temperatures)],
        }


def cross_validate(tracks: Sequence[np.ndarray], targets: np.ndarray, floor: float = DEFAULT_FLOOR, folds: int | None = None,
                   min_coverage: float = MIN_COVERAGE, seed: int = 0) -> CrossValidation:
    """k-fold (``folds``) or leave-one-out (None) cross-validation of the whole fit, thresholds included."""
    n = len(targets)
    k = n if folds is None else min(folds, n)
    order = np.random.default_rng(seed).permutation(n) if folds else np.arange(n)
    assignment = np.empty(n, dtype=int)
    assignment[order] = np.arange(n) % k
    calibrated = np.zeros((n, tracks[0].shape[-1]), np.float32)
    uncertain = np.zeros(n, dtype=bool)
    temperatures = []
    for fold in range(k):
        test = np.where(assignment == fold)[0]
        train = np.where(assignment != fold)[0]
        cal = fit([tracks[i] for i in train], targets[train], floor, min_coverage=min_coverage)
        temperatures.append(cal.temperature)
        held = track_probabilities([tracks[i] for i in test], cal)
        calibrated[test] = held
        uncertain[test] = UncertaintyRule(cal.uncertain_threshold, cal.uncertain_margin).uncertain_mask(held)
    return CrossValidation(track_probabilities(tracks, None), calibrated, uncertain, temperatures, k)


def ece_noise_floor(probabilities: np.ndarray, bins: int = 10, draws: int = 2000, seed: int = 0) -> float:
    """Mean ECE if each track were right with exactly its stated probability (a perfectly calibrated model).

    ECE of a handful of tracks is dominated by sampling noise; this is the value
    below which a measured ECE carries no information.
    """
    rng = np.random.default_rng(seed)
    conf = probabilities.max(axis=1)
    predicted = probabilities.argmax(axis=1)
    other = (predicted + 1) % probabilities.shape[1]
    values = [expected_calibration_error(probabilities, np.where(rng.random(len(conf)) < conf, predicted, other), bins) for _ in range(draws)]
    return float(np.mean(values))
