"""Read the seed's Keras HDF5 checkpoints into the PyTorch BBNN, with h5py only.

Layer names differ between checkpoints (conv2d_20 in one file, conv2d_1 in
another), so weights are matched by position in the graph, not by name: the
importer walks the functional graph from the input, recognises each block by its
structure and checks every shape on the way. Anything unexpected is an error that
names the layer, never a silently mismatched weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from trainer.model import BBNN

# Output order of the seed checkpoints (CHECKPOINTS.md of the seed).
GTZAN_LABELS = ["blues", "reggae", "metal", "classical", "pop", "jazz", "disco", "hiphop", "rock", "country"]


class KerasImportError(ValueError):
    pass


@dataclass
class _Layer:
    name: str
    cls: str
    config: dict
    inputs: list[str]


def _parse_graph(config: dict) -> dict[str, _Layer]:
    layers = {}
    for raw in config["config"]["layers"]:
        inputs: list[str] = []
        for node in raw.get("inbound_nodes") or []:
            if isinstance(node, dict):  # Keras 3 layout
                for arg in node.get("args", []):
                    items = arg if isinstance(arg, list) else [arg]
                    for it in items:
                        inputs.append(it["config"]["keras_history"][0])
            else:
                inputs.extend(entry[0] for entry in node)
        layers[raw["config"]["name"]] = _Layer(raw["config"]["name"], raw["class_name"], raw["config"], inputs)
    return layers


class _Graph:
    def __init__(self, layers: dict[str, _Layer], weights: h5py.Group, path: Path) -> None:
        self.layers = layers
        self.weights = weights
        self.path = path
        self.used: set[str] = set()
        self.consumers: dict[str, list[str]] = {n: [] for n in layers}
        for layer in layers.values():
            for src in layer.inputs:
                self.consumers[src].append(layer.name)

    def fail(self, msg: str) -> KerasImportError:
        return KerasImportError(f"{self.path}: {msg}")

    def only(self, name: str, cls: str) -> str:
        outs = [c for c in self.consumers[name] if self.layers[c].cls == cls]
        if len(outs) != 1:
            raise self.fail(f"expected one {cls} after layer '{name}', found {outs}")
        return outs[0]

    def array(self, layer: str, key: str) -> np.ndarray:
        if layer not in self.weights:
            raise self.fail(f"layer '{layer}' has no weights in model_weights")
        self.used.add(layer)
        group = self.weights[layer]
        found = []
        group.visititems(lambda n, obj: found.append(obj) if isinstance(obj, h5py.Dataset) and n.split("/")[-1].startswith(key + ":") else None)
        if len(found) != 1:
            raise self.fail(f"layer '{layer}' has no single weight '{key}'")
        return np.asarray(found[0])

    def conv(self, name: str, module: torch.nn.Conv2d) -> None:
        layer = self.layers[name]
        if layer.cls != "Conv2D":
            raise self.fail(f"layer '{name}' is {layer.cls}, expected Conv2D")
        kernel = self.array(name, "kernel")  # (kh, kw, in, out)
        bias = self.array(name, "bias")
        _copy(module.weight, np.transpose(kernel, (3, 2, 0, 1)), self, name)
        _copy(module.bias, bias, self, name)

    def bn(self, name: str, module: torch.nn.BatchNorm2d) -> None:
        layer = self.layers[name]
        if layer.cls != "BatchNormalization":
            raise self.fail(f"layer '{name}' is {layer.cls}, expected BatchNormalization")
        eps = float(layer.config.get("epsilon", 1e-3))
        if abs(eps - module.eps) > 1e-9:
            raise self.fail(f"layer '{name}' has epsilon {eps}, the model uses {module.eps}")
        _copy(module.weight, self.array(name, "gamma"), self, name)
        _copy(module.bias, self.array(name, "beta"), self, name)
        _copy(module.running_mean, self.array(name, "moving_mean"), self, name)
        _copy(module.running_var, self.array(name, "moving_variance"), self, name)

    def preact(self, bn_name: str, unit: torch.nn.Sequential) -> str:
        """Map BN -> ReLU -> Conv starting at ``bn_name``; return the conv's name."""
        self.bn(bn_name, unit[0])
        act = self.only(bn_name, "Activation")
        conv = self.only(act, "Conv2D")
        self.conv(conv, unit[2])
        return conv


