"""int8 export pieces: calibration on real audio cut as classify cuts it, and empirical bias correction."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from genre_stream.audio import load_audio
from genre_stream.frontend import MelFrontend
from genre_stream.modelinfo import ModelInfo
from genre_stream.tracks import iter_windows
from trainer.calibration import audio_windows
from trainer.export import to_onnx_model
from trainer.fold import equalize, fold_bbnn
from trainer.model import BBNN
from trainer.quantize import Int8Config, conv_output_errors, correct_biases, quantize_int8
from trainer.synth import synth_piece

pytestmark = pytest.mark.train  # needs the [train] extra

SR = 22050


def test_audio_windows_are_the_windows_classify_cuts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_piece = np.concatenate([synth_piece(1), synth_piece(2)[: 15 * SR]])  # 45 s: windows at 0 and 10 s, then the tail
    sf.write(tmp_path / "a-long.wav", long_piece, SR)
    sf.write(tmp_path / "b-short.wav", synth_piece(3)[: 5 * SR], SR)  # shorter than a window: one looped window
    (tmp_path / "c-broken.wav").write_bytes(b"RIFF not really audio")
    frontend = MelFrontend()

    with caplog.at_level(logging.WARNING):
        windows, source = audio_windows([tmp_path], frontend)

    expected = [w for name in ("a-long.wav", "b-short.wav")
                for _, _, w in iter_windows([load_audio(tmp_path / name, SR)], frontend)]
    assert len(expected) >= 3
    np.testing.assert_allclose(windows, np.stack(expected), atol=1e-5)
    assert "2 real audio files" in source and f"{len(expected)} windows" in source
    assert "c-broken.wav" in caplog.text  # an unreadable file is reported, not silently used or fatal


def test_audio_windows_without_readable_audio_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"nothing")
    with pytest.raises(ValueError, match="no readable audio"):
        audio_windows([tmp_path], MelFrontend())


@pytest.fixture(scope="module")
def random_model() -> tuple[BBNN, ModelInfo]:
    torch.manual_seed(7)
    model = BBNN(n_classes=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.05, 2.0)
    return model.eval(), ModelInfo(labels=["a", "b", "c", "d"], model_id="random")


def test_bias_correction_leaves_no_mean_error_in_any_quantised_conv(random_model: tuple[BBNN, ModelInfo]) -> None:
    model, info = random_model
    windows = np.random.default_rng(0).normal(0.3, 1.0, (6, 96, 128)).astype(np.float32)
    qdq = quantize_int8(model, info, windows, Int8Config(bias_correction=False))
    folded = fold_bbnn(model)
    equalize(folded, torch.from_numpy(windows))  # the float graph quantize_int8 quantised (deterministic)
    reference = to_onnx_model(folded, info)  # type: ignore[arg-type]

    before = conv_output_errors(qdq, reference, windows)
    removed = correct_biases(qdq, reference, windows)
    after = conv_output_errors(qdq, reference, windows)

    assert set(removed) == set(before) == set(after) and len(after) == 33
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for node in (n for n in qdq.graph.node if n.name in after):
        step = inits[f"{node.input[2]}_quantized_scale"]  # the int32 bias's scale: the finest correction possible
        assert np.all(np.abs(after[node.name]) <= 0.5 * step + 1e-4), node.name
    worst_before = max(float(np.abs(e).max()) for e in before.values())
    worst_after = max(float(np.abs(e).max()) for e in after.values())
    assert worst_before > 20 * worst_after  # there was a real error to remove


def test_bias_correction_is_part_of_the_recipe_and_recorded(random_model: tuple[BBNN, ModelInfo]) -> None:
    model, info = random_model
    windows = np.random.default_rng(1).normal(0.3, 1.0, (4, 96, 128)).astype(np.float32)
    plain = quantize_int8(model, info, windows, Int8Config(bias_correction=False))
    corrected = quantize_int8(model, info, windows)
    biases = lambda p: {t.name: onnx.numpy_helper.to_array(t) for t in p.graph.initializer if t.name.endswith("bias_quantized")}  # noqa: E731
    changed = [k for k, v in biases(plain).items() if not np.array_equal(v, biases(corrected)[k])]
    assert len(changed) > 10
    meta = next(p.value for p in corrected.metadata_props if p.key == "genre_stream")
    assert '"bias_correction": true' in meta


def test_a_never_firing_channel_does_not_set_its_consumers_weight_scale(random_model: tuple[BBNN, ModelInfo]) -> None:
    """A dead ReLU channel with a large BatchNorm gain must not keep that gain in the next conv's weights:
    int8 weights share one step per output channel, so one such weight rounds the others to zero."""
    model, _ = random_model
    model = type(model)(n_classes=4)
    model.load_state_dict(random_model[0].state_dict())
    bn = model.broadcast[2].branch3[0][0]
    with torch.no_grad():
        bn.weight[5], bn.bias[5] = 50.0, -1e4  # relu(a x + b) is 0 for any input, with |a| = 50 / sqrt(var)
    model.eval()
    windows = torch.from_numpy(np.random.default_rng(2).normal(0.3, 1.0, (3, 96, 128)).astype(np.float32))
    folded = fold_bbnn(model)
    equalize(folded, windows)
    columns = folded.broadcast[2].branch3[0][2].weight.detach().abs().amax(dim=(0, 2, 3))  # per input channel
    others = torch.cat([columns[:5], columns[6:]])
    assert columns[5] < 0.01 * float(others.median())
    with torch.no_grad():
        np.testing.assert_allclose(folded(windows)[0].numpy(), model(windows)[0].numpy(), rtol=1e-3, atol=1e-3)


def test_bundled_int8_is_calibrated_without_the_clips_it_is_measured_on() -> None:
    """The agreement figures of the bundled int8 come from genre-dev's non-GTZAN clips; they must never calibrate it."""
    import csv
    import json

    from genre_stream.autoselect import bundled_metadata
    from scripts.build_default_models import calibration_and_check_audio
    from tests.conftest import shared_path

    labels = shared_path("audio/genre-dev/labels.csv")
    calibration, check = calibration_and_check_audio(labels.parent.parent)
    with open(labels, newline="") as f:
        measured = {labels.parent / r["path"] for r in csv.DictReader(f) if r["is_gtzan"] == "0"}
    assert set(check) == measured and len(measured) == 33
    assert not measured & set(calibration) and len(calibration) == 58
    quant = bundled_metadata("int8")["provenance"]["quantization"]
    assert quant["bias_correction"] is True and "58 real audio files" in quant["calibration_source"], json.dumps(quant)


