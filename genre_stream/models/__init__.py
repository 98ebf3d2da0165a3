"""The bundled model files and their short names.

Kept free of heavy imports so configuration checks can resolve ``--model int8``
without loading onnxruntime or torch.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

# The bundled exports by short name, so `--model int8` works wherever the package is installed.
BUNDLED_MODELS = {
    "fp32": "bbnn-gtzan-augmented-fold0.fp32.onnx",
    "int8": "bbnn-gtzan-augmented-fold0.int8.onnx",
}
AUTO = "auto"  # --model auto: the bundled export genre_stream.autoselect picks by rule
DEFAULT_MODEL = "fp32"  # the path of "no --model" for config checks; Engine resolves it as "auto" (genre_stream.autoselect)


def bundled_model_path(name: str) -> Path:
    return Path(str(resources.files("genre_stream") / "models" / BUNDLED_MODELS[name]))


def default_model_path() -> Path:
    """The model used when no ``--model`` is given."""
    return bundled_model_path(DEFAULT_MODEL)


def is_auto(spec: str | Path | None) -> bool:
    """No ``--model``, or ``auto`` (unless a file of that name exists, as for ``fp32`` / ``int8``)."""
    return spec is None or (str(spec) == AUTO and not Path(spec).exists())


def resolve_model(spec: str | Path | None) -> Path:
    """A model path, or a bundled export's short name (``fp32``, ``int8``) unless a file of that name exists."""
    if spec is None:
        return default_model_path()
    if str(spec) in BUNDLED_MODELS and not Path(spec).exists():
        return bundled_model_path(str(spec))
    return Path(spec)


def model_file_stamp(spec: str | Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the model file ``spec`` names: changes when the file is rewritten or
    replaced (a fine-tuned model written over the old one), which a reload looks for; None while missing."""
    try:
        st = os.stat(resolve_model(spec))
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
