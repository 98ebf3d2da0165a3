"""int8 and fp16 variants of a BBNN export, and the accuracy bar an int8 model must meet.

The int8 recipe (issue 7) is: fold every BatchNorm away exactly (``trainer.fold``),
equalise channel ranges exactly so per-tensor activation scales lose nothing,
then ONNX Runtime static QDQ quantisation (uint8 activations, int8 per-channel
weights, min-max calibration). The ``plain`` recipe skips the first two steps; it
is kept because it is the baseline of the benchmark table and a real model that
misses the bar.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from genre_stream.model.agreement import AGREEMENT_BAR, AgreementBar
from genre_stream.model.info import ModelInfo
from genre_stream.model.session import cpu_session
from trainer.model import BBNN

from .export import INPUT_NAME, set_metadata, to_onnx_model, torch_probabilities
from .fold import equalize, fold_bbnn
from .int8_rewrite import WEIGHT_LIMITS, average_pools_as_convs, correct_biases, shared_concat_scale, threshold_relus

log = logging.getLogger(__name__)

RECIPES = ("full", "plain")
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}


@dataclass(frozen=True)
class Agreement:
    """How a variant's probabilities compare with the reference on the same windows.

    ``mean_abs`` is the mean over windows of the largest per-class |dp| of each
    window (stricter than the mean over every class entry, most of which are ~0).
    """

    windows: int
    top1: float
    mean_abs: float
    max_abs: float

    def shortfalls(self, bar: AgreementBar = AGREEMENT_BAR) -> list[str]:
        return bar.window_shortfalls(self.top1, self.mean_abs, self.max_abs)

    def meets(self, bar: AgreementBar = AGREEMENT_BAR) -> bool:
        return not self.shortfalls(bar)

    def summary(self) -> str:
        return f"{self.windows} windows: top-1 agreement {self.top1:.3f}, mean |dp| {self.mean_abs:.4f}, max |dp| {self.max_abs:.4f}"


def agreement(probabilities: np.ndarray, reference: np.ndarray) -> Agreement:
    if probabilities.shape != reference.shape or len(reference) == 0:
        raise ValueError(f"cannot compare probabilities of shape {probabilities.shape} with {reference.shape}")
    diff = np.abs(probabilities.astype(np.float64) - reference.astype(np.float64)).max(axis=1)
    top1 = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
    return Agreement(len(reference), top1, float(diff.mean()), float(diff.max()))


# The head (mean over positions, dense layer, softmax): a few hundred operations, but quantised,
# logits move in steps of ~0.25 and probabilities in steps of 1/255 (docs/QUANTIZATION.md), and the
# int8 streaming pack needs it float (trainer/stream_cut.py). Node names as the export writes them.
FLOAT_HEAD = ("/model/ReduceMean", "/model/classifier/Gemm", "/Softmax")




@dataclass(frozen=True)
class Int8Config:
    """One int8 recipe; every field is a knob measured in the benchmark table."""

    recipe: str = "full"  # full: fold + equalise before quantising; plain: quantise the export as is
    calibration_method: str = "minmax"
    per_channel: bool = True
    float_head: bool = True  # leave FLOAT_HEAD in float (the bundled int8 is built so)
    keep_float: tuple[str, ...] = ()  # further node-name substrings left in float (sensitivity analysis)
    channel_percentile: float | None = None  # equalise channels on this percentile instead of min/max
    shared_concat_scale: bool = True  # one scale for every concatenated tensor (full recipe only)
    bias_correction: bool = True  # remove each quantised conv's mean output error (``correct_biases``)
    bias_correction_windows: int = 32  # calibration windows the correction measures on (evenly spread)
    threshold_relu: bool = True  # depthwise relu(±x + shift) -> int8 relu(x - t) (``threshold_relus``; full recipe only)
    pool_as_conv: bool = True  # the quantised average pool runs as a depthwise int8 conv (``average_pools_as_convs``)
    weight_bits: int = 7  # 7: weights in [-64, 64], exact on every CPU (``WEIGHT_LIMITS``); 8: full range, wrong on x86 without VNNI

    @property
    def weight_limit(self) -> int:
        return WEIGHT_LIMITS[self.weight_bits]

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_LIMITS:
            raise ValueError(f"unknown int8 weight width {self.weight_bits!r}; choose one of {', '.join(map(str, WEIGHT_LIMITS))}")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown int8 recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")


class _Windows(CalibrationDataReader):
    """Calibration windows one at a time; ``on_read`` after each (ORT runs the window right after reading it)."""

    def __init__(self, windows: np.ndarray, on_read: Callable[[], None] | None = None) -> None:
        self._iter: Iterator[np.ndarray] = iter(np.asarray(windows, dtype=np.float32))
        self._on_read = on_read

    def get_next(self) -> dict[str, np.ndarray] | None:
        window = next(self._iter, None)
        if window is not None and self._on_read:
            self._on_read()
        return None if window is None else {INPUT_NAME: window[None]}


def quantize_int8(
    model: BBNN, info: ModelInfo, calibration: np.ndarray, config: Int8Config | None = None, calibration_source: str = "",
    on_window: Callable[[], None] | None = None,
) -> onnx.ModelProto:
    """Calibrate on ``calibration`` windows (N, frames, n_mels) and return the int8 QDQ model."""
    config = config or Int8Config()
    if len(calibration) == 0:
        raise ValueError("int8 quantisation needs at least one calibration window")
    if config.recipe == "full":
        folded = fold_bbnn(model)
        equalize(folded, torch.from_numpy(np.asarray(calibration, dtype=np.float32)), config.channel_percentile)
        source = to_onnx_model(folded, info)  # type: ignore[arg-type]  # same interface as BBNN
    else:
        source = to_onnx_model(model, info)
    with tempfile.TemporaryDirectory(prefix="genre-quant-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(source, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        graph = onnx.load(str(pre)).graph
        kept = config.keep_float + (FLOAT_HEAD if config.float_head else ())
        exclude = [n.name for n in graph.node if any(key in n.name for key in kept)]
        log.info("int8 (%s recipe): calibrating on %d windows, %d nodes kept float", config.recipe, len(calibration), len(exclude))
        extra: dict[str, object] = {}
        if config.recipe == "full" and config.shared_concat_scale:
            extra["TensorQuantOverrides"] = shared_concat_scale(graph)
        quantize_static(
            str(pre),
            str(out),
            _Windows(calibration, on_window),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[config.calibration_method],
            reduce_range=config.weight_bits == 7,  # int8 weights in [-64, 64] (activations keep all 8 bits)
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
        proto = onnx.load(str(out))
        if config.recipe == "full" and config.threshold_relu:
            threshold_relus(proto, onnx.load(str(pre)), config.weight_limit)
        if config.bias_correction:
            pick = np.linspace(0, len(calibration) - 1, min(config.bias_correction_windows, len(calibration))).round().astype(int)
            correct_biases(proto, onnx.load(str(pre)), np.asarray(calibration, dtype=np.float32)[np.unique(pick)])
        if config.pool_as_conv:
            average_pools_as_convs(proto)
    quant = dict(asdict(config), keep_float=list(config.keep_float), format="int8-qdq", calibration_windows=int(len(calibration)))
    if calibration_source:
        quant["calibration_source"] = calibration_source
    set_metadata(proto, _with_quantization(info, quant))
    return proto


def to_fp16(model: BBNN, info: ModelInfo) -> onnx.ModelProto:
    """fp16 weights and compute for GPUs; inputs and outputs stay float32 so callers need not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(to_onnx_model(model, info), keep_io_types=True)
    _sort_nodes(proto.graph)
    set_metadata(proto, _with_quantization(info, {"format": "fp16", "io": "float32"}))
    return proto


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topologically order the nodes: the fp16 converter appends its input casts at the end,
    which the ONNX checker (and strict runtimes) reject."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError("fp16 graph has a cycle or a dangling input: " + ", ".join(n.name for n in rest[:3]))
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _with_quantization(info: ModelInfo, quant: dict) -> ModelInfo:
    provenance = dict(info.provenance, quantization=quant)
    return ModelInfo(info.labels, info.frontend, info.normalization, info.architecture, info.model_id, provenance)


