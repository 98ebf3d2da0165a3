"""``[model]``: which ONNX model runs, on which execution provider, with how many threads.

The same declarations give ``classify`` and ``library`` their ``--model``/``--provider``/``--threads``
(``cli/options.py``); what the names mean is decided in ``model.choice``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model.providers import Provider
from .fields import check_ranges, flag, option, setting

DAEMON_THREADS = 1  # `run`: one intra-op thread, because a daemon shares the machine with everything else on it
BATCH_THREADS = 0  # one-off jobs (classify, library scan): onnxruntime uses every core


@dataclass
class ModelConfig:
    path: Path | None = option(None, cli=flag(  # None: auto
        "--model", help="An ONNX model exported by `genre-trainer export`, or auto / fp32 / int8 for the bundled exports "
        "(auto: the bundled int8 on a CPU when its weights are 7-bit and it meets its accuracy bar, else fp32; a fixed rule, "
        "see docs/QUANTIZATION.md).", default_text="auto"))
    device: Provider = option("auto", cli=flag(
        "--provider", "--device", help="onnxruntime execution provider: auto uses TensorRT/CUDA when available, else CPU "
        "(--device is the old spelling)."))
    threads: int = setting(DAEMON_THREADS, 0, 256, note="(0 = one per core)", cli=flag("--threads", help="CPU inference threads; 0 = one per core."))

    def __post_init__(self) -> None:
        check_ranges(self)
