"""Network architectures for training and export.

Every model takes images in [0,1] pixel units, NCHW float32, and returns logits [N, num_classes].
Its first layer is :class:`Normalize`, so the (x - mean) / std normalisation lives inside the exported
ONNX graph and smoothing noise added to the [0,1] input means the same thing in training and in
certification.

Architectures (``build(arch, ...)``):

- ``digits_cnn``: small CNN for 28x28 grey digits, cheap enough for ~10^5 forward passes per image
  on a CPU (the package's embedded default).
- ``resnet20``, ``resnet110``: He et al. (2016) CIFAR ResNets, 3 stages of basic blocks with 16/32/64
  channels, 6n+2 layers (n=3 and n=18). ResNet-110 is the network of Cohen et al. (2019).
- ``resnet50``: ImageNet ResNet-50 (bottleneck blocks [3, 4, 6, 3]), 224x224 RGB input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

# Default input shape (C, H, W) per architecture.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits_cnn": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "resnet110": (3, 32, 32),
    "resnet50": (3, 224, 224),
}
ARCHS = tuple(INPUT_SHAPES)


class Normalize(nn.Module):
    """(x - mean) / std per channel; x is [N, C, H, W] in [0,1]; mean/std are buffers of shape [1, C, 1, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DigitsCNN(nn.Module):
    """Small CNN for [N, 1, 28, 28] digits.

    conv 5x5 (1->c1) -> ReLU -> maxpool 2 -> conv 5x5 (c1->c2) -> ReLU -> maxpool 2 -> fc (c2*4*4 -> hidden)
    -> ReLU -> fc (hidden -> classes). Default widths 16/32/128: about 1.0 M multiply-adds per image.
    """

    def __init__(self, num_classes: int = 10, c1: int = 16, c2: int = 32, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet with depth 6n+2: conv3x3(16), 3 stages of n basic blocks (16/32/64), avgpool, fc."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as in torchvision v1.5) -> 1x1 expand (x4), with projection shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ImageNetResNet(nn.Module):
    """ImageNet ResNet with bottleneck blocks: 7x7/2 stem, maxpool, 4 stages (64/128/256/512 x4), avgpool, fc."""

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for i in range(n):
                layers.append(Bottleneck(cin, width, 2 if (i == 0 and stage > 0) else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init_resnet(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN; zero the last BN of each residual branch (starts blocks as identity)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def build(arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Return ``nn.Sequential(Normalize(mean, std), net)``: [N, C, H, W] in [0,1] -> logits [N, num_classes].

    ``mean`` and ``std`` have one entry per input channel (1 for digits_cnn, 3 for the ResNets).
    """
    if arch not in INPUT_SHAPES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    channels = INPUT_SHAPES[arch][0]
    if len(mean) != channels:
        raise ValueError(f"{arch} takes {channels} channel(s) but mean/std have {len(mean)}")
    if arch == "digits_cnn":
        net: nn.Module = DigitsCNN(num_classes)
    elif arch == "resnet20":
        net = CifarResNet(20, num_classes, channels)
    elif arch == "resnet110":
        net = CifarResNet(110, num_classes, channels)
    else:
        net = ImageNetResNet((3, 4, 6, 3), num_classes, channels)
    return nn.Sequential(Normalize(mean, std), net)
