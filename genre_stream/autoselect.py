"""``--model auto``: the bundled int8 export where it is faster here and keeps fp32's answers, else fp32.

Why measure instead of deciding per architecture: whether ONNX Runtime's int8
kernels beat its fp32 ones depends on the CPU (VNNI / dot-product instructions),
the thread count and the onnxruntime build; on x86 with VNNI int8 is ~2.5x
faster per window, elsewhere it can be slower. So on first use both bundled
exports are timed for a few windows (2.4 s on the development VM) and the choice is
cached, keyed by what it depends on (both files' sha256, onnxruntime version,
machine, thread count), so later runs reuse it at no cost.

Speed alone is not enough: int8 is picked only where the int8 export carries a
real-music agreement check (``provenance.agreement``, written by
``benchmarks/int8_agreement.py --write``) that meets ``AGREEMENT_BAR``. When it
does not, auto means fp32 and the log says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_path
from .models import bundled_model_path

log = logging.getLogger(__name__)

CACHE_FILE = "model-choice.json"
MIN_SPEEDUP = 1.25  # int8 must be this much faster per window to be worth its (small) answer differences
TIMED_CALLS = 4  # per export and round; a 30 s window takes 15-150 ms
ROUNDS = 2  # fp32, int8, fp32, int8: a load change hits both


@dataclass(frozen=True)
class AgreementBar:
    """What the int8 export must keep of fp32's answers on labelled real music (issue 15)."""

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


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/genre-stream`` (``~/.cache/genre-stream``): where one-off commands keep the choice."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genre-stream"


@dataclass(frozen=True)
class ModelChoice:
    """Which bundled export auto chose, and why (shown in the log, the stats and /api/sources)."""

    name: str  # "fp32" or "int8"
    reason: str
    fp32_ms: float | None = None
    int8_ms: float | None = None
    cached: bool = False

    @property
    def path(self) -> Path:
        return bundled_model_path(self.name)


def int8_shortfalls(int8_metadata: dict[str, Any]) -> list[str]:
    """Why the int8 export's metadata does not qualify it for auto (empty: it does)."""
    agreement = int8_metadata.get("provenance", {}).get("agreement")
    if not isinstance(agreement, dict):
        return ["the int8 export records no real-music agreement check"]
    return AGREEMENT_BAR.shortfalls(agreement)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(threads: int) -> dict[str, Any]:
    """Everything the speed comparison depends on; a different key means measuring again."""
    import onnxruntime as ort

    return {
        "fp32": _sha256(bundled_model_path("fp32")),
        "int8": _sha256(bundled_model_path("int8")),
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "threads": threads,
    }


def time_exports(threads: int) -> tuple[float, float]:
    """Median ms per 30 s window of the fp32 and int8 exports, one session alive at a time."""
    import onnxruntime as ort

    from .engine import session_options

    window = np.random.default_rng(0).standard_normal((1, 647, 128)).astype(np.float32)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(ROUNDS):
        for name in times:
            sess = ort.InferenceSession(str(bundled_model_path(name)), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: window}
            sess.run(None, feed)  # warm-up: first-run allocations
            for _ in range(TIMED_CALLS):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[name].append(1000 * (time.perf_counter() - t0))
            del sess
    return statistics.median(times["fp32"]), statistics.median(times["int8"])


def _read_cache(path: Path, key: dict[str, Any]) -> ModelChoice | None:
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        return ModelChoice(data["name"], data["reason"], data.get("fp32_ms"), data.get("int8_ms"), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: dict[str, Any], choice: ModelChoice) -> None:
    data = {k: v for k, v in asdict(choice).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"key": key, **data}, indent=1) + "\n")
    except OSError as exc:  # a read-only home must not stop classification; we just measure again next time
        log.warning("could not cache the model choice in %s (%s)", path, exc)


def choose(threads: int, cache_dir: Path | None = None, int8_metadata: dict[str, Any] | None = None) -> ModelChoice:
    """The bundled export ``--model auto`` means on this machine at ``threads`` threads (cached)."""
    path = (cache_dir or default_cache_dir()) / CACHE_FILE
    key = cache_key(threads)
    choice = _read_cache(path, key)
    if choice is None:
        choice = _decide(threads, bundled_metadata("int8") if int8_metadata is None else int8_metadata)
        _write_cache(path, key, choice)
    log.info("model auto -> %s (%s)%s", choice.name, choice.reason, f"; cached in {path}" if choice.cached else "")
    return choice


def _decide(threads: int, int8_metadata: dict[str, Any]) -> ModelChoice:
    shortfalls = int8_shortfalls(int8_metadata)
    if shortfalls:
        return ModelChoice("fp32", "int8 not eligible: " + "; ".join(shortfalls))
    fp32_ms, int8_ms = time_exports(threads)
    speedup = fp32_ms / int8_ms
    name = "int8" if speedup >= MIN_SPEEDUP else "fp32"
    reason = f"int8 runs {speedup:.2f}x as fast as fp32 here ({int8_ms:.1f} vs {fp32_ms:.1f} ms per window; needs {MIN_SPEEDUP}x)"
    return ModelChoice(name, reason, round(fp32_ms, 2), round(int8_ms, 2))


def bundled_metadata(name: str) -> dict[str, Any]:
    """The ``genre_stream`` metadata JSON of a bundled export (the runtime has onnxruntime, not onnx)."""
    import onnxruntime as ort

    from .modelinfo import METADATA_KEY

    sess = ort.InferenceSession(str(bundled_model_path(name)), providers=["CPUExecutionProvider"])
    return json.loads(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
