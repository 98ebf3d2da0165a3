"""CPU and memory of the live per-source pipeline, against batch classification of the same audio.

Feeds N minutes of music (the shared country clip, looped) through ``SourcePipeline`` in
0.1 s chunks, as a live source would, and classifies the same audio with the batch path
(``tracks.analyse_audio`` at the same hop) in the same run as the baseline. Reports CPU
seconds per hour of audio (process CPU time: onnxruntime's threads included), per-window
inference times, and RSS sampled every minute of audio. Also times the mic source's
chunked resampler (48 kHz stereo device -> 22050 Hz mono) per hour of audio.

    PYTHONPATH=. python benchmarks/bench_sources_pipeline.py --minutes 10 --out benchmarks/results/sources_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from genre_stream.audio.decode import load_audio
from genre_stream.audio.resample import StreamResampler, resample
from genre_stream.model.engine import Engine
from genre_stream.model.choice import open_engine
from genre_stream.live.pipeline import PipelineConfig, SourcePipeline
from genre_stream.sources.base import AudioChunk
from genre_stream.tracks.analysis import analyse_audio
from machine import machine_info, process_rss_mb  # noqa: E402

SR = 22050
CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "audio" / "gtzan-country.00000.wav"


def music(minutes: float) -> np.ndarray:
    if CLIP.exists():
        clip = load_audio(CLIP, SR)
    else:  # a plain clone has no shared/: a chord with a beat keeps the model busy all the same
        t = np.arange(SR * 30) / SR
        clip = (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330)) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    n = int(minutes * 60 * SR)
    return np.resize(clip, n).astype(np.float32)


def bench_pipeline(audio: np.ndarray, engine: Engine, hop: float) -> dict:
    pipeline = SourcePipeline("bench", engine, PipelineConfig(hop_seconds=hop))
    chunk = int(0.1 * SR)
    inference_ms: list[float] = []
    rss: list[float] = [process_rss_mb(os.getpid())]
    per_minute = 60 * SR
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(0, audio.size, chunk):
        if pipeline.feed(AudioChunk("bench", audio[i : i + chunk], i / SR, time.monotonic())):
            inference_ms.append(pipeline.stats()["inference_ms_last"])
        if (i + chunk) // per_minute != i // per_minute:
            rss.append(process_rss_mb(os.getpid()))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    hours = audio.size / SR / 3600
    return {
        "windows": len(inference_ms),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "cpu_seconds_per_audio_hour": round(cpu / hours, 2),
        "percent_of_one_core": round(100 * cpu / (hours * 3600), 3),
        "real_time_factor_wall": round(wall / (hours * 3600), 5),
        "inference_ms_p50": round(statistics.median(inference_ms), 2),
        "inference_ms_p99": round(float(np.percentile(inference_ms, 99)), 2),
        "rss_mib_per_minute": [round(r, 1) for r in rss],
        "rss_growth_mib_after_first_minute": round(max(rss[1:]) - min(rss[1:]), 1) if len(rss) > 2 else None,
    }


def bench_batch(audio: np.ndarray, engine: Engine, hop: float) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = analyse_audio(audio, engine, hop_seconds=hop)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    hours = audio.size / SR / 3600
    return {"windows": len(result.windows), "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3), "cpu_seconds_per_audio_hour": round(cpu / hours, 2)}


def bench_resampler(minutes: float) -> dict:
    rate = 48000
    block = int(0.05 * rate)
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((block * 20, 2)) * 0.1).astype(np.float32)
    blocks = int(minutes * 60 / 0.05)
    r = StreamResampler(rate, SR)
    cpu0 = time.process_time()
    for b in range(blocks):
        start = (b % 20) * block
        r.push(stereo[start : start + block].mean(axis=1))
    cpu = time.process_time() - cpu0
    # baseline: one resample of the same amount of audio in a single call
    whole = np.resize(stereo.mean(axis=1), blocks * block)
    cpu1 = time.process_time()
    resample(whole, rate, SR)
    baseline = time.process_time() - cpu1
    hours = minutes / 60
    return {
        "device_rate": rate,
        "cpu_seconds_per_audio_hour": round(cpu / hours, 2),
        "one_call_baseline_cpu_seconds_per_audio_hour": round(baseline / hours, 2),
        "ratio_chunked_to_one_call": round(cpu / baseline, 2) if baseline > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of audio to push through")
    ap.add_argument("--hop", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1: CPU share of one core)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sources_pipeline.json"))
    args = ap.parse_args()
    engine = open_engine(threads=args.threads, device="cpu")
    audio = music(args.minutes)
    engine.predict(np.zeros((1, 647, 128), np.float32))  # warm-up outside the measurements
    live = bench_pipeline(audio, engine, args.hop)
    batch = bench_batch(audio, engine, args.hop)
    report = {
        "benchmark": "sources_pipeline",
        "audio_minutes": args.minutes,
        "hop_seconds": args.hop,
        "onnx_threads": args.threads,
        "model": engine.model_id,
        "machine": machine_info(),
        "live_pipeline": live,
        "batch_baseline": batch,
        "ratio_live_to_batch_cpu": round(live["cpu_seconds"] / batch["cpu_seconds"], 3),
        "mic_resampler": bench_resampler(args.minutes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