def test_bundled_int8_pack_is_cut_from_the_bundled_int8_model() -> None:
    """The shipped pack holds the stages of the shipped int8 graph (a rebuilt int8 file needs its pack cut again)."""
    from genre_stream.models import bundled_model_path
    from genre_stream.streaming import stream_pack_path
    from trainer.stream_cut import int8_stream_pack

    model = bundled_model_path("int8")
    fresh = zipfile.ZipFile(io.BytesIO(int8_stream_pack(onnx.load(model))))
    shipped = zipfile.ZipFile(stream_pack_path(model))
    assert sorted(fresh.namelist()) == sorted(shipped.namelist())
    for name in fresh.namelist():
        ours, theirs = fresh.read(name), shipped.read(name)
        if name == "stream.json":  # its model record is the file's metadata at export time (calibration comes later)
            ours, theirs = json.loads(ours), json.loads(theirs)
            assert ours.pop("model")["model_id"] == theirs.pop("model")["model_id"]
            assert ours["precision"] == "int8" and [s["halo"] for s in ours["stages"]] == [1, 2, 2, 2]
        assert ours == theirs, name


def test_an_fp32_graph_is_not_cut_as_int8() -> None:
    from genre_stream.models import bundled_model_path
    from trainer.stream_cut import int8_stream_pack

    with pytest.raises(ValueError, match="not DequantizeLinear: not a QDQ int8 export"):
        int8_stream_pack(onnx.load(bundled_model_path("fp32")))
