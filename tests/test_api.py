"""The Python API: what a notebook user calls, without the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pinit
from conftest import SAMPLES


def test_import_pinit_is_light():
    code = "import sys, pinit; assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_and_reinit_from_python(tmp_path):
    with pinit.open_checkpoint(SAMPLES / "uninit_cnn.safetensors") as ckpt:
        report = pinit.inspect_checkpoint(ckpt, selector=pinit.Selector(match=["^fc"]))
    flags = {t.name: [f.code for f in t.flags] for t in report.tensors}
    assert flags == {"fc.weight": ["nan"], "fc.bias": []}

    src = tmp_path / "m.pt"
    shutil.copy(SAMPLES / "tiny_cnn.pt", src)
    for _ in range(2):  # `pinit.reinit` stays the function after its module is imported
        result = pinit.reinit(src, match=["conv1.weight"], scheme="zeros", seed=1, out=tmp_path / "o.safetensors")
        assert [c.name for c in result.changes] == ["conv1.weight"]
    assert callable(pinit.reinit)
    with pinit.open_checkpoint(tmp_path / "o.safetensors") as out:
        assert out.format == "safetensors"
    assert isinstance(pinit.derive_seed(1, "conv1.weight"), int)


def test_errors_are_pinit_errors(tmp_path):
    try:
        pinit.open_checkpoint(tmp_path / "missing.pt")
    except pinit.PinitError as e:
        assert "no such file" in str(e)
    else:
        raise AssertionError("expected PinitError")
