"""Exact graph surgery that turns BBNN into a graph of convolutions int8 runtimes fuse well.

BBNN is pre-activated: almost every convolution is preceded by BN -> ReLU, and the
BN often reads a concatenation. Exported as is, each BatchNormalization stays a
float op between quantised convolutions, so the int8 graph spends its time in
dequantise / BN / quantise round trips and loses accuracy in BN's per-tensor
quantised scale. This module rewrites the trained network into an equivalent one
(identical in exact arithmetic, ~1e-6 in float32) made only of Conv, ReLU, pooling,
Concat and the dense head:

* **Post-conv BN** (stem conv -> BN, and the 1x1 -> BN -> ReLU -> kxk inside the
  3x3 and 5x5 branches) folds into the producing convolution's weights and bias.
* **Head BN after the transition**: conv -> 2x2 average pool -> BN. Average pooling
  without padding is linear and BN is a per-channel affine map, so they commute and
  the BN folds into the transition conv.
* **Pre-activation BN -> ReLU -> 1x1 conv** whose input is a concatenation (shared
  by several branches with different BNs, so it cannot fold backwards): with
  a = gamma / sqrt(var + eps) and b = beta - a * mean,
  ``relu(a x + b) = |a| * relu(sign(a) x + b / |a|)``. The magnitude |a| moves into
  the 1x1 conv's input-channel weights (exact: a 1x1 conv has no zero padding
  whose value could change), and what remains, ``relu(±x + shift)``, is a depthwise
  1x1 conv with weights ±1 plus ReLU. That op quantises losslessly per channel and
  runs as an int8 depthwise kernel; its output keeps the range of ``x`` instead of a
  range scaled by each channel's |a|, which per-tensor activation quantisation
  needs. Channels with a == 0 keep a constant ``relu(b)`` (weight 0).

3x3 and 5x5 convs are never preceded by a BN that has to stay: their BN follows a
1x1 conv and folds into it, which sidesteps the zero-padding problem (a BN folded
into the *input* side of a padded conv would change the padded border).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.model import BBNN, Inception, PreActConv

__all__ = ["FoldedBBNN", "fold_bbnn"]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    a = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
    b = bn.bias.detach() - a * bn.running_mean.detach()
    return a, b


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, groups: int = 1) -> nn.Conv2d:
    out = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), padding=conv.padding if conv is not None else 0, groups=groups
    )
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


def fold_post_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by BN -> one conv (exact)."""
    a, b = _bn_affine(bn)
    w = conv.weight.detach() * a[:, None, None, None]
    bias = a * conv.bias.detach() + b
    return _conv_like(conv, w, bias)


class PreActFolded(nn.Sequential):
    """relu(sign(a) * x + b/|a|) as a depthwise 1x1 conv, then the 1x1 conv with |a| folded in."""

    def __init__(self, unit: PreActConv, post_bn: nn.BatchNorm2d | None = None) -> None:
        bn, _, conv = unit
        if conv.kernel_size != (1, 1):
            raise ValueError(f"pre-activation folding needs a 1x1 conv, got {conv.kernel_size}")
        a, b = _bn_affine(bn)
        mag = a.abs()
        live = mag > 0
        safe = torch.where(live, mag, torch.ones_like(mag))
        dw_w = torch.where(live, torch.sign(a), torch.zeros_like(a))
        dw_b = torch.where(live, b / safe, b)
        scale_in = torch.where(live, mag, torch.ones_like(mag))
        channels = a.numel()
        depthwise = _conv_like(None, dw_w.reshape(channels, 1, 1, 1), dw_b, groups=channels)
        w = conv.weight.detach() * scale_in[None, :, None, None]
        bias = conv.bias.detach()
        if post_bn is not None:
            pa, pb = _bn_affine(post_bn)
            w = w * pa[:, None, None, None]
            bias = pa * bias + pb
        super().__init__(depthwise, nn.ReLU(), _conv_like(conv, w, bias))


