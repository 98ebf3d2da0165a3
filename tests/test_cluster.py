"""`genre-stream batch` on a real two-node Ray cluster on this machine (docs/CLUSTER.md).

The clusters are started with `ray start` as a user would (tests/_helpers_cluster.py: one process
group per node, killed by id, never `ray stop`), the job is the real CLI, and its answers are held
against a local `classify --json` of the same files. Without Ray (the `[cluster]` extra, which the
`[test]` extra brings) the cluster tests skip and say so; the ledger's own tests run anyway.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from _helpers_cluster import RayCluster
from conftest import REPO, cli_env, music_like, run_cli

from genre_stream.audio.resample import resample
from genre_stream.cluster.ledger import ResultsFile, read_ledger
from genre_stream.library.db import LibraryDB

DEMO = REPO / "examples" / "demo.wav"
RAY_MISSING = importlib.util.find_spec("ray") is None
needs_ray = pytest.mark.skipif(
    RAY_MISSING, reason="ray is not installed: the [cluster] extra (`pip install -c constraints.txt -e '.[train,test]'` brings it)")
SR = 22050


# -- fixtures: the files, the local answers, the clusters ---------------------------------------------


def _write_clips(folder: Path, seconds: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, secs in enumerate(seconds):
        sf.write(folder / f"clip{i:02d}.wav", music_like(secs, SR, seed=i), SR, subtype="PCM_16")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo, three synthetic clips (looped short, one window, several windows) and a corrupt file."""
    folder = tmp_path_factory.mktemp("archive")
    (folder / "demo.wav").write_bytes(DEMO.read_bytes())
    _write_clips(folder / "synthetic", [8.0, 30.0, 75.0])
    (folder / "synthetic" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(3000))
    return folder


