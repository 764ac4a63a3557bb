"""Tiny models for the README's walkthrough of ``pinit inspect --model`` and ``pinit init``.

``ScaledNet`` holds the seed scenario: a custom layer (``ScaledLinear``) whose parameters are
``nn.Parameter(torch.empty(...))`` and which forgets to initialize them (it has no
``reset_parameters()``), so whatever was in memory becomes its weights. ``FixedNet`` is the same
network with the layer fixed.

    pinit inspect --model sample_checkpoints/models.py:ScaledNet        # 'scaled.weight' is flagged
    pinit init sample_checkpoints/models.py:FixedNet --out fixed.safetensors --seed 0
    pinit check fixed.safetensors --model sample_checkpoints/models.py:FixedNet
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ScaledLinear(nn.Module):
    """``y = scale * (x @ weight.T) + bias``: the parameters are allocated, never written."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.scale = nn.Parameter(torch.empty(()))
        # forgot: self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.linear(x, self.weight, self.bias)


class FixedScaledLinear(ScaledLinear):
    """The same layer with the initialization it forgot (the one ``nn.Linear`` uses)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.ones_(self.scale)


class ScaledNet(nn.Module):
    def __init__(self, hidden: int = 64, layer: type[ScaledLinear] = ScaledLinear) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.scaled = layer(8 * 4 * 4, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1)
        return self.head(torch.relu(self.scaled(x)))


def FixedNet(hidden: int = 64) -> ScaledNet:  # a factory named like the class it builds
    return ScaledNet(hidden, FixedScaledLinear)
