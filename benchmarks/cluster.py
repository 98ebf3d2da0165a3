"""`genre-stream batch` on Ray: audio hours per hour on 1 vs 2 single-CPU nodes, and what Ray adds per file.

    python benchmarks/cluster.py [--tracks 36] [--minutes 3] [--small 16,112] [--out benchmarks/results/cluster.json]

* scaling: the real CLI (`genre-stream batch --out`) over ``--tracks`` CD-quality tracks (WAV 44.1 kHz
  stereo 16-bit, the demo varied in speed and gain, as benchmarks/library.py makes them) on a cluster
  of this machine started with `ray start` (tests/_helpers_cluster.py): first the head alone (one
  CPU), then with a second single-CPU node joined, on the same files with fresh results files. The
  ratio of the two audio-hours-per-hour figures is the speed-up, measured in this one run.
* cost: CPU-seconds per audio hour on one core, from the workers' own CPU clocks (what the summary
  reports as ``cpu_s_per_audio_hour``) and from the single-node job's wall clock (everything included).
* overhead: the per-file cost Ray adds against the same per-file function run in one local process
  (``cluster.worker.analyse``, one thread and one BLAS thread as on a worker, model already loaded): the slope of wall time over the
  number of files, from ``--small`` counts of 3 s clips on the single-node cluster and locally, so
  fixed costs (connecting, starting the worker process, loading the model) cancel out; those fixed
  costs are reported apart.

The machine this ran on has 2 cores shared with other work (its load average is recorded): a second
node on the same 2 cores also competes with the driver, Ray's own processes and everything else.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, as Ray gives a one-CPU task (it sets OMP_NUM_THREADS=1 in the worker), so the local
# baseline uses the same one core as a worker; it has to be set before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import soundfile as sf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _helpers_cluster import RayCluster  # noqa: E402
from library import make_tracks  # noqa: E402
from machine import machine_info  # noqa: E402

from genre_stream.cluster.worker import WorkerSpec, analyse, worker_model  # noqa: E402
from genre_stream.library.scan import Job  # noqa: E402
from genre_stream.model.calibration import UncertaintyRule  # noqa: E402
from genre_stream.model.choice import open_engine  # noqa: E402
from genre_stream.tracks.classify import ClassifyOptions  # noqa: E402

AUDIO_S_PER_HOUR = 3600.0


def batch(cluster: RayCluster, folder: Path, out: Path) -> dict[str, Any]:
    """One `genre-stream batch` job; its JSON summary plus the process's wall time."""
    env = {**cluster.env, "PYTHONPATH": str(REPO)}
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genre_stream", "batch", str(folder), "--out", str(out), "--address",
                           cluster.address, "--json"], capture_output=True, text=True, env=env, check=False, timeout=3600)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"batch failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    summary["process_wall_s"] = round(wall, 3)
    # The driver's own CPU (the CLI process: listing, Ray client, writing lines); workers are the raylet's children.
    summary["driver_cpu_s"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return summary


def scaling_figures(summary: dict[str, Any]) -> dict[str, Any]:
    hours = summary["audio_s"] / AUDIO_S_PER_HOUR
    return {
        "files": summary["tagged"],
        "audio_hours": round(hours, 4),
        "job_wall_s": round(summary["wall_s"], 2),  # first submit to last result (worker start-up included)
        "process_wall_s": summary["process_wall_s"],  # the whole command (interpreter, listing, connecting)
        "audio_hours_per_hour": round(hours / (summary["wall_s"] / 3600), 1),
        "cpus": summary["cpus"],
        "files_per_node": {n["address"]: n["files"] for n in summary["nodes"]},
        "worker_cpu_s_per_audio_hour": summary["cpu_s_per_audio_hour"],
    }


def local_walls(files: list[Path], counts: list[int]) -> tuple[dict[int, float], float]:
    """Wall seconds of the per-file function over the first n files, in this process, model loaded; and per-file CPU."""
    engine = open_engine(None, device="cpu", threads=1)
    options = ClassifyOptions(as_json=True, uncertainty=UncertaintyRule.for_model(engine.info.calibration), model_choice=engine.chosen)
    spec = WorkerSpec(worker_model(None, "cpu"), "cpu", json_options=options)
    analyse(Job(str(files[0])), spec)  # load the model first: it is a fixed cost, as on a worker
    walls = {}
    cpu0 = time.process_time()
    for n in counts:
        t0 = time.perf_counter()
        for f in files[:n]:
            analyse(Job(str(f)), spec)
        walls[n] = time.perf_counter() - t0
    return walls, (time.process_time() - cpu0) / sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=36)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--small", default="16,112", help="two counts of 3 s clips for the per-file overhead")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cluster.json")
    args = parser.parse_args()
    small_counts = sorted(int(x) for x in args.small.split(","))
    start_machine = machine_info()
    load_at_start = start_machine.pop("load_average")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracks = root / "tracks"
        tracks.mkdir()
        make_tracks(tracks, args.tracks, args.minutes)
        demo, sr = sf.read(REPO / "examples" / "demo.wav", dtype="float32")
        clip_sets = {}
        for n in small_counts:  # one folder per count, the same clips in the same order
            folder = root / f"small{n}"
            folder.mkdir()
            for i in range(n):
                sf.write(folder / f"clip{i:03d}.wav", demo[(i % 3) * sr : (i % 3 + 3) * sr] * (0.5 + 0.01 * i), sr, subtype="PCM_16")
            clip_sets[n] = folder
        local, local_cpu_per_clip = local_walls(sorted(clip_sets[small_counts[-1]].iterdir()), small_counts)

        with RayCluster() as cluster:
            cluster.start()
            t0 = time.perf_counter()
            small = {n: batch(cluster, clip_sets[n], root / f"small{n}.jsonl") for n in small_counts}
            small_wall = time.perf_counter() - t0
            one = batch(cluster, tracks, root / "one.jsonl")
            cluster.add_node()
            two = batch(cluster, tracks, root / "two.jsonl")
        one_lines = {json.loads(line)["path"]: json.loads(line)["genre"] for line in (root / "one.jsonl").read_text().splitlines()}
        two_lines = {json.loads(line)["path"]: json.loads(line)["genre"] for line in (root / "two.jsonl").read_text().splitlines()}
        assert one_lines == two_lines and len(one_lines) == args.tracks
        library_mb = sum(f.stat().st_size for f in tracks.iterdir()) / 1e6

    a, b = small_counts[0], small_counts[-1]
    ray_slope = (small[b]["wall_s"] - small[a]["wall_s"]) / (b - a)
    local_slope = (local[b] - local[a]) / (b - a)
    fixed = small[a]["wall_s"] - a * ray_slope
    s1, s2 = scaling_figures(one), scaling_figures(two)
    result = {
        "benchmark": "genre-stream batch on a Ray cluster of this machine: 1 vs 2 single-CPU nodes, per-file overhead",
        "machine": {**start_machine, "load_average_at_start": load_at_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "ray": __import__("ray").__version__,
        "scaling": {
            "tracks": args.tracks, "track_minutes": args.minutes, "format": "WAV 44.1 kHz stereo 16-bit",
            "library_mb": round(library_mb, 1),
            "one_node_1_cpu": s1,
            "two_nodes_1_cpu_each": s2,
            "speedup_audio_hours_per_hour_2_vs_1": round(s2["audio_hours_per_hour"] / s1["audio_hours_per_hour"], 2),
            "target": ">= 1.7",
            "same_genres_on_1_and_2_nodes": True,
        },
        "cost": {
            "cpu_s_per_audio_hour_worker_clock": s1["worker_cpu_s_per_audio_hour"],
            "core_s_per_audio_hour_wall_one_node": round(s1["job_wall_s"] / s1["audio_hours"], 1),
            "note": "worker clock: CPU time of the per-file work on the worker (decode 44.1 kHz stereo + resample + mel + "
                    "model); wall: the single-node job end to end (one core), Ray's scheduling and worker start-up included",
        },
        "overhead": {
            "clip_seconds": 3.0, "counts": small_counts,
            "ray_one_node_job_wall_s": {str(n): round(small[n]["wall_s"], 3) for n in small_counts},
            "local_in_process_wall_s": {str(n): round(local[n], 3) for n in small_counts},
            "local_cpu_s_per_clip": round(local_cpu_per_clip, 4),
            "ray_s_per_file": round(ray_slope, 4),
            "local_s_per_file": round(local_slope, 4),
            "ray_adds_s_per_file": round(ray_slope - local_slope, 4),
            "driver_cpu_s_per_file": round((small[b]["driver_cpu_s"] - small[a]["driver_cpu_s"]) / (b - a), 4),
            "ray_fixed_s_per_job": round(fixed, 2),
            "small_jobs_wall_s_incl_process_start": round(small_wall, 1),
            "note": "slopes over the two counts, so fixed costs cancel; fixed = worker process start + model load + "
                    "first scheduling (the job's wall clock starts at the first submit, after connecting)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
