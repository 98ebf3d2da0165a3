"""Streaming inference: a live window computed from the columns earlier windows already computed.

The daemon classifies the latest 30 s every hop, so consecutive windows share all
but one hop of audio. The BBNN is local in time up to its final global mean, so
each stage's output column (4 mel frames after the stem's pooling) depends only on
a few neighbouring columns. A window therefore needs, per stage:

* the columns the hop added, plus those that were within reach of the previous
  window's right edge (computed then with that edge's zero padding);
* the columns within reach of its own left edge (its zero padding is new);
* everything else, unchanged, from the cache.

The result is the batch result up to float summation order (< 1e-4), because a
column is reused only when its whole input is bit-identical: the overlap of the two
windows' *normalised* frames is compared. A model with the seed normalisation
(``frontend.normalize_window``) has the whole window rescaled whenever its loudest bin
or its floor changes, so such a window is computed in full ("renormalised"); with the
``RUNNING`` normalisation (``audio.normalization``) a frame is normalised once, the
overlap is always identical and no window is. The first window, a hop that is not a
whole number of columns, or a gap are computed in full either way. Reuse needs the hop
to be a multiple of the stem's pooling stride (4 frames), hence ``snap_hop``.

The trunk comes from the model's streaming pack (``trainer.stream_export``): one ONNX
graph per stage with a free time axis, run by onnxruntime on column slices, one graph
of all stages for windows computed in full, and the head (2x2 average pool, BN, ReLU,
mean, dense) in numpy here, with each pooled pair's contribution cached too.

Two kinds of pack: fp32 (exported from the PyTorch model; stages in NCHW, float caches, the
head's BN in numpy) and int8 (cut from the quantised ONNX file itself, so a streamed window
computes exactly the integers the whole int8 graph does; stages in NHWC with uint8 caches,
since onnxruntime runs uint8 pooling fast only in NHWC, and a small head graph for the
quantised average pool). A GPU engine classifies whole windows.
"""

from __future__ import annotations

import io
import logging
import math
import time
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .engine import Engine, Prediction
from .session import CPU
from .streampack import HEAD_ARRAYS, MANIFEST, WINDOW_GRAPH, PackManifest, StageEntry, stream_pack_path

log = logging.getLogger(__name__)

__all__ = ["StreamError", "StreamStats", "StreamingClassifier", "StreamingModel"]
# What a streamed window may differ from the batch one by: float summation order, ~1e-6 in practice.
VERIFY_TOLERANCE = 1e-4
VERIFY_FRAMES = 67  # 16 columns: the load-time check's input (a window is 647 frames)


class StreamError(Exception):
    """A streaming pack that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class _Stage:
    name: str
    session: ort.InferenceSession
    inputs: tuple[str, ...]
    output: str
    channels: int
    halo: int  # columns either side an output column reads (the stem: frames)
    left: int  # output columns at a window's start that depend on its zero padding
    right: int  # ... and at its end
    nhwc: bool  # the graph's tensors are (batch, columns, n_mels, channels), else (batch, channels, columns, n_mels)
    dtype: np.dtype  # of its output (and of the cache that holds it)

    @property
    def axis(self) -> int:
        """The column axis of an output without its batch axis."""
        return 0 if self.nhwc else 1

    def shape(self, columns: int, n_mels: int) -> tuple[int, int, int]:
        return (columns, n_mels, self.channels) if self.nhwc else (self.channels, columns, n_mels)


def _columns(stage: _Stage, index: slice | np.ndarray) -> tuple:
    """An index that selects columns of one of ``stage``'s outputs (without its batch axis)."""
    return (slice(None),) * stage.axis + (index,)


@dataclass
class StreamStats:
    """How windows were computed; ``full`` by reason, so a benchmark can say why."""

    windows: int = 0
    streamed: int = 0
    full: dict[str, int] = field(default_factory=dict)
    columns: int = 0  # trunk columns computed (summed over stages), against windows * stages * columns for batch
    streamed_cpu_seconds: float = 0.0  # CPU time of the calling thread (onnxruntime's one intra-op thread is it)
    full_cpu_seconds: float = 0.0

    def record(self, reason: str, cpu_seconds: float) -> None:
        """One window: streamed (no reason) or computed in full, and why."""
        self.windows += 1
        if reason:
            self.full[reason] = self.full.get(reason, 0) + 1
            self.full_cpu_seconds += cpu_seconds
        else:
            self.streamed += 1
            self.streamed_cpu_seconds += cpu_seconds


