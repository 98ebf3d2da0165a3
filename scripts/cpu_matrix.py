"""Do the int8 export's answers agree with fp32's on every CPU family? A matrix of emulated CPUs.

Why: onnxruntime picks its int8 kernels by CPU. On x86-64 with AVX2 but without VNNI
(Haswell .. Skylake client, many cloud VMs) the u8 x s8 kernel multiplies with VPMADDUBSW,
which adds each pair of products in *saturating int16*: with full-range weights
(|w| up to 127) two products of 255 * 127 overflow and the sum is clipped. AVX-512 VNNI
(this host) and ARM (NEON, with or without the dot-product extension) accumulate in
int32 and are exact. A model checked only here could answer differently on a Pi or an
older laptop, so this runs the runtime's own inference under QEMU user-mode CPUs:

=============  =========================================  ==================================
target         how                                        int8 u8s8 kernel expected
=============  =========================================  ==================================
native         this host (AVX-512 VNNI)                   VNNI, int32-exact
x86-haswell    qemu-x86_64 -cpu Haswell (AVX2, no VNNI)   AVX2 VPMADDUBSW, int16-pair-saturating
arm64-a72      qemu-aarch64 -cpu cortex-a72 (Pi 4)        NEON without dot product, exact
arm64-a76      qemu-aarch64 -cpu cortex-a76 (Pi 5)        NEON SDOT/UDOT, exact
=============  =========================================  ==================================

Emulated timings mean nothing; only the answers matter.

The driver (default mode) cuts the model-input windows of genre-dev's clips ONCE, natively,
with the runtime's code path (``tracks.iter_windows`` over ``audio.iter_audio``, which is
what ``tracks.analyse_file`` feeds the engine; checked against ``analyse_file`` on one
clip), saves them to ``.cpu-matrix/``, then runs this file's ``worker`` mode under each
target CPU. The worker imports only numpy, onnxruntime and ``genre_stream.model.engine`` (the
arm64 side has nothing else) and returns the raw softmax (``Engine.predict(...,
calibrated=False)``, the product's session options). Calibration is applied here, on the
host, exactly as the Engine does (``info.calibration.apply`` per window, then the mean).

Every worker also runs a KERNEL PROBE that proves which int8 arithmetic actually ran
(an emulated CPU that silently took another kernel cannot pass unnoticed): tiny ONNX
graphs written as protobuf bytes by hand (no ``onnx`` package on arm64) -- MatMulInteger
(u8 A x s8 B -> int32), QLinearConv 1x1, and DequantizeLinear->Conv->QuantizeLinear (the
QDQ form the bundled int8 export uses, fused to QLinearConv by onnxruntime) -- with
A = 255 everywhere, K = 64 and B = 127 (exact sum 255*127*64 = 2072640; pair-saturating
gives 32767*32 = 1048544) and B = 64 (7-bit weights: 2*255*64 = 32640 fits int16, exact
everywhere).

Set up once with ``scripts/cpu_matrix_setup.sh`` (QEMU, an arm64 Python sysroot and aarch64
wheels in the git-ignored ``.cpu-matrix/``). Then, from the repository root::

    .venv/bin/python scripts/cpu_matrix.py --probe-only
    .venv/bin/python scripts/cpu_matrix.py --clips 24 --out .cpu-matrix/cpu_matrix.24.json
    .venv/bin/python scripts/cpu_matrix.py                     # all clips -> benchmarks/results/cpu_matrix.json
    .venv/bin/python scripts/cpu_matrix.py --models fp32=genre_stream/model/bundled/...fp32.onnx int8=... cand=/tmp/x.int8.onnx

Other modes (used by the driver and the setup script, not by hand):
``cpu_matrix.py worker ...`` runs under a target CPU; ``cpu_matrix.py cpuinfo --out F``
writes a stand-in ``/proc/cpuinfo`` for an emulated ARM CPU (QEMU 7.2 shows the host's x86
``/proc/cpuinfo`` to aarch64 guests, on which onnxruntime's cpuinfo library segfaults).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import mmap
import os
import platform
import shlex
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cpu-matrix"
ARM64_ROOT = WORK / "arm64-root"
ARM64_SITE = WORK / "arm64-site"
ARM64_PYTHON = ARM64_ROOT / "usr" / "bin" / "python3.11"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cpu_matrix.json"
GROUPS = {"gtzan": "1", "non_gtzan": "0"}
REFERENCE = "fp32"


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One CPU to run the worker on: natively, or under a QEMU user-mode CPU model."""

    name: str
    arch: str  # "x86_64" or "aarch64"
    qemu_cpu: str | None  # None: run natively
    about: str

    @property
    def sysroot(self) -> Path | None:
        """The arm64 sysroot for ``qemu-aarch64 -L``: the shared Debian root plus this CPU's /proc/cpuinfo."""
        return WORK / f"sysroot-{self.qemu_cpu}" if self.arch == "aarch64" else None

    def command(self, worker_args: list[str]) -> list[str]:
        script = str(Path(__file__).resolve())
        if self.arch == "x86_64":
            prefix = [] if self.qemu_cpu is None else ["qemu-x86_64", "-cpu", self.qemu_cpu]
            return [*prefix, sys.executable, script, "worker", *worker_args]
        return ["qemu-aarch64", "-cpu", str(self.qemu_cpu), "-L", str(self.sysroot), str(ARM64_PYTHON), "-s", script,
                "worker", *worker_args]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONHOME", "PYTHONSTARTUP"}}
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONPATH"] = str(REPO) if self.arch == "x86_64" else f"{ARM64_SITE}:{REPO}"
        return env

    def missing_setup(self) -> str | None:
        """Why this target cannot run yet (None when it can)."""
        if self.arch == "aarch64":
            cpuinfo = self.sysroot / "proc" / "cpuinfo"  # type: ignore[operator]
            if not ARM64_PYTHON.exists() or not cpuinfo.exists():
                return f"{ARM64_PYTHON} or {cpuinfo} missing: run scripts/cpu_matrix_setup.sh"
        if self.qemu_cpu and not any((Path(d) / f"qemu-{self.arch}").exists() for d in os.environ.get("PATH", "").split(":")):
            return f"qemu-{self.arch} not found: run scripts/cpu_matrix_setup.sh"
        return None


