"""Rebuild the bundled models in genre_stream/models/ from the seed checkpoint, reproducibly.

    PYTHONPATH=. python scripts/build_default_models.py [--seed-dir ../shared/seed/checkpoints] [--test-audio ../shared/audio]

It runs exactly the commands a user would:

1. ``genre-trainer import-keras bbnn-gtzan-augmented-fold0.hdf5 --out <tmp>/fold0.pt``
2. ``genre-trainer export <tmp>/fold0.pt --out genre_stream/models/bbnn-gtzan-augmented-fold0.fp32.onnx``
   (which also writes the streaming pack beside it, ``...fp32.stream.zip``)
3. ``genre-trainer export <tmp>/fold0.pt --out genre_stream/models/bbnn-gtzan-augmented-fold0.int8.onnx
   --quantize int8 --calibration-windows 96 --test-audio <clips>``

The int8 model is calibrated only on the project's synthetic pieces
(``trainer.synth``, seeds 0..95) and checked on the real clips in ``--test-audio``
(used for the check only, never committed); export refuses to write it if it
misses the accuracy bar there. Every step is deterministic, so rebuilding gives
the same answers (byte identity is not promised across onnxruntime versions).

Each file's ``calibration`` (temperature and "uncertain" thresholds, fitted on
labelled real music by scripts/fit_calibration.py, which a rebuild cannot redo
without that music) is carried over from the file being replaced. The int8
file's ``provenance.agreement`` is not: it describes the old weights; measure
the new ones with ``benchmarks/int8_agreement.py --write`` (until then
``--model auto`` keeps to fp32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.modelinfo import METADATA_KEY  # noqa: E402
MODELS = REPO / "genre_stream" / "models"
CHECKPOINT = "bbnn-gtzan-augmented-fold0"


def _run(*args: str) -> None:
    cmd = [sys.executable, "-m", "trainer", *args]
    print("+ genre-trainer " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _metadata(path: Path) -> tuple[object, dict]:
    import onnx

    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    return proto, json.loads(entry.value)


def _export_keeping_calibration(out: Path, *args: str) -> None:
    """``genre-trainer export ... --out OUT`` then put OUT's previous calibration back into its metadata."""
    import onnx

    calibration = _metadata(out)[1].get("calibration") if out.is_file() else None
    _run("export", *args, "--out", str(out))
    if calibration is None:
        return
    proto, data = _metadata(out)
    data["calibration"] = calibration
    next(p for p in proto.metadata_props if p.key == METADATA_KEY).value = json.dumps(data, sort_keys=True)
    onnx.save(proto, str(out))
    print(f"  kept the calibration of the previous {out.name} (T = {calibration['temperature']:.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-dir", type=Path, default=REPO.parent / "shared" / "seed" / "checkpoints")
    parser.add_argument("--test-audio", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--calibration-windows", type=int, default=96)
    args = parser.parse_args()
    seed = args.seed_dir / f"{CHECKPOINT}.hdf5"
    if not seed.is_file():
        sys.exit(f"{seed}: seed checkpoint not found (give --seed-dir)")
    if not args.test_audio.is_dir():
        sys.exit(f"{args.test_audio}: no folder of real music to check the int8 model on (give --test-audio)")
    with tempfile.TemporaryDirectory() as tmp:
        pt = str(Path(tmp) / f"{CHECKPOINT}.pt")
        _run("import-keras", str(seed), "--out", pt)
        _export_keeping_calibration(MODELS / f"{CHECKPOINT}.fp32.onnx", pt, "--test-windows", "8")
        _export_keeping_calibration(
            MODELS / f"{CHECKPOINT}.int8.onnx", pt, "--quantize", "int8",
            "--calibration-windows", str(args.calibration_windows), "--test-audio", str(args.test_audio), "--test-windows", "24",
        )


if __name__ == "__main__":
    main()
