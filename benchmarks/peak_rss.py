"""Run a genre-stream command in a fresh interpreter and report its own peak RSS.

``ru_maxrss`` of a child is no use here: a forked child starts with a copy of its
parent's pages and keeps that peak across ``exec`` (a child running ``pass`` reported
1.9 GB beside a 2 GB parent). The child below reads ``VmHWM`` from /proc/self/status
at exit instead: the high-water mark of its own address space, which ``exec`` resets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_WRAPPER = """
import atexit, sys
def _report():
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    sys.stderr.write("PEAK_RSS_KB %d\\n" % hwm)
atexit.register(_report)
import os
_exit = os._exit
def _report_and_exit(code):  # the pre-lean daemon left through os._exit, skipping atexit
    _report()
    _exit(code)
os._exit = _report_and_exit
sys.argv = ["genre-stream", *{args!r}]
from genre_stream.cli.main import main
main()
"""


def run_measured(args: list[str], repo: Path, cwd: Path | None = None, python: str = sys.executable, timeout: float = 3600) -> dict:
    """Wall time, exit status and peak RSS (MB) of ``genre-stream ARGS`` run from ``repo``'s code."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    started = time.perf_counter()
    proc = subprocess.run([python, "-c", _WRAPPER.format(args=args)], capture_output=True, text=True, env=env,
                          cwd=cwd or repo, timeout=timeout)
    wall = time.perf_counter() - started
    peaks = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB ")]
    if proc.returncode != 0 or not peaks:
        raise RuntimeError(f"genre-stream {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_seconds": round(wall, 3), "peak_rss_mb": round(peaks[-1] / 1024, 1), "stdout": proc.stdout}


if __name__ == "__main__":
    result = run_measured(sys.argv[1:], Path(__file__).resolve().parents[1], cwd=Path.cwd())
    print(json.dumps({k: v for k, v in result.items() if k != "stdout"}))
