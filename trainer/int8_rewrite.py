"""Rewrites of a quantised (QDQ) BBNN graph that make int8 keep fp32's answers, on every CPU.

Each works on the ONNX graph ``quantize.quantize_int8`` produced, against the fp32 graph as the
reference: bias correction (the mean error each quantised conv adds), thresholded ReLUs within the
weight limit, shared concat scales, and average pools as depthwise convs. ``quantize.py`` runs them
in order; ``docs/QUANTIZATION.md`` has the measurements behind each.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from genre_stream.model.session import cpu_session

from .export import INPUT_NAME

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

# Largest |int8 weight| per weight width. onnxruntime's uint8 x int8 kernel on x86 without VNNI
# (AVX2, AVX-512 without VNNI) multiplies with VPMADDUBSW, which adds each PAIR of uint8 x int8
# products into a saturating int16: 2 x 255 x 127 = 64770 overflows it, so full-range weights give
# other answers there than on VNNI (int32 dot products) or ARM64 (issue 22). With |w| <= 64 a pair is
# at most 2 x 255 x 64 = 32640 <= 32767, so every kernel computes the same exact integers; it costs one
# bit of weight resolution (onnxruntime's ``reduce_range``). ``scripts/cpu_matrix.py`` checks it.
WEIGHT_LIMITS = {7: 64, 8: 127}


def _emulating_session(proto: onnx.ModelProto, outputs: list[str]) -> ort.InferenceSession:
    """A session that computes QDQ semantics literally (no fusion), with ``outputs`` exposed as graph outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs if name not in known)
    return cpu_session(model.SerializeToString(), optimize=False)


def _channel_means(sess: ort.InferenceSession, outputs: list[str], windows: np.ndarray) -> list[np.ndarray]:
    """Per output tensor, the mean of each channel (axis 1) over every window and position."""
    sums: list[np.ndarray] = []
    for w in windows:
        values = sess.run(outputs, {INPUT_NAME: w[None]})
        means = [v.astype(np.float64).mean(axis=tuple(i for i in range(v.ndim) if i != 1)) for v in values]
        sums = means if not sums else [a + b for a, b in zip(sums, means)]
    return [s_ / len(windows) for s_ in sums]


def _conv_depths(graph: onnx.GraphProto) -> dict[str, int]:
    """Each Conv node's number of Conv nodes on its longest path from the input (convs of one depth never feed each other)."""
    producer, _ = graph_wiring(graph)
    depth: dict[str, int] = {}

    def conv_depth(node: onnx.NodeProto) -> int:
        if node.name in depth:
            return depth[node.name]
        above = 0
        stack, seen = list(node.input), set()
        while stack:  # the nearest Conv ancestors through non-Conv nodes
            tensor = stack.pop()
            parent = producer.get(tensor)
            if parent is None or parent.name in seen:
                continue
            seen.add(parent.name)
            if parent.op_type == "Conv":
                above = max(above, conv_depth(parent))
            else:
                stack.extend(parent.input)
        depth[node.name] = above + 1
        return depth[node.name]

    for node in graph.node:
        if node.op_type == "Conv":
            conv_depth(node)
    return depth


def _conv_means(proto: onnx.ModelProto, names: list[str], windows: np.ndarray) -> dict[str, np.ndarray]:
    """Mean per-channel output of the Conv nodes ``names`` of ``proto`` over ``windows`` and positions."""
    outputs = {n.name: n.output[0] for n in proto.graph.node if n.op_type == "Conv" and n.name in names}
    means = _channel_means(_emulating_session(proto, list(outputs.values())), list(outputs.values()), windows)
    return dict(zip(outputs, means))


def _quantised_convs(qdq: onnx.ModelProto) -> list[str]:
    """Conv nodes whose bias is quantised (convs kept float have a float bias and nothing to correct)."""
    dq = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in qdq.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in dq]


def conv_output_errors(qdq: onnx.ModelProto, reference: onnx.ModelProto, windows: np.ndarray) -> dict[str, np.ndarray]:
    """Per quantised conv (node name), the mean per-channel difference of its float output, ``qdq`` minus ``reference``.

    ``reference`` is the float graph ``qdq`` was quantised from (same node names);
    the conv's output in ``qdq`` is what its quantised inputs, weights and bias
    give before the output is requantised. Means over ``windows`` and positions.
    """
    names = _quantised_convs(qdq)
    ref, got = _conv_means(reference, names, windows), _conv_means(qdq, names, windows)
    return {name: got[name] - ref[name] for name in names}


