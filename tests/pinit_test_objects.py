"""Harmless classes that are not on pinit's pickle allowlist (used by test_safety.py).

They live in their own module so that pickles name them ``pinit_test_objects.<Name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class Hyper:
    lr: float
    name: str


class Point(NamedTuple):
    x: int
    y: int


class ConfigNode:
    """Stands in for a config object such as OmegaConf's DictConfig: plain state, set by BUILD."""

    def __init__(self, content: dict) -> None:
        self.content = content


class ListNode(list):
    """A list subclass (OmegaConf's ListConfig is one): pickled with its items appended."""


def _module_classes() -> dict[str, type]:
    """nn.Module classes for test_containers_read.py, defined on first use (importing this module
    must not import torch); pickles name them ``pinit_test_objects.<Name>``."""
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        """Conv (no bias), BatchNorm, Sequential(Linear, ReLU), a non-persistent buffer, hyper-parameters."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, bias=False)
            self.bn = nn.BatchNorm2d(2)
            self.head = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
            self.register_buffer("scale", torch.full((3,), 2.0))
            self.register_buffer("cache", torch.ones(4), persistent=False)
            self.width = 2
            self.label = "tiny"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x)).mean((2, 3))
            return self.head(y) * self.scale

    class TiedNet(nn.Module):
        """Two Linear layers sharing one weight Parameter."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(3, 3)
            self.dec = nn.Linear(3, 3)
            self.dec.weight = self.enc.weight

    class PlainNode:
        """Not a module: an object whose state merely looks like one's."""

    for cls in (TinyNet, TiedNet, PlainNode):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {c.__name__: c for c in (TinyNet, TiedNet, PlainNode)}


def __getattr__(name: str) -> type:
    if name in ("TinyNet", "TiedNet", "PlainNode"):
        classes = _module_classes()
        globals().update(classes)
        return classes[name]
    raise AttributeError(name)
