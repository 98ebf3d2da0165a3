"""Cut a quantised (int8 QDQ) BBNN export into a streaming pack (``genre_stream.model.streaming``).

The fp32 pack is exported stage by stage from the PyTorch model (``trainer.stream_export``).
An int8 pack cannot be: quantising each stage on its own would pick other scales, and the
streamed windows would no longer be the int8 file's answers. So the stages are cut out of
the quantised graph itself, at the uint8 tensors between them, and a streamed window runs
exactly the integer arithmetic the whole int8 graph runs on the same columns:

* ``stem``    mel (1, T, n_mels) -> ``s0``: the stem's pooled output
* ``block1``  ``s0`` -> ``c1``: the first block's concatenation (its input and new channels)
* ``block2``  ``c1`` -> ``c2``
* ``block3``  ``c2`` -> ``t``: the last block and the transition conv (its BN folded in)
* ``window``  all of them over a whole window (a full recompute)
* ``head``    ``t`` -> each pooled pair's band sum: dequantise, 2x2 average pool (as the int8
  graph runs it: a depthwise conv, ``quantize.average_pools_as_convs``), quantise (the ReLU is
  the quantiser's zero point), dequantise, sum over bands. The mean over
  pairs, the dense layer and the softmax (float in the bundled int8 file) run in numpy.

Stage tensors are NHWC: onnxruntime runs a uint8 max pool fast only in its NHWC layout, which it
chooses inside a graph but not for a graph input in NCHW (measured: block 3 over 161 columns
133 ms with NCHW inputs, 22 ms with NHWC; the whole int8 graph 43 ms). A transpose at each
stage's edges lets it cancel its own.

Only onnx and onnxruntime are needed. Each stage's halo is measured by perturbing an input
column; the chained stages and head are checked against the whole int8 graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from genre_stream.common.fsutil import atomic_path
from genre_stream.model.info import METADATA_KEY, ModelInfo
from genre_stream.model.streampack import WINDOW_GRAPH, PackManifest, StageEntry, pack_bytes
from trainer.int8_rewrite import graph_wiring
from trainer.quantize import session

__all__ = ["int8_stream_pack", "save_int8_stream_pack"]

# The stages chained give the whole int8 graph's integers; only the float head's summation order differs.
PACK_PARITY = 1e-5
_U8 = TensorProto.UINT8


class _Graph:
    """The quantised graph with its producer/consumer maps, and the tensors to cut at."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer, self.consumers = graph_wiring(g)
        concats = [n for n in g.node if n.op_type == "Concat"]
        means = [n for n in g.node if n.op_type == "ReduceMean"]
        if len(concats) != 3 or len(means) != 1:
            raise ValueError(f"not a quantised BBNN export ({len(concats)} Concat, {len(means)} ReduceMean; expected 3, 1)")
        # Every cut is a QuantizeLinear output: uint8, read by DequantizeLinear nodes.
        self.s0 = self._quantised_input(concats[0].input[0])
        self.concats = [self._quantiser_of(n.output[0]) for n in concats]
        # the head's pool: the mean reads its dequantised, quantised output; an AveragePool or the conv that replaced it
        self.pool = self.producer[self.producer[self._quantised_input(means[0].input[0])].input[0]]
        if self.pool.op_type not in ("AveragePool", "Conv"):
            raise ValueError(f"the mean reads {self.pool.op_type}, not the average pool: not a quantised BBNN export")
        self.t = self._quantised_input(self.pool.input[0])
        stem = next(n for n in g.node if n.op_type == "Conv")
        self.stem_halo = int([a.ints[0] for a in stem.attribute if a.name == "kernel_shape"][0]) // 2
        self.pooled = means[0].input[0]  # the dequantised pooled cells the mean reads
        gemm = next(n for n in g.node if n.op_type == "Gemm")
        softmax = [n for n in g.node if n.op_type == "Softmax"]
        outputs = {o.name for o in g.output}
        if (means[0].output[0] != gemm.input[0] or not any(a.name == "transB" and a.i == 1 for a in gemm.attribute)
                or len(softmax) != 1 or softmax[0].input[0] != gemm.output[0] or softmax[0].output[0] not in outputs):
            raise ValueError("its head (mean, dense layer, softmax) is quantised; a pack needs it float: "
                             "export without --quantized-head, as the bundled int8 is")
        self.weight = numpy_helper.to_array(self.inits[gemm.input[1]]).astype(np.float64)
        self.bias = numpy_helper.to_array(self.inits[gemm.input[2]]).astype(np.float64)

    def _quantised_input(self, dequantised: str) -> str:
        node = self.producer[dequantised]
        if node.op_type != "DequantizeLinear":
            raise ValueError(f"{dequantised} is made by {node.op_type}, not DequantizeLinear: not a QDQ int8 export")
        return node.input[0]

    def _quantiser_of(self, tensor: str) -> str:
        q = [n for n in self.consumers.get(tensor, []) if n.op_type == "QuantizeLinear"]
        if len(q) != 1:
            raise ValueError(f"{tensor} is not quantised once: not a QDQ int8 export")
        return q[0].output[0]

    def cut(self, inputs: dict[str, onnx.ValueInfoProto], outputs: list[str], graph_outputs: list[onnx.ValueInfoProto],
            before: list[onnx.NodeProto] = (), after: list[onnx.NodeProto] = (),
            initializers: list[onnx.TensorProto] = ()) -> bytes:
        """The nodes that make ``outputs`` from the tensors named in ``inputs`` (tensor -> the graph input
        that feeds it, through ``before``), then ``after`` (which makes ``graph_outputs``)."""
        keep: set[int] = set()
        used: set[str] = set()
        seen = set(inputs)
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in seen or name in self.inits or not name:
                continue
            seen.add(name)
            node = self.producer[name]
            keep.add(id(node))
            for i in node.input:
                (used.add if i in self.inits else stack.append)(i)
        nodes = [n for n in self.model.graph.node if id(n) in keep]
        graph = helper.make_graph([*before, *nodes, *after], "stage", list(inputs.values()), graph_outputs,
                                  [*(self.inits[u] for u in sorted(used)), *initializers])
        model = helper.make_model(graph, opset_imports=[o for o in self.model.opset_import if o.domain in ("", "ai.onnx")])
        model.ir_version = self.model.ir_version
        onnx.checker.check_model(model)
        return model.SerializeToString()


