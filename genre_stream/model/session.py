"""The one onnxruntime session recipe: which providers a device name tries, and the session options.

Every session of the product uses these (the engine, streaming stages, the trainer's export
checks, benchmarks), so a measurement and the service run the same way.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .providers import ORT_PROVIDERS, PROVIDERS

CPU = "CPUExecutionProvider"


class ModelError(Exception):
    """A model file that cannot be used; the message names the file and why."""


def onnx_providers(device: str) -> list[str]:
    """The onnxruntime providers ``device`` (``--provider``) tries, best first; the CPU is always last."""
    available = ort.get_available_providers()
    if device not in PROVIDERS:
        raise ModelError(f"unknown execution provider {device!r}; choose one of {', '.join(PROVIDERS)}")
    if device == "cpu":
        return [CPU]
    chosen = [p for p in ORT_PROVIDERS[device] if p in available]
    if device != "auto" and not chosen:
        raise ModelError(
            f"device {device!r} asked for, but this onnxruntime build offers only {', '.join(available)} "
            "(install onnxruntime-gpu with a matching CUDA to use a GPU)"
        )
    return chosen + [CPU]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The onnxruntime settings every session of the product uses (benchmarks included).

    Measured on the bundled exports (one 30 s window, 1 thread): the arena with memory
    patterns off peaks at 223 MB (fp32) / 108 MB (int8) against 273 / 134 MB with
    patterns on and 343 / 143 MB without the arena, at the same speed. Spinning threads
    are off: a tagger that runs one window every few seconds gains nothing from them,
    and on a shared 2-core machine they took the cores from everything else (2x slower
    windows under load).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, int(threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def cpu_session(model: bytes | str | Path, threads: int = 0, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with the recipe above. ``optimize=False`` runs the graph as written (no fusion): the
    trainer's quantiser uses it to compute QDQ semantics literally."""
    opts = session_options(threads)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts, providers=[CPU])
