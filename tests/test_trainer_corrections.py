"""Learning from corrections: what is trained, what is kept, and `finetune --library` end to end (tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers_library import kick_drum, sawtooth, write_wav
from conftest import run_cli

from genre_stream.library.db import LibraryDB
from genre_stream.library.labels import label_track
from genre_stream.model.choice import open_engine
from trainer.checkpoint import load_checkpoint
from trainer.corrections import CorrectionConfig, LabelledTrack, learn_corrections
from trainer.export import torch_probabilities
from trainer.finetune import resolve_checkpoint

pytestmark = pytest.mark.train  # needs the [train] extra

FAST = CorrectionConfig(steps=6, batch_size=2, replay_batch=2, window_frames=32, lr=1e-3)


@pytest.fixture(scope="module")
def base():
    model, info, _ = load_checkpoint(resolve_checkpoint("default"))
    return model, info


def _power(seed: int, frames: int = 80) -> np.ndarray:
    return (np.random.default_rng(seed).random((frames, 128)) ** 4).astype(np.float32)


def test_corrections_move_the_labelled_track_and_keep_the_rest(base) -> None:
    model, info = base
    track = _power(0)
    window = np.stack([track[:32] / track[:32].max()])
    before = torch_probabilities(model, window)[0]
    target = int(np.argsort(before)[-2])  # the runner-up: the user says it is this
    tuned = learn_corrections(model, [LabelledTrack(track, target)], [_power(1)], FAST, info.frontend.top_db)
    after = torch_probabilities(tuned, window)[0]
    assert after[target] > before[target]
    same = {n: torch.equal(p, dict(model.named_parameters())[n]) for n, p in tuned.named_parameters()}
    assert all(v for n, v in same.items() if n.startswith(("stem.", "broadcast.0.", "broadcast.1."))), "frozen layers moved"
    assert not all(v for n, v in same.items() if n.startswith("broadcast.2.")), "the last block was not trained"
    buffers = dict(model.named_buffers())
    assert all(torch.equal(b, buffers[n]) for n, b in tuned.named_buffers()), "batch-norm statistics must stay the base model's"
    again = learn_corrections(model, [LabelledTrack(track, target)], [_power(1)], FAST, info.frontend.top_db)
    assert all(torch.equal(p, q) for p, q in zip(tuned.parameters(), again.parameters())), "same inputs, same model"
    with pytest.raises(ValueError, match="outside the model's 10 labels"):
        learn_corrections(model, [LabelledTrack(track, 10)], (), FAST)


def test_finetune_from_a_library_database(tmp_path: Path, base) -> None:
    _, info = base
    music = tmp_path / "music"
    rng = np.random.default_rng(0)
    saw, kick, other, gone = (write_wav(music / f"{n}.wav", f(rng)) for n, f in
                              (("saw", sawtooth), ("kick", kick_drum), ("other", kick_drum), ("gone", sawtooth)))
    db = tmp_path / "library.sqlite"
    scanned = run_cli("library", "scan", str(music), "--db", str(db), "--workers", "1")
    assert scanned.returncode == 0, scanned.stderr
    with LibraryDB(db) as lib:
        for path, genre in ((saw, "jazz"), (kick, "hiphop"), (gone, "rock")):
            label_track(lib, path, genre, info.labels)
    gone.unlink()
    out = tmp_path / "runs" / "mine"
    proc = run_cli("finetune", "default", "--library", str(db), "--out", str(out), "--steps", "3", "--window-frames", "32",
                   "--batch-size", "2", module="trainer", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {gone}: file vanished" in proc.stderr
    assert "learnt 2 labelled tracks (distilled on 0 others)" in proc.stdout  # distillation is off by default
    report = json.loads((out / "report.json").read_text())
    assert report["labelled"] == [str(kick), str(saw)] and report["unlabelled_tracks"] == 0
    assert report["config"]["steps"] == 3 and report["config"]["window_frames"] == 32 and report["config"]["lr"] == CorrectionConfig.lr
    assert not out.with_name("mine.partial").exists()
    engine, bundled = open_engine(out / "model.onnx", device="cpu"), open_engine(None, device="cpu")
    assert engine.labels == bundled.labels and engine.model_id == "bbnn-gtzan-augmented-fold0+corrections"
    assert engine.info.calibration == bundled.info.calibration
    window = np.random.default_rng(2).random((1, 64, 128)).astype(np.float32)
    assert not np.allclose(engine.predict(window).embeddings, bundled.predict(window).embeddings, atol=1e-4), "the weights did not change"

    again = run_cli("finetune", "default", "--library", str(db), "--out", str(out), module="trainer")
    assert again.returncode == 1 and "already exists" in again.stderr
    mixed = run_cli("finetune", "default", "--library", str(db), "--out", str(tmp_path / "x"), "--epochs", "3", module="trainer")
    assert mixed.returncode == 2 and "not used with --library: --epochs" in mixed.stderr
    missing = run_cli("finetune", "default", "--library", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "y"), module="trainer")
    assert missing.returncode == 1 and "no library database" in missing.stderr
