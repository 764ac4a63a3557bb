"""Pickle attacks (SPEC section 1, Safety): no path runs code from a checkpoint without --unsafe-pickle.

Each payload would create its own marker file (``shutil.rmtree`` would delete a canary folder) if
it ran.  Payloads sit at the top level of a file, nested in a state dict (``{"model": {"layer":
payload}}``), or in one shard of a sharded ``pytorch_model.bin`` checkpoint, in both zip and legacy
formats.  For ``pinit inspect``, ``pinit check`` and ``pinit reinit --match . --scheme zeros``:
the marker never appears, inspect and reinit exit 2 with one error line that names the refused
global and both ways on (``--allow-global``, ``--unsafe-pickle``), check exits 1 with an
``unreadable`` finding naming it, and every input file stays byte-identical.  Controls show that a
full ``torch.load(weights_only=False)`` of the same files does run the payloads.

``--allow-global`` admits a name as data, never as code: allowing an unrelated global changes
nothing, and allowing every global of a payload makes pinit keep inert placeholders (inspect,
check, and reinit's write-back alike), so the marker still never appears.

Inputs: 17 payloads x 3 placements (top level, nested, sharded) x 2 formats = 102 files, each
through the three commands (306 runs); 14 controls; 34 files with an unrelated --allow-global; 34
zip and legacy files with every global of their payload allowed (through inspect, check, and
reinit to .pt and to .safetensors).  184 inputs in all (184 tests).
"""

from __future__ import annotations

import _compat_pickle
import builtins
import copyreg
import hashlib
import json
import operator
import os
import pickle
import pickletools
import pty
import runpy
import shutil
import subprocess
import time
import types
import webbrowser
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from conftest import Result, assert_one_error_line, run_cli
from pinit.errors import runs_code

pytestmark = pytest.mark.slow  # 306 hostile-pickle runs: CI runs it, the fast loop does not

# ---------------------------------------------------------------- building malicious pickles


class FakeGlobal:
    """Pickles as ``GLOBAL module.name`` even where that module does not exist here (``nt``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("a FakeGlobal is never called")


class Call:
    """Pickles as ``func(*args)`` (REDUCE); ``func`` may itself be a Call, giving chains."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("a Call is never called while pickling")

    def __reduce__(self) -> Any:
        return (self.func, self.args)


