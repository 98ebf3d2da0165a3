"""ONNX export: fp32 parity, metadata, exact folding, the int8 accuracy bar, refusal, fp16."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from genre_stream.audio.frontend import MelFrontend, normalize_window
from genre_stream.model.bundled import bundled_model_path
from genre_stream.model.choice import open_engine
from genre_stream.model.info import ModelInfo
from genre_stream.model.streaming import StreamingClassifier, StreamingModel
from genre_stream.model.streampack import stream_pack_path
from tests.conftest import run_cli, shared_path
from trainer.checkpoint import save_checkpoint
from trainer.fold import equalize, fold_bbnn
from trainer.int8_rewrite import graph_wiring
from trainer.int8_windows import offset_windows
from trainer.model import BBNN
from trainer.quantize import FLOAT_HEAD, agreement

pytestmark = pytest.mark.train  # needs the [train] extra

LABELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real BBNN with random weights and non-trivial BatchNorm statistics (no shared/ needed)."""
    torch.manual_seed(3)
    model = BBNN(n_classes=len(LABELS))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)  # negative scales too: folding must handle the sign
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.2, 2.0)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, model, ModelInfo(labels=LABELS, model_id="random-test-model"))
    return path


def test_fp32_export_matches_pytorch_and_carries_labels(random_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.fp32.onnx"
    proc = run_cli("export", str(random_checkpoint), "--out", str(out), "--test-windows", "2", module="trainer")
    assert proc.returncode == 0, proc.stderr
    assert "fp32 parity with PyTorch: max |dp|" in proc.stdout
    parity = float(proc.stdout.split("max |dp| ")[1].split()[0])
    assert parity <= 1e-4
    engine = open_engine(out, device="cpu", threads=1)
    assert engine.labels == LABELS  # from the ONNX metadata, not from any list in code
    assert engine.model_id == "random-test-model"
    onnx.checker.check_model(onnx.load(str(out)))
    # the streaming pack written beside it streams this model's windows exactly
    assert stream_pack_path(out).is_file() and f"wrote {stream_pack_path(out)}" in proc.stdout
    stream = StreamingClassifier.for_engine(engine)
    assert stream is not None
    rng = np.random.default_rng(0)
    power = (rng.random((647 + 3 * 20, 128)) ** 6 * 1e3).astype(np.float32)
    power[:, 0] = 1e4  # one loud band keeps the window's maximum, so its normalisation, fixed
    for start in range(0, 4 * 20, 20):
        window = normalize_window(power[start : start + 647])
        got, expected = stream.predict(window, start), engine.predict(window[None])
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.embeddings, expected.embeddings, atol=1e-4, rtol=0)
    assert stream.stats.streamed == 3


def test_fold_and_equalize_are_exact(random_checkpoint: Path) -> None:
    from trainer.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(random_checkpoint)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (2, 96, 128)).astype(np.float32))
    folded = fold_bbnn(model)
    spreads = equalize(folded, torch.from_numpy(rng.uniform(0, 1, (3, 96, 128)).astype(np.float32)))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert spreads["concat"] > 1.0  # channels really were of different widths before equalising
    with torch.no_grad():
        (lo, eo), (lf, ef) = model(x), folded(x)
    np.testing.assert_allclose(lf.numpy(), lo.numpy(), atol=1e-3 * float(lo.abs().max()))
    np.testing.assert_allclose(ef.numpy(), eo.numpy(), atol=1e-4 * float(eo.abs().max()) + 1e-6)


def test_fp16_export_is_valid_and_runs_on_cpu(random_checkpoint: Path, tmp_path: Path) -> None:
    # A GPU check is not possible on this machine; onnxruntime's CPU provider runs the
    # fp16 graph (casting where it has no fp16 kernel), which proves the file is usable.
    out = tmp_path / "m.fp16.onnx"
    proc = run_cli("export", str(random_checkpoint), "--out", str(out), "--quantize", "fp16", "--test-windows", "2", module="trainer")
    assert proc.returncode == 0, proc.stderr
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    engine = open_engine(out, device="cpu", threads=1)
    assert "float" in engine.input_type and engine.labels == LABELS
    probs = engine.predict(np.random.default_rng(1).uniform(0, 1, (2, 647, 128)).astype(np.float32)).probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def _head_outputs_quantised(path: Path) -> bool:
    """Whether a QuantizeLinear reads the output of the head's mean, dense layer or softmax (QDQ keeps the ops' names)."""
    graph = onnx.load(str(path)).graph
    _, consumers = graph_wiring(graph)
    head = [n for n in graph.node if n.name in FLOAT_HEAD]
    assert len(head) == len(FLOAT_HEAD), [n.name for n in head]
    return any(c.op_type == "QuantizeLinear" for n in head for c in consumers.get(n.output[0], []))


