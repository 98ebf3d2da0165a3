"""The one bar an int8 export must meet against fp32 (issues 7, 15, 22).

Checked twice, on the same numbers: by ``genre-trainer export`` on its check windows (a
window's top-1, its largest |dp|), and by ``--model auto`` on the real-music record the export
carries (``provenance.agreement``, per clip, GTZAN and other recordings apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AgreementBar:
    min_top1: float = 0.97  # top-1 agreement: export check windows, and clips the model never trained on
    min_top1_trained: float = 0.99  # clips the model trained on (GTZAN)
    max_mean_abs_dp: float = 0.03  # mean over windows / clips of each one's largest |p_int8 - p_fp32| (raw)
    # Largest |dp| of any one window (raw softmax, which the uncalibrated model makes steep). 0.15 since
    # issue 22: 7-bit weights, the price of the same answers on every CPU, took the bundled int8's worst
    # window on three real clips from 0.051 to 0.111 (full-range weights: 0.186 on AVX2-only x86).
    max_window_abs_dp: float = 0.15

    def window_shortfalls(self, top1: float, mean_abs: float, max_abs: float) -> list[str]:
        """Why an export's check windows miss the bar; empty when they meet it."""
        out = []
        if top1 < self.min_top1:
            out.append(f"top-1 agreement {top1:.3f} < {self.min_top1}")
        if mean_abs > self.max_mean_abs_dp:
            out.append(f"mean |dp| {mean_abs:.4f} > {self.max_mean_abs_dp}")
        if max_abs > self.max_window_abs_dp:
            out.append(f"max |dp| {max_abs:.4f} > {self.max_window_abs_dp}")
        return out

    def clip_shortfalls(self, agreement: dict[str, Any]) -> list[str]:
        """Why a ``provenance.agreement`` record (per-clip figures by group) misses the bar; empty when it meets it."""
        out = []
        for group, minimum in (("gtzan", self.min_top1_trained), ("non_gtzan", self.min_top1)):
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
