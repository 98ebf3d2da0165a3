"""The bundled model files and their short names.

Kept free of heavy imports so configuration checks can resolve ``--model int8``
without loading onnxruntime or torch. Which file runs is decided in ``model.choice``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The bundled exports by short name, so `--model int8` works wherever the package is installed.
BUNDLED_MODELS = {
    "fp32": "bbnn-gtzan-augmented-fold0.fp32.onnx",
    "int8": "bbnn-gtzan-augmented-fold0.int8.onnx",
}
AUTO = "auto"  # --model auto (and no --model): the bundled export model.choice picks by rule


def bundled_model_path(name: str) -> Path:
    return Path(str(resources.files(__name__) / BUNDLED_MODELS[name]))


def is_auto(spec: str | Path | None) -> bool:
    """No ``--model``, or ``auto`` (unless a file of that name exists, as for ``fp32`` / ``int8``)."""
    return spec is None or (str(spec) == AUTO and not Path(spec).exists())


def named_model(spec: str | Path) -> Path:
    """A model path, or a bundled export's short name (``fp32``, ``int8``) unless a file of that name exists."""
    if str(spec) in BUNDLED_MODELS and not Path(spec).exists():
        return bundled_model_path(str(spec))
    return Path(spec)
