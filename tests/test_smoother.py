"""Smoother: EMA + hysteresis on synthetic probability sequences."""

from __future__ import annotations

import numpy as np
import pytest

from genre_stream.live.smoother import Smoother
from genre_stream.model.calibration import UncertaintyRule

LABELS = ["blues", "rock", "hiphop", "jazz"]


def probs(**values: float) -> np.ndarray:
    """A distribution with the given labels' values and the rest spread evenly."""
    p = np.array([values.get(label, 0.0) for label in LABELS], dtype=np.float64)
    rest = [i for i, label in enumerate(LABELS) if label not in values]
    if rest:
        p[rest] = (1.0 - p.sum()) / len(rest)
    return p


def test_first_window_is_announced_at_once():
    s = Smoother(LABELS)
    r = s.update(probs(rock=0.7))
    assert r.changed and r.previous is None and r.genre == "rock"
    assert r.confidence == pytest.approx(0.7)


def test_drum_break_does_not_flip_the_tag():
    s = Smoother(LABELS, alpha=0.5, hold_windows=2, margin=0.1)
    for _ in range(4):
        s.update(probs(rock=0.9))
    # a two-window hip hop-like break (very confident) in the middle of a rock track
    results = [s.update(probs(hiphop=0.95)), s.update(probs(hiphop=0.95))] + [s.update(probs(rock=0.9)) for _ in range(3)]
    assert all(r.genre == "rock" for r in results)
    assert not any(r.changed for r in results)


def test_lasting_change_is_announced_after_hold_windows():
    s = Smoother(LABELS, alpha=0.5, hold_windows=2, margin=0.1)
    for _ in range(3):
        s.update(probs(rock=0.9))
    seq = [s.update(probs(jazz=0.9)) for _ in range(5)]
    changed = [i for i, r in enumerate(seq) if r.changed]
    assert len(changed) == 1, "exactly one change event"
    first = changed[0]
    assert seq[first].previous == "rock" and seq[first].genre == "jazz"
    # the EMA makes jazz lead from the 2nd window; the hold makes it wait one more
    assert first == 2
    assert all(r.genre == "rock" for r in seq[:first])


def test_margin_blocks_a_narrow_lead():
    s = Smoother(LABELS, alpha=1.0, hold_windows=1, margin=0.2)
    s.update(probs(rock=0.5, jazz=0.3))
    r = s.update(probs(rock=0.35, jazz=0.45))  # jazz leads by 0.1 < margin
    assert r.genre == "rock" and not r.changed
    r = s.update(probs(rock=0.2, jazz=0.6))
    assert r.genre == "jazz" and r.changed and r.previous == "rock"


def test_challenger_streak_restarts_when_the_challenger_changes():
    s = Smoother(LABELS, alpha=1.0, hold_windows=2, margin=0.1)
    s.update(probs(rock=0.8))
    assert s.update(probs(jazz=0.8)).genre == "rock"
    assert s.update(probs(blues=0.8)).genre == "rock"  # a different challenger: streak starts again
    assert s.update(probs(blues=0.8)).genre == "blues"


def test_smoothed_probabilities_are_the_ema():
    s = Smoother(LABELS, alpha=0.25)
    a, b = probs(rock=0.8), probs(jazz=0.8)
    s.update(a)
    r = s.update(b)
    np.testing.assert_allclose(r.probabilities, 0.25 * b + 0.75 * a, rtol=1e-6)


def test_restart_average_keeps_the_confirmed_genre():
    s = Smoother(LABELS, alpha=0.5, hold_windows=2)
    s.update(probs(rock=0.9))
    s.restart_average()
    r = s.update(probs(jazz=0.9))
    assert r.genre == "rock" and not r.changed  # still needs to hold
    np.testing.assert_allclose(r.probabilities, probs(jazz=0.9), rtol=1e-6)  # no rock left in the average


@pytest.mark.parametrize("kwargs, word", [({"alpha": 0.0}, "ema_alpha"), ({"hold_windows": 0}, "hold_windows"), ({"margin": 1.5}, "margin")])
def test_bad_parameters_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Smoother(LABELS, **kwargs)


def test_wrong_number_of_probabilities():
    with pytest.raises(ValueError, match="expected 4"):
        Smoother(LABELS).update(np.ones(3) / 3)


def test_uncertain_windows_keep_the_genre_and_announce_no_change():
    s = Smoother(LABELS, alpha=1.0, hold_windows=1, margin=0.1, uncertainty=UncertaintyRule(threshold=0.5))
    assert s.update(probs(rock=0.9)).genre == "rock"
    # hip hop leads, but too weakly to be named: no change, the state says uncertain
    for _ in range(3):
        r = s.update(probs(hiphop=0.45, rock=0.2))
        assert r.uncertain and r.genre == "rock" and not r.changed
    r = s.update(probs(hiphop=0.8))
    assert not r.uncertain and r.changed and (r.previous, r.genre) == ("rock", "hiphop")


def test_uncertain_first_window_carries_its_guess_and_the_first_confident_one_is_announced():
    s = Smoother(LABELS, uncertainty=UncertaintyRule(margin=0.2))
    r = s.update(probs(jazz=0.4, blues=0.35))
    assert r.uncertain and r.genre == "jazz" and not r.changed and s.genre is None
    r = s.update(probs(jazz=0.9))
    assert not r.uncertain and r.changed and r.previous is None and r.genre == "jazz"


def test_the_announced_genre_keeps_its_own_probability_and_the_leader_is_named():
    """Issue 25 #1: "metal 3 %" while the bars showed jazz 71.7 %. The announced genre is reported with its own
    current probability, and the genre that leads meanwhile is named with its probability."""
    s = Smoother(LABELS, alpha=1.0, hold_windows=3, margin=0.1, uncertainty=UncertaintyRule(threshold=0.5))
    s.update(probs(rock=0.9))
    r = s.update(probs(jazz=0.72, rock=0.03))  # jazz leads, held back by the hysteresis
    assert (r.genre, r.leader) == ("rock", "jazz") and not r.changed
    assert r.confidence == pytest.approx(r.probabilities[LABELS.index("rock")])
    assert r.leader_confidence == pytest.approx(r.probabilities[LABELS.index("jazz")]) == pytest.approx(0.72)
    r = s.update(probs(rock=0.9))
    assert r.leader == r.genre == "rock"
