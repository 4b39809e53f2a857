"""ResNets whose residual branches can be skipped: ResNet18 for CIFAR-10 and a small one for Fashion-MNIST.

A :class:`BasicBlock` keeps its residual branch (``residual``) and its
shortcut (``shortcut``: ``nn.Identity`` when the block keeps the shape, else a
strided 1x1 projection) apart, so a block with an identity shortcut can drop
its branch and still pass its input on: ``relu(x + 0) = x`` because a block's
input is already the output of a ReLU.

ResNet18-CIFAR is the usual adaptation of He et al. (2016) to 32x32 images:
a 3x3 stem with 64 channels, no max-pool, four stages of two blocks
(64, 128, 256, 512 channels, strides 1, 2, 2, 2), global average pooling and
a linear classifier.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "resnet18_cifar", "small_resnet", "build_resnet", "MODELS"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """``relu(shortcut(x) + residual(x))`` with ``residual = conv-bn-relu-conv-bn``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.residual = nn.Sequential(_conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                      _conv3x3(cout, cout), nn.BatchNorm2d(cout))
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.residual(x))


class ResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU), stages of :class:`BasicBlock`, global average pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: Sequence[int],
                 strides: Sequence[int]):
        super().__init__()
        if not (len(widths) == len(blocks) == len(strides)) or not widths:
            raise ValueError(f"ResNet: widths, blocks and strides must be non-empty and of one length, got "
                             f"{list(widths)}, {list(blocks)}, {list(strides)}")
        if min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"ResNet: every stage needs >= 1 block and >= 1 channel, got blocks {list(blocks)}, "
                             f"widths {list(widths)}")
        self.config: Dict = {"in_channels": int(in_channels), "num_classes": int(num_classes),
                             "widths": [int(w) for w in widths], "blocks": [int(b) for b in blocks],
                             "strides": [int(s) for s in strides]}
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for w, n, s in zip(widths, blocks, strides):
            stage = [BasicBlock(cin, w, s)] + [BasicBlock(w, w, 1) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each branch: every block starts as the identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.residual[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet18 adapted to CIFAR-10 (3x3 stem, no max-pool): 8 blocks, 5 of them with an identity shortcut."""
    return ResNet(in_channels, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))


def small_resnet(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 2) -> ResNet:
    """A ResNet that trains on a CPU in minutes: three stages of ``blocks`` blocks (strides 1, 2, 2)."""
    return ResNet(in_channels, num_classes, widths, (blocks,) * len(widths), (1,) + (2,) * (len(widths) - 1))


MODELS = {"small": small_resnet, "resnet18": resnet18_cifar}


def build_resnet(config: Dict) -> ResNet:
    """Rebuild a :class:`ResNet` from its ``config`` (as saved with a checkpoint)."""
    c = dict(config)
    return ResNet(c["in_channels"], c["num_classes"], c["widths"], c["blocks"], c["strides"])
