"""The execution providers a user can ask for, and which onnxruntime providers each one tries.

Kept free of heavy imports: the command line and configuration checks list the choices
without loading onnxruntime. (``sources/devices.py`` is about sound cards, not this.)
"""

from __future__ import annotations

from typing import Literal, get_args

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]
PROVIDERS: tuple[str, ...] = get_args(Provider)

# onnxruntime providers tried, in order, before the CPU one (which is always last).
ORT_PROVIDERS: dict[str, list[str]] = {
    "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "cpu": [],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