def session(model: onnx.ModelProto | bytes | str | Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU session with the product's recipe (``genre_stream.model.session``) over a graph or a file."""
    return cpu_session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model, threads)


def onnx_probabilities(sess: ort.InferenceSession, windows: np.ndarray, batch: int = 1) -> np.ndarray:
    name = sess.get_inputs()[0].name
    out = [sess.run(["probabilities"], {name: np.asarray(windows[i : i + batch], dtype=np.float32)})[0] for i in range(0, len(windows), batch)]
    return np.concatenate(out).astype(np.float32)


@dataclass
class ExportResult:
    """A built model and how it compares with the PyTorch model it came from."""

    model: onnx.ModelProto
    test: Agreement
    calibration: Agreement | None = None
    max_abs_parity: float | None = None  # fp32: largest |dp| against PyTorch
    notes: list[str] = field(default_factory=list)


FP32_PARITY = 1e-4


def build_export(
    model: BBNN,
    info: ModelInfo,
    quantize: str,
    test_windows: np.ndarray,
    calibration_windows: np.ndarray | None = None,
    config: Int8Config | None = None,
    calibration_source: str = "",
    on_window: Callable[[], None] | None = None,
) -> ExportResult:
    """Make the ``none`` / ``int8`` / ``fp16`` export and measure it against PyTorch on ``test_windows``.

    ``on_window`` is called as each int8 calibration window is run (the long step: minutes), for a progress bar.
    """
    reference = torch_probabilities(model, test_windows)
    if quantize == "none":
        proto = to_onnx_model(model, info)
        probs = onnx_probabilities(session(proto), test_windows)
        return ExportResult(proto, agreement(probs, reference), max_abs_parity=float(np.abs(probs - reference).max()))
    if quantize == "int8":
        if calibration_windows is None or len(calibration_windows) == 0:
            raise ValueError("int8 export needs calibration windows")
        proto = quantize_int8(model, info, calibration_windows, config, calibration_source, on_window)
        sess = session(proto)
        cal = agreement(onnx_probabilities(sess, calibration_windows), torch_probabilities(model, calibration_windows))
        return ExportResult(proto, agreement(onnx_probabilities(sess, test_windows), reference), calibration=cal)
    if quantize == "fp16":
        proto = to_fp16(model, info)
        try:
            probs = onnx_probabilities(session(proto), test_windows)
        except Exception as exc:  # onnxruntime raises its own types; a CPU without fp16 kernels is expected
            raise RuntimeError(f"fp16 model does not run on this CPU's onnxruntime ({exc})") from exc
        return ExportResult(proto, agreement(probs, reference), notes=["checked on CPU (onnxruntime); no GPU check here"])
    raise ValueError(f"unknown quantization {quantize!r}; choose none, int8 or fp16")
