"""Inference on exported ONNX models with onnxruntime.

The engine takes normalised windows (N, frames, n_mels) and returns
probabilities and 32-d embeddings. Labels, frontend parameters and provenance
are read from the model's own metadata, so any exported model drops in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .info import METADATA_KEY, ModelInfo
from .session import ModelError, onnx_providers, session_options

log = logging.getLogger(__name__)

def _is_torch_checkpoint(path: Path) -> bool:
    """``torch.save`` writes a zip archive (a pickle before torch 1.6); an ONNX file is a bare protobuf."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return path.suffix in {".pt", ".pth"} or head == b"PK\x03\x04"


@dataclass
class Prediction:
    probabilities: np.ndarray  # (N, classes)
    embeddings: np.ndarray  # (N, 32)
    not_music: np.ndarray | None = None  # (N,) P(not music) where the model carries a gate (genre_stream.model.musicgate)

    @classmethod
    def of(cls, info: ModelInfo, probabilities: np.ndarray, embeddings: np.ndarray, calibrated: bool = True) -> "Prediction":
        """The network's softmax and embedding as every caller sees them: calibrated (when asked and the model
        carries a calibration) and with the music gate's answer. The one place both happen (whole windows, streaming)."""
        if calibrated and info.calibration is not None:
            probabilities = info.calibration.apply(probabilities)
        gate = info.gate.probability(embeddings) if info.gate is not None and len(embeddings) else None
        return cls(np.asarray(probabilities, dtype=np.float32), np.asarray(embeddings, dtype=np.float32), gate)


class Engine:
    """One onnxruntime session over a genre-stream model."""

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0, batch_size: int = 1,
                 chosen: str | None = None) -> None:
        """Load ``model_path`` (a file: names such as ``auto`` or ``int8`` are resolved by ``model.choice.open_engine``).
        ``chosen`` says how the file was chosen, for the start line and ``classify --json``."""
        self.path = Path(model_path)
        self.chosen = chosen or f"named: {self.path.name}"
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        self.session_options = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=self.session_options, providers=onnx_providers(device))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            if _is_torch_checkpoint(self.path):
                raise ModelError(f"{self.path}: a PyTorch checkpoint, not an ONNX model; export it first: "
                                 f"genre-trainer export {self.path} --out {self.path.with_suffix('.onnx')}") from exc
            raise ModelError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelError(f"{self.path}: ONNX file has no '{METADATA_KEY}' metadata; export it with genre-trainer export")
        try:
            self.info = ModelInfo.from_json(meta[METADATA_KEY])
        except ValueError as exc:
            raise ModelError(f"{self.path}: bad model metadata ({exc})") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type
        self.batch_size = max(1, batch_size)
        self.providers = self.session.get_providers()
        log.debug("loaded model %s (%s, %s) on %s", self.path.name, self.model_id, self.precision, self.providers[0])

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def model_id(self) -> str:
        return self.info.model_id or self.path.stem

    def predict(self, windows: np.ndarray, calibrated: bool = True) -> Prediction:
        """Classify normalised windows (N, frames, n_mels), ``batch_size`` at a time.

        Probabilities are calibrated here, per window, when the model carries a
        calibration, so classify, the daemon and evaluate all see the same numbers.
        ``calibrated=False`` gives the network's own softmax, e.g. to compare two
        exports of one network whose calibrations differ.
        """
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim == 2:
            windows = windows[None]
        dtype = np.float16 if "float16" in self.input_type else np.float32
        probs, embs = [], []
        for i in range(0, len(windows), self.batch_size):
            p, e = self.session.run(None, {self.input_name: windows[i : i + self.batch_size].astype(dtype)})
            probs.append(np.asarray(p, dtype=np.float32))
            embs.append(np.asarray(e, dtype=np.float32))
        if not probs:
            n = len(self.labels)
            return Prediction(np.zeros((0, n), np.float32), np.zeros((0, 32), np.float32))
        return Prediction.of(self.info, np.concatenate(probs), np.concatenate(embs), calibrated)
