"""int8 export pieces: calibration on real audio cut as classify cuts it, empirical bias correction, threshold ReLUs."""

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

from genre_stream.audio.decode import load_audio
from genre_stream.audio.frontend import MelFrontend
from genre_stream.model.info import ModelInfo
from genre_stream.tracks.analysis import iter_windows
from trainer.export import to_onnx_model
from trainer.fold import PreActFolded, equalize, fold_bbnn
from trainer.int8_rewrite import conv_output_errors, correct_biases, graph_wiring, plan_thresholds, threshold_relus
from trainer.int8_windows import audio_windows
from trainer.model import BBNN
from trainer.quantize import Int8Config, onnx_probabilities, quantize_int8, session
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
    qdq = quantize_int8(model, info, windows, Int8Config(bias_correction=False, threshold_relu=False))  # all 33 convs
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
        # plus float32's own resolution at the bias's size (this random model's BatchNorm gains make biases of ~1e6)
        resolution = np.spacing(np.abs(inits[f"{node.input[2]}_quantized"] * step).astype(np.float32))
        assert np.all(np.abs(after[node.name]) <= 0.5 * step + resolution + 1e-4), node.name
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

    from genre_stream.model.choice import bundled_metadata
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
    from genre_stream.model.bundled import bundled_model_path
    from genre_stream.model.streampack import stream_pack_path
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
    from genre_stream.model.bundled import bundled_model_path
    from trainer.stream_cut import int8_stream_pack

    with pytest.raises(ValueError, match="not DequantizeLinear: not a QDQ int8 export"):
        int8_stream_pack(onnx.load(bundled_model_path("fp32")))


def test_threshold_plan_is_exact_on_the_input_range() -> None:
    """weight @ relu(w x + b) + bias == new_weight @ relu(x - t) + new_bias for every x in [0, top]."""
    rng = np.random.default_rng(3)
    top, channels = 1.0, 64
    w = rng.uniform(0.2, 60.0, channels) * np.where(rng.random(channels) < 0.9, 1, -1)
    b = rng.uniform(-1.5, 0.5, channels) * np.abs(w)  # w > 0: dead below -1, rising in (-1, 0), linear above
    w[:4], b[:4] = -2.0, 3.0  # falling but never clipped on [0, 1]: linear
    w[4], b[4] = 5.0, -5.0  # rising, 0 until x = 1: dead on the interval
    w[5], b[5] = -4.0, 2.0  # falling, clipped at x = 0.5
    weight, bias = rng.normal(0, 1, (8, channels)), rng.normal(0, 1, 8)
    plan = plan_thresholds(w, b, weight, bias, top)
    rising = ~plan.falling
    assert plan.dead[4] and plan.linear[:4].all() and plan.dead.sum() > 5 and plan.rising.sum() > 20
    assert plan.falling.any()  # w < 0 clipped inside [0, 1]: no relu(x - t) form
    assert np.all((plan.threshold >= 0) & (plan.threshold <= top))
    x = np.concatenate([rng.uniform(0, top, (500, channels)), np.zeros((1, channels)), np.full((1, channels), top)])
    x = np.concatenate([x, np.clip(plan.threshold + rng.normal(0, 1e-3, (20, channels)), 0, top)])  # near every kink
    keep = plan_thresholds(w[rising], b[rising], weight[:, rising], bias, top)
    want = np.maximum(w[rising] * x[:, rising] + b[rising], 0) @ weight[:, rising].T + bias
    got = np.maximum(x[:, rising] - keep.threshold, 0) @ keep.weight.T + keep.bias
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)
    assert np.all(keep.weight[:, keep.dead] == 0)  # dead channels are pruned from the 1x1 conv


def _with_positive_gains(model: BBNN) -> BBNN:
    """A copy whose BatchNorm gains are positive, as in the trained model (no falling channels)."""
    copy = type(model)(n_classes=4)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in copy.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.abs_().add_(0.05)
    return copy.eval()