TARGETS = {
    t.name: t
    for t in (
        Target("native", "x86_64", None, "this host, natively (AVX-512 VNNI)"),
        Target("x86-haswell", "x86_64", "Haswell", "x86-64 AVX2, no AVX-512, no VNNI"),
        Target("arm64-a72", "aarch64", "cortex-a72", "ARM64 without dot product (Raspberry Pi 4)"),
        Target("arm64-a76", "aarch64", "cortex-a76", "ARM64 with dot product (Raspberry Pi 5)"),
    )
}


# --------------------------------------------------------------------------------------------
# CPU features as seen from inside the (possibly emulated) process -- stdlib only
# --------------------------------------------------------------------------------------------


class _MachineCode:
    """A few bytes of machine code made callable through ctypes (CPUID, XGETBV, MRS MIDR_EL1).

    Executed inside the process, so under QEMU it reports the emulated CPU's answer,
    which is what onnxruntime's own CPU detection sees.
    """

    def __init__(self, code: bytes, restype: Any, *argtypes: Any) -> None:
        self._buf = mmap.mmap(-1, max(len(code), mmap.PAGESIZE), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._buf.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        if platform.machine() == "aarch64":  # a fresh page, but be correct on real hardware too
            try:
                clear = ctypes.CDLL("libgcc_s.so.1").__clear_cache
                clear(ctypes.c_void_p(address), ctypes.c_void_p(address + len(code)))
            except (OSError, AttributeError):
                pass
        self._fn: Callable[..., Any] = ctypes.CFUNCTYPE(restype, *argtypes)(address)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)  # through self, so the mapping outlives the call


# x86-64 SysV: cpuid(leaf=edi, subleaf=esi, out=rdx) -> out[0..3] = eax, ebx, ecx, edx
_CPUID = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
_XGETBV0 = bytes.fromhex("31c9" "0f01d0" "48c1e220" "4809d0" "c3")  # xgetbv(ecx=0) -> rax
_MRS_MIDR = struct.pack("<II", 0xD5380000, 0xD65F03C0)  # mrs x0, midr_el1; ret

# (leaf, subleaf, register index, bit, name) for the features onnxruntime/MLAS dispatch on.
_X86_FEATURES = [
    (1, 0, 3, 26, "sse2"), (1, 0, 2, 0, "sse3"), (1, 0, 2, 9, "ssse3"), (1, 0, 2, 19, "sse4_1"),
    (1, 0, 2, 20, "sse4_2"), (1, 0, 2, 12, "fma"), (1, 0, 2, 27, "osxsave"), (1, 0, 2, 28, "avx"),
    (1, 0, 2, 29, "f16c"), (7, 0, 1, 3, "bmi1"), (7, 0, 1, 5, "avx2"), (7, 0, 1, 8, "bmi2"),
    (7, 0, 1, 16, "avx512f"), (7, 0, 1, 17, "avx512dq"), (7, 0, 1, 28, "avx512cd"), (7, 0, 1, 30, "avx512bw"),
    (7, 0, 1, 31, "avx512vl"), (7, 0, 2, 11, "avx512_vnni"), (7, 0, 3, 22, "amx_bf16"), (7, 0, 3, 24, "amx_tile"),
    (7, 0, 3, 25, "amx_int8"), (7, 1, 0, 4, "avx_vnni"), (7, 1, 0, 5, "avx512_bf16"),
]
_AARCH64_HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                  "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
_AARCH64_HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                   "svebf16 i8mm bf16 dgh rng bti mte").split()
AT_HWCAP, AT_HWCAP2 = 16, 26


