"""Metrics of a model on labelled data, for a PyTorch checkpoint or an exported ONNX model.

A track is scored the way ``genre-stream classify`` scores it -- windows every
``hop`` seconds, normalised as the model's metadata says (``trainer.inputs``),
probabilities averaged -- so evaluate and classify agree on every file. ONNX
models go through the runtime's own ``Engine``, which is how the accuracy of an
int8 or fp16 export is measured rather than assumed.

DATA may be a prepared cache or audio (a folder tree or CSV); audio is prepared
into a temporary cache with the model's own frontend settings first.

Besides accuracy, the report says how well the confidences can be trusted:
expected calibration error (10 bins) with a reliability diagram, and what the
model's "uncertain" rule (``calibration.UncertaintyRule``, the defaults stored
with the model) costs in coverage and buys in precision, and the same for a
range of other thresholds and margins (``temperature.rule_curves``): the figures
a user needs to choose ``--uncertain-threshold`` for their own music.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from genre_stream.common.fsutil import atomic_path
from genre_stream.model.calibration import UncertaintyRule
from genre_stream.model.info import ModelInfo
from genre_stream.tracks.analysis import window_starts

from .data import MANIFEST, Cache, PrepareConfig, prepare
from .inputs import ModelInput
from .metrics import classification_report, expected_calibration_error, reliability_bins
from .plots import plot_confusion, plot_reliability
from .temperature import rule_curves, selective

log = logging.getLogger(__name__)

ECE_BINS = 10
Predictor = Callable[[np.ndarray], np.ndarray]  # normalised windows (N, T, F) -> probabilities (N, C)


class EvaluateError(ValueError):
    """Model and data that cannot be evaluated together; the message says why."""


def track_probabilities(
    cache: Cache,
    indices: list[int],
    model_input: ModelInput,
    predict: Predictor,
    hop_seconds: float = 10.0,
    batch: int = 16,
    progress: Callable[[list[tuple[int, int]]], Iterable[tuple[int, int]]] | None = None,
) -> np.ndarray:
    """Mean window probabilities of each cached clip, windows placed and normalised exactly like ``classify``."""
    window = model_input.window_frames
    hop = max(1, cache.frontend.seconds_to_frames(hop_seconds))
    pending: list[np.ndarray] = []
    owners: list[int] = []
    out: list[list[np.ndarray]] = [[] for _ in indices]

    def flush() -> None:
        probs = predict(np.stack(pending))
        for owner, p in zip(owners, probs):
            out[owner].append(p)
        pending.clear()
        owners.clear()

    items = list(enumerate(indices))
    for k, idx in progress(items) if progress else items:
        frames = cache.entries[idx].frames
        if frames < window:
            raise EvaluateError(f"{cache.entries[idx].path}: {frames} cached frames, shorter than the model's {window}-frame window")
        for start in window_starts(frames, window, hop):
            pending.append(cache.window(idx, start, window, model_input))
            owners.append(k)
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    return np.array([np.mean(p, axis=0) for p in out]) if out else np.zeros((0, 0), np.float32)


@dataclass
class LoadedModel:
    info: ModelInfo
    predict: Predictor
    kind: str  # "checkpoint" or "onnx"


def load_model(path: str | Path, threads: int = 0) -> LoadedModel:
    """A checkpoint (.pt) or an ONNX export, as a window -> probabilities function."""
    path = Path(path)
    if not path.is_file():
        raise EvaluateError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        from genre_stream.model.choice import open_engine
        from genre_stream.model.session import ModelError

        try:
            engine = open_engine(path, device="cpu", threads=threads)
        except ModelError as exc:
            raise EvaluateError(str(exc)) from exc
        return LoadedModel(engine.info, lambda w: engine.predict(w).probabilities, "onnx")
    import torch

    from .checkpoint import CheckpointError, load_checkpoint
    from .model import torch_predictor

    try:
        model, info, _ = load_checkpoint(path)
    except CheckpointError as exc:
        raise EvaluateError(str(exc)) from exc
    return LoadedModel(info, torch_predictor(model, torch.device("cpu")), "checkpoint")


def _open_data(data: Path, info: ModelInfo, workdir: Path, progress: Callable | None) -> Cache:
    if (data / MANIFEST).is_file():
        cache = Cache(data)
        ours = replace(cache.frontend, window_frames=info.frontend.window_frames)
        if ours != info.frontend:
            raise EvaluateError(f"{data}: cache frontend {cache.frontend} differs from the model's {info.frontend}; prepare the data again for this model")
        if cache.window_frames < info.frontend.window_frames:
            raise EvaluateError(
                f"{data}: cache prepared for {cache.window_frames}-frame windows, the model uses {info.frontend.window_frames}; "
                f"prepare again with --window-frames {info.frontend.window_frames} (or pass the audio folder)"
            )
        return cache
    prepare(data, workdir, PrepareConfig(frontend=info.frontend), progress=progress)
    return Cache(workdir)


def evaluate(
    model_path: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    hop_seconds: float = 10.0,
    threads: int = 0,
    progress: Callable[[list[Any], str], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Metrics of the model on every original clip of ``data``; writes metrics.json and confusion.png to ``out``.

    ``progress(items, label)`` wraps the decoding (audio DATA only) and the classification loops.
    """
    model = load_model(model_path, threads)
    labels = model.info.labels
    with tempfile.TemporaryDirectory(prefix="genre-trainer-eval-") as tmp:
        cache = _open_data(Path(data), model.info, Path(tmp) / "cache", (lambda items: progress(items, "decoding")) if progress else None)
        unknown = sorted(set(cache.labels) - set(labels))
        if unknown:
            raise EvaluateError(f"{data}: labels {unknown} are not among the model's labels {labels}")
        indices = cache.originals()
        probs = track_probabilities(cache, indices, ModelInput.of(model.info), model.predict, hop_seconds,
                                    progress=(lambda items: progress(items, "classifying")) if progress else None)
        index = {label: i for i, label in enumerate(labels)}
        targets = np.array([index[cache.entries[i].label] for i in indices], dtype=int)
        report = classification_report(targets, probs, labels)
        report["ece"] = expected_calibration_error(probs, targets, ECE_BINS)
        report["reliability"] = reliability_bins(probs, targets, ECE_BINS)
        report["calibration"] = model.info.calibration.to_dict() if model.info.calibration else None
        rule = UncertaintyRule.for_model(model.info.calibration)
        report["uncertain"] = {"threshold": rule.threshold, "margin": rule.margin, **selective(probs, targets, rule).to_dict(),
                               **rule_curves(probs, targets)}
        report["model"] = str(model_path)
        report["model_kind"] = model.kind
        report["model_id"] = model.info.model_id
        report["normalization"] = model.info.normalization
        report["data"] = str(data)
        report["skipped"] = cache.skipped
        report["files"] = [
            {"path": cache.entries[i].path, "label": cache.entries[i].label, "predicted": labels[int(p.argmax())], "confidence": float(p.max())}
            for i, p in zip(indices, probs)
        ]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(report["confusion"], labels, out / "confusion.png", f"{Path(model_path).name}: accuracy {report['accuracy']:.3f}")
        plot_reliability(report["reliability"], out / "reliability.png", f"{Path(model_path).name}: ECE {report['ece']:.3f} ({report['n']} tracks)", ECE_BINS)
        with atomic_path(out / "metrics.json") as tmp_json:
            tmp_json.write_text(json.dumps(report, indent=1))
    return report