def test_threshold_form_of_every_folded_depthwise_op_is_exact(random_model: tuple[BBNN, ModelInfo]) -> None:
    """On the folded float graph (positive BatchNorm gains, as in the trained model): each depthwise
    relu(x + shift) -> 1x1 conv pair equals relu(x - t) -> the planned 1x1 conv within 1e-5 for inputs in [0, 1]."""
    folded = fold_bbnn(_with_positive_gains(random_model[0]))
    equalize(folded, torch.from_numpy(np.random.default_rng(4).normal(0.3, 1.0, (3, 96, 128)).astype(np.float32)))
    ops = [m for m in folded.modules() if isinstance(m, PreActFolded)]
    assert len(ops) == 13
    rng = np.random.default_rng(5)
    dead = 0
    for op in ops:
        dw, conv = op[0], op[2]
        plan = plan_thresholds(dw.weight.detach().numpy(), dw.bias.detach().numpy(), conv.weight.detach().numpy()[:, :, 0, 0],
                               conv.bias.detach().numpy(), 1.0)
        assert not plan.falling.any()
        dead += int(plan.dead.sum())
        x = torch.from_numpy(rng.uniform(0, 1, (2, dw.in_channels, 6, 5)).astype(np.float32))
        with torch.no_grad():
            want = op(x).numpy()
        t = plan.threshold.reshape(1, -1, 1, 1)
        got = np.einsum("oc,nchw->nohw", plan.weight, np.maximum(x.numpy().astype(np.float64) - t, 0)) + plan.bias.reshape(1, -1, 1, 1)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)  # float32 rounding of the module
    assert dead > 0  # some channels are pruned, exactly


def test_int8_recipe_replaces_every_depthwise_relu_by_a_threshold(random_model: tuple[BBNN, ModelInfo]) -> None:
    model, info = _with_positive_gains(random_model[0]), random_model[1]
    windows = np.random.default_rng(6).normal(0.3, 1.0, (4, 96, 128)).astype(np.float32)
    plain = quantize_int8(model, info, windows, Int8Config(bias_correction=False, threshold_relu=False))
    thresholded = quantize_int8(model, info, windows, Int8Config(bias_correction=False))
    assert sum(n.op_type == "Conv" for n in plain.graph.node) == 33 + 1  # + the head's average pool, run as a conv
    assert sum(n.op_type == "Conv" for n in thresholded.graph.node) == 20 + 1
    assert sum(n.op_type == "Add" for n in thresholded.graph.node) == 13
    a = onnx_probabilities(session(plain, threads=1), windows)
    b = onnx_probabilities(session(thresholded, threads=1), windows)
    assert np.abs(a - b).max() < 0.1  # the same model up to int8 rounding (thresholds on the uint8 grid)
    assert threshold_relus(thresholded, onnx.load_from_string(plain.SerializeToString())) == {}  # nothing left to replace
    kept = quantize_int8(model, info, windows, Int8Config(bias_correction=False, keep_float=("broadcast.1/branch1/branch1.2/",)))
    assert sum(n.op_type == "Add" for n in kept.graph.node) == 12  # a pair whose 1x1 conv stays float is left as it is


def test_bundled_int8_has_no_depthwise_op_and_no_always_zero_channel() -> None:
    """The bundled int8 runs its pre-activations as relu(x - t) (issue 15 part 2): no depthwise conv is left,
    and every channel a 1x1 conv reads through a threshold can fire on [0, R] unless its weights are all 0."""
    from genre_stream.model.bundled import bundled_model_path

    proto = onnx.load(str(bundled_model_path("int8")))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer, consumers = graph_wiring(proto.graph)
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node if n.op_type == "Conv"]
    assert sorted(groups) == [1] * 20 + [32]  # 20 convolutions and the head's 2x2 average pool (32 channels)
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 13
    pruned = total = 0
    for add in adds:
        dq = producer[add.input[1]]
        codes = inits[dq.input[0]][0, :, 0, :]  # (channels, mel bands): one threshold per channel, repeated along the bands
        assert codes.shape[1] == 128 and np.all(codes == codes[:, :1])
        code = codes[:, 0]  # threshold t = (255 - code) * step: code 0 means t = R, always 0
        relu = consumers[add.output[0]][0]
        q = consumers[relu.output[0]][0]
        conv = consumers[consumers[q.output[0]][0].output[0]][0]
        weight = inits[producer[conv.input[1]].input[0]]
        silent = ~np.any(weight.reshape(weight.shape[0], -1) != 0, axis=0)
        assert np.all(silent[code == 0]), add.name  # an always-zero channel carries no weight
        pruned, total = pruned + int((code == 0).sum()), total + code.size
    assert pruned > 0.25 * total  # and the pruned channels are many (about a third)


