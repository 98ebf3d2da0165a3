"""The int8 kernels of the CPU this runs on: a known-answer probe (issue 22).

onnxruntime's uint8 x int8 kernel differs by CPU: with AVX-512 VNNI or on ARM64 it accumulates in
int32 (exact); on x86 with AVX2 only, VPMADDUBSW adds each pair of products in a saturating int16.
The probe (scripts/cpu_matrix.py, which also runs it under emulated CPUs) multiplies 255s by weights
of 127 (a pair overflows int16) and of 64 (the export's 7-bit bound: no pair can). Whatever this CPU
is, 7-bit weights must come out exact; that is what lets the bundled int8 give the same answers
everywhere. ``scripts/emulated_pytest.sh tests/test_int8_kernels.py`` runs this on an AVX2-only CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import sys

from conftest import REPO

log = logging.getLogger(__name__)


def _cpu_matrix():
    spec = importlib.util.spec_from_file_location("cpu_matrix", REPO / "scripts" / "cpu_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_seven_bit_weights_are_exact_on_this_cpus_int8_kernels() -> None:
    matrix = _cpu_matrix()
    probe = matrix.run_probe(threads=1)
    features = matrix.cpu_features()
    cases = probe["cases"]
    assert len(cases) == 6 and all(c["result"] != "error" for c in cases.values()), cases
    assert probe["all_exact_B64"], {k: v["observed"] for k, v in cases.items()}
    # full-range weights: exact with int32 accumulation, clipped pair sums on x86 without VNNI; nothing else
    assert probe["summary_B127"] in ("int32-exact", "int16-pair-saturating"), probe["summary_B127"]
    flags = set(features.get("flags", []))
    if {"avx512_vnni", "avx_vnni"} & flags or platform.machine() == "aarch64":
        assert probe["summary_B127"] == "int32-exact"
    log.info("int8 kernels here: %s (full-range weights), exact (7-bit)", probe["summary_B127"])
