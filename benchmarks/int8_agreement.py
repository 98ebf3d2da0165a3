"""How far an int8 export's answers are from the fp32 export's on real music (genre-dev).

Writes ``benchmarks/results/int8_agreement.json``. Every clip of LABELS.csv is
classified exactly as ``genre-stream classify`` does (``tracks.analyse_file``
with an ``Engine`` per model, 30 s windows, 10 s hop), once with the models'
calibration and once without it (raw softmax: the calibration's temperature
flattens probabilities, which shrinks |dp| and would flatter the int8 model).
Per group (``is_gtzan`` = 1: clips the model trained on; 0: other recordings,
the figures that matter) it reports, for each candidate against fp32:

* ``top1_agreement``: share of clips whose track answer (mean over windows) is the same;
* ``mean_max_abs_dp`` / ``max_max_abs_dp``: per clip, the largest |p_int8 - p_fp32| over
  its windows and classes; then the mean and the maximum over clips;
* ``accuracy``: track answer vs the label, for fp32 and the candidate.

    PYTHONPATH=. python benchmarks/int8_agreement.py [LABELS.csv] [--model NAME=PATH ...] [--write]

``--write`` stores the raw figures of the bundled int8 export in its metadata
(``provenance.agreement``; graph, weights and calibration untouched): ``--model
auto`` picks int8 only where that record meets ``genre_stream.model.agreement.AGREEMENT_BAR``.
Rebuilding the bundled models drops it: run this again afterwards.

The clips are the measurement set: never calibrate a shipped model on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_dev import DEFAULT_LABELS, read_labels  # noqa: E402

from genre_stream.model.agreement import AGREEMENT_BAR  # noqa: E402
from genre_stream.model.calibration import UncertaintyRule  # noqa: E402
from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.model.bundled import bundled_model_path  # noqa: E402
from genre_stream.tracks.analysis import analyse_file  # noqa: E402
from trainer.metrics import agreement_figures  # noqa: E402

GROUPS = {"gtzan": "1", "non_gtzan": "0"}


def window_probabilities(engine: Engine, labels_csv: Path, rows: list[dict[str, str]], calibrated: bool) -> list[np.ndarray]:
    """Per clip, the (windows, classes) probabilities classify would compute; raw when not ``calibrated``."""
    if not calibrated:
        engine.info = replace(engine.info, calibration=None)
    return [np.stack([w.probabilities for w in analyse_file(labels_csv.parent / r["path"], engine).windows]) for r in rows]


def write_agreement(path: Path, agreement: dict[str, object]) -> None:
    """Put ``agreement`` into the model's metadata JSON as ``provenance.agreement``; nothing else changes."""
    from trainer.onnx_meta import update_metadata

    update_metadata(path, lambda data: data.setdefault("provenance", {}).__setitem__("agreement", agreement))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels_csv", type=Path, nargs="?", default=DEFAULT_LABELS)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="candidate (default: the bundled int8)")
    parser.add_argument("--write", action="store_true", help="record the bundled int8's raw figures in its metadata")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8_agreement.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = read_labels(args.labels_csv)
    candidates = {"int8": bundled_model_path("int8")}
    for spec in args.model:
        name, _, path = spec.partition("=")
        candidates[name] = Path(path)

    started = time.perf_counter()
    fp32 = open_engine("fp32", device="cpu", threads=1)
    index = {label: i for i, label in enumerate(fp32.labels)}
    result: dict[str, object] = {"bar": asdict(AGREEMENT_BAR), "labels_csv": args.labels_csv.name, "reference": fp32.path.name, "candidates": {}}
    reference = {cal: window_probabilities(open_engine("fp32", device="cpu", threads=1), args.labels_csv, rows, cal) for cal in (False, True)}
    for name, path in candidates.items():
        out: dict[str, object] = {"file": path.name}
        for cal in (False, True):
            probs = window_probabilities(open_engine(path, device="cpu", threads=1), args.labels_csv, rows, cal)
            per_group = {}
            for group, flag in GROUPS.items():
                pick = [i for i, r in enumerate(rows) if r["is_gtzan"] == flag]
                targets = np.array([index[rows[i]["label"]] for i in pick])
                per_group[group] = agreement_figures([probs[i] for i in pick], [reference[cal][i] for i in pick], targets,
                                           [rows[i]["path"] for i in pick], fp32.labels)
                if cal:  # what a user sees: music or uncertain, by the fp32 model's own rule for both
                    rule = UncertaintyRule.for_model(fp32.info.calibration)
                    states = [[rule.is_uncertain(p[i].mean(axis=0)) for i in pick] for p in (probs, reference[cal])]
                    per_group[group]["state_agreement"] = round(float(np.mean(np.equal(*states))), 4)
            out["calibrated" if cal else "raw"] = per_group
        shortfalls = AGREEMENT_BAR.clip_shortfalls(out["raw"])  # type: ignore[arg-type]
        out["meets_bar"], out["shortfalls"] = not shortfalls, shortfalls
        result["candidates"][name] = out  # type: ignore[index]
    if args.write:
        record = {"measured_on": f"{args.labels_csv.parent.name}/{args.labels_csv.name}: {len(rows)} clips, raw probabilities vs {fp32.path.name}",
                  **{g: {k: v for k, v in m.items() if k != "changed_answers"} for g, m in result["candidates"]["int8"]["raw"].items()}}  # type: ignore[index]
        write_agreement(candidates["int8"], record)
        print(f"wrote provenance.agreement into {candidates['int8']}")
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, out in result["candidates"].items():  # type: ignore[union-attr]
        for kind in ("raw", "calibrated"):
            for group, m in out[kind].items():
                print(f"{name:10s} {kind:10s} {group:9s} top1 {m['top1_agreement']:.3f} (windows {m['window_top1_agreement']:.3f})  "
                      f"max|dp| mean {m['mean_max_abs_dp']:.3f} max {m['max_max_abs_dp']:.3f}  acc {m['accuracy']:.3f} (fp32 {m['accuracy_fp32']:.3f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
