"""`genre-stream library`: scanning, clustering, similarity, export, errors, interruption.

The CLI runs as real processes (two spawned analysis workers, real SQLite, real
files); incremental-scan details are checked in-process with one worker so that
each step costs a fraction of a second.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _helpers_library import noise_hits, real_library, synthetic_library, write_wav
from click.testing import CliRunner
from conftest import REPO, SHARED_AUDIO, cli_env, printed_above_a_bar, run_cli, run_on_a_terminal
from sklearn.metrics import adjusted_rand_score

from genre_stream.cli.main import main
from genre_stream.library.db import LibraryDB, LibraryError
from genre_stream.library.scan import ScanConfig, scan


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _analysed_at(db_path: Path) -> dict[str, str]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT path, analysed_at FROM tracks"))


def _ari(clusters: list[dict], truth: dict[Path, str]) -> float:
    assigned = {p: c["cluster"] for c in clusters for p in c["tracks"]}
    keys = sorted(str(p) for p in truth)
    assert sorted(assigned) == keys, "every track must be in exactly one cluster"
    by_str = {str(p): g for p, g in truth.items()}
    return adjusted_rand_score([by_str[k] for k in keys], [assigned[k] for k in keys])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, str], Path]:
    """A 12-track synthetic library (3 styles x 4) scanned once by the CLI with 2 workers."""
    root = tmp_path_factory.mktemp("music")
    truth = synthetic_library(root / "lib")
    db = root / "library.sqlite"
    report = _json(run_cli("library", "scan", str(root / "lib"), "--db", str(db), "--workers", "2", "--json"))
    assert report["analysed"] == 12 and report["failed"] == 0 and report["tracks_in_library"] == 12
    return root, truth, db


def test_scan_stores_every_track(synthetic) -> None:
    _, truth, db_path = synthetic
    with LibraryDB(db_path) as db:
        tracks = {t.path: t for t in db.tracks()}
        labels = db.labels
    assert labels is not None and len(labels) == 10
    assert sorted(tracks) == sorted(str(p) for p in truth)
    for path, t in tracks.items():
        assert t.embedding.shape == (32,) and np.all(np.isfinite(t.embedding))
        assert t.probabilities.shape == (10,) and abs(float(t.probabilities.sum()) - 1.0) < 1e-3
        assert t.genre == labels[int(np.argmax(t.probabilities))]
        assert abs(t.duration - 3.5) < 0.01
        assert t.size == os.path.getsize(path) and len(t.hash) == 32


def test_cluster_recovers_the_groups(synthetic, tmp_path: Path) -> None:
    _, truth, db = synthetic
    lists = tmp_path / "lists"
    plot = tmp_path / "map.png"
    out = _json(run_cli("library", "cluster", "--db", str(db), "--k", "auto", "--playlists", str(lists), "--plot", str(plot), "--json"))
    assert out["k"] == 3, out["silhouette_by_k"]
    assert _ari(out["clusters"], truth) >= 0.8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    for c in out["clusters"]:
        lines = Path(c["playlist"]).read_text().splitlines()
        assert lines[0] == "#EXTM3U" and c["name"] in lines[1]
        assert [ln for ln in lines if not ln.startswith("#")] == c["tracks"]
    # a re-run with k=2 replaces its own playlists and leaves a user's file alone
    (lists / "cluster-09-mine.m3u").write_text("#EXTM3U\n/my/own.mp3\n")
    out2 = _json(run_cli("library", "cluster", "--db", str(db), "--k", "2", "--method", "agglomerative", "--playlists", str(lists), "--json"))
    assert sorted(p.name for p in lists.iterdir()) == sorted([Path(c["playlist"]).name for c in out2["clusters"]] + ["cluster-09-mine.m3u"])


def test_cluster_table_names_clusters_by_genre(synthetic, tmp_path: Path) -> None:
    _, _, db = synthetic
    proc = run_cli("library", "cluster", "--db", str(db), "--k", "3", "--playlists", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "12 tracks in 3 clusters" in proc.stdout
    with LibraryDB(db) as lib:
        genres = {t.genre for t in lib.tracks()}
    named = [line.split()[1] for line in proc.stdout.splitlines()[2:5]]
    assert all(any(g in name for g in genres) for name in named), proc.stdout


def test_similar_lists_same_group_first(synthetic, tmp_path: Path) -> None:
    root, truth, db = synthetic
    by_str = {str(p): g for p, g in truth.items()}
    for group in ("hits", "kick", "saw"):
        query = next(p for p, g in truth.items() if g == group)
        out = _json(run_cli("library", "similar", str(query), "--db", str(db), "-n", "5", "--json"))
        assert out["in_library"] is True and len(out["matches"]) == 5
        assert str(query) not in [m["path"] for m in out["matches"]]
        assert [by_str[m["path"]] for m in out["matches"][:3]] == [group] * 3
        sims = [m["similarity"] for m in out["matches"]]
        assert sims == sorted(sims, reverse=True)
    # a file outside the library is analysed on the fly
    outside = write_wav(tmp_path / "new-hits.wav", noise_hits(np.random.default_rng(99)))
    out = _json(run_cli("library", "similar", str(outside), "--db", str(db), "-n", "3", "--json"))
    assert out["in_library"] is False
    assert [by_str[m["path"]] for m in out["matches"]] == ["hits"] * 3


def test_export_csv_and_json(synthetic, tmp_path: Path) -> None:
    _, truth, db = synthetic
    proc = run_cli("library", "export", "--db", str(db), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    header = rows[0].split(",")
    assert len(rows) == 13 and header[:2] == ["path", "size"]
    assert len(header) == 11 + 10 + 32 and "p_jazz" in header and "emb_31" in header and header[9:11] == ["artist", "title"]
    dest = tmp_path / "index.json"
    proc = run_cli("library", "export", "--db", str(db), "--format", "json", "-o", str(dest))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(dest.read_text())
    assert len(data["labels"]) == 10 and len(data["tracks"]) == 12
    assert {t["path"] for t in data["tracks"]} == {str(p) for p in truth}
    for t in data["tracks"]:
        assert len(t["embedding"]) == 32 and abs(sum(t["probabilities"].values()) - 1) < 1e-3


def test_real_clip_variants_cluster_and_match(tmp_path: Path) -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip("needs ../shared/audio (real clips, present only in the project's workspace)")
    truth = real_library(tmp_path / "lib", SHARED_AUDIO)
    db = tmp_path / "lib.sqlite"
    scanned = run_cli("library", "scan", str(tmp_path / "lib"), "--db", str(db), "--workers", "1", "--json")
    assert _json(scanned)["analysed"] == 12
    out = _json(run_cli("library", "cluster", "--db", str(db), "--json", "--playlists", str(tmp_path / "pl")))
    assert _ari(out["clusters"], truth) >= 0.8, out
    by_str = {str(p): g for p, g in truth.items()}
    query = tmp_path / "lib" / "jazz" / "jazz-0.wav"
    sim = _json(run_cli("library", "similar", str(query), "--db", str(db), "-n", "3", "--json"))
    assert [by_str[m["path"]] for m in sim["matches"]] == ["jazz"] * 3


def _scan(db: LibraryDB, root: Path, **kw):
    return scan(db, [root], ScanConfig(workers=1, device="cpu", **kw))


def test_rescan_is_incremental(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    truth = synthetic_library(lib, per_group=2)
    files = sorted(truth)
    db_path = tmp_path / "lib.sqlite"
    with LibraryDB(db_path) as db:
        first = _scan(db, lib)
        assert sorted(first.analysed) == sorted(str(p) for p in files) and not first.failed
        before = _analysed_at(db_path)

        again = _scan(db, lib)  # nothing changed: nothing analysed, nothing rewritten
        assert again.analysed == [] and again.reused == [] and again.removed == [] and again.unchanged == 6
        assert _analysed_at(db_path) == before

        changed, deleted, touched, moved = files[0], files[1], files[2], files[3]
        write_wav(changed, noise_hits(np.random.default_rng(7)) * 0.3)  # new content
        deleted.unlink()
        os.utime(touched, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # same bytes, new mtime
        (lib / "moved").mkdir()
        moved_to = lib / "moved" / moved.name
        shutil.move(moved, moved_to)
        rep = _scan(db, lib)
        assert rep.analysed == [str(changed)]
        assert sorted(rep.reused) == sorted([str(touched), str(moved_to)])
        assert sorted(rep.removed) == sorted([str(deleted), str(moved)])
        after = _analysed_at(db_path)
        assert set(after) == {str(p) for p in files if p not in (deleted, moved)} | {str(moved_to)}
        assert after[str(changed)] != before[str(changed)]
        for p in files[2:]:
            if p != moved:
                assert after[str(p)] == before[str(p)], f"{p} was re-analysed"
        assert after[str(moved_to)] == before[str(moved)]
        assert db.get(touched).mtime_ns == os.stat(touched).st_mtime_ns

        # scanning another folder leaves this one's tracks alone
        other = tmp_path / "other"
        write_wav(other / "x.wav", noise_hits(np.random.default_rng(3)))
        rep = _scan(db, other)
        assert rep.analysed == [str(other / "x.wav")] and rep.removed == [] and db.count() == 6


def test_bad_files_are_recorded_and_listed(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write_wav(lib / "good.wav", noise_hits(np.random.default_rng(1)))
    (lib / "garbage.mp3").write_bytes(os.urandom(3000))
    (lib / "empty.flac").write_bytes(b"")
    good = write_wav(tmp_path / "whole.wav", noise_hits(np.random.default_rng(2)))
    (lib / "truncated.wav").write_bytes(good.read_bytes()[:44])  # a header and no samples
    db_path = tmp_path / "lib.sqlite"
    with LibraryDB(db_path) as db:
        rep = _scan(db, lib)
        assert rep.analysed == [str(lib / "good.wav")]
        reasons = dict(rep.failed)
        assert set(reasons) == {str(lib / n) for n in ("garbage.mp3", "empty.flac", "truncated.wav")}
        assert reasons[str(lib / "empty.flac")] == "empty file"
        again = _scan(db, lib)  # unchanged bad files are not retried ...
        assert again.failed == [] and again.skipped_errors == 3
        retried = _scan(db, lib, retry_errors=True)  # ... unless asked
        assert len(retried.failed) == 3
    proc = run_cli("library", "errors", "--db", str(db_path))
    assert proc.returncode == 0, proc.stderr
    for name in ("garbage.mp3", "empty.flac", "truncated.wav"):
        assert str(lib / name) in proc.stdout
    assert "empty file" in proc.stdout
    listed = json.loads(run_cli("library", "errors", "--db", str(db_path), "--json").stdout)
    assert len(listed) == 3 and all(e["reason"] for e in listed)
    # a fixed file leaves the error list; a deleted bad file does too
    write_wav(lib / "garbage.mp3".replace(".mp3", ".wav"), noise_hits(np.random.default_rng(4)))
    (lib / "garbage.mp3").unlink()
    with LibraryDB(db_path) as db:
        rep = _scan(db, lib)
        assert str(lib / "garbage.mp3") in rep.removed
        assert {e.path for e in db.errors()} == {str(lib / "empty.flac"), str(lib / "truncated.wav")}


def _wait_for_tracks(db_path: Path, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path, timeout=5) as conn:
                    n = conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
            except sqlite3.OperationalError:  # schema not created yet
                n = 0
            if n >= at_least:
                return n
        assert proc.poll() is None, f"scan ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError("scan made no progress")


def test_interrupted_scan_resumes(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    truth = synthetic_library(lib, per_group=6)
    n = len(truth)
    db_path = tmp_path / "lib.sqlite"
    cmd = [sys.executable, "-m", "genre_stream", "library", "scan", str(lib), "--db", str(db_path), "--workers", "2", "--json"]

    # 1. killed outright (SIGKILL to the whole process group, workers included)
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_tracks(db_path, 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    done_1 = _analysed_at(db_path)
    assert 1 <= len(done_1) < n

    # 2. stopped politely (SIGTERM; one in-process worker this time): exit 130, report says interrupted
    proc = subprocess.Popen([*cmd, "--workers", "1"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_tracks(db_path, len(done_1) + 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["unchanged"] == len(done_1)
    done_2 = _analysed_at(db_path)
    assert {p: done_2[p] for p in done_1} == done_1, "finished tracks were analysed again"

    # 3. the resumed scan analyses only what is left
    report = _json(run_cli("library", "scan", str(lib), "--db", str(db_path), "--workers", "1", "--json"))
    assert report["analysed"] == n - len(done_2) and report["unchanged"] == len(done_2) and not report["interrupted"]
    final = _analysed_at(db_path)
    assert len(final) == n and {p: final[p] for p in done_2} == done_2


def test_a_dying_worker_costs_no_tracks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lib = tmp_path / "lib"
    truth = synthetic_library(lib, per_group=1)
    killed: list[int] = []

    def kill_a_worker(_outcome: object) -> None:
        workers = multiprocessing.active_children()
        if not killed and workers:
            killed.append(workers[0].pid)
            os.kill(workers[0].pid, signal.SIGKILL)  # what the OOM killer or a decoder segfault would do

    with LibraryDB(tmp_path / "lib.sqlite") as db:
        rep = scan(db, [lib], ScanConfig(workers=2, device="cpu"), on_outcome=kill_a_worker)
        assert killed, "no worker process was running"
        assert rep.failed == [] and db.count() == len(truth) and db.errors() == []
    assert "analysis process died" in caplog.text


def test_upsert_track_for_the_daemon(tmp_path: Path, engine) -> None:
    from genre_stream.tracks.analysis import analyse_file

    wav = write_wav(tmp_path / "arrived.wav", noise_hits(np.random.default_rng(5)))
    result = analyse_file(wav, engine)
    db_path = tmp_path / "lib.sqlite"
    with LibraryDB(db_path) as db:
        db.upsert_track(wav, result)
    seen: list[object] = []
    # another thread (the watch source's) opens its own connection and sees the committed track
    def read() -> None:
        with LibraryDB(db_path) as other:
            seen.append(other.get(wav))

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    track = seen[0]
    assert track is not None and track.genre == result.genre
    assert np.allclose(track.embedding, result.embedding) and np.allclose(track.probabilities, result.probabilities)
    with LibraryDB(db_path) as db:  # a rescan finds it up to date
        rep = _scan(db, tmp_path)
        assert rep.unchanged == 1 and rep.analysed == []
        result.labels = list(reversed(result.labels))
        with pytest.raises(LibraryError, match="labels"):
            db.upsert_track(wav, result)


def test_bad_requests_get_clear_errors(synthetic, tmp_path: Path) -> None:
    _, _, db = synthetic
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        res = runner.invoke(main, ["library", *args])
        return res.exit_code, res.output

    code, out = run("scan", str(tmp_path / "nope"), "--db", str(tmp_path / "x.sqlite"))
    assert code == 1 and "nope: no such file or directory" in out and "nothing was scanned" in out
    fake_model = tmp_path / "fake.onnx"
    fake_model.write_text("not a model")
    code, out = run("scan", str(tmp_path), "--db", str(tmp_path / "x.sqlite"), "--model", str(fake_model))
    assert code == 1 and "fake.onnx: not a loadable ONNX model" in out
    code, out = run("cluster", "--db", str(tmp_path / "missing.sqlite"))
    assert code == 1 and "no library database yet" in out
    code, out = run("cluster", "--db", str(db), "--k", "40", "--playlists", str(tmp_path))
    assert code == 1 and "--k 40 does not fit a library of 12 tracks" in out
    code, out = run("cluster", "--db", str(db), "--k", "many")
    assert code == 2 and "neither a number nor 'auto'" in out
    code, out = run("cluster", "--db", str(db), "--playlists", str(tmp_path), "--plot", str(tmp_path / "map.xyz"))
    assert code == 1 and "map.xyz" in out and not (tmp_path / "map.xyz").exists()
    code, out = run("similar", str(tmp_path / "ghost.wav"), "--db", str(db))
    assert code == 1 and "ghost.wav: not in the library" in out
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF????WAVE" + os.urandom(100))
    code, out = run("similar", str(junk), "--db", str(db))
    assert code == 1 and "junk.wav" in out
    not_db = tmp_path / "notes.txt"
    not_db.write_text("my notes\n" * 200)
    code, out = run("errors", "--db", str(not_db))
    assert code == 1 and "notes.txt: not a usable library database" in out
    assert not_db.read_text() == "my notes\n" * 200, "a file that is not a database must not be altered"


def test_cluster_names_and_duplicate_tracks() -> None:
    from genre_stream.library.cluster import ClusterConfig, cluster_library
    from genre_stream.library.db import LibraryMatrix

    labels = ["rock", "metal", "jazz"]
    probs = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.58, 0.42, 0.0], [0.0, 0.05, 0.95]], np.float32)
    emb = np.array([[1, 0, 0], [1, 0, 0], [1, 0.05, 0], [0, 0, 1]], np.float32).repeat(11, axis=1)[:, :32]
    matrix = LibraryMatrix(["a", "b", "c", "d"], ["rock", "rock", "rock", "jazz"], np.ones(4, np.float32), probs, emb)
    two = cluster_library(matrix, labels, ClusterConfig(k=2))
    assert [(c.name, sorted(c.paths)) for c in two.clusters] == [("rock/metal", ["a", "b", "c"]), ("jazz", ["d"])]
    # asking for as many clusters as tracks, with two identical tracks, gives fewer clusters, not a crash
    many = cluster_library(matrix, labels, ClusterConfig(k=4))
    assert many.k == 3 and sorted(len(c.paths) for c in many.clusters) == [1, 1, 2]
    assert len({c.name for c in many.clusters}) == 3, "cluster names are unique"


def test_scan_exit_status_says_files_failed(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write_wav(lib / "good.wav", noise_hits(np.random.default_rng(1)))
    (lib / "garbage.mp3").write_bytes(os.urandom(3000))
    db = tmp_path / "lib.sqlite"
    proc = run_cli("library", "scan", str(lib), "--db", str(db), "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    assert "1 analysed" in proc.stdout and "1 failed" in proc.stdout  # the good file is still indexed
    assert "library errors" in proc.stderr
    assert proc.stderr.count(f"{lib / 'garbage.mp3'}: not decodable audio") == 1  # named as it happens, once
    (lib / "good.wav").touch()  # same bytes, new mtime: reused, so the bar has two steps
    (lib / "other.wav").write_bytes((lib / "good.wav").read_bytes())
    code, screen = run_on_a_terminal("library", "scan", str(lib), "--db", str(db), "--workers", "1", "--retry-errors")
    assert code == 1, screen
    assert "scanning [" in screen
    assert printed_above_a_bar(screen, "WARNING genre_stream.library.scan: " + str(lib / "garbage.mp3"))
    assert printed_above_a_bar(screen, "3 audio files: ")


def test_cluster_without_matplotlib_still_clusters_and_says_why_there_is_no_map(synthetic, tmp_path: Path) -> None:
    _, _, db = synthetic
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    lists = tmp_path / "lists"
    proc = run_cli("library", "cluster", "--db", str(db), "--k", "3", "--playlists", str(lists), "--plot", str(tmp_path / "map.png"),
                   env={"PYTHONPATH": f"{REPO}{os.pathsep}{hide}"})
    assert proc.returncode == 1
    assert "12 tracks in 3 clusters" in proc.stdout
    assert len(list(lists.glob("*.m3u"))) == 3
    assert "no map drawn: --plot needs matplotlib, which comes with the [plot] extra" in proc.stderr
    assert not (tmp_path / "map.png").exists()


def _tagged(path: Path, audio: np.ndarray, artist: str, title: str, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", 22050, 1, format=fmt) as fh:
        fh.artist, fh.title = artist, title
        fh.write(audio.astype(np.float32))
    return path


def _id3v2_frame(frame_id: str, text: str) -> bytes:
    body = b"\x01" + text.encode("utf-16")  # encoding 1: UTF-16 with BOM, as most taggers write
    return frame_id.encode() + len(body).to_bytes(4, "big") + b"\x00\x00" + body


def test_collector_tags_queries_and_duplicates(tmp_path: Path) -> None:
    """Tags from WAV/FLAC/OGG and ID3v2 MP3; `library ls` queries; `library duplicates`; user files unchanged."""
    rng = np.random.default_rng(7)
    lib = tmp_path / "lib"
    _tagged(lib / "a.wav", noise_hits(rng), "Art Blakey", "Moanin'", "WAV")
    _tagged(lib / "b.flac", noise_hits(rng), "João Gilberto", "Só Danço Samba", "FLAC")
    _tagged(lib / "live" / "c.ogg", noise_hits(rng), "Art Blakey", "Blues March", "OGG")
    plain = tmp_path / "plain.mp3"
    sf.write(plain, noise_hits(rng).astype(np.float32), 22050, format="MP3")
    frames = _id3v2_frame("TIT2", "Kind of Blue") + _id3v2_frame("TPE1", "Miles Davis")
    size = len(frames)
    syncsafe = bytes([(size >> 21) & 127, (size >> 14) & 127, (size >> 7) & 127, size & 127])
    (lib / "d.mp3").write_bytes(b"ID3\x03\x00\x00" + syncsafe + frames + plain.read_bytes())
    shutil.copy(lib / "a.wav", lib / "live" / "a-copy.wav")
    before = {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()}
    db = tmp_path / "lib.sqlite"
    proc = run_cli("library", "scan", str(lib), "--db", str(db), "--workers", "1")
    assert proc.returncode == 0, proc.stderr

    def ls(*query: str) -> list[dict]:
        return _json(run_cli("library", "ls", "--db", str(db), "--json", *query))

    everything = {Path(t["path"]).name: t for t in ls()}
    assert {n: (t["artist"], t["title"]) for n, t in everything.items()} == {
        "a.wav": ("Art Blakey", "Moanin'"), "a-copy.wav": ("Art Blakey", "Moanin'"), "b.flac": ("João Gilberto", "Só Danço Samba"),
        "c.ogg": ("Art Blakey", "Blues March"), "d.mp3": ("Miles Davis", "Kind of Blue")}
    assert sorted(Path(t["path"]).name for t in ls("artist:blakey")) == ["a-copy.wav", "a.wav", "c.ogg"]
    assert [Path(t["path"]).name for t in ls("artist:blakey", "title:blues")] == ["c.ogg"]
    assert sorted(Path(t["path"]).name for t in ls("LIVE")) == ["a-copy.wav", "c.ogg"]  # a bare word: path substring
    genre = everything["d.mp3"]["genre"]
    assert {Path(t["path"]).name for t in ls(f"genre:{genre.upper()}")} == {n for n, t in everything.items() if t["genre"] == genre}
    cut = sorted(t["confidence"] for t in everything.values())[2]
    assert {Path(t["path"]).name for t in ls(f"confidence>={cut}")} == {n for n, t in everything.items() if t["confidence"] >= cut}
    text = run_cli("library", "ls", "--db", str(db), "artist:gilberto")
    assert text.returncode == 0 and f"{lib / 'b.flac'}  [João Gilberto - Só Danço Samba]" in text.stdout

    for bad, why in (("mood:happy", "unknown field 'mood'"), ("genre:polka", "'polka' is not a genre of this library"),
                     ("confidence>high", "'high' is not a number"), ("artist>3", "artist is not a number field")):
        proc = run_cli("library", "ls", "--db", str(db), bad)
        assert proc.returncode == 2 and bad in proc.stderr and why in proc.stderr, (bad, proc.stderr)

    dup = _json(run_cli("library", "duplicates", "--db", str(db), "--json"))
    assert dup == [{"hash": dup[0]["hash"], "size": (lib / "a.wav").stat().st_size,
                    "paths": [str(lib / "a.wav"), str(lib / "live" / "a-copy.wav")]}]
    text = run_cli("library", "duplicates", "--db", str(db))
    assert text.returncode == 0 and "2 copies of" in text.stdout and "1 group(s) of identical files" in text.stdout
    assert {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()} == before  # tags are only read


def test_a_version_1_library_gets_its_tags_on_the_next_scan(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _tagged(lib / "a.flac", noise_hits(np.random.default_rng(3)), "Nina Simone", "Sinnerman", "FLAC")
    db = tmp_path / "lib.sqlite"
    assert run_cli("library", "scan", str(lib), "--db", str(db), "--workers", "1").returncode == 0
    with sqlite3.connect(db) as conn:  # what genre-stream before tags wrote
        conn.execute("ALTER TABLE tracks DROP COLUMN artist")
        conn.execute("ALTER TABLE tracks DROP COLUMN title")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    (listed,) = _json(run_cli("library", "ls", "--db", str(db), "--json"))
    assert listed["artist"] is None and listed["genre"]  # migrated on open; the analysis is kept
    proc = run_cli("library", "scan", str(lib), "--db", str(db), "--workers", "1")
    assert proc.returncode == 0 and "0 analysed" in proc.stdout and "1 unchanged" in proc.stdout
    (listed,) = _json(run_cli("library", "ls", "--db", str(db), "--json", "artist:nina"))
    assert listed["title"] == "Sinnerman"
