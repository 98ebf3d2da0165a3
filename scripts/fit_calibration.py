"""Fit a model's calibration (temperature + "uncertain" thresholds) on labelled real music; optionally store it.

    PYTHONPATH=. python scripts/fit_calibration.py ../shared/audio/genre-dev/labels.csv \
        --model fp32 --model int8 --where is_gtzan=0 --report is_gtzan=1 [--write]

LABELS.csv has ``path,label`` columns (paths relative to the CSV) and any other
columns, which ``--where`` (the tracks the fit uses) and ``--report`` (tracks only
reported on, e.g. training-set clips) select on. The figures printed are
cross-validated (leave-one-out unless ``--folds``): each track is judged by a
fit that never saw it. The stored calibration is then fitted on all selected
tracks and its cross-validated figures go into its ``measurements``.

``--write`` rewrites only the ONNX file's metadata entry (graph and weights are
not touched); the rest of the metadata JSON is kept as it is. Rebuilding a
bundled model with scripts/build_default_models.py drops the calibration: run
this script again afterwards.

The log floor is the model's output resolution: when some softmax outputs are
exactly 0 (an int8 export quantises them to steps of 1/255), log(p) is bounded
at half the smallest non-zero output; otherwise ``calibration.DEFAULT_FLOOR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.model.calibration import DEFAULT_FLOOR, Calibration, UncertaintyRule  # noqa: E402
from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.tracks.analysis import analyse_file  # noqa: E402
from trainer import temperature  # noqa: E402
from trainer.onnx_meta import update_metadata  # noqa: E402
from trainer.metrics import expected_calibration_error  # noqa: E402

log = logging.getLogger("fit_calibration")


def _selector(spec: str | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    column, _, value = spec.partition("=")
    return column, value


def _rows(labels_csv: Path, where: tuple[str, str] | None) -> list[dict[str, str]]:
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if where is None or r.get(where[0]) == where[1]]


def window_probabilities(engine: Engine, labels_csv: Path, rows: list[dict[str, str]], cache: Path | None) -> list[np.ndarray]:
    """Raw (uncalibrated) per-window probabilities of each row's file, scored like classify."""
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["paths"]) == [r["path"] for r in rows]:
            return [data[f"t{i}"] for i in range(len(rows))]
    engine.info = replace(engine.info, calibration=None)
    tracks = []
    for r in rows:
        result = analyse_file(labels_csv.parent / r["path"], engine)
        tracks.append(np.stack([w.probabilities for w in result.windows]))
        log.info("%s: %s %.3f", r["path"], result.genre, result.confidence)
    if cache is not None:
        np.savez(cache, paths=np.array([r["path"] for r in rows]), **{f"t{i}": t for i, t in enumerate(tracks)})
    return tracks


def output_floor(tracks: list[np.ndarray]) -> float:
    """Half the smallest non-zero output when the model outputs exact zeros, else the default floor."""
    p = np.concatenate(tracks).ravel()
    if not (p == 0).any():
        return DEFAULT_FLOOR
    return float(p[p > 0].min() / 2)


def _round(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list) else v) for k, v in data.items()}


def summary(tracks: list[np.ndarray], targets: np.ndarray, cal: Calibration) -> dict[str, Any]:
    """In-sample figures of a fixed calibration on other tracks (e.g. the training-set clips)."""
    raw = temperature.track_probabilities(tracks, None)
    calibrated = temperature.track_probabilities(tracks, cal)
    s = temperature.selective(calibrated, targets, UncertaintyRule(cal.uncertain_threshold, cal.uncertain_margin))
    return _round({"tracks": len(targets), "accuracy": float((raw.argmax(1) == targets).mean()),
                   "ece_raw": expected_calibration_error(raw, targets), "ece_calibrated": expected_calibration_error(calibrated, targets),
                   **s.to_dict()})


def write_calibration(path: Path, cal: Calibration) -> None:
    """Replace the calibration inside the model's metadata JSON; nothing else in the file changes meaning."""
    update_metadata(path, lambda data: data.__setitem__("calibration", cal.to_dict()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels_csv", type=Path)
    parser.add_argument("--model", action="append", required=True, help="ONNX file or fp32 / int8 (repeatable)")
    parser.add_argument("--where", default=None, help="COLUMN=VALUE: the tracks to fit on (default all)")
    parser.add_argument("--report", default=None, help="COLUMN=VALUE: other tracks to report on with the final fit")
    parser.add_argument("--folds", type=int, default=None, help="k-fold cross-validation (default leave-one-out)")
    parser.add_argument("--min-coverage", type=float, default=temperature.MIN_COVERAGE)
    parser.add_argument("--cache", type=Path, default=None, help="folder for cached window probabilities")
    parser.add_argument("--write", action="store_true", help="store the fitted calibration in each model file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    fit_rows = _rows(args.labels_csv, _selector(args.where))
    report_rows = _rows(args.labels_csv, _selector(args.report)) if args.report else []
    out: dict[str, Any] = {}
    for spec in args.model:
        engine = open_engine(spec, device="cpu", threads=1)
        index = {label: i for i, label in enumerate(engine.labels)}
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)

        def cache(tag: str) -> Path | None:
            return args.cache / f"{engine.path.stem}-{tag}.npz" if args.cache else None

        tracks = window_probabilities(engine, args.labels_csv, fit_rows, cache("fit"))
        targets = np.array([index[r["label"]] for r in fit_rows])
        floor = output_floor(tracks)
        cv = temperature.cross_validate(tracks, targets, floor, args.folds, args.min_coverage)
        measured = _round(cv.report(targets))
        fitted_on = f"{args.labels_csv.parent.name}/{args.labels_csv.name} {args.where or 'all rows'}: {len(fit_rows)} tracks"
        cal = replace(temperature.fit(tracks, targets, floor, fitted_on, args.min_coverage), measurements={"cross_validated": measured})
        result: dict[str, Any] = {"file": str(engine.path), "calibration": cal.to_dict()}
        if report_rows:
            other = window_probabilities(engine, args.labels_csv, report_rows, cache("report"))
            result[f"report {args.report}"] = summary(other, np.array([index[r["label"]] for r in report_rows]), cal)
        out[spec] = result
        if args.write:
            write_calibration(engine.path, cal)
            log.warning("wrote calibration into %s", engine.path)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
