"""Calibrated probabilities and the "uncertain" answer.

The bundled model is over-confident on real music outside its training set (on
genre-dev's non-GTZAN clips, half of its wrong answers came with >= 0.9
confidence), so a raw softmax is not a probability anyone should act on. A
model may therefore carry a ``Calibration`` in its metadata:

* temperature scaling: the ONNX graph outputs softmax probabilities, whose logs
  are the logits up to a per-window constant, so ``softmax(log(p) / T)`` is
  exactly temperature scaling of the logits. ``floor`` bounds ``log(p)`` from
  below: an int8 export's softmax is quantised to steps of 1/255 and most of
  its outputs are exactly 0, whose log would be -inf for any T.
* the default thresholds of the "uncertain" rule (``UncertaintyRule``), chosen
  by cross-validation on labelled real music (``trainer.temperature``).

Models without a calibration load as before: probabilities pass through
unchanged and nothing is ever "uncertain" unless the user sets a threshold.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Below every float32 softmax output of the fp32 model seen on real audio (~1e-26), so it only guards log(0).
DEFAULT_FLOOR = 1e-30


@dataclass(frozen=True)
class Calibration:
    temperature: float
    floor: float = DEFAULT_FLOOR
    uncertain_threshold: float = 0.0  # calibrated top probability below this: "uncertain"
    uncertain_margin: float = 0.0  # calibrated top-minus-second below this: "uncertain"
    fitted_on: str = ""  # what data the fit used, in words (provenance, never parsed)
    measurements: dict[str, Any] = field(default_factory=dict)  # cross-validated figures of the fit

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"calibration temperature must be > 0, got {self.temperature}")
        if not 0 < self.floor < 1:
            raise ValueError(f"calibration floor must be in (0, 1), got {self.floor}")
        _check_thresholds(self.uncertain_threshold, self.uncertain_margin)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities of raw softmax outputs (N, classes), rows summing to 1."""
        p = np.asarray(probabilities, dtype=np.float64)
        logits = np.log(np.clip(p, self.floor, 1.0)) / self.temperature
        logits -= logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        if "temperature" not in data:
            raise ValueError("calibration has no 'temperature'")
        return cls(
            temperature=float(data["temperature"]),
            floor=float(data.get("floor", DEFAULT_FLOOR)),
            uncertain_threshold=float(data.get("uncertain_threshold", 0.0)),
            uncertain_margin=float(data.get("uncertain_margin", 0.0)),
            fitted_on=str(data.get("fitted_on", "")),
            measurements=dict(data.get("measurements", {})),
        )


def _check_thresholds(threshold: float, margin: float) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"uncertain threshold must be in [0, 1), got {threshold}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"uncertain margin must be in [0, 1), got {margin}")


@dataclass(frozen=True)
class UncertaintyRule:
    """When an answer is "uncertain": the one place this rule lives (classify, daemon, evaluate).

    Uncertain when the top probability is below ``threshold`` or its lead over the
    second is below ``margin``. Both 0 (the default) means never.
    """

    threshold: float = 0.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_thresholds(self.threshold, self.margin)

    @classmethod
    def for_model(cls, calibration: Calibration | None, threshold: float | None = None, margin: float | None = None) -> "UncertaintyRule":
        """The model's own defaults, each overridden by the user's value when one is given."""
        if calibration is None and (threshold or margin):
            log.warning("the model has no calibration: the uncertain threshold applies to uncalibrated probabilities")
        base = cls(calibration.uncertain_threshold, calibration.uncertain_margin) if calibration else cls()
        return cls(base.threshold if threshold is None else threshold, base.margin if margin is None else margin)

    def is_uncertain(self, probabilities: np.ndarray) -> bool:
        return bool(self.uncertain_mask(np.asarray(probabilities)[None])[0])

    def uncertain_mask(self, probabilities: np.ndarray) -> np.ndarray:
        """One boolean per row of (N, classes) probabilities."""
        p = np.sort(np.asarray(probabilities, dtype=np.float64), axis=-1)
        top = p[:, -1]
        second = p[:, -2] if p.shape[-1] > 1 else np.zeros_like(top)
        return (top < self.threshold) | (top - second < self.margin)
