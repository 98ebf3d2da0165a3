"""Hostile files found by a probe: sample rates no music has, headers that lie about the length, and
broken float samples. Each file is written by the test (soundfile, ffmpeg). A bad file must cost
little, say what is wrong with it, and never hold up the files after it; a repairable one is repaired
where it is broken and classified like the clean file."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, cli_env, run_cli

from genre_stream.audio import decode
from genre_stream.audio.decode import AudioError, iter_audio
from genre_stream.audio.frontend import SAMPLE_RATE
from genre_stream.tracks.analysis import analyse_file
from genre_stream.watch.tagger import tag_track

DEMO = REPO / "examples" / "demo.wav"
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg to write the file (apt install ffmpeg)")


def music(seconds: float) -> np.ndarray:
    """The demo clip looped to ``seconds``: real music, so the model has an opinion to keep."""
    demo, sr = sf.read(DEMO, dtype="float32")
    assert sr == SAMPLE_RATE
    return np.tile(demo, int(np.ceil(seconds * sr / demo.size)))[: int(seconds * sr)]


def one_hz_wav(path: Path) -> Path:
    """The probe's file: 20 KB of 16-bit PCM at 1 Hz, "2.8 hours" once resampled up to SAMPLE_RATE."""
    noise = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 0.1
    sf.write(path, noise, 1, subtype="PCM_16")
    return path


