"""Streaming inference gives the batch answer for every live window, at any hop, through any reset."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _helpers_models import with_normalization
from conftest import SHARED_AUDIO

from genre_stream.audio.frontend import MelFrontend, StreamingMel, normalize_window
from genre_stream.audio.normalization import RUNNING, SEED, running_normalize
from genre_stream.live.pipeline import PipelineConfig, SourcePipeline
from genre_stream.model.choice import open_engine
from genre_stream.model.engine import Engine
from genre_stream.model.streaming import StreamingClassifier, StreamingModel
from genre_stream.model.streampack import stream_pack_path
from genre_stream.sinks.messages import GenreState
from genre_stream.sources.base import AudioChunk

SR = 22050
FRAMES = 647
TOLERANCE = 1e-4  # the bar (fp32 within float rounding; int8 runs the whole graph's integers)


def synthetic_piece(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords and noise bursts whose loudness drifts and jumps, so the window's loudest bin keeps moving."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    audio = np.zeros_like(t)
    for f in rng.uniform(80, 2000, 6):
        audio += np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t)))
    audio += rng.standard_normal(t.size) * (rng.random(t.size // SR + 1) > 0.6).repeat(SR)[: t.size]
    gain = 10 ** ((np.cumsum(rng.normal(0, 0.6, t.size // SR + 1)).repeat(SR)[: t.size]) / 20)
    return (0.05 * audio * gain / np.abs(audio).max()).astype(np.float32)


def real_music(clips: int = 3) -> np.ndarray | None:
    files = sorted((SHARED_AUDIO / "genre-dev").glob("*.flac"))[:clips]
    if not files:
        return None
    return np.concatenate([sf.read(f, dtype="float32")[0] for f in files])


def assert_equal_predictions(engine: Engine, stream: StreamingClassifier, power: np.ndarray, hop: int) -> None:
    for start in range(0, power.shape[0] - FRAMES + 1, hop):
        window = normalize_window(power[start : start + FRAMES])
        batch, streamed = engine.predict(window[None]), stream.predict(window, start)
        np.testing.assert_allclose(streamed.probabilities, batch.probabilities, atol=TOLERANCE, rtol=0, err_msg=f"window at {start}")
        np.testing.assert_allclose(streamed.embeddings, batch.embeddings, atol=TOLERANCE, rtol=0, err_msg=f"window at {start}")


@pytest.fixture(scope="module")
def fp32() -> Engine:
    return open_engine("fp32", device="cpu", threads=1)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each bundled export with its own pack: the fp32 one exported stage by stage, the int8 one cut from its graph."""
    return open_engine(request.param, device="cpu", threads=1)


@pytest.mark.parametrize("source", ["synthetic", "real"])
@pytest.mark.parametrize("hop", [4, 20, 108], ids=["hop-1-column", "hop-0.93s", "hop-5s"])
def test_streamed_windows_equal_the_batch_windows(engine: Engine, source: str, hop: int) -> None:
    audio = synthetic_piece(75 if hop < 100 else 150) if source == "synthetic" else real_music()
    if audio is None:
        pytest.skip("needs ../shared/audio/genre-dev (present only in the project's workspace)")
    power = MelFrontend(engine.info.frontend).power(audio)
    stream = StreamingClassifier.for_engine(engine)
    assert stream is not None
    assert_equal_predictions(engine, stream, power, hop)
    # both paths really ran: windows reused columns, and some had to start over because the
    # loudest bin (so the whole normalised window) changed
    stats, whole = stream.stats, len(stream.stages) * stream.columns
    assert stats.streamed > 0 and stats.full.get("renormalised", 0) > 0
    assert stats.columns - (stats.windows - stats.streamed) * whole < stats.streamed * whole / 2


def test_misaligned_hops_fall_back_to_whole_windows(engine: Engine) -> None:
    power = MelFrontend(engine.info.frontend).power(synthetic_piece(50, seed=1))
    stream = StreamingClassifier.for_engine(engine)
    assert stream is not None
    assert stream.snap_hop(22) == 20 and stream.snap_hop(108) == 108 and stream.snap_hop(1) == 4
    assert_equal_predictions(engine, stream, power, 22)  # 22 frames: not a whole number of 4-frame columns
    assert stream.stats.streamed == 0
    assert stream.stats.full["misaligned"] == stream.stats.windows - 1


