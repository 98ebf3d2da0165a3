"""Metrics arithmetic and evaluate's refusals (the full evaluate path runs in test_trainer_pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import REPO, run_cli

from trainer.evaluate import EvaluateError, evaluate
from trainer.metrics import classification_report
from trainer.synthset import make_dataset

pytestmark = pytest.mark.train  # needs the [train] extra


def test_report_matches_hand_computed_values() -> None:
    labels = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    r = classification_report(targets, probs, labels)
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.5) and r["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert r["per_class"]["c"]["precision"] == pytest.approx(0.5) and r["per_class"]["c"]["recall"] == 1.0
    p_true = probs[np.arange(6), targets]
    assert r["loss"] == pytest.approx(-np.mean(np.log(p_true)))


def test_labels_the_model_does_not_know_are_refused(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, clips=1, seconds=1.0, seed=0)
    with pytest.raises(EvaluateError, match=r"labels \['lament', 'sawdance'\] are not among the model's labels"):
        evaluate(REPO / "trainer" / "models" / "bbnn-gtzan-augmented-fold0.pt", tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_or_broken_model_is_a_clear_cli_error(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, clips=1, seconds=1.0, seed=0)
    proc = run_cli("evaluate", str(tmp_path / "nope.pt"), str(tmp_path / "data"), module="trainer")
    assert proc.returncode == 1 and "nope.pt: no such model file" in proc.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    proc = run_cli("evaluate", str(broken), str(tmp_path / "data"), module="trainer")
    assert proc.returncode == 1 and "broken.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_version_names_the_package_and_torch() -> None:
    from genre_stream import __version__

    proc = run_cli("--version", module="trainer")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"genre-trainer, version {__version__} (torch {torch.__version__.split('+')[0]}, onnxruntime {ort.__version__})"
