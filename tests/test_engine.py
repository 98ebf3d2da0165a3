"""The ONNX engine: labels from metadata, batching, providers, clear errors for bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genre_stream.model.bundled import BUNDLED_MODELS, bundled_model_path, named_model
from genre_stream.model.choice import open_engine
from genre_stream.model.engine import Engine
from genre_stream.model.info import METADATA_KEY, ModelInfo
from genre_stream.model.session import ModelError


def test_bundled_model_carries_its_labels_and_frontend(engine: Engine) -> None:
    assert all(bundled_model_path(name).is_file() for name in BUNDLED_MODELS)
    assert engine.labels == ["blues", "reggae", "metal", "classical", "pop", "jazz", "disco", "hiphop", "rock", "country"]
    assert engine.info.frontend.window_frames == 647
    assert engine.info.provenance["source"] == "bbnn-gtzan-augmented-fold0.hdf5"


def test_bundled_exports_and_their_packs_are_fed_the_running_normalization() -> None:
    """Issue 23: the bundled weights are fed RUNNING (each frame once), so streaming never recomputes a window;
    the pack's copy of the model record says the same, so a reader of either file is told one thing."""
    import json
    import zipfile

    from genre_stream.audio.normalization import RUNNING
    from genre_stream.model.streampack import MANIFEST, stream_pack_path

    for name in BUNDLED_MODELS:
        path = bundled_model_path(name)
        assert open_engine(path, device="cpu", threads=1).info.normalization == RUNNING, name
        with zipfile.ZipFile(stream_pack_path(path)) as pack:
            assert json.loads(pack.read(MANIFEST))["model"]["normalization"] == RUNNING, name


@pytest.mark.train
def test_the_finetune_default_checkpoint_is_fed_what_the_bundled_models_are() -> None:
    from genre_stream.audio.normalization import RUNNING
    from trainer.checkpoint import load_checkpoint
    from trainer.finetune import DEFAULT_CHECKPOINT

    repo = Path(__file__).resolve().parents[1]
    assert load_checkpoint(repo / "trainer" / "models" / DEFAULT_CHECKPOINT)[1].normalization == RUNNING


@pytest.mark.train
def test_labels_come_from_the_model_metadata(tmp_path: Path) -> None:
    import torch

    from trainer.export import to_onnx_model, torch_probabilities
    from trainer.onnx_meta import save_atomic
    from trainer.model import BBNN

    torch.manual_seed(0)
    model = BBNN(n_classes=3).eval()
    info = ModelInfo(labels=["ambient", "techno", "speech"], model_id="tiny")
    path = save_atomic(to_onnx_model(model, info, window_frames=64), tmp_path / "tiny.onnx")
    eng = open_engine(path, device="cpu", threads=1, batch_size=2)
    assert eng.labels == ["ambient", "techno", "speech"] and eng.model_id == "tiny"
    windows = np.random.default_rng(0).uniform(0, 1, (5, 64, 128)).astype(np.float32)
    pred = eng.predict(windows)
    assert pred.probabilities.shape == (5, 3) and pred.embeddings.shape == (5, 32)
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred.probabilities, torch_probabilities(model, windows), atol=1e-5)
    single = eng.predict(windows[3])
    np.testing.assert_allclose(single.probabilities[0], pred.probabilities[3], atol=1e-6)


@pytest.mark.train
def test_model_without_metadata_is_refused(tmp_path: Path) -> None:
    import onnx

    from trainer.export import to_onnx_model
    from trainer.model import BBNN

    proto = to_onnx_model(BBNN(n_classes=2).eval(), ModelInfo(labels=["a", "b"]), window_frames=32)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match=f"bare.onnx.*no '{METADATA_KEY}' metadata"):
        open_engine(tmp_path / "bare.onnx")


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing.onnx: model file not found"):
        open_engine(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="junk.onnx: not a loadable ONNX model"):
        open_engine(junk)


def test_cuda_request_without_gpu_build_is_explained() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the refusal path cannot be exercised")
    with pytest.raises(ModelError, match="device 'cuda'.*onnxruntime-gpu"):
        open_engine(device="cuda")
    assert open_engine(device="auto").providers == ["CPUExecutionProvider"]


def test_bundled_exports_by_short_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert named_model("int8").name == BUNDLED_MODELS["int8"] and named_model("int8").is_file()
    assert open_engine("int8", threads=1).path.name == BUNDLED_MODELS["int8"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "int8").write_bytes(b"a user's own file of that name wins")
    assert named_model("int8") == Path("int8")