def correct_biases(qdq: onnx.ModelProto, reference: onnx.ModelProto, windows: np.ndarray) -> dict[str, float]:
    """Empirical bias correction, in place: each quantised conv's mean output error is taken off its bias.

    Quantising a conv's weights (and its inputs) shifts the mean of each output
    channel: E[dW x] = dW E[x] is a constant per channel, large where a folded
    BatchNorm with a big gain makes the output a small difference of large sums.
    Layer by layer in graph order (convs of one depth together, since they never
    feed each other), the mean per-channel error of the conv's output (as in
    ``conv_output_errors``, everything above already corrected) on ``windows`` is
    subtracted from its int32 bias, in steps of the bias's own scale. Only the
    mean moves, so the correction costs no speed. Returns, per conv, the largest
    |mean channel error| it removed.
    """
    inits = {t.name: t for t in qdq.graph.initializer}
    producer, _ = graph_wiring(qdq.graph)
    nodes = {n.name: n for n in qdq.graph.node}
    names = _quantised_convs(qdq)
    depths = {n: d for n, d in _conv_depths(qdq.graph).items() if n in names}
    reference_means = _conv_means(reference, names, windows)
    report: dict[str, float] = {}
    for level in sorted(set(depths.values())):
        for name, mean in _conv_means(qdq, [n for n, d in depths.items() if d == level], windows).items():
            error = mean - reference_means[name]
            dq = producer[nodes[name].input[2]]
            bias = inits[dq.input[0]]
            scale = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            values = onnx.numpy_helper.to_array(bias).astype(np.int64) - np.round(error / scale).astype(np.int64)
            limits = np.iinfo(np.int32)
            bias.CopyFrom(onnx.numpy_helper.from_array(np.clip(values, limits.min, limits.max).astype(np.int32), bias.name))
            report[name] = float(np.abs(error).max())
    log.info("bias correction: %d convs in %d steps on %d windows", len(report), len(set(depths.values())), len(windows))
    return report


@dataclass(frozen=True)
class ThresholdPlan:
    """How one depthwise ``relu(w x + b)`` (x on [0, R]) and the 1x1 conv after it become ``relu(x - t)`` and a new 1x1 conv.

    Per channel: ``dead`` (0 for every x in [0, R]: dropped), ``linear`` (never clipped:
    ``w x + b``, read as x with b moved into the conv's bias), ``rising`` (w > 0, clipped below
    t = -b / w in (0, R): ``w * relu(x - t)``); ``falling`` channels (w < 0 and clipped inside
    [0, R]) have no such form. ``weight`` / ``bias`` are the 1x1 conv's, exact for every x in
    [0, R] (a channel of ``drop`` is left out as if dead; see ``threshold_relus``).
    """

    dead: np.ndarray
    linear: np.ndarray
    rising: np.ndarray
    falling: np.ndarray
    threshold: np.ndarray  # t per channel (0 for linear, R for dead: relu(x - R) is 0 on [0, R])
    weight: np.ndarray  # (out, channels)
    bias: np.ndarray  # (out,)


