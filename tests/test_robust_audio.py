"""NaN, Inf and absurd magnitudes in audio: the live pipeline, whole files, and every JSON output."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import run_cli

from genre_stream.common.jsonsafe import dumps
from genre_stream.live.pipeline import PipelineConfig, SourcePipeline
from genre_stream.sinks.messages import GenreState
from genre_stream.sources.base import AudioChunk

SR = 22050


def tone(seconds: float, amplitude: float = 0.3, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t))) / 2).astype(np.float32)


def feed(pipeline: SourcePipeline, audio: np.ndarray, start: float = 0.0, chunk: int = 2205) -> list:
    out = []
    for i in range(0, audio.size, chunk):
        out += pipeline.feed(AudioChunk("s", audio[i : i + chunk], start + i / SR, time.monotonic()))
    return out


def states(messages: list) -> list[GenreState]:
    return [m for m in messages if isinstance(m, GenreState)]


def test_one_nan_does_not_silence_the_stream_forever(engine) -> None:
    """The NaN becomes one silent sample: the stream keeps being tagged as the same audio without it.

    Compared with the clean stream rather than a fixed state, because whether a synthetic tone
    reads "music" or "uncertain" is the model's business, not this test's.
    """
    config = PipelineConfig(hop_seconds=2.0, min_fill_seconds=4.0)
    pipeline = SourcePipeline("s", engine, config)
    audio = tone(40.0)
    clean = states(feed(SourcePipeline("s", engine, config), audio.copy()))
    audio[SR * 5] = np.nan
    out = states(feed(pipeline, audio))
    assert len(out) == len(clean) and "silence" not in [s.state for s in out], [s.state for s in out]
    assert [s.genre for s in out[-5:]] == [s.genre for s in clean[-5:]]
    assert max(abs(a.confidence - b.confidence) for a, b in zip(out, clean)) < 0.01
    assert pipeline.stats()["nonfinite_samples"] == 1
    assert all(math.isfinite(s.confidence) for s in out)


def test_inf_and_huge_samples_give_finite_confidences(engine) -> None:
    pipeline = SourcePipeline("s", engine, PipelineConfig(hop_seconds=2.0, min_fill_seconds=4.0))
    audio = tone(20.0)
    audio[SR * 3] = np.inf
    audio[SR * 6 : SR * 7] *= np.float32(1e18)
    out = states(feed(pipeline, audio))
    assert out and all(math.isfinite(s.confidence) for s in out)
    assert all(math.isfinite(p) for s in out for p in s.probabilities.values())
    assert pipeline.stats()["nonfinite_samples"] == 1 and pipeline.stats()["clipped_samples"] > 0
    json.loads(dumps(out[-1].to_dict()))  # strict JSON


def test_quiet_audio_after_a_loud_burst_keeps_its_level(engine) -> None:
    """The running energy sum must not keep the rounding error of a huge chunk that left the window
    (it made -55 dBFS audio read as silence for good). What the model calls this noise is the model's
    business (with the seed normalisation "music"; fed RUNNING, "not_music" or "uncertain"): not silence."""
    pipeline = SourcePipeline("s", engine, PipelineConfig(hop_seconds=2.0, min_fill_seconds=4.0))
    rng = np.random.default_rng(2)
    loud = (rng.standard_normal(SR * 2) * 5e5).astype(np.float32)
    quiet = (rng.standard_normal(SR * 40) * 10 ** (-55 / 20)).astype(np.float32)  # -55 dBFS, above -60
    out = states(feed(pipeline, np.concatenate([loud, quiet])))
    assert out[-1].state != "silence" and out[-1].probabilities
    assert abs(pipeline.level_dbfs() - -55.0) < 0.5


def test_json_writers_never_write_nan() -> None:
    payload = {"confidence": float("nan"), "probabilities": {"rock": float("inf")}, "ok": 0.5}
    text = dumps(payload)
    assert json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == {
        "confidence": None, "probabilities": {"rock": None}, "ok": 0.5}


def test_classify_json_of_a_huge_float_wav_is_finite(tmp_path: Path) -> None:
    normal = tone(12.0)
    sf.write(tmp_path / "normal.wav", normal, SR, subtype="FLOAT")
    sf.write(tmp_path / "huge.wav", normal * np.float32(1e18), SR, subtype="FLOAT")
    with_nan = normal.copy()
    with_nan[1000:1010] = np.nan
    sf.write(tmp_path / "nan.wav", with_nan, SR, subtype="FLOAT")
    result = run_cli("classify", "--json", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr  # the NaN samples are repaired as silence, as in live audio
    assert "nan.wav: 10 NaN/infinite sample(s) set to 0" in result.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["nan.wav"]["genre"] == rows["normal.wav"]["genre"]
    assert all(math.isfinite(r["confidence"]) for r in rows.values()), rows
    # Scaling a whole file changes nothing: each window is normalised to its own maximum.
    assert rows["huge.wav"]["genre"] == rows["normal.wav"]["genre"]
    assert abs(rows["huge.wav"]["confidence"] - rows["normal.wav"]["confidence"]) < 1e-3
    assert "huge.wav: peak" in result.stderr and "Traceback" not in result.stderr


def test_to_mono_averages_channels_exactly():
    """Stereo is (left + right) / 2 bit for bit, as numpy's mean gives it; more channels to float32 rounding."""
    from genre_stream.audio.decode import to_mono

    rng = np.random.default_rng(7)
    stereo = rng.standard_normal((4096, 2)).astype(np.float32)
    assert np.array_equal(to_mono(stereo), stereo.mean(axis=1, dtype=np.float32))
    six = rng.standard_normal((4096, 6)).astype(np.float32)
    np.testing.assert_allclose(to_mono(six), six.mean(axis=1), atol=1e-6)
    mono = stereo[:, 0]
    assert np.array_equal(to_mono(mono), mono)
    assert np.array_equal(to_mono(stereo[:, :1]), stereo[:, 0])
    assert to_mono(stereo).dtype == np.float32