class ReduceEx:
    """The copyreg variant: ``__reduce_ex__`` hands back ``copyreg._reconstructor(Popen, Popen, argv)``,
    which calls ``Popen.__init__(obj, argv)`` when unpickled."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (copyreg._reconstructor, (subprocess.Popen, subprocess.Popen, self.argv))


class EvilPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """A pure-Python pickler that can write FakeGlobal names."""

    dispatch: ClassVar[dict[Any, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_fake(self, obj: FakeGlobal) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[FakeGlobal] = _save_fake


EVIL_PICKLE = types.SimpleNamespace(__name__="evil_pickle", Pickler=EvilPickler, dump=pickle.dump)


def save(obj: Any, path: Path, fmt: str) -> Path:
    torch.save(obj, path, pickle_module=EVIL_PICKLE, _use_new_zipfile_serialization=fmt == "zip")
    return path


def touch(marker: Path) -> str:
    return f"touch '{marker}'"


def py_touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


# name -> (payload builder(marker, work folder), the global pinit must name, runs harmlessly here)
Builder = Callable[[Path, Path], Any]


def _torch_load_payload(m: Path, work: Path) -> Any:
    inner = save({"x": Call(os.system, touch(m))}, work / "inner_evil.pt", "zip")
    return Call(torch.load, str(inner), None, Call(builtins.__import__, "pickle"))


def _numpy_load_payload(m: Path, work: Path) -> Any:
    inner = work / "inner_evil.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = Call(os.system, touch(m))
    np.save(inner, arr, allow_pickle=True)
    return Call(np.load, str(inner), None, True)


PAYLOADS: dict[str, tuple[Builder, str, bool]] = {
    "os.system": (lambda m, w: Call(os.system, touch(m)), "posix.system", True),
    "nt.system": (lambda m, w: Call(FakeGlobal("nt", "system"), touch(m)), "nt.system", False),
    "subprocess.Popen": (lambda m, w: Call(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen", True),
    "subprocess.run": (lambda m, w: Call(subprocess.run, ["touch", str(m)]), "subprocess.run", True),
    "subprocess.check_output": (
        lambda m, w: Call(subprocess.check_output, ["touch", str(m)]),
        "subprocess.check_output",
        True,
    ),
    "builtins.eval": (lambda m, w: Call(builtins.eval, py_touch(m)), "builtins.eval", True),
    "builtins.exec": (lambda m, w: Call(builtins.exec, py_touch(m)), "builtins.exec", True),
    # __import__ comes first in the stream; building its arguments would run os.system
    "builtins.__import__": (
        lambda m, w: Call(builtins.__import__, "os", {"x": Call(os.system, touch(m))}),
        "builtins.__import__",
        True,
    ),
    # getattr(__import__("builtins"), "eval")(source)
    "getattr chain": (
        lambda m, w: Call(Call(getattr, Call(builtins.__import__, "builtins"), "eval"), py_touch(m)),
        "builtins.getattr",
        True,
    ),
    # attrgetter("system")(__import__("os"))("touch ...")
    "operator.attrgetter": (
        lambda m, w: Call(Call(Call(operator.attrgetter, "system"), Call(builtins.__import__, "os")), touch(m)),
        "operator.attrgetter",
        True,
    ),
    "pty.spawn": (lambda m, w: Call(pty.spawn, ["touch", str(m)]), "pty.spawn", False),
    "runpy._run_code": (lambda m, w: Call(runpy._run_code, py_touch(m), {}), "runpy._run_code", True),
    "shutil.rmtree": (lambda m, w: Call(shutil.rmtree, str(w / "CANARY")), "shutil.rmtree", False),
    "webbrowser.open": (lambda m, w: Call(webbrowser.open, str(m)), "webbrowser.open", True),  # BROWSER=touch
    "torch.load": (_torch_load_payload, "torch.serialization.load", True),
    "numpy.load": (_numpy_load_payload, "numpy.load", True),
    "copyreg __reduce_ex__": (lambda m, w: ReduceEx(["touch", str(m)]), "copyreg._reconstructor", True),
}


@pytest.fixture(autouse=True)
def browser_is_touch(monkeypatch: pytest.MonkeyPatch) -> None:
    """webbrowser.open(path) runs ``touch path`` here, so that payload leaves a marker too."""
    monkeypatch.setenv("BROWSER", "touch %s")
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # registered again, from BROWSER, on first use
    monkeypatch.setattr(webbrowser, "_browsers", {})


class Case:
    """One malicious checkpoint in its own folder, with its marker and canary."""

    def __init__(self, root: Path, payload: str, placement: str, fmt: str) -> None:
        self.work = root
        self.marker = root / "MARKER"
        self.canary = root / "CANARY"
        self.canary.mkdir()
        (self.canary / "keep").write_text("x")
        build, self.global_name, self.runnable = PAYLOADS[payload]
        self.background = payload in ("subprocess.Popen", "copyreg __reduce_ex__", "webbrowser.open")
        evil = build(self.marker, root)
        self.folder = root / "ckpt"
        self.folder.mkdir()
        if placement == "top":
            self.path = save(evil, self.folder / "evil.pt", fmt)
        elif placement == "nested":
            self.path = save({"model": {"layer": evil, "w": torch.ones(2)}}, self.folder / "evil.ckpt", fmt)
        else:  # sharded .bin: shard 1 is clean, shard 2 holds the payload
            save({"a.weight": torch.ones(2)}, self.folder / "pytorch_model-00001-of-00002.bin", fmt)
            save({"b.weight": torch.ones(3), "b.hook": evil}, self.folder / "pytorch_model-00002-of-00002.bin", fmt)
            wm = {"a.weight": "pytorch_model-00001-of-00002.bin", "b.weight": "pytorch_model-00002-of-00002.bin"}
            (self.folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
            self.path = self.folder
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.work.rglob("*"))
            if p.is_file()
        }

    def assert_nothing_ran(self) -> None:
        if self.background:
            time.sleep(0.05)  # a Popen would have had time to touch its marker
        assert not self.marker.exists(), "the payload ran"
        assert (self.canary / "keep").exists(), "the payload ran (rmtree)"
        assert self.snapshot() == self.before, "files changed"

    def globals_in_pickles(self) -> list[str]:
        """Every GLOBAL named by the payload's pickles (what --allow-global would need to admit)."""
        found: list[str] = []
        files = [self.path] if self.path.is_file() else sorted(self.folder.glob("*.bin"))
        for f in files:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    blobs = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
            else:
                blobs = [f.read_bytes()]
            for blob in blobs:
                for blob_part in _pickles_in(blob):
                    for op, arg, _ in pickletools.genops(blob_part):
                        if op.name == "GLOBAL":
                            module, name = arg.split(" ", 1)
                            if (module, name) in _compat_pickle.NAME_MAPPING:
                                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
                            full = f"{module}.{name}"
                            if not (full in NATIVE or full.startswith("torch._utils.") or full.endswith("Storage")):
                                found.append(full)
        return sorted(set(found))


