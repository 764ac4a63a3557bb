"""Tensor selection by name (SPEC section 2): --match, --exclude."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pinit.errors import PinitError


def compile_patterns(patterns: Iterable[str], option: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise PinitError(f"{option} '{p}' is not a valid regular expression ({e})") from None
    return out


@dataclass
class Selector:
    """Union of ``match`` patterns (all names when none), minus ``exclude`` patterns."""

    match: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._match = compile_patterns(self.match, "--match")
        self._exclude = compile_patterns(self.exclude, "--exclude")

    def __call__(self, name: str) -> bool:
        if self._match and not any(p.search(name) for p in self._match):
            return False
        return not any(p.search(name) for p in self._exclude)
