"""The streaming pack's layout: one schema for the trainer that writes packs and the runtime that reads them.

A pack lies beside its model (``X.onnx`` -> ``X.stream.zip``) and holds ``stream.json`` (this
``PackManifest``), one ONNX graph per trunk stage, a graph of all stages for windows computed in
full, ``head.npz`` (the dense layer; fp32 also the head's BN) and, in int8 packs, a head graph for
the quantised average pool. ``trainer.stream_export`` (fp32) and ``trainer.stream_cut`` (int8)
write it, ``model.streaming`` reads it; docs/STREAMING.md says why it exists.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STREAM_FORMAT = 1
MANIFEST = "stream.json"
HEAD_ARRAYS = "head.npz"  # weight, bias, pool (and fp32: scale, shift of the head's BN)
WINDOW_GRAPH = "window.onnx"


def stream_pack_path(model_path: str | Path) -> Path:
    """A model's streaming pack lies beside it: ``X.onnx`` -> ``X.stream.zip`` (written by ``genre-trainer export``)."""
    return Path(model_path).with_suffix(".stream.zip")


@dataclass(frozen=True)
class StageEntry:
    """One trunk stage: its graph, the stage outputs it reads, and how far an output column reads (halo)."""

    name: str
    file: str
    inputs: tuple[str, ...]  # "mel" for the stem, else earlier stages' outputs
    output: str
    channels: int
    halo: int  # columns either side an output column reads (the stem: frames)
    layout: str = "nchw"  # int8 packs: "nhwc" (onnxruntime pools uint8 fast only there)
    dtype: str = "float32"  # of its output and its cache (int8 packs: uint8)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StageEntry:
        return cls(str(raw["name"]), str(raw["file"]), tuple(str(i) for i in raw["inputs"]), str(raw["output"]),
                   int(raw["channels"]), int(raw["halo"]), str(raw.get("layout", "nchw")), str(raw.get("dtype", "float32")))


@dataclass(frozen=True)
class PackManifest:
    model: dict[str, Any]  # the ModelInfo JSON of the export the pack was made from (checked at load)
    stride: int  # mel frames per trunk column (the stem's pooling)
    stages: tuple[StageEntry, ...]  # in order: each stage's inputs come before it
    window_outputs: tuple[str, ...]  # what WINDOW_GRAPH returns: the stages' outputs, in order
    precision: str = "fp32"
    head_graph: str | None = None  # int8: the quantised pool as a graph; fp32: the head runs in numpy
    format: int = STREAM_FORMAT

    def to_json(self) -> str:
        out: dict[str, Any] = {
            "format": self.format, "model": self.model, "precision": self.precision, "stride": self.stride,
            "stages": [{**vars(s), "inputs": list(s.inputs)} for s in self.stages],
            "window": {"file": WINDOW_GRAPH, "outputs": list(self.window_outputs)},
        }
        if self.head_graph is not None:
            out["head"] = {"file": self.head_graph}
        return json.dumps(out, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PackManifest:
        """Raises ValueError (an unknown format) or KeyError / TypeError (a missing or malformed entry)."""
        raw = json.loads(text)
        if raw.get("format") != STREAM_FORMAT:
            raise ValueError(f"pack format {raw.get('format')!r}, this version reads {STREAM_FORMAT}")
        if raw["window"]["file"] != WINDOW_GRAPH:
            raise ValueError(f"the window graph is {raw['window']['file']!r}, not {WINDOW_GRAPH}")
        return cls(dict(raw["model"]), int(raw["stride"]), tuple(StageEntry.from_dict(s) for s in raw["stages"]),
                   tuple(str(o) for o in raw["window"]["outputs"]), str(raw.get("precision", "fp32")),
                   raw["head"]["file"] if "head" in raw else None)


def pack_bytes(manifest: PackManifest, head: dict[str, np.ndarray], graphs: dict[str, bytes]) -> bytes:
    """A pack as zip bytes: the manifest, the head arrays and the named graphs."""
    buf = io.BytesIO()
    np.savez(buf, **head)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, manifest.to_json())
        zf.writestr(HEAD_ARRAYS, buf.getvalue())
        for name, data in graphs.items():
            zf.writestr(name, data)
    return out.getvalue()
