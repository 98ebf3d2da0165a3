#!/usr/bin/env bash
# Prepare the emulated-CPU matrix (scripts/cpu_matrix.py) on one x86-64 Debian 12 machine.
#
# Why: int8 kernels differ per CPU family (x86 AVX2 without VNNI sums u8*s8 pairs in
# saturating int16, VNNI and ARM do not), so int8 answers must be checked on each family.
# QEMU user-mode emulation runs the runtime's inference on CPUs this machine is not:
#   qemu-x86_64  -cpu Haswell     x86-64 with AVX2, no AVX-512, no VNNI
#   qemu-aarch64 -cpu cortex-a72  ARM64 without dot product (Raspberry Pi 4)
#   qemu-aarch64 -cpu cortex-a76  ARM64 with dot product (Raspberry Pi 5)
# The x86 targets reuse the project's venv (.venv); the ARM targets need an arm64 Python,
# which this script assembles without installing any arm64 package into the host:
#   .cpu-matrix/debs/        Debian bookworm arm64 .debs (apt-get download)
#   .cpu-matrix/arm64-root/  those .debs unpacked (dpkg -x): a sysroot for qemu-aarch64 -L
#   .cpu-matrix/wheels/      aarch64 CPython 3.11 wheels of numpy + onnxruntime (+ deps),
#                            at the versions pinned in constraints.txt
#   .cpu-matrix/arm64-site/  those wheels unpacked (pip install --target), for PYTHONPATH
#   .cpu-matrix/sysroot-<cpu>/  per emulated ARM CPU: links to arm64-root + a stand-in /proc/cpuinfo
# Idempotent: what exists is kept; run it again after a constraints.txt change (the wheels
# of other versions are then replaced). Needs root for apt-get (qemu-user, the arm64 lists).
#
#   scripts/cpu_matrix_setup.sh            # then: python scripts/cpu_matrix.py --help
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$REPO/.cpu-matrix"
ROOT="$WORK/arm64-root"
SITE="$WORK/arm64-site"
DEBS="$WORK/debs"
WHEELS="$WORK/wheels"
PY_ARM="$ROOT/usr/bin/python3.11"
ARM_CPUS=(cortex-a72 cortex-a76)  # Raspberry Pi 4, Raspberry Pi 5 (must match TARGETS in cpu_matrix.py)
# The runtime's inference dependencies only (pyproject's numpy + onnxruntime; pip resolves
# onnxruntime's own requirements, pinned by constraints.txt).
RUNTIME_PACKAGES=(numpy onnxruntime)
PLATFORM_ARGS=(--only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
               --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311)
# python3.11-minimal + libpython3.11-stdlib and their shared-library dependencies (bookworm),
# plus libstdc++/libgcc_s for onnxruntime's extension module.
ARM64_DEBS=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libc6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libsqlite3-0
  libuuid1 libncursesw6 libtinfo6 libreadline8 libcrypt1 libdb5.3 libgdbm6 libnsl2
  libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
)
# Architecture-independent data those depend on (/etc/mime.types, /etc/netconfig).
# (bookworm's python3.11 builds _decimal with its bundled libmpdec: no libmpdec3 package.)
ALL_DEBS=(media-types libtirpc-common)

log() { printf '[cpu-matrix-setup] %s\n' "$*"; }

host_pip() {
  # The project's venv when it exists (same pip the runtime was installed with), else python3.
  if [[ -x "$REPO/.venv/bin/python" ]]; then "$REPO/.venv/bin/python" -m pip "$@"; else python3 -m pip "$@"; fi
}

# --- .gitignore -------------------------------------------------------------------------
if ! grep -qxF '/.cpu-matrix/' "$REPO/.gitignore" 2>/dev/null; then
  printf '/.cpu-matrix/\n' >> "$REPO/.gitignore"
  log "added /.cpu-matrix/ to .gitignore"
fi
mkdir -p "$WORK" "$DEBS" "$WHEELS" "$ROOT" "$SITE"

# --- QEMU user-mode emulators ---------------------------------------------------------------
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-x86_64 >/dev/null; then
  log "installing qemu-user"
  apt-get install -y qemu-user
fi
log "$(qemu-aarch64 --version | head -1)"

# --- arm64 sysroot with Debian's python3.11 ---------------------------------------------------
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64 (package lists only; nothing arm64 is installed)"
  dpkg --add-architecture arm64
