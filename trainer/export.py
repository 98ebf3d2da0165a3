"""Export a BBNN checkpoint to the ONNX files the runtime loads.

The exported graph takes normalised windows ``mel`` (N, T, n_mels) with dynamic N
and T, and returns ``probabilities`` (N, classes) and ``embedding`` (N, 32). The
model's ``ModelInfo`` (labels, frontend, normalisation, provenance) is stored in
the ONNX metadata under ``genre_stream`` so a model file is self-describing.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import onnx
import torch
from torch import nn

from genre_stream.model.info import METADATA_KEY, ModelInfo
from trainer.model import BBNN

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "mel"
OUTPUT_NAMES = ("probabilities", "embedding")


class _Exportable(nn.Module):
    """Adds the softmax so the runtime gets probabilities straight from the graph."""

    def __init__(self, model: BBNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, emb = self.model(mel)
        return torch.softmax(logits, dim=-1), emb


def to_onnx_model(model: BBNN, info: ModelInfo, window_frames: int | None = None) -> onnx.ModelProto:
    """Trace ``model`` to an fp32 ONNX graph (opset 17) carrying ``info`` as metadata."""
    model = model.eval()
    frames = window_frames or info.frontend.window_frames
    dummy = torch.zeros(1, frames, info.frontend.n_mels)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            _Exportable(model),
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"}, "probabilities": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, info)
    onnx.checker.check_model(proto)
    return proto


def set_metadata(proto: onnx.ModelProto, info: ModelInfo) -> None:
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = info.to_json()
    proto.producer_name = "genre-trainer"


def torch_probabilities(model: BBNN, windows: np.ndarray, batch: int = 8) -> np.ndarray:
    """Reference probabilities from the PyTorch model, for parity reports."""
    out = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            logits, _ = model.eval()(torch.from_numpy(np.asarray(windows[i : i + batch], dtype=np.float32)))
            out.append(torch.softmax(logits, -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)