def _nhwc_stage(g: _Graph, inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, int]], n_mels: int) -> bytes:
    """A stage graph with NHWC uint8 inputs/outputs: (tensor in the int8 graph, exported name, channels)."""
    pre = []
    infos: dict[str, onnx.ValueInfoProto] = {}
    for tensor, name, channels in inputs:
        if tensor == "mel":
            infos[tensor] = helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, "frames", n_mels])
            continue
        infos[tensor] = helper.make_tensor_value_info(name, _U8, [1, "columns", n_mels, channels])
        pre.append(helper.make_node("Transpose", [name], [tensor], perm=[0, 3, 1, 2]))
    post = [helper.make_node("Transpose", [tensor], [name], perm=[0, 2, 3, 1]) for tensor, name, _ in outputs]
    outs = [helper.make_tensor_value_info(name, _U8, [1, "columns", n_mels, c]) for _, name, c in outputs]
    return g.cut(infos, [t for t, _, _ in outputs], outs, before=pre, after=post)


def _head_graph(g: _Graph, channels: int, n_mels: int) -> bytes:
    """``t`` (NHWC uint8, an even number of columns) -> (1, channels, pairs): each pooled pair's band sum."""
    t_in = helper.make_tensor_value_info("t", _U8, [1, "columns", n_mels, channels])
    sums = helper.make_tensor_value_info("pair_sums", TensorProto.FLOAT, [1, channels, "pairs"])
    axes = helper.make_tensor("head_band_axis", TensorProto.INT64, [1], [3])
    return g.cut({g.t: t_in}, [g.pooled], [sums], before=[helper.make_node("Transpose", ["t"], [g.t], perm=[0, 3, 1, 2])],
                 after=[helper.make_node("ReduceSum", [g.pooled, "head_band_axis"], ["pair_sums"], keepdims=0)],
                 initializers=[axes])


def _measured_halo(sess: ort.InferenceSession, name: str, channels: int, n_mels: int, columns: int = 24) -> int:
    """How many output columns either side of a changed input column change (random uint8 probes, the widest)."""
    rng = np.random.default_rng(0)
    centre, widest = columns // 2, 0
    for _ in range(3):
        x = rng.integers(0, 256, (1, columns, n_mels, channels), dtype=np.uint8)
        base = sess.run(None, {name: x})[0]
        bumped = x.copy()
        bumped[:, centre] = rng.integers(0, 256, bumped[:, centre].shape, dtype=np.uint8)
        changed = np.flatnonzero((sess.run(None, {name: bumped})[0] != base).any(axis=(0, 2, 3)))
        widest = max(widest, *(abs(int(c) - centre) for c in changed))
    return widest


