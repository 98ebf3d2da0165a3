"""Export the stages of a BBNN for streaming inference (``genre_stream.model.streaming``).

Consecutive live windows overlap by all but one hop, and the network is local in
time up to its final global mean, so the runtime caches each stage's output per
time column and computes only the columns a new window adds, plus the columns
near the window's two edges whose values depend on the zero padding there. That
needs the trunk cut where caching pays:

* ``stem``    mel frames (1, T, n_mels) -> ``s0`` (3x3 conv, BN, ReLU, 4x1 max pool)
* ``block1``  ``s0`` -> ``b1``, the first inception block's new channels
* ``block2``  ``s0``, ``b1`` -> ``b2``
* ``block3``  ``s0``, ``b1``, ``b2`` -> ``t``: the last block and the transition's
  pre-activated 1x1 conv, fused because the transition is the last block's only consumer
* ``window``  all of them over a whole window in one graph (a full recompute)

The dense connectivity is kept apart (each block's input is the concatenation of
the earlier outputs, done inside the graph), so every column is cached once. The
head (2x2 average pool, BN, ReLU, global mean, dense layer) is stored as arrays and
run in numpy, since its pooling pairs depend on where each window starts.

The pack is a zip next to the fp32 export (``X.onnx`` -> ``X.stream.zip``):
``stream.json`` (geometry, the model's metadata), one ONNX file per stage and
``head.npz``. Each stage's halo (how many columns either side an output column
reads) is measured here by perturbing the input, so the runtime never guesses it.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from genre_stream.common.fsutil import atomic_path
from genre_stream.model.info import ModelInfo
from genre_stream.model.streampack import WINDOW_GRAPH, PackManifest, StageEntry, pack_bytes
from trainer.export import OPSET
from trainer.model import BBNN

__all__ = ["to_stream_pack", "save_stream_pack"]

# Each stage's parity with the whole PyTorch model is checked on a random window; fp32 slices
# and the full graph differ only in summation order.
STAGE_PARITY = 1e-4


class _Stem(nn.Module):
    def __init__(self, model: BBNN) -> None:
        super().__init__()
        self.stem = model.stem

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.stem(mel.unsqueeze(1))


class _Block(nn.Module):
    """One inception block's new channels from the concatenation of everything before it."""

    def __init__(self, block: nn.Module, transition: nn.Module | None = None) -> None:
        super().__init__()
        self.block = block
        self.transition = transition

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        x = torch.cat(parts, dim=1)
        if self.transition is None:
            return self.block.branches(x)
        return self.transition(self.block(x))


