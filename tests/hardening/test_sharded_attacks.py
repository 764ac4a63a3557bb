"""Hostile sharded checkpoints (SPEC sections 1 and 7): an index never leads pinit out of its folder.

Each case is a folder with ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``)
and valid shards, and one thing wrong: shard names with ``..``, absolute paths, ``~``, a symlink to
a file outside, a symlinked folder component leading outside, the index itself as a shard, a
tensor in two shards, a missing shard, an index that is not JSON / not an object / has non-string
weight_map values / is empty, and the file-name edge cases (NUL, 300 characters, a symlink loop, a
folder, a FIFO).  Where a name points outside, it points at a real, valid checkpoint there.

For each: ``pinit inspect`` exits 2 with one ``error:`` line, ``pinit check`` exits 1 with an
``unreadable`` finding, ``pinit reinit`` exits 2 and writes nothing; and no file outside the folder
is opened (an audit hook records every ``open``), nor anything changed.

Inputs: 44 hostile folders (15 path cases x 2 shard formats + 14 broken indexes), each through the
three commands (reinit twice: in place and with --out), plus 2 controls (a valid sharded folder
reads, and the audit hook does see opens) = 46 inputs (46 tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_one_error_line, run_cli

pytestmark = pytest.mark.slow  # hostile sharded folders: CI runs it, the fast loop does not

# ---------------------------------------------------------------- which files pinit opens

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        _OPENED.append(os.path.realpath(path))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only inside opened_files()


@contextmanager
def opened_files() -> Iterator[list[str]]:
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


# ---------------------------------------------------------------- building folders


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    if path.name.endswith(".safetensors"):
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)


class Layout:
    """A sharded folder ``root/model`` and a folder ``root/outside`` holding a valid checkpoint."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.ext = ".safetensors" if kind == "safetensors" else ".bin"
        self.index_name = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
        self.folder = root / "model"
        self.folder.mkdir()
        self.outside = root / "outside"
        self.outside.mkdir()
        self.evil = self.outside / f"evil{self.ext}"
        write_shard(self.evil, {"b": torch.full((3,), 7.0)})
        self.s1 = f"model-00001-of-00002{self.ext}"
        self.s2 = f"model-00002-of-00002{self.ext}"
        write_shard(self.folder / self.s1, {"a": torch.ones(2)})
        write_shard(self.folder / self.s2, {"b": torch.zeros(3)})

    @property
    def index(self) -> Path:
        return self.folder / self.index_name

    def write_index(self, weight_map: Any = None, raw: bytes | None = None) -> None:
        if raw is None:
            raw = json.dumps({"metadata": {"total_size": 20}, "weight_map": weight_map}).encode()
        self.index.write_bytes(raw)

    def snapshot(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(self.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_symlink() or p.is_dir():
                out[str(p.relative_to(self.root))] = "link" if p.is_symlink() else "dir"
        return out


def assert_stays_inside(layout: Layout, opened: list[str]) -> None:
    outside = os.path.realpath(layout.outside)
    home = os.path.realpath(layout.root / "home")
    bad = [p for p in opened if p.startswith((outside + os.sep, home + os.sep))]
    assert not bad, f"opened outside the checkpoint folder: {bad}"


def run_all_commands(layout: Layout, target: Path | None = None) -> None:
    """inspect: exit 2, one line; check: exit 1, unreadable; reinit: exit 2, nothing written."""
    target = target or layout.folder
    before = layout.snapshot()
    with opened_files() as opened:
        r = run_cli("inspect", target, "--format", "json")
        assert_one_error_line(r)
        assert r.stdout == ""
        assert str(layout.index) in r.stderr or str(target) in r.stderr, r.stderr

        r = run_cli("check", target, "--format", "json")
        assert r.exit_code == 1, (r.exit_code, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        findings = [x for f in r.json()["files"] for x in f["findings"]]
        assert any(x["code"] == "unreadable" for x in findings), findings

        r = run_cli("reinit", target, "--match", ".", "--scheme", "zeros", "--seed", "0")
        assert_one_error_line(r)
        r = run_cli("reinit", target, "--match", ".", "--scheme", "zeros", "--seed", "0", "--out", layout.root / "o")
        assert_one_error_line(r)
    assert_stays_inside(layout, opened)
    assert layout.snapshot() == before


# ---------------------------------------------------------------- path attacks (both shard formats)


def _symlink_file(lay: Layout) -> dict[str, str]:
    (lay.folder / f"linked{lay.ext}").symlink_to(lay.evil)
    return {"a": lay.s1, "b": f"linked{lay.ext}"}


def _symlink_dir(lay: Layout) -> dict[str, str]:
    (lay.folder / "sub").symlink_to(lay.outside, target_is_directory=True)
    return {"a": lay.s1, "b": f"sub/evil{lay.ext}"}


def _symlink_loop(lay: Layout) -> dict[str, str]:
    (lay.folder / f"loop{lay.ext}").symlink_to(f"loop{lay.ext}")
    return {"a": lay.s1, "b": f"loop{lay.ext}"}


def _home(lay: Layout) -> dict[str, str]:
    home = lay.root / "home"
    home.mkdir()
    write_shard(home / f"evil{lay.ext}", {"b": torch.ones(3)})
    return {"a": lay.s1, "b": f"~/evil{lay.ext}"}


def _fifo(lay: Layout) -> dict[str, str]:
    os.mkfifo(lay.folder / f"pipe{lay.ext}")  # opening it would block for ever
    return {"a": lay.s1, "b": f"pipe{lay.ext}"}


def _two_shards(lay: Layout) -> dict[str, str]:
    write_shard(lay.folder / lay.s2, {"a": torch.ones(2), "b": torch.zeros(3)})
    return {"a": lay.s1, "b": lay.s2}


def _directory(lay: Layout) -> dict[str, str]:
    (lay.folder / "adir").mkdir()
    return {"a": lay.s1, "b": "adir"}


PATH_CASES: dict[str, Callable[[Layout], dict[str, str]]] = {
    "dot-dot to a valid file outside": lambda lay: {"a": lay.s1, "b": f"../outside/evil{lay.ext}"},
    "dot-dot in the middle": lambda lay: {"a": lay.s1, "b": f"{lay.s2}/../../outside/evil{lay.ext}"},
    "absolute path to a valid file outside": lambda lay: {"a": lay.s1, "b": str(lay.evil)},
    "tilde (HOME holds a valid file)": _home,
    "backslash dot-dot": lambda lay: {"a": lay.s1, "b": f"..\\outside\\evil{lay.ext}"},
    "symlink to a file outside": _symlink_file,
    "symlinked folder leading outside": _symlink_dir,
    "the index itself": lambda lay: {"a": lay.s1, "b": lay.index_name},
    "tensor in two shards": _two_shards,
    "missing shard": lambda lay: {"a": lay.s1, "b": f"model-00003-of-00002{lay.ext}"},
    "NUL in the name": lambda lay: {"a": lay.s1, "b": f"model\x00{lay.ext}"},
    "300-character name": lambda lay: {"a": lay.s1, "b": "x" * 300 + lay.ext},
    "symlink loop": _symlink_loop,
    "a folder": _directory,
    "a FIFO": _fifo,
}


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("case", list(PATH_CASES))
def test_shard_path_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, kind: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    lay = Layout(tmp_path, kind)
    lay.write_index(PATH_CASES[case](lay))
    run_all_commands(lay)
    if case.startswith(("dot-dot", "absolute", "symlink to", "symlinked")):
        run_all_commands(lay, lay.index)  # the index file named directly: the same


# ---------------------------------------------------------------- broken indexes

INDEX_CASES: dict[str, bytes] = {
    "not JSON": b"{weight_map: }",
    "empty file": b"",
    "not UTF-8": b'{"weight_map": {"a": "\xff\xfe"}}',
    "a JSON list": b'[{"weight_map": {}}]',
    "a JSON string": b'"model.safetensors"',
    "JSON null": b"null",
    "no weight_map": b'{"metadata": {}}',
    "weight_map a list": b'{"weight_map": [["a", "x"]]}',
    "weight_map value a number": b'{"weight_map": {"a": 1}}',
    "weight_map value null": b'{"weight_map": {"a": null}}',
    "weight_map value a list": b'{"weight_map": {"a": ["x"]}}',
    "empty weight_map": b'{"weight_map": {}}',
    "5000-digit number": b'{"weight_map": {"a": "x"}, "n": ' + b"7" * 5000 + b"}",
    "100,000 nested arrays": b'{"weight_map": {}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_broken_index(tmp_path: Path, case: str) -> None:
    lay = Layout(tmp_path, "safetensors")
    lay.write_index(raw=INDEX_CASES[case])
    run_all_commands(lay)


# ---------------------------------------------------------------- controls


def test_control_valid_sharded_folder_reads(tmp_path: Path) -> None:
    """The same folder with a sound index reads, and the audit hook does see the shards opened."""
    lay = Layout(tmp_path, "bin")
    lay.write_index({"a": lay.s1, "b": lay.s2})
    with opened_files() as opened:
        r = run_cli("inspect", lay.folder, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == ["a", "b"]
    assert os.path.realpath(lay.folder / lay.s2) in opened
    assert_stays_inside(lay, opened)


def test_control_the_outside_file_is_readable(tmp_path: Path) -> None:
    """What the attacks point at is a valid checkpoint: refusing it is the index's doing."""
    lay = Layout(tmp_path, "safetensors")
    with opened_files() as opened:
        r = run_cli("inspect", lay.evil, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert os.path.realpath(lay.evil) in opened
