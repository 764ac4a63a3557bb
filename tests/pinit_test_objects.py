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
