"""The watch source and classify against what a year of user folders brings: names that are not UTF-8,
symlinks made at run time (out of the tree, loops, to /), a state dir that fills up, and paths
this user may not read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers_fs import fill, small_filesystem
from _helpers_sources import running, write_tone
from conftest import REPO, cli_env, run_cli
from test_sources_watch import Tagger, fingerprint, make_source, settle_time

ODD = b"caf\xe9 \xff.wav"  # Latin-1 bytes: not UTF-8, so Python sees lone surrogates in the str


def odd_path(folder: Path) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + ODD))


def write_odd(folder: Path, seconds: float) -> Path:
    """A tone under the non-UTF-8 name (soundfile cannot create such a name itself: write, then rename)."""
    plain = folder / ".writing.wav"
    write_tone(plain, seconds)
    target = odd_path(folder)
    plain.rename(target)
    return target


def test_non_utf8_name_is_tagged_and_others_keep_coming(tmp_path: Path, engine) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_odd(folder, 1.0)
    source = make_source(folder, tmp_path / "state", use_watchdog=False)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(1)
        write_tone(folder / "later.wav", 1.0)  # the watch must still be alive after the odd name
        tagger.wait_events(2)
        settle_time()
    events = {e["type"] for e in tagger.events}
    assert events == {"track_tagged"}, tagger.events
    assert sorted(os.fsencode(Path(e["path"]).name) for e in tagger.events) == sorted([ODD, b"later.wav"])
    assert source.stats()["tagged"] == 2
    # A restart does not tag the odd file again: its state row was found by its bytes.
    again = make_source(folder, tmp_path / "state", use_watchdog=False)
    tagger2 = Tagger(again, engine)
    with running(again, tagger2.collector):
        settle_time()
    assert tagger2.events == []


def test_classify_cli_handles_a_non_utf8_name(tmp_path: Path) -> None:
    write_odd(tmp_path, 2.0)
    write_tone(tmp_path / "plain.wav", 2.0)
    result = run_cli("classify", "--json", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    paths = sorted(Path(json.loads(line)["path"]).name for line in result.stdout.splitlines())
    assert paths == ["caf\\xe9 \\xff.wav", "plain.wav"]


def test_daemon_writes_valid_utf8_json_for_a_non_utf8_name(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_odd(folder, 1.0)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "genre_stream", "run", "--source", f"box=watch:{folder}",
                             "--jsonl", str(out), "--state-dir", str(tmp_path / "state"), "--stats-interval", "0",
                             "--history"], env=cli_env({"GENRE_STREAM_WATCH_SETTLE_SECONDS": "0.3",
                                                        "GENRE_STREAM_WATCH_POLL_SECONDS": "0.2",
                                                        "GENRE_STREAM_WATCH_LIBRARY_DB": str(tmp_path / "lib.sqlite")}),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and len(out.read_bytes().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "no JSON lines written"
            time.sleep(0.2)
        time.sleep(1.0)  # the result is recorded right after the events are published
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    tagged, library_error = map(json.loads, out.read_bytes().decode("utf-8").splitlines())  # strict UTF-8 JSON
    assert tagged["type"] == "track_tagged" and tagged["path"].endswith("caf\\xe9 \\xff.wav")
    # The library database cannot hold such a name: that is reported, and the file is still marked done.
    assert library_error["type"] == "error" and library_error["reason"].startswith("library index:")
    assert b"Traceback" not in err
    from genre_stream.watch.state import WatchState

    assert WatchState(tmp_path / "state" / "box.sqlite3").lookup(odd_path(folder))[1] == "tagged"


@pytest.mark.parametrize("use_watchdog", [True, False], ids=["inotify", "polling"])
def test_symlinks_made_at_run_time_are_not_followed(tmp_path: Path, engine, use_watchdog: bool) -> None:
    folder, ext, done = tmp_path / "in", tmp_path / "ext", tmp_path / "done"
    (folder / "sub").mkdir(parents=True)
    ext.mkdir()
    write_tone(ext / "outside.wav", 1.0)
    write_tone(folder / "sub" / "inside.wav", 1.0)
    before = fingerprint(ext)
    source = make_source(folder, tmp_path / "state", use_watchdog, done_dir=done)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(1)
        (folder / "extlink").symlink_to("../ext")  # out of the tree
        (folder / "sub" / "up").symlink_to("..")  # a loop back into it
        (folder / "root").symlink_to("/")  # the whole filesystem
        (folder / "song-link.wav").symlink_to(ext / "outside.wav")  # a file link out of the tree
        write_tone(folder / "new.wav", 1.0)  # the source is still working
        tagger.wait_events(2)
        settle_time()
        settle_time()
    assert tagger.tagged() == ["inside.wav", "new.wav"], tagger.events  # each once, nothing from outside
    assert fingerprint(ext) == before  # nothing moved out of a folder the source was never given
    assert sorted(p.name for p in done.rglob("*.wav")) == ["inside.wav", "new.wav"]
    assert (folder / "song-link.wav").is_symlink()


def test_full_state_dir_neither_stops_the_watch_nor_retags(tmp_path: Path, engine, caplog) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with small_filesystem(tmp_path / "state", size="256k") as state:
        source = make_source(folder, state, use_watchdog=False)
        tagger = Tagger(source, engine)
        with running(source, tagger.collector):
            write_tone(folder / "first.wav", 1.0)
            tagger.wait_events(1)
            filler = fill(state)
            write_tone(folder / "second.wav", 1.0)
            (folder / "notes.txt").write_text("not audio")  # recorded as unsupported from the source's own thread
            tagger.wait_events(2)
            tagger.collector.wait_for(lambda items: any("notes.txt" in getattr(i, "reason", "") for i in items))
            settle_time()
            settle_time()  # several rescans: nothing is handed on twice while the state cannot be written
            assert tagger.tagged() == ["first.wav", "second.wav"]
            assert "cannot be written" in caplog.text
            filler.unlink()
            deadline = time.monotonic() + 10
            while "writable again" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.1)
        # After a restart nothing comes back: the held results reached the state file.
        again = make_source(folder, state, use_watchdog=False)
        tagger2 = Tagger(again, engine)
        with running(again, tagger2.collector):
            settle_time()
        assert tagger2.events == [] and tagger2.collector.problems() == []


def without_root_override() -> list[str]:
    """Run a command as this (root) user but without the capabilities that ignore file permissions."""
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]


def test_classify_reports_unreadable_paths_and_goes_on(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "locked" / "deep").mkdir(parents=True)
    write_tone(tmp_path / "ok" / "good.wav", 2.0)
    write_tone(tmp_path / "locked" / "deep" / "hidden.wav", 2.0)
    write_tone(tmp_path / "noread.wav", 2.0)
    (tmp_path / "locked").chmod(0)
    (tmp_path / "noread.wav").chmod(0)
    try:
        probe = subprocess.run([*without_root_override(), "cat", str(tmp_path / "noread.wav")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("file permissions are not enforced for this user (cannot drop CAP_DAC_OVERRIDE)")
        result = subprocess.run(
            [*without_root_override(), sys.executable, "-m", "genre_stream", "classify", "--json", str(tmp_path),
             str(tmp_path / "noread.wav"), str(tmp_path / "locked" / "deep" / "hidden.wav")],
            capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300)
    finally:
        (tmp_path / "locked").chmod(0o755)
        (tmp_path / "noread.wav").chmod(0o644)
    assert result.returncode == 1, result.stderr  # failures reported, not a usage error (2)
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == ["good.wav"]
    assert f"{tmp_path / 'locked'}: cannot read folder (Permission denied)" in result.stderr
    assert f"{tmp_path / 'locked' / 'deep' / 'hidden.wav'}: cannot access (Permission denied)" in result.stderr
    assert "noread.wav" in result.stderr and "Traceback" not in result.stderr


WATCH_UNREADABLE = """
import logging, sys, threading, time
from pathlib import Path
from genre_stream.sources import parse_source
logging.basicConfig(level=logging.WARNING, format="%(message)s")
source = parse_source("watch:" + sys.argv[1], state_dir=Path(sys.argv[2]), settle_seconds=0.1, poll_seconds=0.1,
                      use_watchdog=False)