class InceptionFolded(nn.Module):
    def __init__(self, block: Inception) -> None:
        super().__init__()
        self.branch1 = PreActFolded(block.branch1)
        self.branch3 = self._two_stage(block.branch3)
        self.branch5 = self._two_stage(block.branch5)
        self.pool = block.pool
        self.branch_pool = PreActFolded(block.branch_pool)

    @staticmethod
    def _two_stage(seq: nn.Sequential) -> nn.Sequential:
        first, second = seq
        # 1x1 (pre-activated from the block input) -> BN of the second unit folds into it.
        entry = PreActFolded(first, post_bn=second[0])
        return nn.Sequential(entry, nn.ReLU(), second[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat(
            [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(self.pool(x))],
            dim=1,
        )
        return torch.cat([x, branches], dim=1)


class FoldedBBNN(nn.Module):
    """The same function as ``BBNN`` with every BatchNorm folded away; same inputs and outputs."""

    def __init__(self, model: BBNN) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()  # the folded modules must not share tensors with the original
        self.n_classes = model.n_classes
        self.stem = nn.Sequential(fold_post_bn(model.stem[0], model.stem[1]), nn.ReLU(), model.stem[3])
        self.broadcast = nn.Sequential(*(InceptionFolded(b) for b in model.broadcast))
        self.transition = PreActFolded(model.transition[0], post_bn=model.head_norm[0])
        self.pool = model.transition[1]
        self.relu = nn.ReLU()
        self.classifier = model.classifier
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x.unsqueeze(1))
        x = self.broadcast(x)
        x = self.relu(self.pool(self.transition(x)))
        emb = x.mean(dim=(2, 3))
        return self.classifier(emb), emb


def fold_bbnn(model: BBNN) -> FoldedBBNN:
    return FoldedBBNN(model)


# --- channel equalisation ---------------------------------------------------------


@torch.no_grad()
def _channel_ranges(
    model: FoldedBBNN, windows: torch.Tensor, batch: int = 4, percentile: float | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (low, high) of every activation the int8 graph quantises per tensor.

    With ``percentile`` the bounds are that percentile (and its mirror) of a
    sample of positions per window, so a handful of extreme values does not
    stretch a channel's range; the largest bound over the windows is kept.
    """
    gen = torch.Generator().manual_seed(0)
    watched: dict[str, nn.Module] = {"concat": model.broadcast[-1]}
    for name, module in model.named_modules():
        if isinstance(module, PreActFolded):
            watched[name + ".act"] = module[1]
        elif isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[0], PreActFolded):
            watched[name + ".inner"] = module[1]
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def hook(key: str):
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            if percentile is None:
                lo, hi = out.amin(dim=(0, 2, 3)), out.amax(dim=(0, 2, 3))
            else:
                flat = out.transpose(0, 1).reshape(out.shape[1], -1)
                pick = torch.randint(flat.shape[1], (min(flat.shape[1], 20000),), generator=gen)
                q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=flat.dtype)
                lo, hi = torch.quantile(flat[:, pick], q, dim=1)
            if key in ranges:
                lo, hi = torch.minimum(lo, ranges[key][0]), torch.maximum(hi, ranges[key][1])
            ranges[key] = (lo, hi)

        return record

    for key, module in watched.items():
        handles.append(module.register_forward_hook(hook(key)))
    try:
        for i in range(0, len(windows), batch):
            model(windows[i : i + batch])
    finally:
        for h in handles:
            h.remove()
    return ranges


def _scale_rows(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """Output channel c becomes scale_c * out_c + shift_c."""
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias.mul_(scale)
    if shift is not None:
        conv.bias.add_(shift)


def _unscale_inputs(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """Compensate an input that became scale_c * in_c + shift_c (shift only for depthwise 1x1 convs)."""
    if conv.groups == 1:
        if shift is not None:
            raise ValueError("an input shift can only be absorbed by a depthwise consumer")
        conv.weight.div_(scale.reshape(1, -1, 1, 1))
        return
    w = conv.weight.reshape(-1)
    if shift is not None:
        conv.bias.sub_(w * shift / scale)
    conv.weight.div_(scale.reshape(-1, 1, 1, 1))


def _relu_width(hi: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Widths of ReLU-output channels for equalisation, dead channels included.

    A ReLU channel that (nearly) never fires on the calibration data is scaled up
    like any other, so its consumer's input weights shrink by the same factor. Left
    at full width (``_spread``'s rule), such a channel keeps the weight a large
    BatchNorm gain gave it, and because int8 weights are scaled per *output*
    channel, that one input weight sets the step of every weight beside it: in the
    seed model one never-firing channel of block 3 had weight 147 against a median
    of 0.13, which rounded the rest of that conv's weights to zero. The floor keeps
    the scale finite for channels that are exactly 0; what such a channel does on
    other data is clipped to its calibrated range, as for every channel.
    """
    return torch.clamp(hi, min=floor * float(hi.max()) if float(hi.max()) > 0 else 1.0)


def _spread(lo: torch.Tensor, hi: torch.Tensor, dead: float = 1e-3) -> torch.Tensor:
    """Channel widths; channels that (nearly) never vary on the calibration data are
    treated as full-width so they are left alone instead of being blown up."""
    width = hi - lo
    return torch.where(width > dead * width.max(), width, width.max())


@torch.no_grad()
def equalize(model: FoldedBBNN, windows: torch.Tensor, percentile: float | None = None) -> dict[str, float]:
    """Rescale channels (exactly) so each fills its tensor's int8 range on ``windows``.

    Per-tensor activation quantisation gives every channel of a tensor the same
    step; a channel ten times narrower than its neighbours then keeps only a few
    levels. Every quantised activation here has a per-channel-affine neighbour that
    can absorb a per-channel map: concatenated channels are mapped to [0, 1] by
    their producing conv (scale and shift; for the stem channels, which pass a ReLU
    and max pool, scale only) and compensated in the depthwise convs that read
    them; ReLU outputs are scaled by their producer and compensated in the
    consumer conv's input weights (scaling commutes with ReLU, max pooling and zero
    padding). Returns the ratio widest/narrowest channel before equalisation per
    tensor, for the report.
    """
    ranges = _channel_ranges(model, windows, percentile=percentile)
    spread_report: dict[str, float] = {}

    # Concatenated channels: producers and consumers in channel order.
    lo, hi = ranges["concat"]
    width = model.stem[0].out_channels
    scale = 1.0 / _spread(torch.zeros_like(hi), hi)
    shift = torch.zeros_like(scale)
    producers: list[tuple[nn.Conv2d, slice]] = [(model.stem[0], slice(0, width))]
    start = width
    for block in model.broadcast:
        for conv in (block.branch1[2], block.branch3[2], block.branch5[2], block.branch_pool[2]):
            producers.append((conv, slice(start, start + conv.out_channels)))
            start += conv.out_channels
    for conv, sl in producers[1:]:
        scale[sl] = 1.0 / _spread(lo[sl], hi[sl])
        shift[sl] = -lo[sl] * scale[sl]
    spread_report["concat"] = float(_spread(lo, hi).max() / _spread(lo, hi).min())
    for conv, sl in producers:
        _scale_rows(conv, scale[sl], shift[sl] if conv is not model.stem[0] else None)
    consumers: list[nn.Conv2d] = []
    for block in model.broadcast:
        consumers += [block.branch1[0], block.branch3[0][0], block.branch5[0][0], block.branch_pool[0]]
    consumers.append(model.transition[0])
    for dw in consumers:
        n = dw.out_channels
        _unscale_inputs(dw, scale[:n], shift[:n])

    # ReLU outputs after a depthwise op and inside the 3x3 / 5x5 branches.
    for name, module in model.named_modules():
        if isinstance(module, PreActFolded):
            _, hi = ranges[name + ".act"]
            s = 1.0 / _relu_width(hi)
            _scale_rows(module[0], s)
            _unscale_inputs(module[2], s)
            spread_report[name + ".act"] = float(hi.max() / _relu_width(hi).min())
        elif isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[0], PreActFolded):
            _, hi = ranges[name + ".inner"]
            s = 1.0 / _relu_width(hi)
            _scale_rows(module[0][2], s)
            _unscale_inputs(module[2], s)
            spread_report[name + ".inner"] = float(hi.max() / _relu_width(hi).min())
    return spread_report
