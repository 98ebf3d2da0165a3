"""``--model auto``: which bundled export to run, decided by facts about the files, never by a stopwatch.

Why not measure: a timing on a shared or busy machine flips from run to run (issue 22: two
runs 4 s apart chose fp32 and then int8, and the answers a user saw changed with them). The
choice now depends only on the provider and on what the int8 export records about itself:

* on a GPU: fp32 (the int8 graph is built and checked for CPUs);
* on a CPU: int8 when its weights are 7-bit (``quantization.weight_bits`` = 7: every CPU's
  int8 kernels then compute the same exact integers, so its answers do not depend on the CPU;
  ``trainer/quantize.py`` ``WEIGHT_LIMITS``) *and* its recorded real-music agreement with fp32
  (``provenance.agreement``, written by ``benchmarks/int8_agreement.py --write``) meets
  ``AGREEMENT_BAR``; otherwise fp32, and the reason says which fact is missing.

int8 is faster than fp32 on every CPU measured (2.5-3x with VNNI, ~1.2-1.3x on AVX2 only), so
speed does not enter the rule. The same install on the same machine therefore always makes
the same choice; ``[model] path = "fp32"`` (or ``--model fp32``) pins fp32.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import bundled_model_path

log = logging.getLogger(__name__)

CPU_INDEPENDENT_WEIGHT_BITS = 7  # int8 weights in [-64, 64]: no int16 pair sum can overflow on x86 without VNNI


@dataclass(frozen=True)
class AgreementBar:
    """What the int8 export must keep of fp32's answers on labelled real music (issues 15, 22)."""

    min_top1_gtzan: float = 0.99  # clips the model trained on
    min_top1_other: float = 0.97  # other recordings
    max_mean_abs_dp: float = 0.03  # mean over clips of each clip's largest |p_int8 - p_fp32| (raw probabilities)

    def shortfalls(self, agreement: dict[str, Any]) -> list[str]:
        """Why ``agreement`` (the ``provenance.agreement`` record) misses the bar; empty when it meets it."""
        out = []
        for group, minimum in (("gtzan", self.min_top1_gtzan), ("non_gtzan", self.min_top1_other)):
            m = agreement.get(group)
            if not isinstance(m, dict):
                out.append(f"no {group} figures")
                continue
            if m.get("top1_agreement", 0.0) < minimum:
                out.append(f"{group} top-1 agreement {m.get('top1_agreement')} < {minimum}")
            if m.get("mean_max_abs_dp", 1.0) > self.max_mean_abs_dp:
                out.append(f"{group} mean max|dp| {m.get('mean_max_abs_dp')} > {self.max_mean_abs_dp}")
        return out


AGREEMENT_BAR = AgreementBar()


@dataclass(frozen=True)
class ModelChoice:
    """Which bundled export auto chose, and why (the start line, ``classify --json``, the dashboard)."""

    name: str  # "fp32" or "int8"
    reason: str

    @property
    def path(self) -> Path:
        return bundled_model_path(self.name)


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
        out.extend(AGREEMENT_BAR.shortfalls(agreement))
    return out


def choose(on_cpu: bool, int8_metadata: dict[str, Any] | None = None) -> ModelChoice:
    """The bundled export ``--model auto`` means for this provider: the same every run (see the module doc)."""
    if not on_cpu:
        choice = ModelChoice("fp32", "a GPU runs fp32 (the int8 export is built for CPUs)")
    else:
        meta = bundled_metadata("int8") if int8_metadata is None else int8_metadata
        shortfalls = int8_shortfalls(meta)
        if shortfalls:
            choice = ModelChoice("fp32", "int8 not eligible: " + "; ".join(shortfalls))
        else:
            other = meta["provenance"]["agreement"]["non_gtzan"]
            choice = ModelChoice("int8", f"CPU; int8 with 7-bit weights gives the same answers on every CPU and agrees with fp32 "
                                         f"on real music (top-1 {other['top1_agreement']:.3f}, mean max|dp| {other['mean_max_abs_dp']:.3f} "
                                         f"on {other.get('clips', '?')} clips)")
    log.info("model auto -> %s (%s)", choice.name, choice.reason)
    return choice


def bundled_metadata(name: str) -> dict[str, Any]:
    """The ``genre_stream`` metadata JSON of a bundled export (the runtime has onnxruntime, not onnx)."""
    import onnxruntime as ort

    from .modelinfo import METADATA_KEY

    sess = ort.InferenceSession(str(bundled_model_path(name)), providers=["CPUExecutionProvider"])
    return json.loads(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