def test_int8_export_calibrates_on_real_audio_when_given(random_checkpoint: Path, tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.wav"
    out = tmp_path / "m.int8.onnx"
    # by default the head stays float (as the bundled int8 is built) and the export cuts its streaming pack
    float_head = run_cli("export", str(random_checkpoint), "--out", str(out), "--quantize", "int8", "--calibration-audio", str(demo),
                         "--test-windows", "2", "--force", module="trainer")
    assert float_head.returncode == 0, float_head.stderr
    assert f"wrote {stream_pack_path(out)}" in float_head.stdout
    assert StreamingModel.for_engine(open_engine(out, device="cpu", threads=1)) is not None  # loaded and verified against the engine
    assert not _head_outputs_quantised(out)
    # a quantised head: no pack, said why, and the replaced model's pack is not left behind
    proc = run_cli("export", str(random_checkpoint), "--out", str(out), "--quantize", "int8", "--calibration-audio", str(demo),
                   "--quantized-head", "--test-windows", "2", "--force", module="trainer")
    assert proc.returncode == 0, proc.stderr
    assert "no streaming pack for m.int8.onnx: its head (mean, dense layer, softmax) is quantised" in proc.stderr
    assert "without --quantized-head" in proc.stderr
    assert _head_outputs_quantised(out)
    assert f"removed {stream_pack_path(out)}" in proc.stderr and not stream_pack_path(out).exists()
    assert "windows: 1 calibration, 2 test (calibration: 1 real audio files, 1 windows cut as classify cuts them" in proc.stdout
    quant = json.loads(open_engine(out, device="cpu", threads=1).session.get_modelmeta().custom_metadata_map["genre_stream"])["provenance"]["quantization"]
    assert quant["calibration_windows"] == 1 and "real audio files" in quant["calibration_source"] and quant["bias_correction"] is True
    both = run_cli("export", str(random_checkpoint), "--out", str(tmp_path / "x.onnx"), "--quantize", "int8", "--calibration-audio", str(demo),
                   "--calibration", str(tmp_path), module="trainer")
    assert both.returncode != 0 and "not both" in both.stderr and not (tmp_path / "x.onnx").exists()


def test_bad_int8_export_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    seed = shared_path("seed/checkpoints/bbnn-gtzan-augmented-fold0.hdf5")
    ckpt = tmp_path / "fold0.pt"
    assert run_cli("import-keras", str(seed), "--out", str(ckpt), module="trainer").returncode == 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "bad.int8.onnx"
    # The plain recipe (BatchNorm left in, 4 calibration windows) is the issue-7 baseline
    # and genuinely misses the bar on the held-out windows.
    args = ["export", str(ckpt), "--out", str(out), "--quantize", "int8", "--recipe", "plain", "--calibration-windows", "4", "--test-windows", "6"]
    proc = run_cli(*args, module="trainer")
    assert proc.returncode != 0
    assert "misses the accuracy bar" in proc.stderr and "--force" in proc.stderr
    assert list(out_dir.iterdir()) == []  # not even a temporary file is left behind
    forced = run_cli(*args, "--force", module="trainer")
    assert forced.returncode == 0, forced.stderr
    meta = json.loads(open_engine(out, device="cpu", threads=1).session.get_modelmeta().custom_metadata_map["genre_stream"])
    assert meta["provenance"]["quantization"]["recipe"] == "plain"


def _clip_windows() -> np.ndarray:
    from genre_stream.audio.decode import load_audio

    frontend = MelFrontend()
    windows = []
    for name in ("gtzan-country.00000.wav", "jtd-jazz-trio-5s.wav", "seed-example-rock.mp3"):
        audio = load_audio(shared_path(f"audio/{name}"), frontend.config.sample_rate)
        windows.append(offset_windows(audio, frontend, 8, phase=0.37))
    return np.concatenate(windows)


def test_shipped_int8_meets_the_accuracy_bar_on_real_clips() -> None:
    windows = _clip_windows()
    fp32 = open_engine(bundled_model_path("fp32"), device="cpu", threads=2)
    int8 = open_engine(bundled_model_path("int8"), device="cpu", threads=2)
    # the network's own outputs: each export carries its own calibration (temperatures differ)
    result = agreement(int8.predict(windows, calibrated=False).probabilities, fp32.predict(windows, calibrated=False).probabilities)
    assert result.meets(), result.summary()
    assert int8.labels == fp32.labels
    genres = [int8.labels[i] for i in int8.predict(windows).probabilities.argmax(1)]
    assert genres[:8] == ["country"] * 8 and genres[8:16] == ["jazz"] * 8 and genres[16:] == ["rock"] * 8