def plan_thresholds(w: np.ndarray, b: np.ndarray, weight: np.ndarray, bias: np.ndarray, top: float,
                    drop: np.ndarray | None = None) -> ThresholdPlan:
    """``weight @ relu(w * x + b) + bias`` as ``new_weight @ relu(x - t) + new_bias`` for x in [0, ``top``] (see ``ThresholdPlan``).

    ``drop``: channels to treat as dead (a falling channel whose int8 weights are all zero).
    Exact in real arithmetic on the whole interval when no falling channel is left.
    """
    w, b = np.asarray(w, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    hi, lo = np.maximum(b, w * top + b), np.minimum(b, w * top + b)
    dead = hi <= 0
    if drop is not None:
        dead = dead | np.asarray(drop, bool)
    linear = (lo >= 0) & ~dead
    rising = (w > 0) & ~dead & ~linear
    falling = (w < 0) & ~dead & ~linear
    threshold = np.where(dead, top, np.where(rising, -b / np.where(w != 0, w, 1.0), 0.0))
    scale = np.where(dead | falling, 0.0, w)  # relu(w x + b) = w * relu(x - t) (rising) or w * x + b (linear)
    new_weight = weight * scale[None, :]
    new_bias = bias + weight @ np.where(linear, b, 0.0)
    return ThresholdPlan(dead, linear, rising, falling, threshold, new_weight, new_bias)


def _depthwise_pairs(qdq: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(depthwise 1x1 conv, the 1x1 conv reading its quantised output) pairs of a QDQ graph: the folded ``relu(±x + shift)`` ops."""
    producer, consumers = graph_wiring(qdq.graph)
    inits = {t.name: t for t in qdq.graph.initializer}
    pairs = []
    for node in qdq.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        wdq = producer.get(node.input[1])
        if group == 1 or wdq is None or wdq.input[0] not in inits:
            continue
        shape = list(inits[wdq.input[0]].dims)
        if shape != [group, 1, 1, 1]:
            continue
        chain = consumers.get(node.output[0], [])
        if len(chain) != 1 or chain[0].op_type != "QuantizeLinear":
            continue
        dq = consumers.get(chain[0].output[0], [])
        if len(dq) != 1 or dq[0].op_type != "DequantizeLinear":
            continue
        convs = consumers.get(dq[0].output[0], [])
        if len(convs) != 1 or convs[0].op_type != "Conv" or next((a.i for a in convs[0].attribute if a.name == "group"), 1) != 1:
            continue
        quantised = [node.input[2], convs[0].input[1], convs[0].input[2]] if len(node.input) > 2 and len(convs[0].input) > 2 else []
        if quantised and all(getattr(producer.get(name), "op_type", "") == "DequantizeLinear" for name in quantised):
            pairs.append((node, convs[0]))  # both convs quantised (one kept float is left alone)
    return pairs


def _static_dims(proto: onnx.ModelProto, axis: int) -> dict[str, int]:
    """Tensor name -> size of ``axis`` of its 4-d shape (NCHW: 1 channels, 3 the mel bands), where shape inference gives a fixed one."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    sizes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[axis].HasField("dim_value") and dims[axis].dim_value > 0:
            sizes[info.name] = int(dims[axis].dim_value)
    return sizes


def threshold_relus(qdq: onnx.ModelProto, reference: onnx.ModelProto, weight_limit: int = WEIGHT_LIMITS[7]) -> dict[str, dict[str, int]]:
    """Replace each depthwise ``relu(±x + shift)`` conv of the int8 graph by ``relu(x - t)``, in place (issue 15 part 2).

    In the int8 graph every input of those ops lies in [0, R] (the uint8 range of the
    concatenation, R = 1 for the shared concat scale). On that interval each channel is
    dead (always 0), linear or rising (see ``plan_thresholds``): w > 0 for every live
    clipped channel of the bundled model. ``w * relu(x - t)`` moves w into the next 1x1
    conv's input weights, dead channels get weight 0, linear ones read x with their
    shift in the conv's bias, so what remains is a per-channel threshold: an int8 Add of a
    per-channel constant whose output zero point 0 is the ReLU, on the input's own uint8
    grid. onnxruntime runs it as QLinearAdd, about 3x faster than its depthwise
    QLinearConv; the thresholds are stored repeated along the last axis (the mel bands,
    fixed: 128) when the graph's shapes give its size, because onnxruntime (NHWC inside)
    then adds spans of width x channels instead of one span per position (~1.2x faster
    end to end at 2 threads on the development VM, for 300 KB of constants). The thresholds are rounded to that grid (half a step of x at most; bias
    correction removes the mean of what that changes), the 1x1 conv's weights are
    requantised from the float graph ``reference`` (per output channel, symmetric),
    everything else is exact. An op with a falling channel (w < 0, clipped inside [0, R])
    whose int8 weights are not all zero is left as it is. The new weights stay within
    ``weight_limit`` (``WEIGHT_LIMITS``), as the quantiser's own. Returns per 1x1 conv the channel
    counts (dead, linear, rising), for the report.
    """
    inits = {t.name: t for t in qdq.graph.initializer}
    ref_inits = {t.name: onnx.numpy_helper.to_array(t) for t in reference.graph.initializer}
    ref_nodes = {n.name: n for n in reference.graph.node}
    producer, consumers = graph_wiring(qdq.graph)
    array = lambda name: onnx.numpy_helper.to_array(inits[name])  # noqa: E731

    def put(name: str, value: np.ndarray) -> None:
        tensor = onnx.numpy_helper.from_array(value, name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:
            qdq.graph.initializer.append(tensor)
            inits[name] = qdq.graph.initializer[-1]

    replaced: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    report: dict[str, dict[str, int]] = {}
    widths = _static_dims(qdq, 3)
    for dw, conv in _depthwise_pairs(qdq):
        x_dq = producer.get(dw.input[0])
        if x_dq is None or x_dq.op_type != "DequantizeLinear" or array(x_dq.input[2]).dtype != np.uint8 or int(array(x_dq.input[2])) != 0:
            continue
        step = float(array(x_dq.input[1]))
        ref_dw, ref_conv = ref_nodes[dw.name], ref_nodes[conv.name]
        w, b = ref_inits[ref_dw.input[1]].reshape(-1), ref_inits[ref_dw.input[2]]
        weight, bias = ref_inits[ref_conv.input[1]], ref_inits[ref_conv.input[2]]
        weight_dq, bias_dq = producer[conv.input[1]], producer[conv.input[2]]
        silent = ~np.any(array(weight_dq.input[0]).reshape(weight.shape[0], -1) != 0, axis=0)  # int8 weights all 0
        plan = plan_thresholds(w, b, weight[:, :, 0, 0], bias, 255 * step, drop=silent & (w < 0))
        if plan.falling.any():
            log.info("%s: %d falling channels, left as a depthwise conv", dw.name, int(plan.falling.sum()))
            continue
        # the 1x1 conv: new int8 weights (per output channel, symmetric) and int32 bias on the new input grid
        w_scale = np.abs(plan.weight).max(axis=1) / float(weight_limit)
        w_scale = np.where(w_scale > 0, w_scale, 1.0)
        put(weight_dq.input[0], np.clip(np.round(plan.weight / w_scale[:, None]), -weight_limit, weight_limit).astype(np.int8).reshape(weight.shape))
        put(weight_dq.input[1], w_scale.astype(np.float32))
        b_scale = (step * w_scale).astype(np.float32)
        put(bias_dq.input[1], b_scale)
        put(bias_dq.input[0], np.clip(np.round(plan.bias / b_scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32))
        # relu(x - t) on x's uint8 grid: DQ(255 - round(t / step)) with zero point 255 is -t; the output keeps x's grid
        q = consumers[dw.output[0]][0]  # its one QuantizeLinear (``_depthwise_pairs``)
        put(q.input[1], np.array(step, np.float32))
        put(q.input[2], np.array(0, np.uint8))
        name = dw.name + "/threshold"
        code = (255 - np.clip(np.round(plan.threshold / step), 0, 255)).astype(np.uint8).reshape(1, -1, 1, 1)
        put(name, np.ascontiguousarray(np.broadcast_to(code, (1, code.shape[1], 1, widths.get(dw.input[0], 1)))))
        put(name + "_scale", np.array(step, np.float32))
        put(name + "_zero_point", np.array(255, np.uint8))
        replaced[dw.name] = [
            onnx.helper.make_node("DequantizeLinear", [name, name + "_scale", name + "_zero_point"], [name + "_dq"], name=name + "_DequantizeLinear"),
            onnx.helper.make_node("Add", [dw.input[0], name + "_dq"], [name + "_sum"], name=dw.name + "/Add"),
            onnx.helper.make_node("Relu", [name + "_sum"], [dw.output[0]], name=dw.name + "/Relu"),
        ]
        removed.update({producer[dw.input[1]].name, producer[dw.input[2]].name})
        report[conv.name] = {"channels": int(w.size), "dead": int(plan.dead.sum()), "linear": int(plan.linear.sum()), "rising": int(plan.rising.sum())}
    _splice_nodes(qdq.graph, replaced, removed)
    used = {name for node in qdq.graph.node for name in node.input}
    kept = [t for t in qdq.graph.initializer if t.name in used]
    del qdq.graph.initializer[:]
    qdq.graph.initializer.extend(kept)
    onnx.checker.check_model(qdq)
    log.info("threshold ReLUs: %d depthwise ops replaced; channels dead %d, linear %d, rising %d", len(report),
             *(sum(r[k] for r in report.values()) for k in ("dead", "linear", "rising")))
    return report


def _splice_nodes(graph: onnx.GraphProto, replaced: dict[str, list[onnx.NodeProto]], removed: Set[str] = frozenset()) -> None:
    """Put each node named in ``replaced`` back as its replacement nodes, in place (the graph's order
    stays topological), and drop the nodes named in ``removed``."""
    nodes = [n for node in graph.node if node.name not in removed for n in replaced.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)


def shared_concat_scale(graph: onnx.GraphProto) -> dict[str, list[dict[str, np.ndarray]]]:
    """Give every Concat input and output the scale of [0, 1], and the input of a max pool that makes one.

    After ``equalize`` each concatenated channel spans exactly [0, 1] on the
    calibration windows, so this loses nothing, and with identical scales a
    quantised concatenation is a copy instead of a requantisation. The stem's
    pooled ReLU needs its pool's input named too: onnxruntime's quantiser gives a
    max pool its input's scale, and the stem's ReLU reaches 1.455 in the 3 frames
    the 4x1 pool drops, so block 1's concatenation requantised the stem's
    channels (0.4 ms of 13 per window at 2 threads; issue 15 part 2).
    """
    producer, _ = graph_wiring(graph)
    names = {t for node in graph.node if node.op_type == "Concat" for t in (*node.input, *node.output)}
    names |= {producer[t].input[0] for t in list(names) if t in producer and producer[t].op_type == "MaxPool"}
    params = {"scale": np.array(1.0 / 255.0, dtype=np.float32), "zero_point": np.array(0, dtype=np.uint8)}
    return {name: [dict(params)] for name in sorted(names)}


def average_pools_as_convs(qdq: onnx.ModelProto) -> int:
    """Run each quantised average pool as a depthwise int8 conv with weights 1 / (kh kw), in place (issue 15 part 2).

    onnxruntime runs ``QLinearAveragePool`` on one thread (the head's 2x2 pool of 32 channels:
    0.6 ms of a 14 ms window at 2 threads), a depthwise ``QLinearConv`` on both. With int8
    weights 1 at scale 1 / (kh kw), zero point 0 and no bias the conv sums the same integers
    and rescales and rounds once, as the pool does: the outputs are bit-identical (checked in
    ``test_quantize``). Only pools without padding, read from a DequantizeLinear and quantised
    by one QuantizeLinear, with a fixed channel count, are replaced. Returns how many.
    """
    producer, consumers = graph_wiring(qdq.graph)
    channels = _static_dims(qdq, 1)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for pool in qdq.graph.node:
        if pool.op_type != "AveragePool":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
        quantised = getattr(producer.get(pool.input[0]), "op_type", "") == "DequantizeLinear" and \
            [n.op_type for n in consumers.get(pool.output[0], [])] == ["QuantizeLinear"]
        if (not quantised or any(attrs.get("pads", [])) or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
                or pool.input[0] not in channels):
            continue
        kernel = list(attrs["kernel_shape"])
        c = channels[pool.input[0]]
        name = pool.name + "/as_conv"
        qdq.graph.initializer.extend([
            onnx.numpy_helper.from_array(np.ones((c, 1, *kernel), np.int8), name + "/weight"),
            onnx.numpy_helper.from_array(np.array(1.0 / np.prod(kernel), np.float32), name + "/weight_scale"),
            onnx.numpy_helper.from_array(np.array(0, np.int8), name + "/weight_zero_point"),
        ])
        replaced[pool.name] = [
            onnx.helper.make_node("DequantizeLinear", [name + "/weight", name + "/weight_scale", name + "/weight_zero_point"],
                                  [name + "/weight_dq"], name=name + "/weight_DequantizeLinear"),
            onnx.helper.make_node("Conv", [pool.input[0], name + "/weight_dq"], list(pool.output), name=name, group=c,
                                  kernel_shape=kernel, strides=list(attrs.get("strides", [1] * len(kernel)))),
        ]
    _splice_nodes(qdq.graph, replaced)
    onnx.checker.check_model(qdq)
    log.info("average pools as depthwise int8 convs: %d", len(replaced))
    return len(replaced)


def graph_wiring(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """(tensor -> the node that makes it, tensor -> the nodes that read it) of an ONNX graph."""
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers
