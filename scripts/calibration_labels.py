"""Write the labels CSV the bundled calibration is fitted on (issue 23), from the shared development sets.

    python scripts/calibration_labels.py [--audio ../shared/audio] [--out .data/calibration-labels.csv]
    PYTHONPATH=. python scripts/fit_calibration.py .data/calibration-labels.csv --model fp32 \\
        --where fit=1 --report fit=0 --folds 10 --write

Rows: every genre-dev clip (``fit`` = 1 for the 33 outside GTZAN, 0 for the 50 GTZAN clips the model
trained on, which are only reported) and emotify-dev's classical, pop and rock clips (``fit`` = 1;
its "electronic" has no label among the model's ten). Paths are absolute, so the CSV may live
anywhere; it points at measurement data and is not committed (``.data/`` is ignored).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOTIFY_LABELS = ("classical", "pop", "rock")  # emotify-dev's genres that are also the model's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--out", type=Path, default=REPO / ".data" / "calibration-labels.csv")
    args = parser.parse_args()
    audio = args.audio.resolve()
    rows = []
    with open(audio / "genre-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            gtzan = r["is_gtzan"] == "1"
            rows.append({"path": str(audio / "genre-dev" / r["path"]), "label": r["label"],
                         "set": "genre-dev-gtzan" if gtzan else "genre-dev-other", "fit": "0" if gtzan else "1"})
    with open(audio / "emotify-dev" / "labels.csv", newline="") as f:
        rows += [{"path": str(audio / "emotify-dev" / r["file"]), "label": r["label"], "set": "emotify", "fit": "1"}
                 for r in csv.DictReader(f) if r["label"] in EMOTIFY_LABELS]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "set", "fit"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} clips, {sum(r['fit'] == '1' for r in rows)} to fit on")


if __name__ == "__main__":
    main()
