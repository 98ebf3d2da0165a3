"""YAMNet teacher scores for the realmusic experiment (development only; the teacher is never shipped).

Runs in the separate teacher venv (numpy, scipy, soundfile, ai-edge-litert):

    python3 -m venv .data/teacher-venv && .data/teacher-venv/bin/pip install numpy scipy soundfile ai-edge-litert
    .data/teacher-venv/bin/python scripts/realmusic_teacher.py

Writes .data/realmusic/yamnet.json: per clip id, the ten GTZAN-genre scores (mean sigmoid over
0.96 s patches) plus Music, Speech and Electronic music, as plain numbers.
"""
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(SHARED / "teachers" / "yamnet"))
import reference_frontend as rf  # noqa: E402

OUT = REPO / ".data" / "realmusic" / "yamnet.json"


def clips():
    with open(SHARED / "audio" / "genre-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            yield "gd:" + r["path"], SHARED / "audio" / "genre-dev" / r["path"]
    with open(SHARED / "audio" / "emotify-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            yield "emo:" + r["file"], SHARED / "audio" / "emotify-dev" / r["file"]


def main():
    OUT.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(OUT.read_text()) if OUT.exists() else {}
    y = rf.Yamnet()
    t0 = time.time()
    for n, (cid, path) in enumerate(clips()):
        if cid in done:
            continue
        s = y.patch_scores(rf.load_16k(str(path))).mean(0)
        done[cid] = {"genres": {g: float(s[i]) for g, i in rf.GENRE_INDEX.items()},
                     "music": float(s[rf.MUSIC]), "speech": float(s[rf.SPEECH]), "electronic": float(s[234])}
        if n % 50 == 0:
            print(n, f"{time.time() - t0:.0f}s", flush=True)
            OUT.write_text(json.dumps(done))
    OUT.write_text(json.dumps(done))
    print("done", len(done))


if __name__ == "__main__":
    main()
