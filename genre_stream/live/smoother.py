"""Turning a jittery sequence of per-window probabilities into a stable genre tag.

Two mechanisms, both needed: an exponential moving average damps single odd
windows, and hysteresis announces a new genre only once it has led the current
one by ``margin`` (in smoothed probability) for ``hold_windows`` windows in a
row. A drum break or a spoken intro therefore does not flip the tag, while a
real change of music is announced after ``hold_windows`` hops.

While the smoothed probabilities are "uncertain" (``calibration.UncertaintyRule``)
no genre is confirmed: the current one is kept, a challenger's streak starts
over, and so no ``genre_changed`` is announced on a guess. The same holds while the
model's music gate (``musicgate.MusicGate``, its P(not music) averaged alike) says
"not_music": a DJ talking over the intro announces nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.calibration import UncertaintyRule
from ..model.musicgate import MusicGate
from ..sinks.messages import State, verdict


@dataclass(frozen=True)
class SmoothedResult:
    probabilities: np.ndarray  # smoothed, same order as the labels
    genre: str  # the confirmed genre (may differ from the arg-max while a challenger is held back)
    confidence: float  # smoothed probability of the confirmed genre (its own, now: low while another leads)
    changed: bool  # the confirmed genre changed with this window
    previous: str | None  # the confirmed genre before this window
    uncertain: bool = False  # the smoothed probabilities are too flat to name a genre (genre is then a guess)
    not_music: float | None = None  # smoothed P(not music), where the model has a gate
    talk: bool = False  # the gate says not music (speech, talk, noise)
    leader: str = ""  # the smoothed arg-max, which ``genre`` follows only after the hysteresis
    leader_confidence: float = 0.0

    @property
    def state(self) -> State:
        return verdict(silent=False, not_music=self.talk, uncertain=self.uncertain)


class Smoother:
    def __init__(self, labels: list[str], alpha: float = 0.5, hold_windows: int = 2, margin: float = 0.1,
                 uncertainty: UncertaintyRule | None = None, gate: MusicGate | None = None) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {alpha}")
        if hold_windows < 1:
            raise ValueError(f"hold_windows must be at least 1, got {hold_windows}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.labels = list(labels)
        self.alpha = alpha
        self.hold_windows = hold_windows
        self.margin = margin
        self.uncertainty = uncertainty or UncertaintyRule()
        self.gate = gate
        self._ema: np.ndarray | None = None
        self._gate_ema: float | None = None
        self.current: int | None = None
        self._challenger: int | None = None
        self._streak = 0

    @property
    def genre(self) -> str | None:
        return None if self.current is None else self.labels[self.current]

    def restart_average(self) -> None:
        """Forget the average (after silence) but keep the confirmed genre and its hysteresis."""
        self._ema = None
        self._gate_ema = None
        self._challenger = None
        self._streak = 0

    def update(self, probabilities: np.ndarray, not_music: float | None = None) -> SmoothedResult:
        """One window's probabilities (and its gate's P(not music), where the model has a gate)."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.shape[0] != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} probabilities, got {p.shape[0]}")
        self._ema = p.copy() if self._ema is None else self.alpha * p + (1.0 - self.alpha) * self._ema
        if self.gate is not None and not_music is not None:
            g = float(not_music)
            self._gate_ema = g if self._gate_ema is None else self.alpha * g + (1.0 - self.alpha) * self._gate_ema
        talk = self.gate is not None and self._gate_ema is not None and self.gate.is_not_music(self._gate_ema)
        previous = self.current
        leader = int(np.argmax(self._ema))
        uncertain = self.uncertainty.is_uncertain(self._ema)
        if uncertain or talk:
            self._challenger, self._streak = None, 0
        elif self.current is None:
            self.current = leader  # the first tag needs no confirmation: there is nothing to flip from
        elif leader != self.current and self._ema[leader] - self._ema[self.current] >= self.margin:
            if leader == self._challenger:
                self._streak += 1
            else:
                self._challenger, self._streak = leader, 1
            if self._streak >= self.hold_windows:
                self.current = leader
                self._challenger, self._streak = None, 0
        else:
            self._challenger, self._streak = None, 0
        changed = self.current != previous
        shown = leader if self.current is None else self.current  # an uncertain first window still carries its best guess
        return SmoothedResult(
            probabilities=self._ema.astype(np.float32),
            genre=self.labels[shown],
            confidence=float(self._ema[shown]),
            changed=changed,
            previous=None if previous is None else self.labels[previous],
            uncertain=uncertain,
            not_music=None if self._gate_ema is None else round(self._gate_ema, 6),
            talk=talk,
            leader=self.labels[leader],
            leader_confidence=float(self._ema[leader]),
        )