NATIVE = {"collections.OrderedDict"}  # globals the readers admit without --allow-global


def _pickles_in(blob: bytes) -> list[bytes]:
    """The consecutive pickles of a legacy file (magic, version, sys info, object, keys; then data)."""
    out = []
    pos = 0
    for _ in range(5 if blob[:2] == b"\x80\x02" and len(blob) > 2 and blob[2:3] == b"\x8a" else 1):
        end = pos
        for _op, _arg, at in pickletools.genops(blob[pos:]):
            end = pos + at
        out.append(blob[pos : end + 1])
        pos = end + 1
    return out


def error_names_global(r: Result, case: Case) -> None:
    assert_one_error_line(r)
    assert f"'{case.global_name}'" in r.stderr, r.stderr  # as Python 3 names it, on the zip and torch paths
    # every payload runs code: named as code execution, and --allow-global is never suggested
    assert runs_code(case.global_name), case.global_name
    assert "code execution" in r.stderr and "--allow-global" not in r.stderr, r.stderr


PLACEMENTS = [
    (payload, placement, fmt)
    for payload in PAYLOADS
    for placement in ("top", "nested", "sharded")
    for fmt in ("zip", "legacy")
]


@pytest.mark.parametrize(("payload", "placement", "fmt"), PLACEMENTS, ids=lambda v: str(v))
def test_payload_is_refused_by_every_command(tmp_path: Path, payload: str, placement: str, fmt: str) -> None:
    case = Case(tmp_path, payload, placement, fmt)

    r = run_cli("inspect", case.path)
    error_names_global(r, case)
    assert r.stdout == ""
    case.assert_nothing_ran()

    r = run_cli("reinit", case.path, "--match", ".", "--scheme", "zeros", "--seed", "0")
    error_names_global(r, case)
    case.assert_nothing_ran()

    r = run_cli("check", case.path, "--format", "json")
    assert r.exit_code == 1, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    findings = [x for f in r.json()["files"] for x in f["findings"]]
    unreadable = [x for x in findings if x["code"] == "unreadable"]
    assert unreadable, findings
    assert any(f"'{case.global_name}'" in x["message"] for x in unreadable), unreadable
    case.assert_nothing_ran()


CONTROLS = [p for p, (_, _, runnable) in PAYLOADS.items() if runnable and p not in ("torch.load", "numpy.load")]
CONTROLS += ["torch.load", "numpy.load"]


@pytest.mark.parametrize("payload", CONTROLS)
def test_control_a_full_unpickle_runs_the_payload(tmp_path: Path, payload: str) -> None:
    """The same files do run code under torch.load(weights_only=False): the tests above can fail."""
    case = Case(tmp_path, payload, "nested", "zip")
    torch.load(case.path, weights_only=False)
    deadline = time.monotonic() + 10
    while not case.marker.exists() and time.monotonic() < deadline:  # Popen runs in the background
        time.sleep(0.02)
    assert case.marker.exists()


def test_control_rmtree_payload_deletes_the_canary(tmp_path: Path) -> None:
    case = Case(tmp_path, "shutil.rmtree", "nested", "legacy")
    torch.load(case.path, weights_only=False)
    assert not case.canary.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_an_unrelated_allowed_global_lets_nothing_through(tmp_path: Path, payload: str, fmt: str) -> None:
    case = Case(tmp_path, payload, "nested", fmt)
    r = run_cli("inspect", case.path, "--allow-global", "collections.OrderedDict", "--allow-global", "uuid.UUID")
    error_names_global(r, case)
    case.assert_nothing_ran()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_code_running_globals_cannot_be_allowed(tmp_path: Path, payload: str, fmt: str) -> None:
    """--allow-global for every global of the payload: a global known to run code is never
    admitted as data (the gate must not pass a file that runs a shell command when torch loads
    it), so every command refuses the option itself in one line, and nothing runs."""
    case = Case(tmp_path, payload, "nested", fmt)
    allowed = case.globals_in_pickles()
    assert case.global_name in allowed
    flags = [a for g in allowed for a in ("--allow-global", g)]
    out = tmp_path / "o.pt"
    for args in (
        ["inspect", case.path, *flags, "--format", "json"],
        ["check", case.path, *flags],
        ["reinit", case.path, *flags, "--match", "w", "--scheme", "zeros", "--seed", "0", "--out", out],
    ):
        r = run_cli(*args)
        assert_one_error_line(r)
        assert "runs code" in r.stderr and "never admitted" in r.stderr, r.stderr
        case.assert_nothing_ran()
    assert not out.exists()