def _bn_as_depthwise(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The same per-channel affine map as a depthwise 1x1 convolution.

    A pre-activation BN that reads a graph input stays a plain NCHW BatchNormalization in
    onnxruntime, with layout reorders around it (a third of a stage's time, measured),
    while a depthwise conv + ReLU joins its blocked (NCHWc) convolutions, as the BNs of
    the whole-window graph do there. Exact up to float rounding.
    """
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    conv = nn.Conv2d(a.numel(), a.numel(), 1, groups=a.numel())
    with torch.no_grad():
        conv.weight.copy_(a.view(-1, 1, 1, 1))
        conv.bias.copy_(bn.bias.detach() - a * bn.running_mean.detach())
    return conv


def _input_bns_as_convs(model: BBNN) -> BBNN:
    """A copy whose BNs that read a block's input (not a conv's output, which ORT folds itself) are depthwise convs."""
    model = copy.deepcopy(model).eval()
    for unit in [*(u for b in model.broadcast for u in (b.branch1, b.branch3[0], b.branch5[0], b.branch_pool)), model.transition[0]]:
        unit[0] = _bn_as_depthwise(unit[0])
    return model


def _stages(model: BBNN) -> list[tuple[str, nn.Module, list[str], str]]:
    """(name, module, input names, output name) in order of computation."""
    blocks = list(model.broadcast)
    stages: list[tuple[str, nn.Module, list[str], str]] = [("stem", _Stem(model), ["mel"], "s0")]
    produced = ["s0"]
    for i, block in enumerate(blocks, start=1):
        last = i == len(blocks)
        out = "t" if last else f"b{i}"
        stages.append((f"block{i}", _Block(block, model.transition[0] if last else None), list(produced), out))
        produced.append(out)
    return stages


class _Window(nn.Module):
    """All stages over a whole window in one graph, every stage's output returned: what a full recompute runs.

    One graph keeps onnxruntime's blocked layout from stage to stage; the stages run
    one by one reorder each input at every call (measured 1.3x the whole-window model).
    """

    def __init__(self, stages: list[tuple[str, nn.Module, list[str], str]]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(module for _, module, _, _ in stages)
        self.wiring = [(inputs, output) for _, _, inputs, output in stages]

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = {"mel": mel}
        for module, (inputs, output) in zip(self.stages, self.wiring):
            feats[output] = module(*[feats[i] for i in inputs])
        return tuple(feats[output] for _, output in self.wiring)


def _to_onnx(module: nn.Module, args: list[torch.Tensor], inputs: list[str], outputs: list[str]) -> bytes:
    buf = io.BytesIO()
    axes = {n: ({0: "batch", 1: "frames"} if n == "mel" else {0: "batch", 2: "columns"}) for n in [*inputs, *outputs]}
    torch.onnx.export(module, tuple(args), buf, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                      opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _measured_halo(module: nn.Module, inputs: list[torch.Tensor]) -> int:
    """How many output columns either side of a changed input column change (several random probes, the widest)."""
    gen = torch.Generator().manual_seed(0)
    widest = 0
    with torch.no_grad():
        for _ in range(3):
            xs = [torch.rand(x.shape, generator=gen) for x in inputs]
            base = module(*xs)
            centre = xs[0].shape[-2] // 2
            bumped = [x.clone() for x in xs]
            for x in bumped:
                x[..., centre, :] += 1.0 + torch.rand(x[..., centre, :].shape, generator=gen)
            changed = (module(*bumped) - base).abs().amax(dim=(0, 1, 3)) > 0
            cols = torch.nonzero(changed).flatten().tolist()
            widest = max(widest, *(abs(c - centre) for c in cols))
    return widest


def to_stream_pack(model: BBNN, info: ModelInfo) -> bytes:
    """The streaming pack of ``model`` as zip bytes, checked against the whole model."""
    model = _input_bns_as_convs(model)
    fc = info.frontend
    stem_pool = model.stem[-1]
    stride = int(stem_pool.stride[0])
    stem_conv = model.stem[0]
    stem_halo_frames = int(stem_conv.kernel_size[0]) // 2
    probe_cols = 24
    feats: dict[str, torch.Tensor] = {"mel": torch.rand(1, probe_cols * stride, fc.n_mels)}
    entries: list[StageEntry] = []
    files: dict[str, bytes] = {}
    stages = _stages(model)
    with torch.no_grad():
        for name, module, inputs, output in stages:
            args = [feats[i] for i in inputs]
            # the stem's halo is in frames (its conv reads that far past the frames it pools), the blocks' in columns
            halo = stem_halo_frames if name == "stem" else _measured_halo(module, args)
            feats[output] = module(*args)
            files[f"{name}.onnx"] = _to_onnx(module, args, inputs, [output])
            entries.append(StageEntry(name, f"{name}.onnx", tuple(inputs), output, int(feats[output].shape[1]), halo))
        window_outputs = [output for _, _, _, output in stages]
        files[WINDOW_GRAPH] = _to_onnx(_Window(stages), [feats["mel"]], ["mel"], window_outputs)
    bn = model.head_norm[0]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    shift = (bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * scale)
    pool = model.transition[1]
    head = {
        "scale": scale, "shift": shift,
        "weight": model.classifier.weight.detach().double().numpy(),
        "bias": model.classifier.bias.detach().double().numpy(),
        "pool": np.array([int(pool.kernel_size), int(pool.kernel_size)]),
    }
    manifest = PackManifest(json.loads(info.to_json()), stride, tuple(entries), tuple(window_outputs))
    _check_parity(model, fc.window_frames, fc.n_mels, head)
    return pack_bytes(manifest, head, files)


def _check_parity(model: BBNN, frames: int, n_mels: int, head: dict[str, np.ndarray]) -> None:
    """The stages chained with the numpy head give the model's own probabilities (the wiring, not the slicing)."""
    x = torch.rand(1, frames, n_mels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(x)
        feats = {"mel": x}
        for _, module, inputs, output in _stages(model):
            feats[output] = module(*[feats[i] for i in inputs])
    t = feats["t"][0].double().numpy()
    k = int(head["pool"][0])
    c, n, f = t.shape
    pooled = t[:, : n // k * k, : f // k * k].reshape(c, n // k, k, f // k, k).mean(axis=(2, 4))
    emb = np.maximum(pooled * head["scale"][:, None, None] + head["shift"][:, None, None], 0).mean(axis=(1, 2))
    ours = emb @ head["weight"].T + head["bias"]
    diff = float(np.abs(ours - logits[0].double().numpy()).max())
    if diff > STAGE_PARITY:
        raise RuntimeError(f"streaming stages differ from the model by {diff:.2e} in the logits (limit {STAGE_PARITY:g})")


def save_stream_pack(model: BBNN, info: ModelInfo, out: str | Path) -> Path:
    """Write the pack atomically (temp file + rename)."""
    data = to_stream_pack(model, info)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    return Path(out)
