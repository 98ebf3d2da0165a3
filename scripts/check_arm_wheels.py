"""Check that every runtime dependency installs on a 64-bit ARM board (Raspberry Pi 4/5, Jetson).

Resolves the runtime's pinned dependencies (pyproject.toml, constraints.txt) for
manylinux aarch64 / CPython 3.11 with binary wheels only, the way pip on the board
would, without downloading the wheels themselves (``--dry-run``; PyPI serves their
metadata). A package without an aarch64 wheel (one that would need a compiler on the
Pi) fails the check. Writes the resolved set as JSON.

    python scripts/check_arm_wheels.py [--out benchmarks/results/arm64-wheels.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the resolved packages here as JSON")
    parser.add_argument("--python-version", default="3.11")
    args = parser.parse_args()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", *[f"--platform={p}" for p in PLATFORMS],
               f"--python-version={args.python_version}", "--implementation=cp",
               "--target", str(Path(tmp) / "target"), "--report", str(report),
               "-c", str(REPO / "constraints.txt"), *deps]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr.strip()[-3000:], file=sys.stderr)
            print("arm64: a runtime dependency has no aarch64 wheel for CPython " + args.python_version, file=sys.stderr)
            return 1
        resolved = json.loads(report.read_text())["install"]
    packages = {item["metadata"]["name"]: item["metadata"]["version"] for item in resolved}
    wheels = {item["metadata"]["name"]: item["download_info"]["url"].rsplit("/", 1)[-1] for item in resolved}
    training = {"torch", "torchaudio", "librosa", "numba"} & {name.lower() for name in packages}
    if training:
        print(f"arm64: the runtime resolved training packages: {sorted(training)}", file=sys.stderr)
        return 1
    print(f"arm64 (aarch64, CPython {args.python_version}): all {len(packages)} runtime packages have wheels")
    if args.out:
        args.out.write_text(json.dumps({"platforms": PLATFORMS, "python": args.python_version, "packages": packages, "wheels": wheels}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
