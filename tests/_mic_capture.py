"""Run a mic source in a fresh process (ALSA_CONFIG_PATH must be set before PortAudio starts).

usage: python _mic_capture.py SPEC OUT_PREFIX SECONDS QUEUE_SECONDS [APPEAR_AFTER SRC DEST]

Captures until SECONDS of audio arrived (or 60 s passed), then writes OUT_PREFIX.npz
(audio, chunk times) and OUT_PREFIX.json (problems, stats, device). With APPEAR_AFTER,
the ALSA device's input file SRC is copied to DEST only after that many seconds, so
the device does not exist when the source starts.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

from genre_stream.sources import AudioChunk, parse_source


def main() -> None:
    spec, out, seconds, queue_seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    source = parse_source(spec, state_dir=out.parent, queue_seconds=queue_seconds, reconnect_max_seconds=1.0)
    if len(sys.argv) > 5:
        delay, src, dest = float(sys.argv[5]), sys.argv[6], sys.argv[7]
        threading.Timer(delay, shutil.copyfile, (src, dest)).start()
    stop = threading.Event()
    chunks: list[AudioChunk] = []
    problems: list[str] = []
    have = [0]

    def emit(item) -> None:
        if isinstance(item, AudioChunk):
            chunks.append(item)
            have[0] += item.samples.size
            if have[0] >= seconds * 22050:
                stop.set()
        else:
            problems.append(item.reason)

    thread = threading.Thread(target=source.run, args=(emit, stop))
    thread.start()
    thread.join(timeout=60)
    stop.set()
    thread.join(timeout=10)
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    np.savez(out.with_suffix(".npz"), audio=audio, times=np.array([c.time for c in chunks]), sizes=np.array([c.samples.size for c in chunks]))
    report = {"problems": problems, "stats": source.stats(), "device": source.device_name, "rate": source.native_rate, "returned": not thread.is_alive()}
    out.with_suffix(".json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
