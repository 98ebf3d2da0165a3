"""Exported files' metadata, edited in place: needs onnx, not torch.

Kept apart from ``export`` (which builds graphs with torch) so that scripts and tests that only
relabel or annotate an existing ONNX file (a fitted calibration, a music gate, the normalisation
the weights are fed) run in the runtime's test environment too, where torch is absent.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from genre_stream.audio.normalization import NORMALIZATIONS
from genre_stream.common.fsutil import atomic_path
from genre_stream.model.info import METADATA_KEY
from genre_stream.model.streampack import MANIFEST, PackManifest, stream_pack_path


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
                manifest = PackManifest.from_json(data)
                data = replace(manifest, model={**manifest.model, "normalization": normalization}).to_json().encode()
            dst.writestr(item, data)


def save_atomic(proto: onnx.ModelProto, out: str | Path) -> Path:
    """Write the model next to its destination and rename, so a failed export leaves nothing half-written."""
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)