def test_a_different_window_at_the_expected_start_is_recomputed(engine: Engine) -> None:
    """Reuse rests on the frames, not on the caller's bookkeeping: other audio at the next start is caught."""
    front = MelFrontend(engine.info.frontend)
    a, b = front.power(synthetic_piece(40, seed=2)), front.power(synthetic_piece(40, seed=3))
    stream = StreamingClassifier.for_engine(engine)
    assert stream is not None
    stream.predict(normalize_window(a[:FRAMES]), 0)
    other = normalize_window(b[20 : 20 + FRAMES])
    got = stream.predict(other, 20)
    np.testing.assert_allclose(got.probabilities, engine.predict(other[None]).probabilities, atol=TOLERANCE, rtol=0)
    assert stream.stats.full == {"first": 1, "renormalised": 1}


def _states(pipeline: SourcePipeline, pieces: list[tuple[float, np.ndarray]]) -> list[GenreState]:
    out = []
    for start_time, audio in pieces:
        for i in range(0, audio.size, 4410):
            out += pipeline.feed(AudioChunk("t", audio[i : i + 4410], start_time + i / SR, time.monotonic()))
    return [m for m in out + pipeline.flush() if isinstance(m, GenreState)]


def test_live_pipeline_streams_through_silence_and_discontinuities(engine: Engine) -> None:
    """The daemon's chain with streaming equals the same chain classifying whole windows, message for message."""
    music = synthetic_piece(50, seed=4)
    silence = np.zeros(SR * 33, np.float32)
    # music, a jump in stream time (device reopened), 33 s of silence (silent windows skip the model), music again
    pieces = [(0.0, music[: SR * 30]), (100.0, music[SR * 30 :]), (120.0, silence), (153.0, music[: SR * 40])]
    cfg = PipelineConfig(hop_seconds=3.0, min_fill_seconds=10.0, ema_alpha=1.0, silence_dbfs=-60.0)
    streaming = SourcePipeline("s", engine, cfg)
    whole = SourcePipeline("w", engine, cfg)
    assert streaming.streaming is not None
    whole.streaming = None  # same (snapped) hop, whole windows
    got, expected = _states(streaming, pieces), _states(whole, pieces)
    assert len(got) == len(expected) > 30
    assert {s.state for s in got} >= {"music", "silence"}
    assert streaming.discontinuities == 1
    for a, b in zip(got, expected):
        assert (a.window_start, a.window_end, a.state) == (b.window_start, b.window_end, b.state)
        assert a.probabilities == pytest.approx(b.probabilities, abs=TOLERANCE)
    stats = streaming.streaming.stats
    assert stats.streamed > stats.windows / 2  # most full windows reused columns
    # Fed RUNNING (the bundled models since issue 23) the silence and the level change around it renormalise
    # nothing: only the first window and the looped ones of the first 30 s were computed in full.
    assert engine.info.normalization == RUNNING and set(stats.full) == {"looped", "first"}


class _WindowEnds:
    """A listener that notes the frame each classified window ends at (the ring's count then)."""

    def __init__(self) -> None:
        self.pipeline: SourcePipeline | None = None
        self.ends: list[int] = []

    def mel_updated(self, source: str, ring: object) -> None:
        pass

    def window_classified(self, window: object) -> None:
        assert self.pipeline is not None
        self.ends.append(self.pipeline.ring.total_frames)


def test_running_normalisation_streams_without_renormalising(engine: Engine, tmp_path: Path) -> None:
    """With a RUNNING model every full window is a slice of the stream's frames, each normalised once: consecutive
    windows share their overlap bit for bit, so none is recomputed for its normalisation (SEED recomputes many on the
    same audio), and each answer is the whole-window model's on ``running_normalize`` of the frames, within 1e-4."""
    assert engine.info.normalization == RUNNING  # the bundled models, since issue 23
    running = engine
    seeded_engine = open_engine(with_normalization(engine.path, SEED, tmp_path), device="cpu", threads=1)
    music = synthetic_piece(110, seed=5)
    pieces = [(0.0, music[: SR * 45]), (80.0, music[SR * 45 :])]  # a jump in stream time: the frontend restarts
    cfg = PipelineConfig(hop_seconds=1.0, min_fill_seconds=10.0, ema_alpha=1.0, silence_dbfs=-90.0)
    ends = _WindowEnds()
    pipeline = SourcePipeline("r", running, cfg, listeners=[ends])
    ends.pipeline = pipeline
    seed = SourcePipeline("s", seeded_engine, cfg)
    got, seeded, mel, frames = [], [], StreamingMel(pipeline.frontend), []
    for start_time, audio in pieces:
        mel.reset()  # as the pipeline does at the jump: the frames go on, the STFT starts over
        for i in range(0, audio.size, 4410):
            chunk = AudioChunk("t", audio[i : i + 4410], start_time + i / SR, time.monotonic())
            got += [m for m in pipeline.feed(chunk) if isinstance(m, GenreState)]
            seeded += [m for m in seed.feed(chunk) if isinstance(m, GenreState)]
            frames.append(mel.push(chunk.samples))
    assert pipeline.discontinuities == 1 and len(got) == len(ends.ends) > 90 and all(s.state != "silence" for s in got)
    stats = pipeline.streaming.stats
    assert "renormalised" not in stats.full and set(stats.full) == {"looped", "first"} and stats.full["first"] == 1
    assert stats.streamed == sum(n >= FRAMES for n in ends.ends) - 1
    assert seed.streaming.stats.full.get("renormalised", 0) > 10  # the same audio under SEED
    power = np.concatenate(frames)
    whole = running_normalize(power, FRAMES)  # frames normalised once; a prefix normalises the same
    windows = [whole[n - FRAMES : n] if n >= FRAMES else running_normalize(power[:n], FRAMES)[np.arange(FRAMES) % n] for n in ends.ends]
    for state, window, n in zip(got, windows, ends.ends):
        expected = running.predict(window[None]).probabilities[0]
        probabilities = np.array([state.probabilities[label] for label in running.labels])
        np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, rtol=0, err_msg=f"window ending at frame {n}")
    seed_probabilities = np.array([[s.probabilities[label] for label in engine.labels] for s in seeded])
    assert np.abs(seed_probabilities - np.array([[s.probabilities[label] for label in running.labels] for s in got])).max() > 1e-3


