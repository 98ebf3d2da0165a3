"""Tag history: real SQLite on disk, the writer thread, retention, segments and the history command."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from _helpers_dashboard import changed, state
from conftest import REPO, cli_env, run_cli

from genre_stream.common.timespec import parse_time
from genre_stream.history.reader import HistoryError, HistoryReader, StateRow, merge_segments, segments_csv
from genre_stream.sinks.history import History, HistoryConfig
from genre_stream.sinks.messages import SourceStats

T0 = 1_790_000_000.0  # a fixed instant, so expected segment times are exact


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll a background effect; a bounded wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# A recorded afternoon on one source, one state every 5 s: rock, a silent gap, rock again, a drift to
# jazz, then the daemon is off for 10 minutes and comes back on jazz.
RECORDED = [
    (0, "rock", 0.8), (5, "rock", 0.6), (10, "rock", 0.7),
    (15, None, 0.0), (20, None, 0.0),
    (25, "rock", 0.9),
    (30, "jazz", 0.5), (35, "jazz", 0.7),
    (635, "jazz", 0.6),
]


def recorded_messages(source: str = "radio"):
    return [state(source, g, c, T0 + t, "music" if g else "silence") for t, g, c in RECORDED]


EXPECTED = [  # (start, end, state, genre, mean confidence, windows)
    (0, 15, "music", "rock", 0.7, 3),
    (15, 25, "silence", None, 0.0, 2),
    (25, 30, "music", "rock", 0.9, 1),
    (30, 35, "music", "jazz", 0.6, 2),  # the 600 s gap closes it at its last state
    (635, 635, "music", "jazz", 0.6, 1),
]


def check_segments(segments, source: str = "radio") -> None:
    got = [(s.start - T0, s.end - T0, s.state, s.genre, round(s.confidence, 6), s.windows) for s in segments]
    assert got == [(a, b, st, g, pytest.approx(c), n) for a, b, st, g, c, n in EXPECTED]
    assert {s.source for s in segments} == {source}


def test_merge_segments_from_recorded_sequence():
    rows = [StateRow("radio", T0 + t, "music" if g else "silence", g, c) for t, g, c in RECORDED]
    check_segments(merge_segments(rows, max_gap=60))


def test_history_records_and_reports_segments(tmp_path):
    history = History(HistoryConfig.in_state_dir(tmp_path))
    history.start()
    for msg in recorded_messages():
        history.publish(msg)
    history.publish(changed("radio", "rock", "jazz", T0 + 30))
    history.publish(SourceStats("radio", {"windows": 9}))  # periodic stats are not history
    for msg in recorded_messages("studio")[:2]:  # another source interleaved must not mix in
        history.publish(msg)
    history.close()
    stats = history.counters()
    assert (stats.written, stats.dropped, stats.write_errors) == (len(RECORDED) + 3, 0, 0)

    reader = HistoryReader(tmp_path / "history.sqlite")
    assert reader.sources() == ["radio", "studio"]
    check_segments(reader.segments("radio"))
    # The stored payloads are the MQTT payloads, unchanged.
    assert reader.states("radio")[0] == recorded_messages()[0].to_dict()
    assert reader.events("radio") == [changed("radio", "rock", "jazz", T0 + 30).to_dict()]
    # Time range: only the states inside it, latest N with limit.
    inside = reader.segments("radio", since=T0 + 10, until=T0 + 27)
    assert [(s.start - T0, s.state) for s in inside] == [(10, "music"), (15, "silence"), (25, "music")]
    assert [s["timestamp"] for s in reader.states("radio", limit=2)] == [
        m.timestamp for m in recorded_messages()[-2:]
    ]


def test_retention_prunes_old_entries_in_background(tmp_path):
    now = time.time()
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=90, prune_interval_seconds=0.2))
    old = [state("radio", "rock", 0.8, now - 100 * 86400 + i) for i in range(3)]
    recent = [state("radio", "jazz", 0.7, now - 10 * 86400), state("radio", "jazz", 0.7, now - 60)]
    history.start()
    for msg in old + recent:
        history.publish(msg)
    history.publish(changed("radio", "rock", "jazz", now - 95 * 86400))
    # The writer prunes periodically: the old rows (written after the first prune) go on a later pass.
    assert wait_for(lambda: history.counters().pruned >= 4), history.counters()
    history.close()
    reader = HistoryReader(tmp_path / "history.sqlite")
    assert [s["genre"] for s in reader.states(since=0)] == ["jazz", "jazz"]
    assert reader.events(since=0) == []


def test_retention_zero_keeps_everything(tmp_path):
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=0, prune_interval_seconds=0.05))
    history.start()
    history.publish(state("radio", "rock", 0.8, 1_000_000.0))  # 1970: older than any retention
    history.close()
    assert len(HistoryReader(tmp_path / "history.sqlite").states(since=0)) == 1
    assert history.counters().pruned == 0


def test_unwritable_path_is_reported_not_fatal_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    history = History(HistoryConfig.in_state_dir(blocker))
    caplog.set_level(logging.ERROR, logger="genre_stream.sinks.history")
    history.start()
    history.publish(state("radio", "rock", 0.8, T0))  # must not raise
    assert wait_for(lambda: history.counters().write_errors == 1)
    stats = history.counters()
    assert str(blocker / "history.sqlite") in stats.last_error
    assert any(str(blocker / "history.sqlite") in r.getMessage() and "daemon goes on" in r.getMessage()
               for r in caplog.records)
    # The disk is fixed while the daemon runs: the writer reopens and records again.
    blocker.unlink()
    blocker.mkdir()
    history.publish(state("radio", "jazz", 0.7, T0 + 5))
    history.close()
    assert history.counters().written == 1
    assert [s["genre"] for s in HistoryReader(blocker / "history.sqlite").states(since=0)] == ["jazz"]


def test_full_queue_drops_and_counts_without_blocking(tmp_path):
    history = History(HistoryConfig.in_state_dir(tmp_path, queue_size=2))  # writer not started: nothing drains
    for i in range(5):
        history.publish(state("radio", "rock", 0.8, T0 + i))
    assert history.counters().dropped == 3
    assert history.counters().queued == 2
    history.start()
    history.close()
    assert history.counters().written == 2


READONLY_SCRIPT = r"""
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.ERROR, format="%(message)s")
sys.path.insert(0, sys.argv[2])
from _helpers_dashboard import state
from genre_stream.sinks.history import History, HistoryConfig
h = History(HistoryConfig.in_state_dir(Path(sys.argv[1])))
h.start()
for i in range(3):
    h.publish(state("radio", "rock", 0.8, 1_790_000_000.0 + i))