class StreamingModel:
    """A streaming pack loaded for one engine: the stage sessions, the head and the geometry.

    Shared by every stream the engine serves (``for_engine``); the per-stream caches
    live in ``StreamingClassifier``.
    """

    def __init__(self, pack: Path, engine: Engine) -> None:
        self.pack = Path(pack)
        self.engine = engine
        info = engine.info
        self.info = info  # calibration and gate, applied by Prediction.of
        self.frames = info.frontend.window_frames
        self.n_mels = info.frontend.n_mels
        try:
            with zipfile.ZipFile(self.pack) as zf:
                manifest = PackManifest.from_json(zf.read(MANIFEST))
                packed = manifest.model
                mine = (info.model_id, info.provenance.get("sha256"), info.labels, engine.precision)
                theirs = (packed.get("model_id"), packed.get("provenance", {}).get("sha256"), packed.get("labels"), manifest.precision)
                if mine != theirs:
                    raise StreamError(f"{self.pack}: made from the {theirs[3]} model {theirs[0]!r} (sha256 {theirs[1]}), "
                                      f"not from {engine.path.name} ({mine[3]} {mine[0]!r}, sha256 {mine[1]})")
                head = np.load(io.BytesIO(zf.read(HEAD_ARRAYS)))
                self.weight = head["weight"].astype(np.float64)
                self.bias = head["bias"].astype(np.float64)
                self.pool = int(head["pool"][0])
                # fp32: the head's BN with the average pool's 1 / k^2 folded in, shaped for (channels, pairs, bands);
                # int8: a graph with the quantised pool (its rounding is onnxruntime's), returning each pair's band sum
                self._head_session = self._session(zf.read(manifest.head_graph)) if manifest.head_graph else None
                if self._head_session is None:
                    self._head_scale = (head["scale"] / self.pool**2).astype(np.float32)[:, None, None]
                    self._head_shift = head["shift"].astype(np.float32)[:, None, None]
                self.stride = manifest.stride
                self.columns = self.frames // self.stride
                self.stages: list[_Stage] = []
                for entry in manifest.stages:  # in order: each stage's cones build on its inputs'
                    self.stages.append(self._stage(entry, zf.read(entry.file)))
                self.window_session = self._session(zf.read(WINDOW_GRAPH))
                self.window_outputs = list(manifest.window_outputs)
                if self.window_outputs != [st.output for st in self.stages]:
                    raise ValueError(f"the window graph returns {self.window_outputs}, not the stages' outputs in order")
        except (OSError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            raise StreamError(f"{self.pack}: not a usable streaming pack ({type(exc).__name__}: {exc})") from exc

    def _session(self, graph: bytes) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(graph, sess_options=self.engine.session_options, providers=[CPU])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"a graph does not load ({exc})") from exc

    def _stage(self, entry: StageEntry, graph: bytes) -> _Stage:
        """One stage with its edge cones: how many columns at each window edge depend on that edge's padding."""
        halo = entry.halo
        if entry.inputs == ("mel",):
            # The stem pools `stride` frames per column; its conv reads `halo` frames past them. The
            # frames the pooling drops at the end absorb that much of the right edge's padding.
            left = math.ceil(halo / self.stride)
            right = max(0, math.ceil((halo - self.frames % self.stride) / self.stride))
        else:
            cones = {st.output: (st.left, st.right) for st in self.stages}
            left = max(cones[i][0] for i in entry.inputs) + halo
            right = max(cones[i][1] for i in entry.inputs) + halo
        return _Stage(entry.name, self._session(graph), entry.inputs, entry.output, entry.channels, halo, left, right,
                      entry.layout == "nhwc", np.dtype(entry.dtype))

    @classmethod
    def for_engine(cls, engine: Engine) -> StreamingModel | None:
        """The engine's streaming model (loaded and verified once per engine), or None, logged, where it has none.

        Packs run on the CPU and exist for fp32 and int8 exports, so an fp16 export, or an
        engine on a GPU, classifies whole windows.
        """
        if engine in _MODELS:
            return _MODELS[engine]
        model: StreamingModel | None = None
        pack = stream_pack_path(engine.path)
        if engine.providers[0] != CPU:
            log.info("streaming inference off: the model runs on %s (streaming packs are for the CPU)", engine.providers[0])
        elif not pack.is_file():
            log.info("streaming inference off: %s has no streaming pack (%s)", engine.path.name, pack.name)
        else:
            try:
                model = cls(pack, engine)
                model.verify()
            except StreamError as exc:
                log.warning("streaming inference off: %s", exc)
                model = None
        _MODELS[engine] = model
        return model

    def verify(self) -> None:
        """Raise StreamError unless the pack computes what the engine's model computes.

        The pack names the model it was cut from, but a re-exported ONNX file could keep
        the name with other weights. Both are fully convolutional, so a short input
        (VERIFY_FRAMES) checks every weight at a fraction of a window's cost and of the
        activation memory a whole window would make the engine's session keep.
        """
        # a mel-like ramp with noise: uniform noise drives the model to one certain class, where other head weights hide
        ramp = np.linspace(0.2, 0.8, self.n_mels, dtype=np.float32)
        noise = 0.1 * np.random.default_rng(0).standard_normal((VERIFY_FRAMES, self.n_mels)).astype(np.float32)
        x = np.clip(ramp + noise, 0.0, 1.0)
        reference, ours = self.engine.predict(x[None]), self.whole(x)
        diff = max(float(np.abs(reference.probabilities - ours.probabilities).max()),
                   float(np.abs(reference.embeddings - ours.embeddings).max()))
        if diff > VERIFY_TOLERANCE:
            raise StreamError(f"{self.pack}: differs from {self.engine.path.name} by {diff:.2e} (limit {VERIFY_TOLERANCE:g})")
        log.info("streaming inference on (%s): agrees with the whole-window model to %.1e", self.pack.name, diff)

    def whole(self, window: np.ndarray) -> Prediction:
        """One window of any length computed whole, nothing cached (looped windows, verification)."""
        last = self.stages[-1]
        t = self.trunk(window)[last.output]
        pairs = t.shape[last.axis] // self.pool
        return self.prediction(self.pair_sums(t[_columns(last, slice(0, pairs * self.pool))]).sum(axis=0)
                               / (pairs * (self.n_mels // self.pool)))

    def trunk(self, window: np.ndarray, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every stage's output (channels, columns, n_mels) over a whole window, written into ``out``.

        The window graph runs on two overlapping halves, so onnxruntime's arena holds the
        activations of half a window (~70 MB less RSS, measured) for 8 % more columns: the
        first half's outputs are exact up to each stage's right cone before its false end,
        the second's from its left cone after its false start, and the halves overlap by
        the widest sum of the two.
        """
        cols = window.shape[0] // self.stride
        if out is None:
            out = {st.output: np.empty(st.shape(cols, self.n_mels), st.dtype) for st in self.stages}
        overlap = max(st.left + st.right for st in self.stages) - 1
        stem = self.stages[0]
        if cols < 4 * overlap:  # short inputs (the load-time check) in one piece
            parts = [(0, window.shape[0], 0, {st.output: (0, cols) for st in self.stages})]
        else:
            c1 = (cols + overlap) // 2  # the first half's columns; the second starts `overlap` earlier
            first = c1 - overlap - math.ceil(stem.halo / self.stride)  # its first column, spoilt by the false start
            parts = [(0, min(window.shape[0], c1 * self.stride + stem.halo), 0, {st.output: (0, c1 - st.right) for st in self.stages}),
                     (first * self.stride, window.shape[0], first, {st.output: (c1 - st.right, cols) for st in self.stages})]
        for f_lo, f_hi, offset, take in parts:
            results = self.window_session.run(self.window_outputs, {"mel": window[None, f_lo:f_hi]})
            for stage, result in zip(self.stages, results):
                lo, hi = take[stage.output]
                out[stage.output][_columns(stage, slice(lo, hi))] = result[0][_columns(stage, slice(lo - offset, hi - offset))]
        return out

    def pair_sums(self, t: np.ndarray) -> np.ndarray:
        """(pairs, channels): the head's BN + ReLU of each pooled k x k cell, summed over the bands.

        ``t`` is the last stage's output over k * pairs columns. fp32: the average pool is
        done as strided adds (numpy's reductions over tiny axes are ~5x slower), in float32
        like the graph; the sums in float64. int8: the pack's head graph.
        """
        if self._head_session is not None:
            return self._head_session.run(None, {self.stages[-1].output: t[None]})[0][0].T.astype(np.float64)
        k = self.pool
        c, n, _ = t.shape
        f = self.n_mels // k
        t = t.reshape(c, n // k, k, self.n_mels)
        rows = t[:, :, 0, : f * k].copy()
        for i in range(1, k):
            rows += t[:, :, i, : f * k]
        rows = rows.reshape(c, n // k, f, k)
        pooled = rows[..., 0].copy()
        for i in range(1, k):
            pooled += rows[..., i]
        pooled *= self._head_scale
        pooled += self._head_shift
        np.maximum(pooled, 0.0, out=pooled)
        return pooled.sum(axis=2, dtype=np.float64).T

    def prediction(self, embedding: np.ndarray) -> Prediction:
        """The dense layer and softmax, then calibration and gate as ``Engine.predict`` applies them."""
        logits = embedding @ self.weight.T + self.bias
        e = np.exp(logits - logits.max())
        return Prediction.of(self.info, (e / e.sum()).astype(np.float32)[None], embedding.astype(np.float32)[None])


_MODELS: weakref.WeakKeyDictionary[Engine, StreamingModel | None] = weakref.WeakKeyDictionary()


class StreamingClassifier:
    """``Engine.predict`` for one window at a time, reusing the previous window's columns.

    Give it consecutive normalised windows with their absolute start frame (any frame
    count since the stream began; only differences matter). Results equal
    ``engine.predict(window)`` for every window, whatever the order or gaps.
    """

    def __init__(self, model: StreamingModel) -> None:
        self.model = model
        m = model
        self.stride, self.frames, self.columns, self.n_mels = m.stride, m.frames, m.columns, m.n_mels
        self.stages = m.stages
        self._producer = {st.output: st for st in self.stages}
        self._caches: dict[str, np.ndarray] = {}  # stage output -> (channels, columns, n_mels), a ring of columns
        self._out = self.stages[-1]
        self._pairs = self.columns // m.pool
        self._pair_slots = 2 * self.columns
        self._pair_values = np.zeros((self._pair_slots, self._out.channels), np.float64)
        self.stats = StreamStats()
        self.reset()

    @classmethod
    def for_engine(cls, engine: Engine) -> StreamingClassifier | None:
        """A new stream over the engine's streaming model, or None where it has none (see ``StreamingModel.for_engine``)."""
        model = StreamingModel.for_engine(engine)
        return cls(model) if model is not None else None

    def snap_hop(self, hop_frames: int) -> int:
        """The hop, in frames, rounded down to a whole number of columns (at least one): the hops that can stream."""
        return max(self.stride, hop_frames // self.stride * self.stride)

    def reset(self) -> None:
        """Forget the cache; the next window is computed in full."""
        self._prev: np.ndarray | None = None
        self._prev_start = 0
        self._origin = 0
        self._pair_abs = np.full(self._pair_slots, -1, np.int64)

    # -- one window ------------------------------------------------------------------------

    def predict(self, window: np.ndarray, start_frame: int | None) -> Prediction:
        """Calibrated probabilities (1, classes) and embedding (1, 32) of one normalised window (frames, n_mels).

        ``start_frame`` None: the window is no slice of the stream (a short buffer looped to
        30 s); it is computed whole and the next window starts over.
        """
        window = np.array(window, dtype=np.float32)  # a copy: it is compared with the next window
        if window.shape != (self.frames, self.n_mels):
            raise ValueError(f"streaming expects one window of shape {(self.frames, self.n_mels)}, got {window.shape}")
        started = time.thread_time()
        if start_frame is None:
            self.reset()
            result = self.model.whole(window)
            self.stats.record("looped", time.thread_time() - started)
            return result
        shift, reason = self._shift_from_previous(window, start_frame)
        if reason:
            self._origin = start_frame
            self._pair_abs[:] = -1
            self._run_window(window)
        base = (start_frame - self._origin) // self.stride  # the window's first column, counted from the origin
        if not reason:
            for stage in self.stages:
                self._run(stage, window, base, self._ranges(stage, shift // self.stride))
        self._prev, self._prev_start = window, start_frame
        result = self.model.prediction(self._embedding(base))
        self.stats.record(reason, time.thread_time() - started)
        return result

    def _shift_from_previous(self, window: np.ndarray, start_frame: int) -> tuple[int, str]:
        """(frames since the previous window, "") when its columns can be reused, else (0, why not)."""
        if self._prev is None:
            return 0, "first"
        shift = start_frame - self._prev_start
        if shift < 0 or shift % self.stride:
            return 0, "misaligned"
        if shift >= self.frames:
            return 0, "gap"
        if not np.array_equal(self._prev[shift:], window[: self.frames - shift]):
            return 0, "renormalised"  # the loudest bin or the floor moved, or the frames are not the same audio
        return shift, ""

    def _run_window(self, window: np.ndarray) -> None:
        """Every stage over the whole window into the caches (the origin is this window: slot = column)."""
        if not self._caches:
            self._caches = {st.output: np.empty(st.shape(self.columns, self.n_mels), st.dtype) for st in self.stages}
        self.model.trunk(window, self._caches)
        self.stats.columns += len(self.stages) * self.columns

    def _ranges(self, stage: _Stage, shift_columns: int) -> list[tuple[int, int]]:
        """The output columns (window coordinates, inclusive) this window must compute at ``stage``."""
        last = self.columns - 1
        new_from = self.columns - stage.right - shift_columns  # the hop's columns and the old right edge's
        if new_from <= stage.left:
            return [(0, last)]
        return ([(0, stage.left - 1)] if stage.left else []) + [(new_from, last)]

    def _slots(self, base: int, lo: int, hi: int) -> slice | np.ndarray:
        """Cache positions of window columns lo..hi: a ring of ``columns`` slots by column since the origin."""
        first = (base + lo) % self.columns
        if first + (hi - lo) < self.columns:
            return slice(first, first + hi - lo + 1)
        return np.arange(base + lo, base + hi + 1) % self.columns

    def _run(self, stage: _Stage, window: np.ndarray, base: int, ranges: list[tuple[int, int]]) -> None:
        """Compute ``stage``'s columns of each (lo, hi) range of this window into its cache, in one graph run.

        Each range's input slice reaches ``halo`` further each way: where it stops at the
        window's edge the graph's zero padding is the window's own, elsewhere the columns the
        false edge spoils are computed and thrown away. The slices are fed end to end as one
        input, since what a junction spoils is within ``halo`` of it and thrown away too: one
        onnxruntime run per stage instead of one per range (the left cone and the right edge)
        saves its fixed cost, 0.1-0.2 ms per block graph at 1 thread, about a sixth of a
        streamed window at hop 1 s (issue 15 part 3).
        """
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in stage.inputs}
        spans = []  # (lo, hi, where lo is in the graph's output)
        at = 0
        for lo, hi in ranges:
            if stage.inputs == ("mel",):
                first = max(0, lo - math.ceil(stage.halo / self.stride))
                f_lo = first * self.stride
                reach = (hi + 1) * self.stride + stage.halo - f_lo
                f_hi = min(self.frames, f_lo + -(-reach // self.stride) * self.stride)  # whole columns: the next slice stays aligned
                pieces["mel"].append(window[f_lo:f_hi])
                n = (f_hi - f_lo) // self.stride  # only the last slice can end at the window's end, whose odd frames the pooling drops
            else:
                first = max(0, lo - stage.halo)
                in_hi = min(self.columns - 1, hi + stage.halo)
                slots = self._slots(base, first, in_hi)
                for name in stage.inputs:
                    pieces[name].append(self._caches[name][_columns(self._producer[name], slots)])
                n = in_hi - first + 1
            spans.append((lo, hi, at + lo - first))
            at += n
        feeds = {name: np.concatenate(parts, axis=0 if name == "mel" else self._producer[name].axis)[None] for name, parts in pieces.items()}
        out = stage.session.run(None, feeds)[0][0]
        for lo, hi, offset in spans:
            self._caches[stage.output][_columns(stage, self._slots(base, lo, hi))] = out[_columns(stage, slice(offset, offset + hi - lo + 1))]
            self.stats.columns += hi - lo + 1

    def _embedding(self, base: int) -> np.ndarray:
        """The head's global mean, from each pooled pair's sum, reusing pairs clear of both edges (then and now).

        A pair is keyed by its first column since the origin, so pairs cached at either
        parity serve later windows however many columns each hop moves.
        """
        k, out = self.model.pool, self._out
        first_col = k * np.arange(self._pairs)
        starts = base + first_col
        slots = starts % self._pair_slots
        interior = (first_col >= out.left) & (first_col + k - 1 <= self.columns - 1 - out.right)
        missing = np.flatnonzero((self._pair_abs[slots] != starts) | ~interior)
        if missing.size:
            cols = (starts[missing][:, None] + np.arange(k)).reshape(-1)
            self._pair_values[slots[missing]] = self.model.pair_sums(np.take(self._caches[out.output], cols, axis=out.axis, mode="wrap"))
            self._pair_abs[slots[missing]] = np.where(interior[missing], starts[missing], -1)  # edge pairs serve this window only
        return self._pair_values[slots].sum(axis=0) / (self._pairs * (self.n_mels // k))