def _auxv() -> dict[int, int]:
    """The process's auxiliary vector (QEMU user mode emulates /proc/self/auxv for its guest)."""
    data = Path("/proc/self/auxv").read_bytes()
    pairs = struct.iter_unpack("<QQ", data[: len(data) // 16 * 16])
    return {key: value for key, value in pairs if key}


def _proc_cpuinfo_field(names: tuple[str, ...]) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return None


def x86_features() -> dict[str, Any]:
    """CPUID as executed in this process, plus what /proc/cpuinfo says (the host's, under qemu-user)."""
    cpuid = _MachineCode(_CPUID, None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))

    def leaf(a: int, c: int = 0) -> list[int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid(a, c, out)
        return list(out)

    max_leaf = leaf(0)[0]
    regs = {(a, c): leaf(a, c) for a, c in {(1, 0), (7, 0), (7, 1)} if a <= max_leaf}
    flags = [name for a, c, r, bit, name in _X86_FEATURES if (a, c) in regs and regs[(a, c)][r] >> bit & 1]
    brand = b"".join(struct.pack("<4I", *leaf(0x80000002 + i)) for i in range(3)) if leaf(0x80000000)[0] >= 0x80000004 else b""
    xcr0 = _MachineCode(_XGETBV0, ctypes.c_uint64)() if "osxsave" in flags else 0
    relevant = {name for *_, name in _X86_FEATURES}
    proc = _proc_cpuinfo_field(("flags",)) or ""
    return {
        "source": "CPUID/XGETBV executed inside the process (what onnxruntime's dispatch sees)",
        "vendor": struct.pack("<3I", *(leaf(0)[i] for i in (1, 3, 2))).decode(errors="replace"),
        "brand": brand.rstrip(b"\0").decode(errors="replace").strip(),
        "flags": flags,
        "xcr0": hex(xcr0),
        "os_saves_avx_state": bool(xcr0 & 0b110 == 0b110),
        "os_saves_avx512_state": bool(xcr0 & 0b11100110 == 0b11100110),
        "proc_cpuinfo_flags": sorted(relevant & set(proc.split())),
        "proc_cpuinfo_note": "/proc/cpuinfo is read from the host kernel even under qemu-user: not the emulated CPU",
    }


def aarch64_features() -> dict[str, Any]:
    """AT_HWCAP/AT_HWCAP2 of this process (set by QEMU from -cpu), MIDR_EL1, and /proc/cpuinfo's Features."""
    aux = _auxv()
    hwcap, hwcap2 = aux.get(AT_HWCAP, 0), aux.get(AT_HWCAP2, 0)
    names = [n for i, n in enumerate(_AARCH64_HWCAP) if hwcap >> i & 1] + [n for i, n in enumerate(_AARCH64_HWCAP2) if hwcap2 >> i & 1]
    midr: int | None = None
    sysfs = Path("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1")  # real ARM kernels
    if sysfs.exists():
        midr = int(sysfs.read_text(), 16)
    elif hwcap >> _AARCH64_HWCAP.index("cpuid") & 1:  # the kernel (or QEMU) emulates EL0 reads of ID registers
        midr = int(_MachineCode(_MRS_MIDR, ctypes.c_uint64)())
    return {
        "source": "AT_HWCAP/AT_HWCAP2 from /proc/self/auxv (what onnxruntime's cpuinfo uses for features)",
        "hwcap": hex(hwcap),
        "hwcap2": hex(hwcap2),
        "features": names,
        "asimddp_dotprod": bool(hwcap >> 20 & 1),
        "i8mm": bool(hwcap2 >> 13 & 1),
        "midr_el1": None if midr is None else hex(midr),
        "proc_cpuinfo_features": _proc_cpuinfo_field(("Features",)),
        "proc_cpuinfo_note": "under QEMU 7.2 /proc/cpuinfo is the sysroot's stand-in written by 'cpu_matrix.py cpuinfo' "
                             "from this same HWCAP/MIDR (QEMU would otherwise show the host's x86 file)",
    }


def cpu_features() -> dict[str, Any]:
    machine = platform.machine()
    if machine in {"x86_64", "AMD64"}:
        return x86_features()
    if machine == "aarch64":
        return aarch64_features()
    return {"source": f"no feature reader for {machine}"}


def cpuinfo_main(argv: list[str]) -> int:
    """Write a Linux-arm64-style /proc/cpuinfo describing the CPU this process runs on (under qemu-aarch64)."""
    parser = argparse.ArgumentParser(prog="cpu_matrix.py cpuinfo", description=cpuinfo_main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if platform.machine() != "aarch64":
        sys.exit("cpuinfo: run me under qemu-aarch64 -cpu MODEL")
    f = aarch64_features()
    midr = int(f["midr_el1"] or "0", 16)
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {' '.join(f['features'])}\nCPU implementer\t: {midr >> 24 & 0xFF:#x}\n"
             f"CPU architecture: 8\nCPU variant\t: {midr >> 20 & 0xF:#x}\nCPU part\t: {midr >> 4 & 0xFFF:#05x}\n"
             f"CPU revision\t: {midr & 0xF}\n\n")
    text = "".join(f"processor\t: {i}\n{block}" for i in range(os.cpu_count() or 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}: MIDR {f['midr_el1']}, features: {' '.join(f['features'])}")
    return 0


# --------------------------------------------------------------------------------------------
# Kernel probe: ONNX models written as protobuf bytes (the arm64 side has no `onnx` package)
# --------------------------------------------------------------------------------------------

UINT8, INT8, INT32, FLOAT = 2, 3, 6, 1  # onnx.TensorProto.DataType
PROBE_K, PROBE_M, PROBE_N, PROBE_HW = 64, 4, 8, 4
PROBE_A = 255


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, dtype: int, dims: list[int], raw: bytes) -> bytes:
    """onnx.TensorProto: dims=1, data_type=2, name=8, raw_data=9."""
    return b"".join(_field_int(1, d) for d in dims) + _field_int(2, dtype) + _field_bytes(8, name) + _field_bytes(9, raw)


def _value_info(name: str, dtype: int, dims: list[int]) -> bytes:
    """onnx.ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2: {dim=1: {dim_value=1}}}}}."""
    shape = b"".join(_field_bytes(1, _field_int(1, d)) for d in dims)
    return _field_bytes(1, name) + _field_bytes(2, _field_bytes(1, _field_int(1, dtype) + _field_bytes(2, shape)))


def _node(op: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    """onnx.NodeProto: input=1, output=2, name=3, op_type=4."""
    return (b"".join(_field_bytes(1, i) for i in inputs) + b"".join(_field_bytes(2, o) for o in outputs)
            + _field_bytes(3, name) + _field_bytes(4, op))


def _model(nodes: list[bytes], inits: list[bytes], inputs: list[bytes], outputs: list[bytes]) -> bytes:
    """onnx.ModelProto{ir_version=1, producer_name=2, graph=7, opset_import=8}; GraphProto{node=1, name=2, initializer=5, input=11, output=12}."""
    graph = (b"".join(_field_bytes(1, n) for n in nodes) + _field_bytes(2, "kernel_probe")
             + b"".join(_field_bytes(5, t) for t in inits) + b"".join(_field_bytes(11, v) for v in inputs)
             + b"".join(_field_bytes(12, v) for v in outputs))
    return _field_int(1, 8) + _field_bytes(2, "cpu_matrix.py") + _field_bytes(7, graph) + _field_bytes(8, _field_int(2, 17))


def _scalar_f(name: str, value: float) -> bytes:
    return _tensor(name, FLOAT, [], struct.pack("<f", value))


def probe_expectations(b: int) -> dict[str, int]:
    """Exact int32 sum vs the sum AVX2's VPMADDUBSW gives (each adjacent pair clipped to int16)."""
    pair = min(2 * PROBE_A * b, 32767)
    return {"exact": PROBE_A * b * PROBE_K, "pair_saturating": pair * (PROBE_K // 2)}


def probe_models(b: int) -> dict[str, tuple[bytes, str, list[int], float]]:
    """The probe graphs for weight value ``b``: name -> (model bytes, input name, input shape, output scale; 1.0: int32 out)."""
    exact = probe_expectations(b)["exact"]
    y_scale = exact / 250.0  # the exact sum requantizes to 250; a pair-saturating sum to about 126
    k = PROBE_K
    matmul = _model(
        [_node("MatMulInteger", ["A", "B"], ["Y"], "mmi")],
        [_tensor("B", INT8, [k, PROBE_N], bytes([b]) * (k * PROBE_N))],
        [_value_info("A", UINT8, [PROBE_M, k])], [_value_info("Y", INT32, [PROBE_M, PROBE_N])])
    conv_inits = [
        _tensor("W", INT8, [PROBE_N, k, 1, 1], bytes([b]) * (PROBE_N * k)), _scalar_f("x_scale", 1.0),
        _tensor("x_zp", UINT8, [], b"\0"), _scalar_f("w_scale", 1.0), _tensor("w_zp", INT8, [], b"\0"),
        _scalar_f("y_scale", y_scale), _tensor("y_zp", UINT8, [], b"\0"),
    ]
    x_in = [_value_info("X", UINT8, [1, k, PROBE_HW, PROBE_HW])]
    y_out = [_value_info("Y", UINT8, [1, PROBE_N, PROBE_HW, PROBE_HW])]
    qlinear = _model([_node("QLinearConv", ["X", "x_scale", "x_zp", "W", "w_scale", "w_zp", "y_scale", "y_zp"], ["Y"], "qconv")],
                     conv_inits, x_in, y_out)
    qdq = _model([
        _node("DequantizeLinear", ["X", "x_scale", "x_zp"], ["Xf"], "dq_x"),
        _node("DequantizeLinear", ["W", "w_scale", "w_zp"], ["Wf"], "dq_w"),
        _node("Conv", ["Xf", "Wf"], ["Yf"], "conv"),
        _node("QuantizeLinear", ["Yf", "y_scale", "y_zp"], ["Y"], "q_y"),
    ], conv_inits, x_in, y_out)
    return {
        "MatMulInteger": (matmul, "A", [PROBE_M, k], 1.0),
        "QLinearConv_1x1": (qlinear, "X", [1, k, PROBE_HW, PROBE_HW], y_scale),
        "QDQ_Conv_1x1": (qdq, "X", [1, k, PROBE_HW, PROBE_HW], y_scale),
    }


def run_probe(threads: int) -> dict[str, Any]:
    """Run every probe graph with the product's session options; say which int8 arithmetic each one did."""
    import numpy as np
    import onnxruntime as ort

    from genre_stream.model.session import session_options

    results: dict[str, Any] = {}
    for b in (127, 64):
        expect = probe_expectations(b)
        for name, (model, input_name, shape, scale) in probe_models(b).items():
            entry: dict[str, Any] = {"weights": b, "K": PROBE_K, "expected_exact": expect["exact"],
                                     "expected_pair_saturating": expect["pair_saturating"]}
            try:
                sess = ort.InferenceSession(model, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
                (y,) = sess.run(None, {input_name: np.full(shape, PROBE_A, dtype=np.uint8)})
            except Exception as exc:  # report, do not hide: a probe that cannot run is a finding
                entry.update(result="error", error=f"{type(exc).__name__}: {exc}")
                results[f"{name}@B={b}"] = entry
                continue
            values = sorted({int(v) for v in np.asarray(y).ravel()})  # one value everywhere, unless a kernel is odd
            if scale == 1.0:  # MatMulInteger: the int32 accumulators themselves
                want_exact, want_sat = expect["exact"], expect["pair_saturating"]
            else:  # requantized to uint8 with y_scale: the expectations requantized the same way
                want_exact, want_sat = (int(min(255, round(expect[k] / scale))) for k in ("exact", "pair_saturating"))
                entry["accumulator_estimate"] = [round(v * scale) for v in values]
            entry.update(observed=values, expected_output_exact=want_exact, expected_output_pair_saturating=want_sat,
                         result="int32-exact" if values == [want_exact] else
                         "int16-pair-saturating" if values == [want_sat] else "unexpected")
            results[f"{name}@B={b}"] = entry
    verdicts = {k: v["result"] for k, v in results.items()}
    at127 = {v for k, v in verdicts.items() if k.endswith("@B=127")}
    summary = next(iter(at127)) if len(at127) == 1 else "mixed: " + ", ".join(f"{k}={v}" for k, v in verdicts.items() if k.endswith("@B=127"))
    return {"summary_B127": summary, "all_exact_B64": all(v == "int32-exact" for k, v in verdicts.items() if k.endswith("@B=64")),
            "cases": results}


# --------------------------------------------------------------------------------------------
# Worker: runs under the target CPU; numpy + onnxruntime + genre_stream.model.engine only
# --------------------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """Report this CPU, run the kernel probe, and (unless --probe-only) the models' raw probabilities."""
    parser = argparse.ArgumentParser(prog="cpu_matrix.py worker", description=worker_main.__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--out", type=Path, required=True, help="prefix: writes PREFIX.json and PREFIX.npz")
    parser.add_argument("--windows", type=Path, help=".npz with 'windows' (N, frames, n_mels) float32")
    parser.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-only", action="store_true")
    parser.add_argument("--chunk", type=int, default=8, help="windows per progress line")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import numpy as np
    import onnxruntime as ort

    info: dict[str, Any] = {
        "target": args.target,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpu": cpu_features(),
    }
    build_info = getattr(ort, "get_build_info", None)
    if callable(build_info):
        info["onnxruntime_build"] = build_info()
    print(f"[{args.target}] {info['machine']} python {info['python']} onnxruntime {info['onnxruntime']}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    info["probe"] = run_probe(args.threads)
    info["probe_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[{args.target}] probe: {info['probe']['summary_B127']} at B=127, all exact at B=64: {info['probe']['all_exact_B64']}",
          file=sys.stderr, flush=True)

    arrays: dict[str, Any] = {}
    info["models"] = {}
    if not args.probe_only:
        from genre_stream.model.choice import open_engine

        windows = np.load(args.windows)["windows"]
        for spec in args.models:
            name, _, path = spec.partition("=")
            engine = open_engine(path, device="cpu", threads=args.threads)
            t0 = time.perf_counter()
            probs = []
            for i in range(0, len(windows), args.chunk):
                probs.append(engine.predict(windows[i : i + args.chunk], calibrated=False).probabilities)
                print(f"[{args.target}] {name}: {min(i + args.chunk, len(windows))}/{len(windows)} windows "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            arrays[name] = np.concatenate(probs) if probs else np.zeros((0, len(engine.labels)), np.float32)
            info["models"][name] = {"file": str(path), "sha256": _sha256(Path(path)), "precision": engine.precision,
                                    "providers": engine.providers,
                                    "batch_size": engine.batch_size, "seconds": round(time.perf_counter() - t0, 1)}
    info["worker_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out.with_suffix(".npz"), **arrays)
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Driver (host side)
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(name: str, path: Path) -> Path:
    """A content-addressed copy in .cpu-matrix/models/: every worker reads the same bytes even if the
    file is rebuilt while the (long) emulated runs go on."""
    digest = _sha256(path)
    copy = WORK / "models" / f"{name}-{digest[:12]}.onnx"
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(".tmp")
        tmp.write_bytes(path.read_bytes())
        tmp.rename(copy)
    return copy


def weight_range(path: Path) -> dict[str, Any]:
    """Largest |int8 weight| and largest same-sign adjacent pair |w1 + w2| along K (what VPMADDUBSW adds in int16).

    With u8 activations up to 255 a pair overflows int16 only when |w1 + w2| > 128, so a model whose pairs
    stay <= 128 computes the same integers on every kernel (7-bit weights, |w| <= 64, guarantee it).
    Host-side only (needs ``onnx``).
    """
    try:
        import numpy as np
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return {"note": "onnx not installed here"}
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == INT8]
    weights = [w.reshape(w.shape[0], -1).astype(np.int64) for w in weights if w.ndim >= 2]
    if not weights:
        return {"int8_weight_tensors": 0}
    worst_pair = 0
    for w in weights:
        k = w.shape[1] + w.shape[1] % 2
        padded = np.zeros((w.shape[0], k), np.int64)
        padded[:, : w.shape[1]] = w
        a, b = padded[:, 0::2], padded[:, 1::2]
        pair = np.where(np.sign(a) == np.sign(b), np.abs(a + b), np.maximum(np.abs(a), np.abs(b)))
        worst_pair = max(worst_pair, int(pair.max()))
    return {"int8_weight_tensors": len(weights), "max_abs_weight": int(max(np.abs(w).max() for w in weights)),
            "max_adjacent_pair_sum": worst_pair, "pair_can_overflow_int16": worst_pair * 255 > 32767}


def select_clips(rows: list[dict[str, str]], n: int | None) -> list[int]:
    """Row indices: all, or ``n`` spread evenly over each group (half per group; the rest to the other when one runs short)."""
    if not n or n >= len(rows):
        return list(range(len(rows)))
    import numpy as np

    groups = {g: [i for i, r in enumerate(rows) if r["is_gtzan"] == flag] for g, flag in GROUPS.items()}
    want = {"gtzan": n - n // 2, "non_gtzan": n // 2}
    for g, other in (("gtzan", "non_gtzan"), ("non_gtzan", "gtzan")):
        short = want[g] - len(groups[g])
        if short > 0:
            want[g] -= short
            want[other] += short
    picked: list[int] = []
    for g, members in groups.items():
        if want[g] > 0:
            picked += [members[int(j)] for j in np.linspace(0, len(members) - 1, want[g]).round().astype(int)]
    return sorted(set(picked))


def cut_windows(labels_csv: Path, rows: list[dict[str, str]], picked: list[int], models: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    """The normalised windows the engine gets for each picked clip, computed once (cached in .cpu-matrix/)."""
    import numpy as np

    from genre_stream.audio.decode import iter_audio
    from genre_stream.model.choice import open_engine
    from genre_stream.audio.frontend import MelFrontend
    from genre_stream.tracks import TRACK_HOP_SECONDS
    from genre_stream.tracks.analysis import analyse_file, iter_windows

    engines = {name: open_engine(path, device="cpu", threads=2) for name, path in models.items()}
    frontends = {name: e.info.frontend.to_dict() for name, e in engines.items()}
    if len({json.dumps(f, sort_keys=True) for f in frontends.values()}) != 1:
        sys.exit(f"the models' frontends differ, so their windows would too: {frontends}")
    config = engines[REFERENCE].info.frontend
    normalization = engines[REFERENCE].info.normalization
    if {e.info.normalization for e in engines.values()} != {normalization}:
        sys.exit(f"the models' normalisations differ, so their windows would too: {[e.info.normalization for e in engines.values()]}")
    paths = [labels_csv.parent / rows[i]["path"] for i in picked]
    key = json.dumps({"clips": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths], "frontend": config.to_dict(),
                      "normalization": normalization, "hop": TRACK_HOP_SECONDS,
                      "code": [_sha256(REPO / "genre_stream" / f)
                               for f in ("tracks/analysis.py", "audio/frontend.py", "audio/normalization.py", "audio/decode.py", "audio/resample.py")]},
                     sort_keys=True)
    cache = WORK / f"windows-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    meta: dict[str, Any] = {"file": str(cache.relative_to(REPO)), "hop_seconds": TRACK_HOP_SECONDS, "frontend": config.to_dict(),
                            "normalization": normalization}
    if not cache.exists():
        t0 = time.perf_counter()
        frontend = MelFrontend(config)
        windows, clip_of = [], []
        for k, path in enumerate(paths):
            for _, _, w in iter_windows(iter_audio(path, config.sample_rate), frontend, TRACK_HOP_SECONDS, normalization):
                windows.append(w.astype(np.float32))
                clip_of.append(k)
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, windows=np.stack(windows), clip=np.array(clip_of), paths=np.array([rows[i]["path"] for i in picked]))
        tmp.rename(cache)
        print(f"cut {len(windows)} windows of {len(paths)} clips natively in {time.perf_counter() - t0:.0f} s -> {cache.name}")
    data = np.load(cache)
    # The windows must be exactly what classify feeds the engine: compare with analyse_file on the first clip.
    engine = engines[REFERENCE]
    first = data["windows"][data["clip"] == 0]
    via_classify = np.stack([w.probabilities for w in analyse_file(paths[0], engine).windows])
    via_windows = engine.predict(first, calibrated=True).probabilities
    diff = float(np.abs(via_classify - via_windows).max()) if via_classify.shape == via_windows.shape else float("inf")
    meta["check_vs_analyse_file"] = {"clip": rows[picked[0]]["path"], "windows": int(len(first)), "max_abs_dp": diff}
    if diff > 1e-6:
        sys.exit(f"windows cut here do not reproduce tracks.analyse_file on {paths[0]} (max |dp| {diff})")
    meta["windows"] = int(len(data["windows"]))
    return cache, meta


def run_target(target: Target, args: argparse.Namespace, windows: Path | None, models: dict[str, Path]) -> dict[str, Any]:
    """Run the worker under ``target``; its stdout/stderr go to .cpu-matrix/runs/TARGET.log (and progress here)."""
    runs = WORK / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    prefix = runs / target.name
    for suffix in (".json", ".npz"):
        prefix.with_suffix(suffix).unlink(missing_ok=True)
    worker_args = ["--target", target.name, "--out", str(prefix), "--threads", str(args.threads)]
    if args.probe_only:
        worker_args.append("--probe-only")
    else:
        run = {n: p for n, p in models.items() if not (n == REFERENCE and args.reference_target == "native" and target.name != "native")}
        worker_args += ["--windows", str(windows), "--models", *[f"{n}={p}" for n, p in run.items()]]
    cmd = target.command(worker_args)
    if args.nice:
        cmd = ["nice", "-n", str(args.nice), *cmd]
    print(f"\n== {target.name}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    log_lines: list[str] = []
    with open(prefix.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, env=target.env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            log_lines.append(line.rstrip())
            if line.startswith(f"[{target.name}]"):
                print("   " + line.rstrip(), flush=True)
        rc = proc.wait()
    wall = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {"about": target.about, "command": shlex.join(cmd), "wall_seconds": wall, "returncode": rc}
    qemu_warnings = [ln for ln in log_lines if ln.startswith("qemu") or "warning: TCG doesn't support" in ln]
    if qemu_warnings:
        result["qemu_messages"] = sorted(set(qemu_warnings))[:20]
    if rc != 0 or not prefix.with_suffix(".json").exists():
        result["error"] = "\n".join(log_lines[-25:])
        print(f"   FAILED (rc {rc}); see {prefix.with_suffix('.log')}", flush=True)
        return result
    result.update(json.loads(prefix.with_suffix(".json").read_text()))
    print(f"   done in {wall:.0f} s", flush=True)
    return result


def group_figures(cand: list[Any], ref: list[Any], targets: Any, names: list[str], labels: list[str]) -> dict[str, Any]:
    """Track top-1 agreement and per-clip max |dp| of ``cand`` vs ``ref`` (lists of (windows, classes) per clip)."""
    from trainer.metrics import agreement_figures

    return agreement_figures(cand, ref, targets, names, labels)


def analyse(results: dict[str, dict[str, Any]], windows_npz: Path, rows: list[dict[str, str]], picked: list[int],
            models: dict[str, Path]) -> None:
    """Add per-target agreement (each model vs the same target's fp32) and cross-target comparisons vs native."""
    import numpy as np

    from genre_stream.model.choice import open_engine

    data = np.load(windows_npz)
    clip_of = data["clip"]
    engines = {name: open_engine(path, device="cpu", threads=1) for name, path in models.items()}
    labels = engines[REFERENCE].labels
    index = {label: i for i, label in enumerate(labels)}
    names = [rows[i]["path"] for i in picked]
    targets_all = np.array([index[rows[i]["label"]] for i in picked])
    members = {g: [k for k, i in enumerate(picked) if rows[i]["is_gtzan"] == flag] for g, flag in GROUPS.items()}

    def per_clip(p: Any) -> list[Any]:
        return [p[clip_of == k] for k in range(len(picked))]

    probs: dict[str, dict[str, dict[str, list[Any]]]] = {}  # target -> model -> kind -> per-clip arrays
    for tname, res in results.items():
        npz = WORK / "runs" / f"{tname}.npz"
        if "error" in res or not npz.exists():
            continue
        raw = np.load(npz)
        probs[tname] = {}
        for m in models:
            if m not in raw.files:
                continue
            cal = engines[m].info.calibration
            probs[tname][m] = {"raw": per_clip(raw[m]), "calibrated": per_clip(cal.apply(raw[m]) if cal is not None else raw[m])}
    for tname, by_model in probs.items():
        agreement: dict[str, Any] = {}
        ref = by_model.get(REFERENCE) or probs.get("native", {}).get(REFERENCE)
        if ref is None:
            continue
        results[tname]["reference"] = f"{'own' if REFERENCE in by_model else 'native'} {REFERENCE}"
        for m in models:
            if m == REFERENCE or m not in by_model:
                continue
            agreement[m] = {kind: {g: group_figures([by_model[m][kind][k] for k in ks], [ref[kind][k] for k in ks],
                                                    targets_all[ks], [names[k] for k in ks], labels)
                                   for g, ks in members.items() if ks}
                            for kind in ("raw", "calibrated")}
            try:
                from genre_stream.model.agreement import AGREEMENT_BAR

                shortfalls = AGREEMENT_BAR.clip_shortfalls(agreement[m]["raw"])
                agreement[m]["meets_autoselect_bar"], agreement[m]["shortfalls"] = not shortfalls, shortfalls
            except Exception as exc:  # autoselect may be mid-edit; the figures stand without the verdict
                agreement[m]["meets_autoselect_bar"] = f"not evaluated ({type(exc).__name__})"
        results[tname]["agreement_vs_fp32"] = agreement
        if "native" in probs and tname != "native":
            cross = {}
            for m in models:
                if m not in by_model or m not in probs["native"]:
                    continue
                mine, nat = by_model[m]["raw"], probs["native"][m]["raw"]
                dp = max(float(np.abs(a - b).max()) for a, b in zip(mine, nat))
                same = np.mean([a.mean(0).argmax() == b.mean(0).argmax() for a, b in zip(mine, nat)])
                cross[m] = {"max_abs_dp_raw": float(f"{dp:.3g}"), "bit_identical": all(np.array_equal(a, b) for a, b in zip(mine, nat)),
                            "track_top1_same": round(float(same), 4)}
            results[tname]["vs_native_same_model"] = cross


def print_tables(report: dict[str, Any]) -> None:
    """A readable summary of the JSON."""
    print("\nKERNEL PROBE (u8 A=255 x s8 B, K=64)")
    print(f"{'target':12s} {'B=127 (full-range weights)':28s} {'B=64 exact':10s} cpu")
    for t, r in report["targets"].items():
        if "probe" not in r:
            print(f"{t:12s} FAILED: {r.get('error', '')[-200:]}")
            continue
        cpu = r["cpu"]
        if "flags" in cpu:
            feats = " ".join(f for f in cpu["flags"] if f in {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})
        else:
            feats = f"asimddp={'yes' if cpu.get('asimddp_dotprod') else 'no'} i8mm={'yes' if cpu.get('i8mm') else 'no'} midr={cpu.get('midr_el1')}"
        cases = r["probe"]["cases"]
        raw127 = cases.get("MatMulInteger@B=127", {}).get("observed")
        print(f"{t:12s} {r['probe']['summary_B127']:28s} {str(r['probe']['all_exact_B64']):10s} {feats}  (MatMulInteger@127 = {raw127})")
    if not any("agreement_vs_fp32" in r for r in report["targets"].values()):
        return
    print(f"\nAGREEMENT vs fp32 -- {report.get('reference')} (track top-1; per-clip max|dp|: mean / max)")
    for m, info in report["models"].items():
        if "max_abs_weight" in info:
            print(f"  {m}: max |w| {info['max_abs_weight']}, largest same-sign adjacent pair {info['max_adjacent_pair_sum']} "
                  f"(int16 overflow possible: {info['pair_can_overflow_int16']})")
    w = max(8, *(len(m) for m in report["models"]))
    print(f"{'target':12s} {'model':{w}s} {'probs':10s} {'group':9s} {'clips':>5s} {'top1':>6s} {'mean':>7s} {'max':>7s}  wall")
    for t, r in report["targets"].items():
        for m, a in r.get("agreement_vs_fp32", {}).items():
            for kind in ("raw", "calibrated"):
                for g, f in a[kind].items():
                    print(f"{t:12s} {m:{w}s} {kind:10s} {g:9s} {f['clips']:5d} {f['top1_agreement']:6.3f} {f['mean_max_abs_dp']:7.4f} "
                          f"{f['max_max_abs_dp']:7.4f}  {r['wall_seconds']:.0f} s")
            print(f"{'':12s} {m:{w}s} meets autoselect bar (raw): {a.get('meets_autoselect_bar')} {a.get('shortfalls') or ''}")
    print("\nSAME MODEL vs native (raw probabilities, all windows)")
    for t, r in report["targets"].items():
        for m, c in r.get("vs_native_same_model", {}).items():
            print(f"{t:12s} {m:{w}s} max|dp| {c['max_abs_dp_raw']:.3g}  bit-identical {c['bit_identical']}  track top-1 same {c['track_top1_same']:.3f}")


def driver_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--models", nargs="+", metavar="NAME=PATH",
                        help=f"models to run (default: the two bundled exports); one must be named {REFERENCE!r}, the reference")
    parser.add_argument("--clips", type=int, help="use N clips spread evenly over both groups (default: all; emulation is slow)")
    parser.add_argument("--labels", type=Path, help="labels.csv of the clips (default: ../shared/audio/genre-dev/labels.csv)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads in each worker (default 2)")
    parser.add_argument("--nice", type=int, default=10, help="run the workers under nice -n N (0: off; default 10)")
    parser.add_argument("--probe-only", action="store_true", help="only the kernel probe and CPU features, no models")
    parser.add_argument("--reference-target", choices=("same", "native"), default="same",
                        help="compare each target's models with its own fp32 (default), or with native fp32 and skip "
                             "running fp32 under emulation (about 4x faster; fp32 differs across CPUs by ~1e-6)")
    parser.add_argument("--out", type=Path, help=f"JSON report (default: {DEFAULT_OUT.relative_to(REPO)}; "
                                                 "with --probe-only: .cpu-matrix/probe.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    started = time.perf_counter()
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    from genre_stream.model.bundled import bundled_model_path

    models: dict[str, Path] = {}  # name -> snapshot the workers read
    sources: dict[str, Path] = {}
    for spec in args.models or [f"fp32={bundled_model_path('fp32')}", f"int8={bundled_model_path('int8')}"]:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--models wants NAME=PATH, got {spec!r}")
        source = Path(path).resolve()
        if not source.is_file():
            parser.error(f"{source}: not found")
        sources[name] = source
        models[name] = snapshot(name, source)
    if REFERENCE not in models:
        parser.error(f"--models must include the reference {REFERENCE}=PATH")
    if args.reference_target == "native" and not args.probe_only and "native" not in names:
        parser.error("--reference-target native needs the native target in --targets")
    out = args.out or (WORK / "probe.json" if args.probe_only else DEFAULT_OUT)

    report: dict[str, Any] = {
        "what": "int8 vs fp32 answers of the runtime under emulated CPUs (scripts/cpu_matrix.py); emulated timings mean nothing",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "models": {n: {"file": str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p), "sha256": _sha256(models[n]),
                       "snapshot": str(models[n].relative_to(REPO)), **weight_range(models[n])} for n, p in sources.items()},
        "reference": "each target's own fp32" if args.reference_target == "same"
                     else "native fp32 for every target (fp32 not run under emulation: it differs across CPUs by ~1e-6)",
        "probe_design": {"A": PROBE_A, "K": PROBE_K, "B127": probe_expectations(127), "B64": probe_expectations(64),
                         "graphs": ["MatMulInteger u8xs8->int32", "QLinearConv 1x1 u8/s8->u8 (exact -> 250)",
                                    "DequantizeLinear->Conv->QuantizeLinear 1x1 (fused by onnxruntime, as in the int8 export)"]},
        "targets": {},
    }
    try:
        import onnx

        for b in (127, 64):
            for pname, (model, *_) in probe_models(b).items():
                onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
        report["probe_design"]["onnx_checker"] = f"passed (onnx {onnx.__version__})"
    except ImportError:
        report["probe_design"]["onnx_checker"] = "onnx not installed here"

    windows: Path | None = None
    rows: list[dict[str, str]] = []
    picked: list[int] = []
    if not args.probe_only:
        from genre_dev import DEFAULT_LABELS, read_labels

        labels_csv = args.labels or DEFAULT_LABELS
        rows = read_labels(labels_csv)
        picked = select_clips(rows, args.clips)
        windows, meta = cut_windows(labels_csv, rows, picked, models)
        report["clips"] = {"labels_csv": f"{labels_csv.parent.name}/{labels_csv.name}", "picked": len(picked),
                           "of": len(rows), **{g: sum(rows[i]["is_gtzan"] == f for i in picked) for g, f in GROUPS.items()},
                           "windows": meta}
        print(f"{len(picked)} clips, {meta['windows']} windows; windows vs analyse_file: max |dp| {meta['check_vs_analyse_file']['max_abs_dp']:.2e}")
    for name in names:
        target = TARGETS[name]
        why = target.missing_setup()
        if why:
            report["targets"][name] = {"about": target.about, "error": why}
            print(f"\n== {name}: skipped: {why}")
            continue
        report["targets"][name] = run_target(target, args, windows, models)
    if not args.probe_only and windows is not None:
        analyse(report["targets"], windows, rows, picked, models)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\nwrote {out} ({report['wall_seconds']:.0f} s)")
    return 1 if any("error" in r for r in report["targets"].values()) else 0


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    if argv[:1] == ["cpuinfo"]:
        return cpuinfo_main(argv[1:])
    return driver_main(argv)


if __name__ == "__main__":
    sys.exit(main())
