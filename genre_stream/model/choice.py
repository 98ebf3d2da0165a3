"""Which model runs: the one owner of ``--model`` / ``[model]`` (``open_engine``), for classify, library and run.

A path runs that file; ``fp32`` / ``int8`` the bundled exports; ``auto`` (the default) the bundled
export this rule picks, decided by facts about the files, never by a stopwatch.

Why not measure: a timing on a shared or busy machine flips from run to run (issue 22: two
runs 4 s apart chose fp32 and then int8, and the answers a user saw changed with them). The
choice now depends only on the provider and on what the int8 export records about itself:

* on a GPU: fp32 (the int8 graph is built and checked for CPUs);
* on a CPU: int8 when its weights are 7-bit (``quantization.weight_bits`` = 7: every CPU's
  int8 kernels then compute the same exact integers, so its answers do not depend on the CPU;
  ``trainer/int8_rewrite.py`` ``WEIGHT_LIMITS``) *and* its recorded real-music agreement with fp32
  (``provenance.agreement``, written by ``benchmarks/int8_agreement.py --write``) meets
  ``AGREEMENT_BAR``; otherwise fp32, and the reason says which fact is missing.

int8 is faster than fp32 on every CPU measured (2.5-3x with VNNI, ~1.2-1.3x on AVX2 only), so
speed does not enter the rule. The same install on the same machine therefore always makes
the same choice; ``[model] path = "fp32"`` (or ``--model fp32``) pins fp32.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agreement import AGREEMENT_BAR
from .bundled import bundled_model_path, is_auto, named_model
from .engine import Engine
from .info import METADATA_KEY
from .session import CPU, cpu_session, onnx_providers

log = logging.getLogger(__name__)

CPU_INDEPENDENT_WEIGHT_BITS = 7  # int8 weights in [-64, 64]: no int16 pair sum can overflow on x86 without VNNI


@dataclass(frozen=True)
class ModelChoice:
    """The model file a spec means, and how it was chosen (the start line, ``classify --json``)."""

    path: Path
    description: str  # "auto -> int8 (why)" or "named: FILE"


def int8_shortfalls(int8_metadata: dict[str, Any]) -> list[str]:
    """Why the int8 export's metadata does not qualify it for auto (empty: it does)."""
    provenance = int8_metadata.get("provenance", {})
    out = []
    bits = provenance.get("quantization", {}).get("weight_bits", 8)  # exports before issue 22 used the full range
    if bits != CPU_INDEPENDENT_WEIGHT_BITS:
        out.append(f"its int8 weights use {bits} bits, whose answers differ between CPUs (x86 without VNNI)")
    agreement = provenance.get("agreement")
    if not isinstance(agreement, dict):
        out.append("the int8 export records no real-music agreement check")
    else:
        out.extend(AGREEMENT_BAR.clip_shortfalls(agreement))
    return out


def choose(on_cpu: bool, int8_metadata: dict[str, Any] | None = None) -> tuple[str, str]:
    """The bundled export ``--model auto`` means for this provider, and why: the same every run (see the module doc)."""
    if not on_cpu:
        name, reason = "fp32", "a GPU runs fp32 (the int8 export is built for CPUs)"
    else:
        meta = bundled_metadata("int8") if int8_metadata is None else int8_metadata
        shortfalls = int8_shortfalls(meta)
        if shortfalls:
            name, reason = "fp32", "int8 not eligible: " + "; ".join(shortfalls)
        else:
            other = meta["provenance"]["agreement"]["non_gtzan"]
            name, reason = "int8", (f"CPU; int8 with 7-bit weights gives the same answers on every CPU and agrees with fp32 "
                                    f"on real music (top-1 {other['top1_agreement']:.3f}, mean max|dp| {other['mean_max_abs_dp']:.3f} "
                                    f"on {other.get('clips', '?')} clips)")
    log.info("model auto -> %s (%s)", name, reason)
    return name, reason


def resolve(spec: str | Path | None, device: str = "auto") -> ModelChoice:
    """The file ``spec`` (``--model`` / ``[model] path``) means on ``device``, without loading it."""
    if is_auto(spec):
        name, reason = choose(on_cpu=onnx_providers(device)[0] == CPU)
        return ModelChoice(bundled_model_path(name), f"auto -> {name} ({reason})")
    path = named_model(spec)  # type: ignore[arg-type]
    return ModelChoice(path, f"named: {path.name}")


def open_engine(spec: str | Path | None = None, device: str = "auto", threads: int = 0, batch_size: int = 1) -> Engine:
    """The model every command runs: ``spec`` resolved (``resolve``) and loaded. Raises ``ModelError`` naming the file."""
    choice = resolve(spec, device)
    return Engine(choice.path, device=device, threads=threads, batch_size=batch_size, chosen=choice.description)


def model_file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a model file: changes when the file is rewritten or replaced (a fine-tuned model
    written over the old one), which the daemon's reload looks for; None while missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def bundled_metadata(name: str) -> dict[str, Any]:
    """The ``genre_stream`` metadata JSON of a bundled export (the runtime has onnxruntime, not onnx)."""
    sess = cpu_session(bundled_model_path(name))
    return json.loads(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
