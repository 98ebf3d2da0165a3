"""What every benchmark records about the machine it ran on, so JSON results can be compared,
and how the benchmarks read a process's CPU time and memory (from /proc, Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU model and count, OS, Python, load average now, plus whatever the caller adds (library versions)."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (NaN once it is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
