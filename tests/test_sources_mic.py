"""Live capture through the real PortAudio -> ALSA stack.

ALSA's ``file`` PCM plugin with an ``infile`` turns a raw PCM file into a capture
device; an ``.asoundrc`` written here is pointed to by ``ALSA_CONFIG_PATH``, which
must be set before PortAudio initialises, so every capture runs in a subprocess.
The ``null`` slave has no clock: the device delivers audio as fast as it is read,
which also exercises the bounded queue and its overflow counting.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _helpers_sources import Collector, running
from conftest import REPO, cli_env, run_cli, shared_path

from genre_stream.audio.decode import load_audio
from genre_stream.audio.resample import StreamResampler, resample
from genre_stream.live.pipeline import PipelineConfig, SourcePipeline
from genre_stream.sinks.messages import GenreState
from genre_stream.sources import SourceProblem
from genre_stream.sources import mic as mic_module
from genre_stream.sources.base import AudioChunk
from genre_stream.sources.devices import InputDevice

ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
NATIVE_RATE = 44100
needs_portaudio = pytest.mark.skipif(ctypes.util.find_library("portaudio") is None, reason="needs the PortAudio library (apt install libportaudio2)")
needs_alsa = pytest.mark.skipif(not ALSA_CONF.exists(), reason="needs ALSA's configuration /usr/share/alsa/alsa.conf (apt install libasound2)")


def alsa_device(tmp_path: Path, infile: Path) -> dict[str, str]:
    """Write an ALSA config with a stereo 44.1 kHz capture device 'gs_capture' reading ``infile``."""
    conf = tmp_path / "asoundrc"
    conf.write_text(
        f"<{ALSA_CONF}>\n"
        f'pcm.gs_file {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}\n'
        "pcm.gs_capture {\n"
        '  type plug\n'
        f'  slave {{ pcm "gs_file" format S16_LE rate {NATIVE_RATE} channels 2 }}\n'
        '  hint { show on description "genre-stream test capture" }\n'
        "}\n"
    )
    return {"ALSA_CONFIG_PATH": str(conf)}


def write_pcm(path: Path, audio_22k: np.ndarray) -> None:
    """The raw S16_LE stereo 44.1 kHz bytes the device will deliver."""
    native = resample(audio_22k, 22050, NATIVE_RATE)
    stereo = np.repeat(np.clip(native, -1, 1)[:, None], 2, axis=1)
    (stereo * 32767).astype("<i2").tofile(path)


def capture(tmp_path: Path, env: dict[str, str], spec: str, seconds: float, queue_seconds: float, *appear: str) -> tuple[dict, dict]:
    out = tmp_path / "capture"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_mic_capture.py"), spec, str(out), str(seconds), str(queue_seconds), *appear],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    data = dict(np.load(out.with_suffix(".npz")))
    return report, data


@needs_portaudio
@needs_alsa
def test_captured_audio_is_the_device_content_and_is_classified(tmp_path, engine):
    country = load_audio(shared_path("audio/gtzan-country.00000.wav"))
    infile = tmp_path / "country.s16"
    write_pcm(infile, country)
    env = alsa_device(tmp_path, infile)
    # the queue holds 40 s, so the first 30 s reach the consumer without a gap
    report, data = capture(tmp_path, env, "mic:gs_capture", 30.0, 40.0)
    assert report["device"] == "gs_capture" and report["rate"] == NATIVE_RATE
    assert report["problems"] == [] and report["returned"]
    audio = data["audio"]
    n = 29 * 22050
    assert audio.size >= n
    # same samples as the file (stereo -> mono mean, 44.1 -> 22.05 kHz), up to a few ms of delay
    probe = audio[5000 : 5000 + 4096]
    lag = int(np.argmax(np.correlate(country[5000 - 512 : 5000 + 4096 + 512], probe, mode="valid"))) - 512
    assert abs(lag) < 400
    aligned = audio[max(0, -lag) : n]
    ref = country[max(0, lag) : max(0, lag) + aligned.size]
    assert np.corrcoef(aligned, ref)[0, 1] > 0.99
    assert np.sqrt(np.mean(aligned**2)) == pytest.approx(np.sqrt(np.mean(ref**2)), rel=0.02)
    # contiguous stream time for the chunks
    times, sizes = data["times"], data["sizes"]
    np.testing.assert_allclose(times[1:40], times[:39] + sizes[:39] / 22050, atol=1e-6)
    # the clockless device outruns the consumer: overflows are counted, capture never blocked
    assert report["stats"]["overflows"] > 0
    # and the live pipeline tags the captured audio like the file
    pipeline = SourcePipeline("mic", engine, PipelineConfig(hop_seconds=5.0, min_fill_seconds=10.0))
    messages = []
    for i in range(0, n, 1102):
        messages += pipeline.feed(AudioChunk("mic", audio[i : i + 1102], i / 22050, 0.0))
    states = [m for m in messages if isinstance(m, GenreState)]
    assert len(states) >= 3 and states[-1].genre == "country"


@needs_portaudio
@needs_alsa
def test_device_that_appears_later_is_opened_with_backoff(tmp_path):
    t = np.arange(22050 * 3) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    staged = tmp_path / "tone.s16"
    write_pcm(staged, tone)
    infile = tmp_path / "plugged-in.s16"  # absent: the device has no input until it appears
    env = alsa_device(tmp_path, infile)
    report, data = capture(tmp_path, env, "studio=mic:gs_capture", 2.0, 5.0, "1.5", str(staged), str(infile))
    assert report["problems"], "the missing device was reported"
    assert "cannot open input device 'gs_capture'" in report["problems"][0]
    assert report["stats"]["reconnects"] >= 1
    audio = data["audio"]
    assert audio.size >= 2 * 22050, "capture started once the device appeared"
    spectrum = np.abs(np.fft.rfft(audio[1024 : 1024 + 22050]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)


@needs_portaudio
@needs_alsa
def test_devices_command_lists_inputs(tmp_path):
    infile = tmp_path / "x.s16"
    write_pcm(infile, np.zeros(22050, np.float32))
    env = alsa_device(tmp_path, infile)
    proc = run_cli("devices", "--json", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    devices = [json.loads(line) for line in proc.stdout.splitlines()]
    [dev] = [d for d in devices if d["name"] == "gs_capture"]
    assert dev["channels"] > 0 and dev["default_samplerate"] == NATIVE_RATE and isinstance(dev["index"], int)
    text = run_cli("devices", env=env, timeout=60)
    assert text.returncode == 0 and "gs_capture" in text.stdout and "44100" in text.stdout


def test_missing_portaudio_names_the_package(tmp_path):
    # Simulated absence: PortAudio is installed on this machine, so a sitecustomize hides
    # it from ctypes the way a machine without libportaudio2 would.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import ctypes.util\n"
        "_orig = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda name: None if 'portaudio' in name else _orig(name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "genre_stream", "devices"],
        env=cli_env({"PYTHONPATH": f"{site}:{REPO}"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "libportaudio2" in proc.stderr and "Traceback" not in proc.stderr


def test_stream_resampler_matches_one_long_resample():
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(48000 * 2).astype(np.float32) * 0.1
    whole = resample(audio, 48000, 22050)
    r = StreamResampler(48000, 22050)
    pieces = [r.push(audio[i : i + 997]) for i in range(0, audio.size, 997)]
    chunked = np.concatenate(pieces)
    # the filter holds back its delay until the stream ends; what came out is already final
    assert 0 < whole.size - chunked.size < 1000
    np.testing.assert_array_equal(chunked, whole[: chunked.size])
    np.testing.assert_array_equal(np.concatenate([chunked, r.flush()]), whole)


class _FakePortAudio:
    """Stands in for sounddevice where the real stack cannot help: a device unplugged mid-capture.

    (A USB interface cannot be unplugged on this machine, and ALSA's file-backed test device
    never fails once open.) Each opened stream delivers ``blocks`` callbacks of a 440 Hz tone
    from its own thread, then goes inactive like a PortAudio stream whose device vanished;
    with ``blocks=None`` it stays active but silent, like a hung driver.
    """

    class PortAudioError(Exception):
        pass

    def __init__(self, blocks: int | None) -> None:
        self.blocks = blocks
        self.opened = 0

    def InputStream(self, *, device, samplerate, channels, dtype, blocksize, callback):  # noqa: N802 - sounddevice's name
        fake = self
        fake.opened += 1

        class Stream:
            active = False

            def start(self) -> None:
                self.active = True
                threading.Thread(target=self._feed, daemon=True).start()

            def _feed(self) -> None:
                if fake.blocks is None:
                    return
                t = np.arange(blocksize) / samplerate
                block = np.repeat((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[:, None], channels, axis=1)
                for _ in range(fake.blocks):
                    callback(block, blocksize, None, None)
                self.active = False  # the device is gone

            def abort(self) -> None:
                self.active = False

            def close(self) -> None:
                pass

        return Stream()


@pytest.mark.parametrize("blocks, reason", [(20, "input stream stopped"), (None, "no audio from the device for 1 s")])
def test_failing_device_is_reopened(monkeypatch, blocks, reason):
    fake = _FakePortAudio(blocks)
    monkeypatch.setattr(mic_module, "import_sounddevice", lambda: fake)
    monkeypatch.setattr(mic_module, "_refresh_devices", lambda sd: None)
    monkeypatch.setattr(mic_module, "resolve_input_device", lambda spec: InputDevice(3, "USB Audio", 2, 48000.0, "ALSA", False))
    source = mic_module.MicSource("desk", "USB Audio", stall_seconds=1.0, reconnect_max_seconds=1.0)
    collector = Collector()
    with running(source, collector):
        assert collector.wait_for(lambda items: sum(isinstance(i, SourceProblem) for i in items) >= 2, timeout=20)
    problems = collector.problems()
    assert reason in problems[0].reason and "reopening the device" in problems[0].reason
    assert fake.opened >= 2 and source.stats()["reconnects"] >= 2
    if blocks:
        chunks = collector.chunks()
        jumps = [i for i in range(1, len(chunks)) if chunks[i].time > chunks[i - 1].time + chunks[i - 1].samples.size / 22050 + 0.01]
        assert jumps, "stream time jumps after a reopen (so the pipeline restarts its frontend)"
        first_session = chunks[: jumps[0]]
        # 20 blocks of 50 ms, less the few ms the chunked resampler still held when the device vanished
        assert 0.9 * 22050 < sum(c.samples.size for c in first_session) <= 22050
        assert chunks[jumps[0]].time >= 1.0  # wall-clock time since the start, past the lost audio
        spectrum = np.abs(np.fft.rfft(np.concatenate([c.samples for c in first_session])[1000:21000]))
        assert np.argmax(spectrum) * 22050 / 20000 == pytest.approx(440, abs=3)