@pytest.fixture(scope="module")
def long_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten 2-minute tracks made of the demo at other speeds and gains (~1 s of analysis each): music, and
    long enough to act while the job runs."""
    folder = tmp_path_factory.mktemp("long")
    demo, sr = sf.read(DEMO, dtype="float32")
    for i in range(10):
        varied = resample(demo, int(sr * (0.9 + 0.05 * (i % 5))), sr) * (0.4 + 0.1 * (i % 4))
        sf.write(folder / f"track{i:02d}.wav", np.tile(varied, int(np.ceil(120 * sr / varied.size)))[: 120 * sr], sr, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def local_answers(archive: Path) -> dict[str, dict[str, Any]]:
    """`classify --json` of the archive on this machine, by file name."""
    proc = run_cli("classify", "--json", str(archive))
    assert proc.returncode == 1 and "corrupt.wav" in proc.stderr, proc.stderr[-2000:]
    return {Path(obj["path"]).name: obj for obj in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """A head and one more node, one CPU each."""
    c = RayCluster()
    try:
        c.start()
        c.add_node()
        yield c
    finally:
        c.stop()


def _env(cluster: RayCluster) -> dict[str, str]:
    return cli_env({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})


def batch(cluster: RayCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli("batch", "--address", cluster.address, "--json", *args, env=_env(cluster), timeout=timeout)


def batch_process(cluster: RayCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "genre_stream", "batch", "--address", cluster.address, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cluster))


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 180) -> int:
    end = time.monotonic() + timeout
    while (count := len(lines_of(path))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"fewer than {n} results after {timeout} s"
        time.sleep(0.05)
    return count


@pytest.fixture(scope="module")
def first_run(cluster: RayCluster, archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("run") / "tags.jsonl"
    return out, batch(cluster, str(archive), "--out", str(out))


# -- the cluster tests ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_ray
def test_a_two_node_cluster_gives_the_local_answers(first_run: tuple[Path, subprocess.CompletedProcess[str]],
                                                    local_answers: dict[str, dict[str, Any]]) -> None:
    """Same genres, states and probabilities (within 1e-6) as `classify --json`; the corrupt file is one error line."""
    out, proc = first_run
    assert proc.returncode == 1, proc.stderr[-3000:]  # the corrupt file, as in classify
    assert proc.stderr.count("error: ") == 1 and "corrupt.wav" in proc.stderr, proc.stderr[-3000:]
    lines = lines_of(out)
    errors = [line for line in lines if "error" in line]
    assert [Path(e["path"]).name for e in errors] == ["corrupt.wav"] and errors[0]["retry"] is False
    results = {Path(line["path"]).name: line for line in lines if "error" not in line}
    assert set(results) == set(local_answers) and len(results) == 4
    for name, local in local_answers.items():
        remote = results[name]
        assert remote["path"] == os.path.abspath(remote["path"])
        for key in ("genre", "state", "model", "precision", "duration", "model_choice"):
            assert remote[key] == local[key], (name, key)
        assert remote["probabilities"].keys() == local["probabilities"].keys()
        for label, p in local["probabilities"].items():
            assert abs(remote["probabilities"][label] - p) <= 1e-6 + 1e-12, (name, label)
        assert abs(remote["not_music"] - local["not_music"]) <= 1e-6 + 1e-12
        assert remote["size"] == os.path.getsize(remote["path"]) and len(remote["hash"]) == 32
    summary = json.loads(proc.stdout)
    assert (summary["found"], summary["tagged"], summary["failed"], summary["retry_later"]) == (5, 4, 1, 0)
    assert summary["cpus"] == 2
    assert len(summary["nodes"]) == 2, summary["nodes"]  # both nodes analysed files
    assert sum(n["files"] for n in summary["nodes"]) == 5


@pytest.mark.slow
@needs_ray
def test_a_rerun_does_no_work_and_retry_errors_redoes_only_the_bad_file(
        cluster: RayCluster, archive: Path, first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = first_run
    before = out.read_bytes()
    proc = batch(cluster, str(archive), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["tagged"], summary["already_done"], summary["skipped_errors"], summary["failed"]) == (0, 4, 1, 0)
    assert summary["cpus"] == 0 and summary["nodes"] == []  # the cluster was not even contacted
    assert out.read_bytes() == before

    proc = batch(cluster, str(archive), "--out", str(out), "--retry-errors")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert (summary["tagged"], summary["already_done"], summary["failed"]) == (0, 4, 1)
    added = out.read_bytes()[len(before):].decode().splitlines()
    assert len(added) == 1 and Path(json.loads(added[0])["path"]).name == "corrupt.wav"


@pytest.mark.slow
@needs_ray
def test_the_index_a_cluster_writes_is_the_local_scans(cluster: RayCluster, archive: Path, tmp_path: Path) -> None:
    """`batch --db`: the rows, tags and error records of `library scan`; a re-run finds everything unchanged."""
    local_db, remote_db = tmp_path / "local.sqlite", tmp_path / "remote.sqlite"
    local = run_cli("library", "scan", str(archive), "--db", str(local_db), "--workers", "1")
    assert local.returncode == 1, local.stderr[-2000:]  # the corrupt file
    proc = batch(cluster, str(archive), "--db", str(remote_db))
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["found"], summary["tagged"], summary["failed"]) == (5, 4, 1)
    with LibraryDB(local_db) as a, LibraryDB(remote_db) as b:
        mine, theirs = list(a.tracks()), list(b.tracks())
        assert [t.path for t in mine] == [t.path for t in theirs] and len(mine) == 4
        for x, y in zip(mine, theirs):
            assert (x.size, x.mtime_ns, x.hash, x.genre, x.model, x.artist, x.title) == (y.size, y.mtime_ns, y.hash, y.genre, y.model, y.artist, y.title)
            assert abs(x.duration - y.duration) < 1e-9 and abs(x.confidence - y.confidence) <= 1e-6
            assert np.abs(x.probabilities - y.probabilities).max() <= 1e-6 and np.abs(x.embedding - y.embedding).max() <= 1e-5
        assert [(e.path, e.reason) for e in a.errors()] == [(e.path, e.reason) for e in b.errors()]
    again = json.loads(batch(cluster, str(archive), "--db", str(remote_db)).stdout)
    assert (again["tagged"], again["already_done"], again["skipped_errors"], again["cpus"]) == (0, 4, 1, 0)


@pytest.mark.slow
@needs_ray
def test_an_interrupted_job_loses_nothing_and_writes_nothing_twice(cluster: RayCluster, long_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    proc = batch_process(cluster, str(long_archive), "--out", str(out))
    wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    first = json.loads(stdout)
    assert first["interrupted"] and 2 <= first["tagged"] < 10
    assert len(lines_of(out)) == first["tagged"]  # everything that finished is written, and only that

    again = batch(cluster, str(long_archive), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["already_done"] == first["tagged"] and second["tagged"] == 10 - first["tagged"]
    counts = Counter(Path(line["path"]).name for line in lines_of(out))
    assert len(counts) == 10 and set(counts.values()) == {1}
    assert all("error" not in line for line in lines_of(out))


@pytest.mark.slow
@needs_ray
def test_a_worker_node_killed_mid_job_costs_no_file(long_archive: Path, tmp_path: Path) -> None:
    """SIGKILL to every process of the second node while it analyses a file: Ray re-runs that file on the head."""
    out = tmp_path / "tags.jsonl"
    with RayCluster() as c:
        c.start()
        worker = c.add_node()
        proc = batch_process(c, str(long_archive), "--out", str(out))
        end = time.monotonic() + 180
        while not (worker.running("analyse") and lines_of(out)):  # mid-job, and the node holds a file
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.02)
        done_at_kill = len(lines_of(out))
        worker.kill()
        stdout, stderr = proc.communicate(timeout=300)
    assert done_at_kill < 10, "the job ended before the node was killed: make the clips longer"
    assert proc.returncode == 0, stderr[-3000:]
    counts = Counter(Path(line["path"]).name for line in lines_of(out))
    assert len(counts) == 10 and set(counts.values()) == {1}, counts  # every file tagged exactly once
    assert all("error" not in line and line["genre"] for line in lines_of(out))
    assert "127.0.0.2" in stderr and "retried" in stderr  # Ray's news of the retry, on stderr; stdout is the summary
    summary = json.loads(stdout)
    assert (summary["tagged"], summary["failed"], summary["cpus"]) == (10, 0, 2)
    assert sum(n["files"] for n in summary["nodes"]) == 10
    assert all(n["alive"] == (n["address"] != "127.0.0.2") for n in summary["nodes"]), summary["nodes"]


# -- the ledger (no Ray needed) ------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_and_its_file_redone(tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    whole = {"path": "/a.wav", "genre": "jazz", "model": "m", "size": 1, "mtime_ns": 2}
    out.write_text(json.dumps(whole) + "\n" + '{"path": "/b.wav", "gen')
    with ResultsFile(out) as results:
        results.write({"path": "/c.wav", "error": "not audio", "retry": False, "size": 3, "mtime_ns": 4})
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["/a.wav", "/c.wav"]
    ledger = read_ledger(out)
    assert ledger["/a.wav"].covers(1, 2, "m", retry_errors=False)
    assert not ledger["/a.wav"].covers(1, 3, "m", retry_errors=False)  # touched: done again
    assert not ledger["/a.wav"].covers(1, 2, "other-model", retry_errors=False)
    assert ledger["/c.wav"].covers(3, 4, "m", retry_errors=False)  # a bad file stays skipped...
    assert not ledger["/c.wav"].covers(3, 4, "m", retry_errors=True)  # ...unless asked


def test_errors_of_the_cluster_are_always_redone_and_the_last_line_wins(tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    with ResultsFile(out) as results:
        results.write({"path": "/a.wav", "error": "the cluster lost this file's task", "retry": True})
        results.write({"path": "/b.wav", "error": "lost", "retry": True, "size": 1, "mtime_ns": 2})
        results.write({"path": "/b.wav", "genre": "rock", "model": "m", "size": 1, "mtime_ns": 2})
    ledger = read_ledger(out)
    assert not ledger["/a.wav"].covers(1, 2, "m", retry_errors=False)
    assert ledger["/b.wav"].ok and ledger["/b.wav"].covers(1, 2, "m", retry_errors=False)