def int8_stream_pack(model: onnx.ModelProto) -> bytes:
    """The streaming pack of an int8 export as zip bytes, checked against the whole int8 graph."""
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise ValueError(f"no {METADATA_KEY!r} metadata: not a genre-stream export")
    info = ModelInfo.from_json(entry.value)
    fc = info.frontend
    g = _Graph(model)
    whole = session(model)
    x = np.random.default_rng(1).random((1, fc.window_frames, fc.n_mels), dtype=np.float32)
    names = {"mel": "mel", g.s0: "s0", g.concats[0]: "c1", g.concats[1]: "c2", g.t: "t"}
    # channels of each cut, from one run of the cut graph over a window
    cuts = [g.s0, g.concats[0], g.concats[1], g.t]
    probe = g.cut({"mel": helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, "frames", fc.n_mels])},
                  cuts, [helper.make_tensor_value_info(c, _U8, [1, None, None, None]) for c in cuts])
    probed = session(probe).run(None, {"mel": x})
    channels = {c: int(a.shape[1]) for c, a in zip(cuts, probed)}
    stride = fc.window_frames // probed[0].shape[2]
    wiring = [("stem", "mel", g.s0), ("block1", g.s0, g.concats[0]), ("block2", g.concats[0], g.concats[1]), ("block3", g.concats[1], g.t)]
    files: dict[str, bytes] = {}
    entries = []
    for name, src, dst in wiring:
        data = _nhwc_stage(g, [(src, names[src], channels.get(src, 0))], [(dst, names[dst], channels[dst])], fc.n_mels)
        files[f"{name}.onnx"] = data
        # the stem's halo is in frames (its conv reads that far past the frames it pools), the blocks' in columns
        halo = g.stem_halo if src == "mel" else _measured_halo(session(data), names[src], channels[src], fc.n_mels)
        entries.append(StageEntry(name, f"{name}.onnx", (names[src],), names[dst], channels[dst], halo, "nhwc", "uint8"))
    files[WINDOW_GRAPH] = _nhwc_stage(g, [("mel", "mel", 0)], [(d, names[d], channels[d]) for _, _, d in wiring], fc.n_mels)
    files["head.onnx"] = _head_graph(g, channels[g.t], fc.n_mels)
    pool = [a.ints[0] for a in g.pool.attribute if a.name == "kernel_shape"][0]
    head = {"weight": g.weight, "bias": g.bias, "pool": np.array([pool, pool])}
    _check_parity(whole, files, x, head, [names[d] for _, _, d in wiring])
    manifest = PackManifest(json.loads(info.to_json()), int(stride), tuple(entries), tuple(names[d] for _, _, d in wiring),
                            precision="int8", head_graph="head.onnx")
    return pack_bytes(manifest, head, files)


def _check_parity(whole: ort.InferenceSession, files: dict[str, bytes], x: np.ndarray, head: dict, outputs: list[str]) -> None:
    """The stages chained, then the head graph and the numpy dense layer, give the int8 graph's probabilities."""
    feats = {"mel": x}
    for stage, (src, dst) in zip(("stem", "block1", "block2", "block3"), zip(["mel", *outputs[:-1]], outputs)):
        feats[dst] = session(files[f"{stage}.onnx"]).run(None, {src: feats[src]})[0]
    window = session(files[WINDOW_GRAPH]).run(None, {"mel": x})
    for name, a in zip(outputs, window):
        if not np.array_equal(a, feats[name]):
            raise RuntimeError(f"the window graph's {name} differs from the chained stages'")
    k = int(head["pool"][0])
    t = feats[outputs[-1]]
    t = t[:, : t.shape[1] // k * k]
    sums = session(files["head.onnx"]).run(None, {"t": t})[0][0]
    embedding = sums.sum(axis=1, dtype=np.float64) / (sums.shape[1] * (x.shape[2] // k))
    logits = embedding @ head["weight"].T + head["bias"]
    e = np.exp(logits - logits.max())
    ours = e / e.sum()
    theirs = whole.run(["probabilities"], {"mel": x})[0][0]
    diff = float(np.abs(ours - theirs).max())
    if diff > PACK_PARITY:
        raise RuntimeError(f"int8 streaming stages differ from the int8 model by {diff:.2e} (limit {PACK_PARITY:g})")


def save_int8_stream_pack(model_path: str | Path, out: str | Path) -> Path:
    """Cut ``model_path`` (an int8 export) and write its pack atomically (temp file + rename)."""
    data = int8_stream_pack(onnx.load(str(model_path)))
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    return Path(out)
