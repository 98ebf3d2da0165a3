"""Model copies for tests and benchmarks: the same weights with other metadata.

A model names its input normalisation in its metadata (``ModelInfo.normalization``: the ONNX
file's ``genre_stream`` custom metadata, repeated in its streaming pack's manifest), so the
runtime's handling of a normalisation can be measured on the bundled weights before a model
is trained with it. The answers of such a copy are not the trained model's; its costs and its
agreement between streamed and whole windows are what it is for.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import onnx

from genre_stream.model.info import METADATA_KEY
from genre_stream.model.streampack import MANIFEST, stream_pack_path


def with_normalization(model: Path, normalization: str, out_dir: Path) -> Path:
    """Copy ``model`` (and its streaming pack, where it has one) into ``out_dir``, both saying ``normalization``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / model.name
    proto = onnx.load(str(model))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "normalization": normalization}, sort_keys=True)
    onnx.save(proto, str(out))
    pack = stream_pack_path(model)
    if pack.is_file():
        with zipfile.ZipFile(pack) as src, zipfile.ZipFile(stream_pack_path(out), "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == MANIFEST:
                    manifest = json.loads(data)
                    manifest["model"]["normalization"] = normalization
                    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
                dst.writestr(item, data)
    return out
