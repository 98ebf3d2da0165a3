"""Export the stages of a BBNN for streaming inference (``genre_stream.streaming``).

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

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from genre_stream.fsutil import atomic_path
from genre_stream.modelinfo import ModelInfo
from genre_stream.streaming import STREAM_FORMAT, stream_pack_path
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
    model = model.eval()
    fc = info.frontend
    stem_pool = model.stem[-1]
    stride = int(stem_pool.stride[0])
    stem_conv = model.stem[0]
    stem_halo_frames = int(stem_conv.kernel_size[0]) // 2
    probe_cols = 24
    feats: dict[str, torch.Tensor] = {"mel": torch.rand(1, probe_cols * stride, fc.n_mels)}
    entries: list[dict] = []
    files: dict[str, bytes] = {}
    with torch.no_grad():
        for name, module, inputs, output in _stages(model):
            args = [feats[i] for i in inputs]
            # the stem's halo is in frames (its conv reads that far past the frames it pools), the blocks' in columns
            halo = stem_halo_frames if name == "stem" else _measured_halo(module, args)
            feats[output] = module(*args)
            buf = io.BytesIO()
            axes = {n: ({0: "batch", 1: "frames"} if n == "mel" else {0: "batch", 2: "columns"}) for n in [*inputs, output]}
            torch.onnx.export(module, tuple(args), buf, input_names=inputs, output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
            proto = onnx.load_from_string(buf.getvalue())
            onnx.checker.check_model(proto)
            files[f"{name}.onnx"] = proto.SerializeToString()
            entries.append({"name": name, "file": f"{name}.onnx", "inputs": inputs, "output": output,
                            "channels": int(feats[output].shape[1]), "halo": halo})
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
    head_buf = io.BytesIO()
    np.savez(head_buf, **head)
    files["head.npz"] = head_buf.getvalue()
    meta = {"format": STREAM_FORMAT, "model": json.loads(info.to_json()), "stride": stride, "stages": entries}
    _check_parity(model, fc.window_frames, fc.n_mels, head)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stream.json", json.dumps(meta, indent=1, sort_keys=True))
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


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
