"""BBNN as in Table 1 of the paper, and the import of the seed's Keras checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli, shared_path

from genre_stream.audio.decode import load_audio
from genre_stream.audio.frontend import MelFrontend
from trainer.checkpoint import load_checkpoint
from trainer.keras_import import GTZAN_LABELS, KerasImportError, load_keras_bbnn
from trainer.model import BBNN, count_parameters

pytestmark = pytest.mark.train  # needs the [train] extra

CHECKPOINT_NAMES = [f"bbnn-gtzan-raw-fold{i}.hdf5" for i in range(10)] + [f"bbnn-gtzan-augmented-fold{i}.hdf5" for i in range(7)]


def test_parameter_count_matches_the_paper() -> None:
    assert count_parameters(BBNN(n_classes=10)) == 185_642


def test_shapes_follow_table_1() -> None:
    model = BBNN().eval()
    x = torch.rand(2, 647, 128)
    stem = model.stem(x.unsqueeze(1))
    assert tuple(stem.shape) == (2, 32, 161, 128)
    h = stem
    for block, channels in zip(model.broadcast, (160, 288, 416)):
        h = block(h)
        assert tuple(h.shape) == (2, channels, 161, 128)
    assert tuple(model.transition(h).shape) == (2, 32, 80, 64)
    logits, emb = model(x)
    assert logits.shape == (2, 10) and emb.shape == (2, 32)


def test_fully_convolutional_in_time() -> None:
    logits, emb = BBNN(n_classes=4).eval()(torch.rand(1, 96, 128))
    assert logits.shape == (1, 4) and emb.shape == (1, 32)


@pytest.fixture(scope="module")
def sanity_windows() -> np.ndarray:
    fe = MelFrontend()
    country = load_audio(shared_path("audio/gtzan-country.00000.wav"))
    jazz = load_audio(shared_path("audio/jtd-jazz-trio-5s.wav"))
    return np.stack([fe.window(country), fe.window(jazz)])


@pytest.mark.parametrize("name", CHECKPOINT_NAMES)
def test_every_seed_checkpoint_imports_and_recognises_gtzan_country(name: str, sanity_windows: np.ndarray) -> None:
    model, labels = load_keras_bbnn(shared_path(f"seed/checkpoints/{name}"))
    assert labels == GTZAN_LABELS
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(sanity_windows))[0], -1).numpy()
    if "raw" in name:  # CHECKPOINTS.md: every raw fold puts the GTZAN country clip on country, p >= 0.95
        assert labels[int(probs[0].argmax())] == "country" and probs[0].max() >= 0.95
    else:
        assert labels[int(probs[0].argmax())] == "country"


def test_raw_fold_average_puts_the_jazz_trio_on_jazz(sanity_windows: np.ndarray) -> None:
    total = np.zeros(10)
    for i in range(10):
        model, labels = load_keras_bbnn(shared_path(f"seed/checkpoints/bbnn-gtzan-raw-fold{i}.hdf5"))
        with torch.no_grad():
            total += torch.softmax(model(torch.from_numpy(sanity_windows[1:]))[0], -1).numpy()[0]
    assert labels[int(total.argmax())] == "jazz"


def test_import_keras_cli_writes_checkpoint_with_metadata(tmp_path: Path) -> None:
    src = shared_path("seed/checkpoints/bbnn-gtzan-raw-fold1.hdf5")
    out = tmp_path / "fold1.pt"
    proc = run_cli("import-keras", str(src), "--out", str(out), module="trainer")
    assert proc.returncode == 0, proc.stderr
    model, info, _ = load_checkpoint(out)
    assert info.labels == GTZAN_LABELS
    assert info.frontend.window_frames == 647 and info.frontend.n_mels == 128 and info.frontend.hop_length == 1024
    assert info.provenance["source"] == src.name
    import hashlib

    assert info.provenance["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    reference, _ = load_keras_bbnn(src)
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def test_import_keras_records_the_normalization_it_will_be_fed(tmp_path: Path) -> None:
    from genre_stream.audio.normalization import RUNNING, SEED

    src = shared_path("seed/checkpoints/bbnn-gtzan-raw-fold1.hdf5")
    for word, name in (("seed", SEED), ("running", RUNNING)):
        out = tmp_path / f"{word}.pt"
        proc = run_cli("import-keras", str(src), "--out", str(out), "--normalization", word, module="trainer")
        assert proc.returncode == 0, proc.stderr
        assert load_checkpoint(out)[1].normalization == name
    proc = run_cli("import-keras", str(src), "--out", str(tmp_path / "x.pt"), "--normalization", "loudest", module="trainer")
    assert proc.returncode == 2 and "loudest" in proc.stderr and not (tmp_path / "x.pt").exists()


def test_import_rejects_bad_files_with_a_clear_error(tmp_path: Path) -> None:
    not_h5 = tmp_path / "notes.hdf5"
    not_h5.write_text("hello")
    with pytest.raises(KerasImportError, match="not a readable HDF5"):
        load_keras_bbnn(not_h5)
    with pytest.raises(KerasImportError, match="no such file"):
        load_keras_bbnn(tmp_path / "missing.hdf5")
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.attrs["x"] = 1
    with pytest.raises(KerasImportError, match="not a Keras model"):
        load_keras_bbnn(empty)
    proc = run_cli("import-keras", str(not_h5), "--out", str(tmp_path / "x.pt"), module="trainer")
    assert proc.returncode == 1 and "notes.hdf5" in proc.stderr and not (tmp_path / "x.pt").exists()


def test_import_detects_a_graph_that_does_not_match(tmp_path: Path) -> None:
    src = shared_path("seed/checkpoints/bbnn-gtzan-raw-fold0.hdf5")
    bad = tmp_path / "mangled.hdf5"
    shutil.copy(src, bad)
    with h5py.File(bad, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Conv2D" and layer["config"]["kernel_size"] == [5, 5]:
                layer["config"]["kernel_size"] = [7, 7]
                break
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(KerasImportError, match="branches"):
        load_keras_bbnn(bad)