fi
if ! compgen -G '/var/lib/apt/lists/*binary-arm64_Packages*' >/dev/null; then
  log "apt-get update (fetches the arm64 package lists)"
  apt-get update -qq
fi
missing=()
for pkg in "${ARM64_DEBS[@]}"; do
  compgen -G "$DEBS/${pkg}_*_arm64.deb" >/dev/null || missing+=("$pkg:arm64")
done
for pkg in "${ALL_DEBS[@]}"; do
  compgen -G "$DEBS/${pkg}_*_all.deb" >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get download ${#missing[@]} arm64 packages"
  # apt drops privileges to _apt for downloads; let it write here (else it warns and runs as root).
  chmod 0777 "$DEBS" 2>/dev/null || true
  (cd "$DEBS" && apt-get download -q "${missing[@]}")
fi
for deb in "$DEBS"/*.deb; do
  stamp="$ROOT/.unpacked/$(basename "$deb")"
  [[ -e "$stamp" ]] && continue
  dpkg -x "$deb" "$ROOT"
  mkdir -p "$ROOT/.unpacked" && touch "$stamp"
done
# qemu -L falls back to the host's file when the sysroot lacks a path; empty site dirs keep the
# host's x86 dist-packages (/usr/lib/python3/dist-packages) out of the arm64 python's sys.path.
mkdir -p "$ROOT/usr/lib/python3/dist-packages" "$ROOT/usr/local/lib/python3.11/dist-packages" \
         "$ROOT/usr/lib/python3.11/site-packages"
[[ -x "$PY_ARM" ]] || { log "ERROR: $PY_ARM missing after unpacking"; exit 1; }

# --- aarch64 wheels of the runtime's inference dependencies --------------------------------
stamp_file="$SITE/.constraints.sha256"
want_stamp="$(sha256sum "$REPO/constraints.txt" | cut -d' ' -f1)"
if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$want_stamp" ]]; then
  log "pip download aarch64 cp311 wheels: ${RUNTIME_PACKAGES[*]} (constraints.txt pins)"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  host_pip download -q "${PLATFORM_ARGS[@]}" -d "$WHEELS" -c "$REPO/constraints.txt" "${RUNTIME_PACKAGES[@]}"
  log "pip install --target $SITE"
  rm -rf "$SITE" && mkdir -p "$SITE"
  host_pip install -q --no-deps --no-compile "${PLATFORM_ARGS[@]}" --target "$SITE" "$WHEELS"/*.whl
  echo "$want_stamp" > "$stamp_file"
fi
log "wheels: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"

# --- one sysroot per emulated ARM CPU: the shared root + that CPU's /proc/cpuinfo --------------
# QEMU 7.2 shows aarch64 guests the host's x86 /proc/cpuinfo, on which onnxruntime's cpuinfo
# library finds no ARM processor and segfaults at import. qemu -L serves any absolute path
# (/proc/cpuinfo included) from the sysroot first, so each CPU gets a stand-in written from
# what QEMU itself reports for that -cpu (AT_HWCAP, MIDR_EL1): scripts/cpu_matrix.py cpuinfo.
rm -rf "$ROOT/proc"  # the shared root stays CPU-neutral
for cpu in "${ARM_CPUS[@]}"; do
  sys="$WORK/sysroot-$cpu"
  mkdir -p "$sys/proc"
  for entry in "$ROOT"/*; do
    name="$(basename "$entry")"
    [[ "$name" == proc ]] && continue
    ln -sfn "../arm64-root/$name" "$sys/$name"
  done
  qemu-aarch64 -cpu "$cpu" -L "$ROOT" "$PY_ARM" -s "$REPO/scripts/cpu_matrix.py" cpuinfo --out "$sys/proc/cpuinfo" \
    | sed "s/^/[cpu-matrix-setup] $cpu: /"
done

# --- verify: the emulated Pis import the runtime ---------------------------------------------
for cpu in "${ARM_CPUS[@]}"; do
  log "verify under qemu-aarch64 -cpu $cpu"
  PYTHONPATH="$SITE:$REPO" PYTHONNOUSERSITE=1 qemu-aarch64 -cpu "$cpu" -L "$WORK/sysroot-$cpu" "$PY_ARM" -s -c \
    "import platform, numpy, onnxruntime; print('arm64 ok:', platform.machine(), 'python', platform.python_version(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
done
log "done"
