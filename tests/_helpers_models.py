"""Model copies for tests and benchmarks: the same weights with other metadata.

A model names its input normalisation in its metadata (``ModelInfo.normalization``: the ONNX
file's ``genre_stream`` custom metadata, repeated in its streaming pack's manifest), so the
runtime's handling of a normalisation can be measured on the bundled weights before a model
is trained with it. The answers of such a copy are not the trained model's; its costs and its
agreement between streamed and whole windows are what it is for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from genre_stream.model.streampack import stream_pack_path
from trainer.onnx_meta import relabel_normalization  # onnx only: the runtime-only test venv has no torch


def with_normalization(model: Path, normalization: str, out_dir: Path) -> Path:
    """Copy ``model`` (and its streaming pack, where it has one) into ``out_dir``, both saying ``normalization``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / model.name
    shutil.copyfile(model, out)
    if stream_pack_path(model).is_file():
        shutil.copyfile(stream_pack_path(model), stream_pack_path(out))
    relabel_normalization(out, normalization)
    return out
