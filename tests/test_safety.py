"""Pickle safety (SPEC section 1): weights_only semantics, the allowlist, --allow-global, --unsafe-pickle.

A pickle that would run code is refused with exit 2 and one ``error:`` line naming the global and
the two ways on, and the code never runs; standard-library hyper-parameters load; other classes
need ``--allow-global``; ``--unsafe-pickle`` loads anything after a warning.
"""

from __future__ import annotations

import argparse
import builtins
import os
import pathlib
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import assert_one_error_line, run_cli
from pinit.checkpoint import LoadOptions, open_checkpoint
from pinit.errors import UnsafeGlobalError
from pinit_test_objects import Hyper, Point

FORMATS = ["zip", "legacy"]


def save(obj: Any, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


class RunsShell:
    """Unpickling this runs ``touch MARKER`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch '{self.marker}'",))


class RunsExec:
    """Unpickling this runs Python source through builtins.exec."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


PAYLOADS = {"system": (RunsShell, "posix.system"), "exec": (RunsExec, "builtins.exec")}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payload_really_runs_code_when_fully_unpickled(tmp_path: Path, payload: str) -> None:
    """Control: the malicious files used below do run code under a full unpickle."""
    cls, _ = PAYLOADS[payload]
    marker = tmp_path / "CONTROL"
    path = save({"w": torch.ones(2), "evil": cls(marker)}, tmp_path / "control.pt", "zip")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_code_running_pickle_is_refused(tmp_path: Path, fmt: str, payload: str) -> None:
    cls, global_name = PAYLOADS[payload]
    marker = tmp_path / "MARKER"
    path = save({"evil": cls(marker), "w": torch.ones(2)}, tmp_path / "evil.pt", fmt)
    before = sorted(os.listdir(tmp_path))

    r = run_cli("inspect", path)
    assert_one_error_line(r)
    assert f"'{global_name}'" in r.stderr or f" {global_name} " in r.stderr, r.stderr
    # named as code execution, and --allow-global is never suggested for it
    assert "code execution" in r.stderr, r.stderr
    assert "--allow-global" not in r.stderr, r.stderr
    assert str(path) in r.stderr
    assert r.stdout == ""
    assert not marker.exists()

    # Every other command path refuses it too.
    for extra in (["--no-stats"], ["--format", "json"], ["--values", "3"]):
        assert_one_error_line(run_cli("inspect", path, *extra))
    assert not marker.exists()

    with pytest.raises(UnsafeGlobalError) as exc:
        open_checkpoint(path)
    assert exc.value.global_name == global_name
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_allowing_os_system_is_refused(tmp_path: Path, fmt: str) -> None:
    """A global known to run code is never admitted as data, whatever --allow-global says."""
    marker = tmp_path / "MARKER"
    path = save({"evil": RunsShell(marker), "w": torch.ones(2)}, tmp_path / "evil.pt", fmt)
    for cmd in (["inspect", path, "--no-stats"], ["check", path]):
        r = run_cli(*cmd, "--allow-global", "posix.system")
        assert_one_error_line(r)
        assert "runs code" in r.stderr
    assert not marker.exists()


def hparams_checkpoint() -> dict[str, Any]:
    return {
        "state_dict": {"layer.weight": torch.ones(2, 2)},
        "hyper_parameters": {
            "data_dir": pathlib.PosixPath("/data/train"),
            "args": argparse.Namespace(lr=0.1, root=pathlib.Path("/x"), layers=[1, 2]),
        },
        "epoch": 1,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_stdlib_hyper_parameters_load_through_the_allowlist(tmp_path: Path, fmt: str) -> None:
    path = save(hparams_checkpoint(), tmp_path / "hp.ckpt", fmt)
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == ["state_dict.layer.weight"]
    with open_checkpoint(path) as ckpt:
        assert [e.name for e in ckpt.tensors] == ["state_dict.layer.weight"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_containers_of_torch_save_load(tmp_path: Path, fmt: str) -> None:
    """set, frozenset, bytearray, OrderedDict: what weights_only admits (or the allowlist names)."""
    obj = {
        "w": torch.ones(2),
        "tags": {"a", "b"},
        "frozen": frozenset({1, 2}),
        "blob": bytearray(b"xy"),
        "complex": complex(1, 2),
    }
    path = save(obj, tmp_path / "plain.pt", fmt)
    r = run_cli("inspect", path, "--format", "json", "--no-stats")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == ["w"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("value", "global_name"),
    [(Hyper(0.1, "run"), "pinit_test_objects.Hyper"), (Point(1, 2), "pinit_test_objects.Point")],
)
def test_unlisted_harmless_class_needs_allow_global(tmp_path: Path, fmt: str, value: Any, global_name: str) -> None:
    path = save({"w": torch.arange(3.0), "hp": value}, tmp_path / "custom.pt", fmt)

    r = run_cli("inspect", path)
    assert_one_error_line(r)
    assert global_name in r.stderr
    assert f"--allow-global {global_name}" in r.stderr

    r = run_cli("inspect", path, "--allow-global", global_name, "--format", "json", "--values", "3")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert [t["name"] for t in doc["tensors"]] == ["w"]
    assert doc["tensors"][0]["values"] == [0.0, 1.0, 2.0]

    with open_checkpoint(path, LoadOptions(allow_globals=(global_name,))) as ckpt:
        assert [e.name for e in ckpt.tensors] == ["w"]

    # Allowing some other name does not help.
    r = run_cli("inspect", path, "--allow-global", "pinit_test_objects.Other")
    assert_one_error_line(r)


def test_allow_global_needs_module_dot_name(tmp_path: Path) -> None:
    path = save({"w": torch.ones(1)}, tmp_path / "w.pt", "zip")
    r = run_cli("inspect", path, "--allow-global", "NoDot")
    assert_one_error_line(r)
    assert "--allow-global" in r.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsafe_pickle_loads_custom_object_with_a_warning(tmp_path: Path, fmt: str) -> None:
    path = save({"w": torch.arange(4.0), "hp": Hyper(0.1, "run")}, tmp_path / "custom.pt", fmt)
    r = run_cli("inspect", path, "--unsafe-pickle", "--format", "json", "--values", "4")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr
    assert "code" in r.stderr  # the warning says that this runs code from the file
    doc = r.json()
    assert [t["name"] for t in doc["tensors"]] == ["w"]
    assert doc["tensors"][0]["values"] == [0.0, 1.0, 2.0, 3.0]


def test_sample_lightning_checkpoint_loads(samples: Path) -> None:
    r = run_cli("inspect", samples / "lightning.ckpt", "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    names = [t["name"] for t in doc["tensors"]]
    assert any(n.startswith("state_dict.") for n in names)
    assert any(n.startswith("optimizer_states.0.") for n in names)
    assert "warning" not in r.stderr


def test_sample_legacy_checkpoint_loads(samples: Path) -> None:
    r = run_cli("inspect", samples / "legacy.pt", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["summary"]["tensors"] > 0


@pytest.mark.slow  # plots or torch's own loader: seconds; CI runs it
def test_legacy_bytearray_bomb_is_refused_before_torch_reads_it(tmp_path):
    """torch's own weights_only loader admits ``bytearray(n)``; pinit's pre-scan of legacy
    pickles refuses it, so a few bytes cannot make the process allocate gigabytes."""
    import io
    import pickle
    import resource
    import subprocess
    import sys

    hdr = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, hdr, protocol=2)
    pickle.dump(1001, hdr, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, hdr, protocol=2)
    bomb = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\x80\x00\x85R."  # bytearray(2**31)
    f = tmp_path / "bomb.pt"
    f.write_bytes(hdr.getvalue() + bomb + pickle.dumps([], protocol=2))

    def limit() -> None:  # 2 GiB would not fit: the old behaviour dies or allocates
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    p = subprocess.run(
        [sys.executable, "-m", "pinit", "inspect", str(f)], capture_output=True, text=True, preexec_fn=limit
    )
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bytearray" in lines[0], p.stderr