def test_a_pack_of_other_weights_is_refused_at_load(engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pack that names the model but holds other weights fails the load-time check; the engine classifies."""
    model = tmp_path / "m.onnx"
    shutil.copy(engine.path, model)
    with zipfile.ZipFile(stream_pack_path(engine.path)) as src, zipfile.ZipFile(stream_pack_path(model), "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "head.npz":
                head = dict(np.load(io.BytesIO(data)))
                head["bias"] = head["bias"] + np.linspace(0, 3, head["bias"].size)
                buf = io.BytesIO()
                np.savez(buf, **head)
                data = buf.getvalue()
            dst.writestr(item, data)
    engine = open_engine(model, device="cpu", threads=1)
    with caplog.at_level("WARNING", logger="genre_stream.model.streaming"):
        pipeline = SourcePipeline("x", engine, PipelineConfig(hop_seconds=1.0))
    assert pipeline.streaming is None
    assert "streaming inference off" in caplog.text and "differs from m.onnx" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "no-stride"])
def test_a_broken_pack_is_named_and_whole_windows_are_classified(fp32: Engine, tmp_path: Path, damage: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(fp32.path, model)
    good = stream_pack_path(fp32.path).read_bytes()
    if damage == "truncated":
        stream_pack_path(model).write_bytes(good[: len(good) // 2])
    else:
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(stream_pack_path(model), "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "stream.json":
                    meta = json.loads(data)
                    del meta["stride"]
                    data = json.dumps(meta).encode()
                dst.writestr(item, data)
    with caplog.at_level("WARNING", logger="genre_stream.model.streaming"):
        assert StreamingModel.for_engine(open_engine(model, device="cpu", threads=1)) is None
    assert f"{stream_pack_path(model)}: not a usable streaming pack" in caplog.text


@pytest.mark.parametrize("model_of, pack_of", [("int8", "fp32"), ("fp32", "int8")])
def test_a_pack_of_the_other_precision_is_refused(tmp_path: Path, model_of: str, pack_of: str, caplog: pytest.LogCaptureFixture) -> None:
    """Both packs name the same model and checkpoint; only the precision tells them apart."""
    model = tmp_path / "m.onnx"
    shutil.copy(open_engine(model_of, device="cpu", threads=1).path, model)
    shutil.copy(stream_pack_path(open_engine(pack_of, device="cpu", threads=1).path), stream_pack_path(model))
    with caplog.at_level("WARNING", logger="genre_stream.model.streaming"):
        assert StreamingModel.for_engine(open_engine(model, device="cpu", threads=1)) is None
    assert f"made from the {pack_of} model" in caplog.text and f"not from m.onnx ({model_of} " in caplog.text


def test_packless_models_classify_whole_windows(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(open_engine("fp32", device="cpu", threads=1).path, model)
    engine = open_engine(model, device="cpu", threads=1)
    assert StreamingModel.for_engine(engine) is None
    pipeline = SourcePipeline("x", engine, PipelineConfig(hop_seconds=1.0))
    assert pipeline.streaming is None and pipeline._hop_frames == 22  # the hop is left as asked


def test_streaming_can_be_turned_off(fp32: Engine) -> None:
    assert SourcePipeline("x", fp32, PipelineConfig(hop_seconds=1.0))._hop_frames == 20  # snapped: 5 columns
    off = SourcePipeline("x", fp32, PipelineConfig(hop_seconds=1.0, streaming=False))
    assert off.streaming is None and off._hop_frames == 22
