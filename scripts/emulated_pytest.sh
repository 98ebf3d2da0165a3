#!/usr/bin/env bash
# Run pytest (any arguments) with every Python process -- the tests and the CLIs and daemons they
# start -- on an emulated x86-64 CPU with AVX2 but no AVX-512 and no VNNI (QEMU user mode,
# -cpu Haswell), so a VNNI machine can run the tests an AVX2-only machine would (issue 22).
#
#   scripts/emulated_pytest.sh tests/test_autoselect.py -q
#
# How: a wrapper "venv" in .cpu-matrix/haswell-venv shares .venv's packages; its bin/python
# starts the real interpreter under qemu-x86_64 with argv[0] set to itself, so sys.executable
# (and every child the tests spawn with it) is the wrapper again. Emulation is ~30-50x slower:
# run chosen tests, not the suite. Needs .venv (the README's test install) and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 1; }
[ -f .venv/pyvenv.cfg ] || { echo ".venv not found: install the project first (README: the test command)" >&2; exit 1; }
real="$(readlink -f .venv/bin/python)"
venv=.cpu-matrix/haswell-venv
mkdir -p "$venv/bin"
cp .venv/pyvenv.cfg "$venv/pyvenv.cfg"
ln -sfn "$(pwd)/.venv/lib" "$venv/lib"
# Haswell without the system features TCG cannot emulate (they only make qemu warn on every start).
cpu="Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
printf '#!/bin/sh\nexec qemu-x86_64 -cpu %s -0 "$0" %s "$@"\n' "$cpu" "$real" > "$venv/bin/python"
chmod +x "$venv/bin/python"
"$venv/bin/python" -c 'import sys; print("emulated interpreter:", sys.executable)' >&2
exec "$venv/bin/python" -m pytest "$@"
