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
