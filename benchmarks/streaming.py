"""Daemon CPU per audio hour at hop 1 s and 5 s, streaming inference against whole windows, in one run.

Feeds real music (``../shared/audio/genre-dev`` clips concatenated, development data only;
a synthetic piece where it is absent) through the daemon's per-source chain,
``SourcePipeline``, in 0.1 s chunks as a live source would, with 1 onnxruntime thread
(the daemon's default). Eight runs on the same audio: {fp32, int8} x {streaming, whole
windows} x {hop 1 s, 5 s}; "whole windows" classifies the full 30 s window every hop, at the
hop as asked (`--no-streaming`), "streaming" reuses the previous window's columns at the hop
snapped to whole 4-frame columns (1 s -> 20 frames = 0.93 s; 5 s -> 108 frames, unchanged). CPU is the
process's CPU time (mel frontend, normalisation, inference, smoothing), scaled to one hour, over
the whole run and after the first 30 s (while the buffer fills, every hop computes a looped whole
window: a once-per-start cost a 10-minute run would weigh six times as much as an hour does).

Then the peak RSS of the whole daemon (``run --fast``, fresh processes) with streaming on and
off. It also counts, over all of genre-dev, how many hops need a full recompute because the
seed normalisation of the window changed (its loudest bin or its floor moved): that is
what bounds the gain, and it needs no inference to count.

``--compare seed`` (or ``running``) adds two runs per hop, {fp32, int8} streaming with that
normalisation (audio/normalization.py): copies of the bundled exports and their packs whose
metadata says so (same weights; the costs are what is measured), and the same recompute count
with it. The bundled models use ``RUNNING`` since issue 23 (none by construction after the first
window), so ``--compare seed`` shows what the seed's per-window normalisation cost.

    PYTHONPATH=. python benchmarks/streaming.py --clips 20 --compare seed --out benchmarks/results/streaming.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info
from peak_rss import run_measured

from genre_stream.audio.frontend import MelFrontend
from genre_stream.audio.normalization import RUNNING, SEED, StreamNormalizer
from genre_stream.live.pipeline import PipelineConfig, SourcePipeline
from genre_stream.model.choice import open_engine
from genre_stream.model.engine import Engine
from genre_stream.sources.base import AudioChunk

SR = 22050
GENRE_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "audio" / "genre-dev"
HOPS = (1.0, 5.0)


def music(clips: int | None) -> tuple[np.ndarray, str]:
    files = sorted(GENRE_DEV.glob("*.flac"))[:clips]
    if files:
        return np.concatenate([sf.read(f, dtype="float32")[0] for f in files]), f"genre-dev: {len(files)} clips of 30 s concatenated"
    rng = np.random.default_rng(0)  # a plain clone has no shared/: chords whose loudness drifts
    t = np.arange(SR * 30 * (clips or 83)) / SR
    gain = 10 ** (np.cumsum(rng.normal(0, 0.5, t.size // SR + 1)).repeat(SR)[: t.size] / 20)
    audio = sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330)) * (1 + np.sin(2 * np.pi * 2 * t)) * gain
    return (0.05 * audio / np.abs(audio).max()).astype(np.float32), "synthetic (genre-dev absent)"


def run_pipeline(audio: np.ndarray, engine: Engine, hop: float, streaming: bool) -> dict:
    # streaming off is today's daemon: whole windows at the hop as asked, not snapped to whole columns
    pipeline = SourcePipeline("bench", engine, PipelineConfig(hop_seconds=hop, streaming=streaming))
    hop_frames = pipeline._hop_frames
    chunk = int(0.1 * SR)
    fill = 30 * SR  # until the buffer holds 30 s every hop computes a (looped) whole window: once per stream start
    cpu0, wall0 = time.process_time(), time.perf_counter()
    cpu_filled = cpu0
    for i in range(0, audio.size, chunk):
        if i < fill <= i + chunk:
            cpu_filled = time.process_time()
        pipeline.feed(AudioChunk("bench", audio[i : i + chunk], i / SR, time.monotonic()))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    hours = audio.size / SR / 3600
    steady = (time.process_time() - cpu_filled) / ((audio.size - fill) / SR / 3600)
    stats = pipeline.stats()
    out = {
        "hop_frames": hop_frames,
        "hop_seconds_effective": round(engine.info.frontend.frames_to_seconds(hop_frames), 3),
        "windows": stats["windows"],
        "cpu_seconds": round(cpu, 2),
        "wall_seconds": round(wall, 2),
        "cpu_seconds_per_audio_hour": round(cpu / hours, 1),
        "cpu_seconds_per_audio_hour_after_first_30s": round(steady, 1),  # what a long-running daemon spends
        "inference_ms_mean": stats["inference_ms_mean"],
    }
    if pipeline.streaming is not None:
        s = pipeline.streaming.stats
        out["streamed_windows"] = s.streamed
        out["full_windows_by_reason"] = dict(s.full)
        out["full_fraction"] = round(1 - s.streamed / s.windows, 3) if s.windows else None
        full = s.windows - s.streamed
        out["cpu_ms_per_streamed_window"] = round(1000 * s.streamed_cpu_seconds / s.streamed, 1) if s.streamed else None
        out["cpu_ms_per_full_window"] = round(1000 * s.full_cpu_seconds / full, 1) if full else None
        out["cpu_seconds_streamed_windows"] = round(s.streamed_cpu_seconds, 2)
        out["cpu_seconds_full_windows"] = round(s.full_cpu_seconds, 2)
    return out


def recompute_rate(power: np.ndarray, hop_frames: int, frames: int, top_db: float, normalization: str) -> dict:
    """Hops whose normalised window differs from the previous one where they overlap (the streaming rule)."""
    norm = StreamNormalizer(normalization, frames, top_db)
    stored = norm.push(power)  # the stream's frames as windows are cut from them (more than a window: none held)
    prev = None
    hops = changed = 0
    for start in range(0, power.shape[0] - frames + 1, hop_frames):
        window = norm.window(stored[start : start + frames])
        if prev is not None:
            hops += 1
            changed += not np.array_equal(prev[hop_frames:], window[: frames - hop_frames])
        prev = window
    hours = power.shape[0] * 1024 / SR / 3600
    return {"hop_frames": hop_frames, "hops": hops, "full_recomputes": changed, "fraction": round(changed / hops, 3),
            "per_audio_hour": round(changed / hours)}


def daemon_peak_rss(audio: np.ndarray, hop: float) -> dict:
    """Peak RSS (MB) of ``genre-stream run --fast`` over the audio, streaming on and off, each a fresh process."""
    repo = Path(__file__).resolve().parents[1]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "music.wav"
        sf.write(wav, audio, SR)
        for flag in ("--streaming", "--no-streaming"):
            run = run_measured(["run", "--fast", "--model", "int8", "--hop", str(hop), flag, "--source", f"bench=file:{wav}",
                                "--jsonl", str(Path(tmp) / "out.jsonl"), "--state-dir", str(Path(tmp) / f"state{flag}")], repo, cwd=Path(tmp))
            out[flag.removeprefix("--").replace("-", "_")] = run["peak_rss_mb"]
    return out


MODES = ("fp32_streaming", "fp32_whole_windows", "int8_streaming", "int8_whole_windows")
NORMALIZATION_WORDS = {"seed": SEED, "running": RUNNING}


def compare_engines(engines: dict[str, Engine], word: str, tmp: Path) -> dict[str, Engine]:
    """Copies of the bundled exports (with their packs) whose metadata names ``word``'s normalisation, as "fp32_<word>", "int8_<word>"."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _helpers_models import with_normalization  # needs onnx (the test extra), so only with --compare

    return {f"{p}_{word}": open_engine(with_normalization(engines[p].path, NORMALIZATION_WORDS[word], tmp / p), threads=1, device="cpu")
            for p in ("fp32", "int8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20, help="genre-dev clips (30 s each) for the CPU runs")
    ap.add_argument("--compare", choices=sorted(NORMALIZATION_WORDS), help="also stream with this normalisation (copies of the bundled models)")
    ap.add_argument("--note", help="a word on the machine for the JSON (e.g. other work sharing its cores)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/streaming.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, tmp: Path) -> None:
    engines = {p: open_engine(p, threads=1, device="cpu") for p in ("fp32", "int8")}
    modes = MODES + ((f"fp32_{args.compare}_streaming", f"int8_{args.compare}_streaming") if args.compare else ())
    if args.compare:
        engines.update(compare_engines(engines, args.compare, tmp))
    for e in engines.values():
        e.predict(np.zeros((1, 647, 128), np.float32))  # warm-up outside the measurements
    audio, source = music(args.clips)
    runs: dict[str, dict] = {}
    for hop in HOPS:  # the modes back to back per hop, so load drifts hit them alike
        for mode in modes:
            engine, how = mode.rsplit("_", 1) if mode.endswith("_streaming") else mode.split("_", 1)
            runs[f"{mode}_hop_{hop:g}s"] = run_pipeline(audio, engines[engine], hop, how == "streaming")
            runs[f"{mode}_hop_{hop:g}s"]["normalization"] = engines[engine].info.normalization
            print(f"{mode} hop {hop:g} s: {runs[f'{mode}_hop_{hop:g}s']}", file=sys.stderr)

    def per_hour(mode: str, hop: float) -> float:
        return runs[f"{mode}_hop_{hop:g}s"]["cpu_seconds_per_audio_hour"]

    def steady(mode: str, hop: float) -> float:
        return runs[f"{mode}_hop_{hop:g}s"]["cpu_seconds_per_audio_hour_after_first_30s"]

    fc = engines["fp32"].info.frontend
    everything, everything_source = music(None)
    power = MelFrontend(fc).power(everything)

    def rates(normalization: str) -> dict:
        return {f"hop_{hop:g}s": recompute_rate(power, max(4, fc.seconds_to_frames(hop)) // 4 * 4, fc.window_frames, fc.top_db, normalization)
                for hop in HOPS}

    report = {
        "benchmark": "streaming",
        "audio": source,
        "audio_minutes": round(audio.size / SR / 60, 2),
        "model": engines["fp32"].model_id,
        "onnx_threads": 1,
        "machine": machine_info(**({"note": args.note} if args.note else {})),
        "runs": runs,
        "ratio_hop_1s_to_5s": {mode: round(per_hour(mode, 1.0) / per_hour(mode, 5.0), 2) for mode in modes},
        "ratio_hop_1s_to_5s_after_first_30s": {mode: round(steady(mode, 1.0) / steady(mode, 5.0), 2) for mode in modes},
        "full_windows_by_reason": {name: run["full_windows_by_reason"] for name, run in runs.items() if "full_windows_by_reason" in run},
        "speedup_streaming_over_whole_windows": {  # whole windows cost the same whatever the normalisation
            f"{mode.removesuffix('_streaming')}_hop_{hop:g}s": round(per_hour(f"{mode.split('_')[0]}_whole_windows", hop) / per_hour(mode, hop), 2)
            for mode in modes if mode.endswith("_streaming") for hop in HOPS},
        "int8_streaming_1s_to_int8_whole_windows_5s": round(per_hour("int8_streaming", 1.0) / per_hour("int8_whole_windows", 5.0), 2),
        "daemon_run_fast_peak_rss_mb": {"audio": "the first 5 minutes of the CPU runs' audio", "hop_seconds": 1.0, "model": "int8",
                                        **daemon_peak_rss(audio[: 5 * 60 * SR], 1.0)},
        "normalization": engines["fp32"].info.normalization,
        "renormalised_hops": {"audio": everything_source, "audio_minutes": round(everything.size / SR / 60, 2),
                              **rates(engines["fp32"].info.normalization)},
    }
    if args.compare:
        report[f"renormalised_hops_{args.compare}"] = {"audio": everything_source, **rates(NORMALIZATION_WORDS[args.compare])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
