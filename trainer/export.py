"""Export a BBNN checkpoint to the ONNX files the runtime loads.

The exported graph takes normalised windows ``mel`` (N, T, n_mels) with dynamic N
and T, and returns ``probabilities`` (N, classes) and ``embedding`` (N, 32). The
model's ``ModelInfo`` (labels, frontend, normalisation, provenance) is stored in
the ONNX metadata under ``genre_stream`` so a model file is self-describing.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from genre_stream.common.fsutil import atomic_path
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


def update_metadata(path: str | Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Edit an exported file's metadata JSON in place with ``update`` (e.g. a fitted calibration or music
    gate); the graph and weights are untouched and the file is replaced atomically."""
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    data = json.loads(entry.value)
    update(data)
    entry.value = json.dumps(data, sort_keys=True)
    save_atomic(proto, path)


def relabel_normalization(path: str | Path, normalization: str) -> None:
    """Say in an export (and in its streaming pack's manifest, where it has one) that it is fed ``normalization``.

    For the same weights fed another normalisation (the bundled models since issue 23: quantised on the
    seed's windows, fed RUNNING, which is identical on a 30 s window that reaches 80 dB). Graph and weights
    are untouched; the pack is rewritten atomically beside the model.
    """
    import zipfile

    from genre_stream.audio.normalization import NORMALIZATIONS
    from genre_stream.model.streampack import MANIFEST, stream_pack_path

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}")
    update_metadata(path, lambda data: data.update(normalization=normalization))
    pack = stream_pack_path(path)
    if not pack.is_file():
        return
    with zipfile.ZipFile(pack) as src, atomic_path(pack) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == MANIFEST:
                manifest = json.loads(data)
                manifest["model"]["normalization"] = normalization
                data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            dst.writestr(item, data)


def save_atomic(proto: onnx.ModelProto, out: str | Path) -> Path:
    """Write the model next to its destination and rename, so a failed export leaves nothing half-written."""
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)


def torch_probabilities(model: BBNN, windows: np.ndarray, batch: int = 8) -> np.ndarray:
    """Reference probabilities from the PyTorch model, for parity reports."""
    out = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            logits, _ = model.eval()(torch.from_numpy(np.asarray(windows[i : i + batch], dtype=np.float32)))
            out.append(torch.softmax(logits, -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)