def test_the_average_pool_runs_as_a_depthwise_conv_with_the_same_integers(random_model: tuple[BBNN, ModelInfo]) -> None:
    """onnxruntime runs QLinearAveragePool on one thread; the depthwise int8 conv that replaces it (weights 1 at
    scale 1/4) must give the very same uint8 outputs, so the same probabilities to the bit."""
    model, info = random_model
    windows = np.random.default_rng(7).uniform(0, 1, (3, 96, 128)).astype(np.float32)
    pooled = quantize_int8(model, info, windows, Int8Config(bias_correction=False, pool_as_conv=False))
    conv = quantize_int8(model, info, windows, Int8Config(bias_correction=False))
    assert [n.op_type for n in pooled.graph.node].count("AveragePool") == 1
    assert [n.op_type for n in conv.graph.node].count("AveragePool") == 0
    pool = next(n for n in conv.graph.node if n.name.endswith("/as_conv"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert pool.op_type == "Conv" and attrs == {"group": 32, "kernel_shape": [2, 2], "strides": [2, 2]}
    for batch in windows:
        a, b = (session(p, threads=1).run(None, {"mel": batch[None]}) for p in (pooled, conv))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_every_concatenation_is_a_copy(random_model: tuple[BBNN, ModelInfo]) -> None:
    """Every Concat input has the output's scale and zero point, so onnxruntime copies instead of requantising.
    The stem's pooled ReLU is the one that needs its pool's input overridden too: its ReLU reaches further in the
    frames the 4x1 pool drops (the bundled model: 1.455 there, 1.0 after the pool)."""
    from genre_stream.model.bundled import bundled_model_path

    model, info = random_model
    windows = np.random.default_rng(8).normal(0.3, 1.0, (3, 97, 128)).astype(np.float32)  # 97 frames: the pool drops one
    for proto in (quantize_int8(model, info, windows, Int8Config(bias_correction=False)), onnx.load(str(bundled_model_path("int8")))):
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        producer, consumers = graph_wiring(proto.graph)
        concats = [n for n in proto.graph.node if n.op_type == "Concat"]
        assert len(concats) == 3
        for concat in concats:
            q = consumers[concat.output[0]][0]
            params = {(float(inits[n.input[1]]), int(inits[n.input[2]])) for n in [q, *(producer[i] for i in concat.input)]}
            assert params == {(float(np.float32(1 / 255)), 0)}, concat.name


def _conv_weight_codes(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each quantised conv's int8 weight codes (the integers the CPU's int8 kernel multiplies)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer, _ = graph_wiring(proto.graph)
    out = {}
    for node in proto.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is not None and dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8:
            out[node.name] = inits[dq.input[0]]
    return out


def test_int8_weights_fit_seven_bits_so_no_cpu_overflows_a_pair_sum(random_model: tuple[BBNN, ModelInfo]) -> None:
    """x86 without VNNI adds pairs of uint8 x int8 products in a saturating int16 (issue 22): |w| <= 64 keeps every
    pair within it (2 x 255 x 64 = 32640). The default recipe, threshold rewrite included, stays inside; 8 bits does not."""
    model, info = random_model
    windows = np.random.default_rng(8).normal(0.3, 1.0, (3, 96, 128)).astype(np.float32)
    seven = _conv_weight_codes(quantize_int8(model, info, windows, Int8Config(bias_correction=False)))
    eight = _conv_weight_codes(quantize_int8(model, info, windows, Int8Config(bias_correction=False, weight_bits=8)))
    assert len(seven) == len(eight) > 20
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in seven.values()) == 64
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in eight.values()) == 127
    with pytest.raises(ValueError, match="weight width 6"):
        Int8Config(weight_bits=6)


def test_bundled_int8_weights_fit_seven_bits_and_say_so() -> None:
    from genre_stream.model.bundled import bundled_model_path
    from genre_stream.model.choice import bundled_metadata

    codes = _conv_weight_codes(onnx.load(str(bundled_model_path("int8"))))
    assert len(codes) == 21 and all(int(np.abs(w.astype(np.int32)).max()) <= 64 for w in codes.values())
    assert bundled_metadata("int8")["provenance"]["quantization"]["weight_bits"] == 7