h.close()
s = h.counters()
print(json.dumps({"written": s.written, "write_errors": s.write_errors, "last_error": s.last_error}))
"""


def _readonly_command(directory: Path, argv: list[str]) -> list[str]:
    """Run ``argv`` with ``directory`` read-only: chmod for a normal user; root ignores permissions,
    so as root the directory is bind-mounted read-only in a private mount namespace."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        for f in directory.iterdir():
            f.chmod(0o444)
        return argv
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without a usable `unshare -m`: cannot make a directory read-only for root")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", str(directory), *argv]


def test_readonly_database_gives_clear_error(tmp_path):
    state_dir = tmp_path / "state"
    history = History(HistoryConfig.in_state_dir(state_dir))  # an existing database from an earlier run
    history.start()
    history.publish(state("radio", "jazz", 0.7, T0 - 60))
    history.close()
    before = (state_dir / "history.sqlite").read_bytes()

    argv = [sys.executable, "-c", READONLY_SCRIPT, str(state_dir), str(Path(__file__).parent)]
    proc = subprocess.run(_readonly_command(state_dir, argv), capture_output=True, text=True, timeout=60,
                          env=cli_env())
    try:
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["written"] == 0 and result["write_errors"] >= 1
        assert str(state_dir / "history.sqlite") in result["last_error"]
        assert "readonly" in result["last_error"].replace("-", "") or "Read-only" in result["last_error"]
        assert f"cannot write tag history to {state_dir / 'history.sqlite'}" in proc.stderr
        assert proc.stderr.count("cannot write tag history") == 1  # reported once, not per message
    finally:
        state_dir.chmod(0o755)
    assert (state_dir / "history.sqlite").read_bytes() == before  # the user's data is untouched
    assert [s["genre"] for s in HistoryReader(state_dir / "history.sqlite").states(since=0)] == ["jazz"]


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(HistoryError, match=r"no tag history here"):
        HistoryReader(tmp_path / "history.sqlite").states()
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match=rf"{bogus}.*not a readable genre-stream history"):
        HistoryReader(bogus).segments()


