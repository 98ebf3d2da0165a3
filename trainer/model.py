"""BBNN — the bottom-up broadcast neural network of Liu et al. (Table 1 of the paper).

Layer for layer the graph of the seed's Keras checkpoints: a 3x3 stem, a 4x1 time
pooling, three densely connected inception blocks whose every convolution is
pre-activated (BN -> ReLU -> Conv), a 1x1 transition with 2x2 average pooling,
and a BN -> ReLU -> global-average-pool -> dense decision layer. 185,642 trainable
parameters for 10 classes.

The network is fully convolutional in time, so it accepts any window length; the
32-d pooled vector before the dense layer is returned as the track embedding that
the library features cluster on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["BBNN", "BN_EPS"]

BN_EPS = 1e-3  # Keras' BatchNormalization default, used by the seed checkpoints
BN_MOMENTUM = 0.01  # Keras momentum 0.99 expressed the PyTorch way


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActConv(nn.Sequential):
    """BN -> ReLU -> Conv with 'same' padding: the unit every broadcast branch is made of."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__(
            _bn(in_ch),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2),
        )


class Inception(nn.Module):
    """One broadcast block: four branches concatenated, then concatenated after the input.

    Output channels = in + 4 * width (dense connectivity). Branch order in the
    concatenation is [1x1, 1x1->3x3, 1x1->5x5, pool->1x1], as in the checkpoints.
    """

    def __init__(self, in_ch: int, width: int = 32) -> None:
        super().__init__()
        self.branch1 = PreActConv(in_ch, width, 1)
        self.branch3 = nn.Sequential(PreActConv(in_ch, width, 1), PreActConv(width, width, 3))
        self.branch5 = nn.Sequential(PreActConv(in_ch, width, 1), PreActConv(width, width, 5))
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch_pool = PreActConv(in_ch, width, 1)
        self.out_channels = in_ch + 4 * width

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The 4 * width new channels alone (the streaming export caches them apart from the input)."""
        return torch.cat(
            [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(self.pool(x))],
            dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.branches(x)], dim=1)


class BBNN(nn.Module):
    """Input (N, T, n_mels) normalised mel windows; output (logits (N, classes), embedding (N, 32))."""

    def __init__(self, n_classes: int = 10, width: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            _bn(width),
            nn.ReLU(inplace=False),
            nn.MaxPool2d((4, 1), stride=(4, 1)),
        )
        layers = []
        ch = width
        for _ in range(blocks):
            block = Inception(ch, width)
            layers.append(block)
            ch = block.out_channels
        self.broadcast = nn.Sequential(*layers)
        self.transition = nn.Sequential(
            PreActConv(ch, width, 1),
            nn.AvgPool2d(2, stride=2),
        )
        self.head_norm = nn.Sequential(_bn(width), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(width, n_classes)
        self.embedding_dim = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 32-d globally pooled feature the decision layer sees."""
        x = x.unsqueeze(1)  # (N, 1, T, F): time is height, mel band is width, as in Keras
        x = self.stem(x)
        x = self.broadcast(x)
        x = self.transition(x)
        x = self.head_norm(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.classifier(emb), emb


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_predictor(model: nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """Windows (N, frames, n_mels) -> softmax probabilities, the way evaluation and validation run a model."""

    def predict(windows: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(windows).to(device))
            return torch.softmax(logits.float(), -1).cpu().numpy()

    return predict
