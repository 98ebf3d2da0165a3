"""``[model]``: which ONNX model runs, on which execution provider, with how many threads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..providers import Provider
from .fields import check_ranges, flag, option, setting


@dataclass
class ModelConfig:
    path: Path | None = option(None, cli=flag(  # None: the bundled model chosen by --model auto
        "--model", help="ONNX model file, or auto / fp32 / int8 for the bundled exports (auto: int8 where it is measured "
        "faster here and accurate enough, else fp32; cached in the state directory).", default_text="auto"))
    device: Provider = option("auto", cli=flag(
        "--provider", "--device", help="onnxruntime execution provider: auto uses TensorRT/CUDA when available, else CPU "
        "(--device is the old spelling)."))
    # one intra-op thread: a daemon shares the machine
    threads: int = setting(1, 0, 256, note="(0 = one per core)", cli=flag("--threads", help="CPU inference threads; 0 = one per core."))

    def __post_init__(self) -> None:
        check_ranges(self)