def _copy(param: torch.Tensor, value: np.ndarray, graph: _Graph, name: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise graph.fail(f"layer '{name}': shape {tuple(value.shape)} does not fit {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def _kernel(graph: _Graph, conv: str) -> int:
    return int(graph.layers[conv].config["kernel_size"][0])


def _map_inception(graph: _Graph, x: str, block) -> str:
    """Map one broadcast block whose input is layer ``x``; return the name of its output concat."""
    bns = [c for c in graph.consumers[x] if graph.layers[c].cls == "BatchNormalization"]
    pools = [c for c in graph.consumers[x] if graph.layers[c].cls == "MaxPooling2D"]
    if len(bns) != 3 or len(pools) != 1:
        raise graph.fail(f"layer '{x}' does not feed an inception block (3 BN + 1 pool branches)")
    first_convs = {}
    for bn in bns:
        conv = graph.only(graph.only(bn, "Activation"), "Conv2D")
        follow = [c for c in graph.consumers[conv] if graph.layers[c].cls == "BatchNormalization"]
        if not follow:
            first_convs["1"] = bn
            continue
        second = graph.only(graph.only(follow[0], "Activation"), "Conv2D")
        first_convs[str(_kernel(graph, second))] = bn
    if sorted(first_convs) != ["1", "3", "5"]:
        raise graph.fail(f"inception block after '{x}' has branches {sorted(first_convs)}, expected 1/3/5")

    out = {}
    out["1"] = graph.preact(first_convs["1"], block.branch1)
    for k, seq in (("3", block.branch3), ("5", block.branch5)):
        c1 = graph.preact(first_convs[k], seq[0])
        bn2 = graph.only(c1, "BatchNormalization")
        out[k] = graph.preact(bn2, seq[1])
    pool_bn = graph.only(pools[0], "BatchNormalization")
    out["p"] = graph.preact(pool_bn, block.branch_pool)

    inner = {graph.only(out[k], "Concatenate") for k in out}
    if len(inner) != 1:
        raise graph.fail(f"inception block after '{x}': branches do not meet in one concatenation")
    inner_name = inner.pop()
    expected = [out["1"], out["3"], out["5"], out["p"]]
    if graph.layers[inner_name].inputs != expected:
        raise graph.fail(f"concatenation '{inner_name}' orders its inputs {graph.layers[inner_name].inputs}, expected {expected}")
    outer = graph.only(inner_name, "Concatenate")
    if graph.layers[outer].inputs != [x, inner_name]:
        raise graph.fail(f"concatenation '{outer}' is not [block input, branches]")
    return outer


def load_keras_bbnn(path: str | Path) -> tuple[BBNN, list[str]]:
    """Build a BBNN with the weights of a seed Keras checkpoint; returns (model, labels)."""
    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasImportError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise KerasImportError(f"{path}: not a Keras model file (no model_config / model_weights)")
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        graph = _Graph(_parse_graph(config), f["model_weights"], path)

        dense = [l for l in graph.layers.values() if l.cls == "Dense"]
        if len(dense) != 1:
            raise graph.fail(f"expected one Dense layer, found {len(dense)}")
        n_classes = int(dense[0].config["units"])
        if n_classes != len(GTZAN_LABELS):
            raise graph.fail(f"Dense layer has {n_classes} units; the seed checkpoints have {len(GTZAN_LABELS)}")
        model = BBNN(n_classes=n_classes)

        inputs = [l.name for l in graph.layers.values() if l.cls == "InputLayer"]
        if len(inputs) != 1:
            raise graph.fail("expected exactly one input layer")
        stem_conv = graph.only(inputs[0], "Conv2D")
        graph.conv(stem_conv, model.stem[0])
        stem_bn = graph.only(stem_conv, "BatchNormalization")
        graph.bn(stem_bn, model.stem[1])
        x = graph.only(graph.only(stem_bn, "Activation"), "MaxPooling2D")
        if list(graph.layers[x].config["pool_size"]) != [4, 1]:
            raise graph.fail(f"stem pooling '{x}' is not 4x1")

        for block in model.broadcast:
            x = _map_inception(graph, x, block)

        trans_bn = graph.only(x, "BatchNormalization")
        trans_conv = graph.preact(trans_bn, model.transition[0])
        avg = graph.only(trans_conv, "AveragePooling2D")
        head_bn = graph.only(avg, "BatchNormalization")
        graph.bn(head_bn, model.head_norm[0])
        gap = graph.only(graph.only(head_bn, "Activation"), "GlobalAveragePooling2D")
        dense_name = graph.only(gap, "Dense")
        _copy(model.classifier.weight, graph.array(dense_name, "kernel").T, graph, dense_name)
        _copy(model.classifier.bias, graph.array(dense_name, "bias"), graph, dense_name)
        with_weights = {name for name in graph.weights if len(graph.weights[name].keys())}
        unused = sorted(with_weights - graph.used)
        if unused:
            raise graph.fail(f"weights of layers {unused} were not mapped onto the model")
    model.eval()
    return model, list(GTZAN_LABELS)
