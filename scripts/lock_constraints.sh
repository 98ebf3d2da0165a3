#!/usr/bin/env bash
# Re-resolve constraints.txt from pyproject.toml's pins in a throw-away venv.
# Run after changing a dependency, then run the suite with the new file before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q ".[train,test]"
gpu=$(grep -o '"onnxruntime-gpu==[^"]*"' pyproject.toml | tr -d '"')
{
  echo "# Every package the runtime, [train], [gpu] and [test] installs pull in, at the versions the suite passed with."
  echo "# Used as 'pip install -c constraints.txt ...' (README) so a fresh install tomorrow resolves to the same set."
  echo "# Regenerate after a dependency change: scripts/lock_constraints.sh"
  "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v -iE '^(genre-stream|pip|setuptools|wheel)=='
  echo "$gpu"
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"