def flac_claiming(path: Path, rate: int, seconds: float = 20.0) -> Path:
    """A FLAC of real samples whose STREAMINFO says ``rate`` (20 s at 8 kHz claimed as 1 Hz: "44 hours")."""
    sf.write(path, music(seconds)[::2], SAMPLE_RATE // 2)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    # STREAMINFO after the 4-byte block header: 2+2 block sizes, 3+3 frame sizes, then 20 bits of rate.
    packed = int.from_bytes(data[18:21], "big")
    data[18:21] = ((rate << 4) | (packed & 0xF)).to_bytes(3, "big")
    path.write_bytes(bytes(data))
    assert sf.info(path).samplerate == rate
    return path


BOUNDED = """
import json, sys, time
from genre_stream.audio.decode import AudioError
from genre_stream.model.choice import open_engine
from genre_stream.tracks.analysis import analyse_file
engine = open_engine(threads=1)
for path in sys.argv[1:]:
    start = time.monotonic()
    try:
        outcome = f"ok {analyse_file(path, engine).duration:.1f} s"
    except AudioError as exc:
        outcome = str(exc)
    print(json.dumps({"path": path, "outcome": outcome, "seconds": time.monotonic() - start}), flush=True)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of a 3 GB pytest process reported 3 GB
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"max_rss_mb": hwm / 1024}))
"""


def test_implausible_sample_rates_are_refused_at_once_in_little_memory(tmp_path: Path) -> None:
    """Before: the 20 KB WAV at 1 Hz took 76 s and 846 MB, the FLAC claiming 1 Hz did not finish in 150 s."""
    files = [one_hz_wav(tmp_path / "one-hz.wav"), flac_claiming(tmp_path / "one-hz.flac", 1)]
    sf.write(tmp_path / "ultrasonic.wav", np.zeros(1000, np.float32), 768_000)  # above any studio rate
    files.append(tmp_path / "ultrasonic.wav")
    if FFMPEG:  # a container libsndfile cannot open goes to ffmpeg: its header is checked too
        subprocess.run([FFMPEG, "-v", "error", "-f", "s16le", "-ar", "1", "-ac", "1", "-i", str(files[0]),
                        "-c:a", "pcm_s16le", str(tmp_path / "one-hz.mka")], check=True)
        files.append(tmp_path / "one-hz.mka")
    try:
        proc = subprocess.run([sys.executable, "-c", BOUNDED, *map(str, files)], capture_output=True, text=True,
                              env=cli_env(), cwd=REPO, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hostile files still being analysed after 120 s: {exc.stdout!r}")
    assert proc.returncode == 0, proc.stderr
    *rows, memory = map(json.loads, proc.stdout.splitlines())
    for path, row in zip(files, rows):
        rate = "768000" if path.name == "ultrasonic.wav" else "1"
        assert row["outcome"].startswith(f"{path}: sample rate {rate} Hz is outside 4000-384000 Hz"), row
        assert row["seconds"] < 5.0, row
    assert memory["max_rss_mb"] < 400, memory  # the model and numpy: ~130 MB


def test_a_tiny_rate_file_does_not_hold_up_the_watch_folder(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    one_hz_wav(folder / "a-one-hz.wav")
    flac_claiming(folder / "b-one-hz.flac", 1)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "genre_stream", "run", "--source", f"box=watch:{folder}", "--jsonl", str(out),
         "--state-dir", str(tmp_path / "state"), "--stats-interval", "0", "--no-history"],
        env=cli_env({"GENRE_STREAM_WATCH_SETTLE_SECONDS": "0.3", "GENRE_STREAM_WATCH_POLL_SECONDS": "0.2"}),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def events() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    try:
        time.sleep(2.0)  # the hostile files are handed on first
        sf.write(folder / "c-good.wav", music(12.0), SAMPLE_RATE)
        deadline = time.monotonic() + 60
        while len(events()) < 3:
            assert proc.poll() is None, proc.stderr
            assert time.monotonic() < deadline, f"the folder is held up: {events()}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    by_name = {Path(e["path"]).name: e for e in events()}
    assert by_name["c-good.wav"]["type"] == "track_tagged"
    for name in ("a-one-hz.wav", "b-one-hz.flac"):
        assert by_name[name]["type"] == "error" and "sample rate 1 Hz is outside" in by_name[name]["reason"], by_name
    assert b"Traceback" not in err


def test_a_file_that_decodes_to_more_than_its_bytes_can_hold_is_refused(tmp_path: Path) -> None:
    """30 minutes in 43 KB (FLAC of digital silence, or a forged one): at most MIN_BUDGET_SECONDS of work."""
    rate = 8000
    promising = tmp_path / "promising.flac"
    with sf.SoundFile(promising, "w", rate, 1, format="FLAC") as fh:
        for _ in range(30):
            fh.write(np.zeros(rate * 60, np.float32))
    data = bytearray(promising.read_bytes())
    packed = int.from_bytes(data[18:26], "big")  # rate 20 bits, channels 3, depth 5, total samples 36
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")  # total unknown: only decoding finds out
    unknown = tmp_path / "unknown.flac"
    unknown.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="its header promises 1800 s of audio from .* more than a file of that size"):
        next(iter_audio(promising))
    start, decoded = time.monotonic(), 0
    with pytest.raises(AudioError, match="decodes to more than 600 s of audio .* forged header, a decompression bomb"):
        for block in iter_audio(unknown):
            decoded += block.size
    assert decoded <= decode.MIN_BUDGET_SECONDS * SAMPLE_RATE and time.monotonic() - start < 30
    short = tmp_path / "short.flac"  # a short file of silence is well within the floor
    sf.write(short, np.zeros(rate * 60, np.float32), rate)
    assert sum(b.size for b in iter_audio(short)) == pytest.approx(60 * SAMPLE_RATE, abs=64)


def mp3_with_xing(tmp_path: Path, seconds: float) -> tuple[Path, Path]:
    """An MP3 with a Xing header from ffmpeg, and a copy whose Xing frame count is divided by 4."""
    wav = tmp_path / "music.wav"
    sf.write(wav, music(seconds), SAMPLE_RATE)
    full = tmp_path / "full.mp3"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(wav), "-codec:a", "libmp3lame", "-q:a", "5", "-write_xing", "1",
                    str(full)], check=True)
    data = bytearray(full.read_bytes())
    tag = data.find(b"Xing")
    assert tag > 0 and int.from_bytes(data[tag + 4 : tag + 8], "big") & 1  # the frame count is present
    frames = int.from_bytes(data[tag + 8 : tag + 12], "big")
    data[tag + 8 : tag + 12] = (frames // 4).to_bytes(4, "big")
    lying = tmp_path / "lying.mp3"
    lying.write_bytes(bytes(data))
    return full, lying


@needs_ffmpeg
def test_an_mp3_whose_xing_header_understates_its_frames_is_classified_to_the_end(tmp_path: Path, monkeypatch) -> None:
    """Before: libsndfile stopped at the header's count, and 30 s of the 120 s file were classified, silently."""
    full, lying = mp3_with_xing(tmp_path, 120.0)
    assert sf.info(lying).duration < 35  # the lie, as libsndfile reads it
    proc = run_cli("classify", "--json", str(full), str(lying))
    assert proc.returncode == 0, proc.stderr
    honest, patched = map(json.loads, proc.stdout.splitlines())
    assert abs(patched["duration"] - honest["duration"]) < 0.2 and honest["duration"] > 119, (honest, patched)
    assert patched["genre"] == honest["genre"]
    assert max(abs(patched["probabilities"][k] - p) for k, p in honest["probabilities"].items()) < 0.02
    assert "lying.mp3: inconsistent MP3: its header says 30.0 s, its frames hold 120." in proc.stderr
    assert "full.mp3" not in proc.stderr
    # Without ffmpeg the lie cannot be decoded around: it is said, not classified in part.
    monkeypatch.setattr(decode, "ffmpeg_executable", lambda: None)
    with pytest.raises(AudioError, match="inconsistent MP3: its header says 30.0 s, its frames hold 120.*install ffmpeg"):
        next(iter_audio(lying))


@needs_ffmpeg
def test_mpeg_frames_are_counted_like_ffmpeg_decodes_them(tmp_path: Path) -> None:
    """The frame walk behind the check: CBR and VBR, MPEG-1 and MPEG-2 rates, ID3v2 tags, no Xing header."""
    from genre_stream.audio.mpeg import audio_seconds

    wav = tmp_path / "music.wav"
    sf.write(wav, music(40.0), SAMPLE_RATE)
    variants = {"vbr-22k.mp3": ["-q:a", "5"], "cbr-44k.mp3": ["-ar", "44100", "-b:a", "128k", "-write_xing", "0"],
                "cbr-8k.mp3": ["-ar", "8000", "-b:a", "16k", "-metadata", "title=x" * 50]}
    for name, args in variants.items():
        subprocess.run([FFMPEG, "-v", "error", "-i", str(wav), "-codec:a", "libmp3lame", *args, str(tmp_path / name)],
                       check=True)
        decoded = subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / name), "-f", "f32le", "-ac", "1", "-"],
                                 capture_output=True, check=True).stdout
        rate = sf.info(tmp_path / name).samplerate
        # Within the encoder's delay and padding (LAME: about two frames), which ffmpeg trims and the frames hold.
        assert audio_seconds(tmp_path / name) == pytest.approx(len(decoded) / 4 / rate, abs=2.5 * 1152 / rate), name
    assert audio_seconds(wav) is None  # no MPEG frames in a WAV


