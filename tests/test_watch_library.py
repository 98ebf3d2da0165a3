"""The daemon's watch source feeding the `genre-stream library` database as files arrive."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, cli_env, run_cli

DEMO = REPO / "examples" / "demo.wav"


def test_watched_files_are_indexed_into_the_library(tmp_path: Path) -> None:
    music = tmp_path / "incoming"
    music.mkdir()
    db = tmp_path / "library.sqlite"
    out = tmp_path / "events.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(f'[watch]\nsettle_seconds = 0.5\npoll_seconds = 0.5\nlibrary_db = "{db}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "genre_stream", "run", "--config", str(config), "--source", f"watch:{music}",
         "--state-dir", str(tmp_path / "state"), "--jsonl", str(out), "--stats-interval", "0"],
        env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        shutil.copy(DEMO, music / "first song.wav")
        corrupt = music / "broken.wav"
        corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
        deadline = time.monotonic() + 120
        events: list[dict] = []
        while time.monotonic() < deadline:
            events = [json.loads(l) for l in out.read_text().splitlines()] if out.exists() else []
            if {e.get("type") for e in events} >= {"track_tagged", "error"}:
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    tagged = [e for e in events if e.get("type") == "track_tagged"]
    assert [Path(e["path"]).name for e in tagged] == ["first song.wav"]

    export = run_cli("library", "export", "--db", str(db), "--format", "json")
    assert export.returncode == 0, export.stderr
    rows = json.loads(export.stdout)
    rows = rows["tracks"] if isinstance(rows, dict) else rows
    assert [Path(r["path"]).name for r in rows] == ["first song.wav"]
    assert rows[0]["genre"] == tagged[0]["genre"]
    assert abs(rows[0]["duration"] - tagged[0]["duration"]) < 0.01
    assert len(rows[0]["embedding"]) == 32