stop = threading.Event()
threading.Timer(1.5, stop.set).start()
source.run(lambda item: print("ITEM", type(item).__name__, getattr(item, "path", "")), stop)
"""


def test_watch_reports_an_unreadable_subfolder_once(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    write_tone(folder / "locked" / "x.wav", 0.5)
    write_tone(folder / "open.wav", 0.5)
    (folder / "locked").chmod(0)
    try:
        result = subprocess.run([*without_root_override(), sys.executable, "-c", WATCH_UNREADABLE, str(folder),
                                 str(tmp_path / "state")], capture_output=True, text=True, env=cli_env(), cwd=REPO,
                                timeout=120)
    finally:
        (folder / "locked").chmod(0o755)
    if "ITEM TrackReady" in result.stdout and "x.wav" in result.stdout:
        pytest.skip("file permissions are not enforced for this user (cannot drop CAP_DAC_OVERRIDE)")
    assert result.returncode == 0, result.stderr
    assert "open.wav" in result.stdout
    assert result.stderr.count("cannot read folder") == 1, result.stderr  # about 15 rescans, one warning


def test_a_file_that_fails_once_is_retried_before_it_is_failed(tmp_path: Path) -> None:
    """A download that pauses longer than the settle time is not moved to failed_dir half-written."""
    folder, failed = tmp_path / "in", tmp_path / "failed"
    folder.mkdir()
    whole = tmp_path / "whole.wav"
    write_tone(whole, 3.0)
    data = whole.read_bytes()
    out, err_path = tmp_path / "out.jsonl", tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genre_stream", "-v", "run", "--source", f"box=watch:{folder}", "--jsonl", str(out),
             "--state-dir", str(tmp_path / "state"), "--stats-interval", "0", "--no-history"],
            env=cli_env({"GENRE_STREAM_WATCH_SETTLE_SECONDS": "0.3", "GENRE_STREAM_WATCH_POLL_SECONDS": "0.2",
                         "GENRE_STREAM_WATCH_FAILED_DIR": str(failed)}),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)

    def wait(cond, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert proc.poll() is None and time.monotonic() < deadline, f"{what}:\n{err_path.read_text()}"
            time.sleep(0.1)

    def events() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    try:
        (folder / "slow.wav").write_bytes(data[: len(data) // 3])  # the writer stalls here
        (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)  # never becomes audio
        wait(lambda: err_path.read_text().count("trying once more") >= 2, "first attempts")
        with open(folder / "slow.wav", "ab") as fh:  # ...and resumes
            fh.write(data[len(data) // 3 :])
        wait(lambda: {e["type"] for e in events()} >= {"track_tagged", "error"}, "verdicts")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    by_name = {(Path(e["path"]).name, e["type"]) for e in events()}
    assert by_name == {("slow.wav", "track_tagged"), ("broken.wav", "error")}, events()  # one verdict each
    assert [p.name for p in failed.rglob("*")] == ["broken.wav"]
    assert (folder / "slow.wav").read_bytes() == data


def test_a_deleted_and_recreated_folder_is_watched_again_at_once(tmp_path, engine):
    """inotify's watch dies with the folder: the source notices the new folder within a poll, not the 5-minute rescan."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = make_source(folder, tmp_path / "state", use_watchdog=True)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        write_tone(folder / "first.wav", 1.0)
        tagger.wait_events(1)
        shutil.rmtree(folder)
        time.sleep(1.0)
        folder.mkdir()
        time.sleep(1.0)
        write_tone(folder / "second.wav", 1.0)
        tagger.wait_events(2, timeout=15)
    assert tagger.tagged() == ["first.wav", "second.wav"]
    assert any("disappeared" in p.reason for p in tagger.collector.problems())