# -- time specs ----------------------------------------------------------------------------
def test_parse_time_forms():
    now = datetime(2026, 11, 26, 16, 30, 0).astimezone()
    assert parse_time("now", now) == now.timestamp()
    assert parse_time("-1h", now) == now.timestamp() - 3600
    assert parse_time("-30m", now) == now.timestamp() - 1800
    assert parse_time("-2d", now) == now.timestamp() - 2 * 86400
    assert parse_time("14:00", now) == (now.replace(hour=14, minute=0)).timestamp()
    assert parse_time("2026-11-26T14:00:00Z") == datetime.fromisoformat("2026-11-26T14:00:00+00:00").timestamp()
    assert parse_time("2026-11-26T14:00") == datetime(2026, 11, 26, 14, 0).astimezone().timestamp()
    for bad, why in [("yesterday-ish", "not a time"), ("25:00", "not a clock time"), ("", "empty")]:
        with pytest.raises(ValueError, match=why):
            parse_time(bad, now)


# -- the history command -------------------------------------------------------------------
@pytest.fixture
def recorded_state_dir(tmp_path):
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=0))
    history.start()
    for msg in recorded_messages():
        history.publish(msg)
    history.close()
    return tmp_path


def _iso(t: float) -> str:
    return datetime.fromtimestamp(T0 + t).astimezone().isoformat()


def invoke(*args: str):
    """The CLI in-process (click's runner) for the cheap cases; a process start costs seconds here."""
    from click.testing import CliRunner

    from genre_stream.cli.main import main

    return CliRunner().invoke(main, list(args))


def test_history_command_formats(recorded_state_dir):
    common = ["history", "--state-dir", str(recorded_state_dir), "--since", _iso(-1), "--until", _iso(700)]
    proc = run_cli(*common, "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["genre"], r["state"], r["windows"], r["duration"]) for r in rows] == [
        ("rock", "music", 3, 15.0), (None, "silence", 2, 10.0), ("rock", "music", 1, 5.0),
        ("jazz", "music", 2, 5.0), ("jazz", "music", 1, 0.0),
    ]
    assert rows[0]["confidence"] == pytest.approx(0.7)

    # The other formats in-process (a process start costs seconds on this machine).
    result = invoke(*common, "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["genre"] for r in table] == ["rock", "", "rock", "jazz", "jazz"]

    result = invoke(*common, "--source", "radio")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["source", "start", "end", "duration", "genre", "confidence"]
    assert "(silence)" in lines[2] and lines[1].split()[-2:] == ["rock", "0.70"]
    assert datetime.fromtimestamp(T0).strftime("%H:%M:%S") in lines[1]  # local time for people


def test_history_command_clock_times_select_the_hour(tmp_path):
    """"What was playing between 14:00 and 15:00" today, with states around that hour."""
    today_14 = datetime.now().replace(hour=14, minute=0, second=0, microsecond=0)
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=0))
    history.start()
    for minutes, genre in [(-10, "pop"), (5, "rock"), (6, "rock"), (50, "jazz"), (70, "metal")]:
        history.publish(state("radio", genre, 0.8, (today_14 + timedelta(minutes=minutes)).timestamp()))
    history.close()
    result = invoke("history", "--state-dir", str(tmp_path), "--since", "14:00", "--until", "15:00",
                    "--format", "json", "--max-gap", "3600")
    assert result.exit_code == 0, result.output
    assert [r["genre"] for r in json.loads(result.stdout)] == ["rock", "jazz"]