def float_files(folder: Path) -> dict[str, Path]:
    """60 s of music as float WAVs: clean, and with each kind of broken sample the probe found."""
    clean = music(60.0)
    made = {}

    def write(name: str, audio: np.ndarray, subtype: str = "FLOAT") -> None:
        made[name] = folder / name
        sf.write(made[name], audio, SAMPLE_RATE, subtype=subtype)

    write("clean.wav", clean)
    spike = clean.copy()
    spike[SAMPLE_RATE * 31] = 1e30  # one absurd sample in the middle of the music
    write("spike.wav", spike)
    inf = clean.copy()
    inf[SAMPLE_RATE * 5] = np.inf
    write("inf.wav", inf)
    nan = clean.copy()
    nan[SAMPLE_RATE * 20 : SAMPLE_RATE * 22] = np.nan  # 2 s of NaN
    write("nan.wav", nan)
    write("huge.wav", clean.astype(np.float64) * 1e300, subtype="DOUBLE")  # beyond float32: Inf when narrowed first
    return made


def test_broken_float_samples_are_repaired_where_they_are(tmp_path: Path, engine) -> None:
    """Before: inf.wav and nan.wav were refused, huge.wav failed with NaN, and spike.wav (scaled down by its
    one 1e30 sample as a whole) read as silence with a wrong genre."""
    files = float_files(tmp_path)
    if FFMPEG:  # the ffmpeg path (a container libsndfile cannot open) repairs the same way
        subprocess.run([FFMPEG, "-v", "error", "-i", str(files["spike.wav"]), "-c:a", "pcm_f32le",
                        str(tmp_path / "spike.mka")], check=True)
        files["spike.mka"] = tmp_path / "spike.mka"
    proc = run_cli("classify", "--json", *map(str, files.values()))
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows.keys() == files.keys()
    clean = rows["clean.wav"]
    for name, row in rows.items():
        assert (row["genre"], row["state"]) == (clean["genre"], clean["state"]), (name, row, clean)
    for name in ("spike.wav", "spike.mka", "inf.wav", "huge.wav"):
        if name in rows:
            diff = max(abs(rows[name]["probabilities"][k] - p) for k, p in clean["probabilities"].items())
            assert diff < 0.01, (name, diff)
    assert "spike.wav: 1 broken sample(s) up to 1e+30 brought down to the music's level" in proc.stderr
    assert "nan.wav: 44100 NaN/infinite sample(s) set to 0" in proc.stderr
    assert "inf.wav: 1 NaN/infinite sample(s) set to 0" in proc.stderr
    assert "huge.wav: peak level" in proc.stderr and "Traceback" not in proc.stderr
    # The one sample does not ruin the track's level (the silence rule), in classify and the watch folder alike.
    levels = {name: analyse_file(files[name], engine).level_dbfs for name in ("clean.wav", "spike.wav", "nan.wav")}
    assert abs(levels["spike.wav"] - levels["clean.wav"]) < 0.05, levels
    assert abs(levels["nan.wav"] - levels["clean.wav"]) < 0.5, levels  # 2 of 60 s are silent now
    for name in ("inf.wav", "nan.wav", "spike.wav"):
        event, _ = tag_track("box", files[name], engine)
        assert event.type == "track_tagged" and event.data["state"] == clean["state"], event.to_dict()


def test_a_stretch_of_absurd_samples_is_scaled_down_locally() -> None:
    """1 s of the music at 1e18 inside a normal track: that second is brought to the music's level, the rest
    is untouched (bit for bit), so no window loses its music to one loud stretch."""
    from genre_stream.audio.sanitize import FileRepair, second_peaks

    clean = music(20.0)
    broken = clean.copy()
    broken[SAMPLE_RATE * 8 : SAMPLE_RATE * 9] *= np.float32(1e18)
    fix = FileRepair(SAMPLE_RATE, second_peaks(broken, SAMPLE_RATE))
    repaired = fix.repair(fix.scale(broken))
    outside = np.r_[0 : SAMPLE_RATE * 8 - 1024, SAMPLE_RATE * 9 + 1024 : clean.size]
    assert np.array_equal(repaired[outside], clean[outside])
    assert np.abs(repaired[SAMPLE_RATE * 8 : SAMPLE_RATE * 9]).max() <= fix.level * 1.0001 and fix.gain == 1.0
    assert np.abs(repaired).max() <= np.abs(clean).max()
    assert fix.spans > 0 and "stretch(es) of them scaled" in fix.summary()
