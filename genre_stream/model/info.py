"""What a model carries about itself: labels, frontend, normalisation, provenance.

The same record travels in PyTorch checkpoints (trainer) and in the ONNX metadata
(runtime), so labels are always read from the model and never from a list in code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..audio.frontend import FrontendConfig
from ..audio.normalization import NORMALIZATIONS, SEED
from .calibration import Calibration
from .musicgate import MusicGate

METADATA_KEY = "genre_stream"
NORMALIZATION = SEED  # what a model that names none was trained with (audio/normalization.py)


@dataclass
class ModelInfo:
    labels: list[str]
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    normalization: str = NORMALIZATION
    architecture: str = "bbnn"
    model_id: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None  # absent in models exported before calibration existed
    gate: MusicGate | None = None  # the "not_music" answer (genre_stream.model.musicgate); absent before issue 23

    @property
    def precision(self) -> str:
        """fp32, int8 or fp16: what the export computes in (from its quantization provenance)."""
        return str(self.provenance.get("quantization", {}).get("format", "fp32")).split("-")[0]

    def to_json(self) -> str:
        data = asdict(self)
        data["frontend"] = self.frontend.to_dict()
        for key in ("calibration", "gate"):
            if getattr(self, key) is None:
                del data[key]  # old readers and files stay byte-identical
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        if not isinstance(data.get("labels"), list) or not data["labels"]:
            raise ValueError("model metadata has no 'labels' list")
        norm = data.get("normalization", NORMALIZATION)
        if norm not in NORMALIZATIONS:
            raise ValueError(f"model metadata names normalization {norm!r}; this version knows {', '.join(NORMALIZATIONS)}")
        return cls(
            labels=[str(x) for x in data["labels"]],
            frontend=FrontendConfig.from_dict(data.get("frontend", {})),
            normalization=norm,
            architecture=str(data.get("architecture", "bbnn")),
            model_id=str(data.get("model_id", "")),
            provenance=dict(data.get("provenance", {})),
            calibration=Calibration.from_dict(data["calibration"]) if data.get("calibration") else None,
            gate=MusicGate.from_dict(data["gate"]) if data.get("gate") else None,
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        return cls.from_dict(json.loads(text))