def test_history_command_finds_the_daemons_state_dir(recorded_state_dir, tmp_path, monkeypatch):
    config = tmp_path / "daemon.toml"
    config.write_text(f'sources = ["mic"]\nstate_dir = "{recorded_state_dir}"\n')
    result = invoke("history", "--config", str(config), "--since", _iso(-1), "--until", _iso(700), "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == len(EXPECTED)
    config.write_text("state_dir = 5\n")
    result = invoke("history", "--config", str(config))
    assert result.exit_code == 1 and "configuration error" in result.stderr and "state_dir" in result.stderr
    monkeypatch.setenv("GENRE_STREAM_STATE_DIR", str(recorded_state_dir))
    result = invoke("history", "--since", _iso(-1), "--until", _iso(700), "--format", "csv")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == len(EXPECTED) + 1


def test_history_command_errors(tmp_path, recorded_state_dir):
    result = invoke("history", "--state-dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "no tag history here" in result.stderr and "nowhere" in result.stderr
    result = invoke("history", "--state-dir", str(recorded_state_dir), "--source", "tv")
    assert result.exit_code == 1 and "no source 'tv'" in result.stderr and "known: radio" in result.stderr
    result = invoke("history", "--state-dir", str(recorded_state_dir), "--since", "teatime")
    assert result.exit_code == 2 and "'teatime': not a time" in result.stderr
    result = invoke("history", "--state-dir", str(recorded_state_dir), "--since", "-1h", "--until", "-2h")
    assert result.exit_code == 2 and "is before --since" in result.stderr


def test_daemon_keeps_publishing_with_a_readonly_history(tmp_path):
    """The whole daemon on a read-only state directory: a clear error, and every state still published."""
    state_dir = tmp_path / "state"
    history = History(HistoryConfig.in_state_dir(state_dir))  # the history of an earlier run
    history.start()
    history.publish(state("demo", "jazz", 0.7, T0))
    history.close()
    before = (state_dir / "history.sqlite").read_bytes()
    demo = REPO / "examples" / "demo.wav"
    argv = [sys.executable, "-m", "genre_stream", "run", "--source", f"demo=file:{demo}", "--fast",
            "--state-dir", str(state_dir), "--stats-interval", "0", "--hop", "2", "--min-fill", "4"]
    proc = subprocess.run(_readonly_command(state_dir, argv), capture_output=True, text=True, timeout=120,
                          env=cli_env(), cwd=REPO)
    state_dir.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    states = [json.loads(line) for line in proc.stdout.splitlines() if '"window_end"' in line]
    assert len(states) >= 4 and all(s["source"] == "demo" for s in states)  # 12 s at hop 2 from 4 s of fill
    assert f"cannot write tag history to {state_dir / 'history.sqlite'}" in proc.stderr
    assert "the daemon goes on" in proc.stderr
    assert (state_dir / "history.sqlite").read_bytes() == before


def test_history_settings_from_the_daemon_config(tmp_path):
    from genre_stream.config import ConfigError, load_config

    config = load_config(None, {"history.retention_days": 7, "state_dir": str(tmp_path)}, environ={})
    assert config.history.enabled is True
    assert config.history.config(config.state_dir) == HistoryConfig(tmp_path / "history.sqlite", retention_days=7)
    off = tmp_path / "off.toml"
    off.write_text("[history]\nenabled = false\n")
    assert load_config(off, {}, environ={}).history.enabled is False
    with pytest.raises(ConfigError, match="history.retention_days"):
        load_config(None, {}, environ={"GENRE_STREAM_HISTORY_RETENTION_DAYS": "ninety"})


def test_uncertain_states_form_their_own_segments():
    rows = [StateRow("radio", t, st, g, 0.5) for t, st, g in
            [(0, "music", "rock"), (5, "uncertain", "rock"), (10, "uncertain", "jazz"), (15, "music", "rock")]]
    segs = merge_segments(rows)
    assert [(s.state, s.genre, s.start, s.end) for s in segs] == [
        ("music", "rock", 0, 5), ("uncertain", "rock", 5, 15), ("music", "rock", 15, 15)]


def test_a_station_log_reads_title_then_genre(tmp_path):
    """Issue 25 #4: segments carry the stream's title, a new title starts a new segment (same genre or not),
    and the CLI table and CSV show it."""
    import dataclasses

    history = History(HistoryConfig.in_state_dir(tmp_path))
    history.start()
    titles = ["Artist A - One", "Artist A - One", "Artist B - Two", "Artist B - Two", "Artist B - Two"]
    for i, title in enumerate(titles):
        history.publish(dataclasses.replace(state("fm", "rock", 0.8, T0 + 5 * i), title=title))
    history.close()
    segs = HistoryReader(tmp_path / "history.sqlite").segments("fm")
    assert [(s.title, s.genre, s.windows) for s in segs] == [("Artist A - One", "rock", 2), ("Artist B - Two", "rock", 3)]
    assert segs[0].end == segs[1].start == T0 + 10
    assert segs[1].to_dict()["title"] == "Artist B - Two" and "Artist B - Two" in segments_csv(segs)
    proc = run_cli("history", "--state-dir", str(tmp_path), "--since", str(T0 - 1), "--until", str(T0 + 100))
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert "title" in header.split() and "Artist A - One" in rows[0] and "Artist B - Two" in rows[1]


def test_a_history_file_without_its_tables_yet_reads_as_empty(tmp_path):
    """A moment after the first start the file exists but has no tables yet: that is an empty history, not an error
    (the dashboard answered 503 "no such table" then)."""
    import sqlite3

    path = tmp_path / "history.sqlite"
    sqlite3.connect(path).close()  # created, no schema yet
    reader = HistoryReader(path)
    assert reader.sources() == [] and reader.segments() == [] and reader.states() == []
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistoryError, match="not a readable genre-stream history"):
        reader.sources()
