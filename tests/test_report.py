"""``pinit report`` (one self-contained HTML page, PNG plots) and ``pinit inspect --meta``
(the non-tensor content of a checkpoint), through the real CLI.

The browser test opens the page in headless Chromium (Debian's ``chromium``) and is skipped only
where no browser is installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, assert_one_error_line, run_cli, save_checkpoint

pytest.importorskip("matplotlib")  # the [report] extra, part of the [test] extra

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


def _html(tmp_path: Path, ckpt: Path | str, *extra: str) -> str:
    out = tmp_path / "report.html"
    r = run_cli("report", ckpt, "-o", out, *extra)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert out.is_file()
    return out.read_text(encoding="utf-8")


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.mark.slow  # plots or torch's own loader: seconds; CI runs it
def test_report_uninit_cnn_has_flags_names_and_plots(tmp_path: Path) -> None:
    page = _html(tmp_path, SAMPLES / "uninit_cnn.pt")
    assert page.startswith("<!DOCTYPE html>")
    for code in ("uninitialized", "huge", "nan", "all_zero", "duplicate"):
        assert code in page
    for name in ("conv1.weight", "conv2.weight", "fc.weight", "extra.copy2.weight"):
        assert name in page
    # flags come before the plots
    assert page.index('id="flags"') < page.index('id="depth"') < page.index('id="histograms"')
    images = _images(page)
    assert len(images) >= 2  # the depth plot and histograms
    assert all(img.startswith(PNG_SIGNATURE) and len(img) > 1000 for img in images)
    # self-contained: nothing is fetched at view time
    assert "http://" not in page and "https://" not in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(u.startswith(("data:", "#")) for u in links), [u[:40] for u in links]
    assert "<script" not in page.lower()


@pytest.mark.slow  # plots or torch's own loader: seconds; CI runs it
def test_report_lightning_shows_meta_and_tied(tmp_path: Path) -> None:
    page = _html(tmp_path, SAMPLES / "lightning.ckpt")
    meta = page[page.index('id="meta"') :]
    assert "epoch" in meta and "3" in meta
    assert "global_step" in meta and "120" in meta
    assert "hyper_parameters" in meta and "argparse.Namespace" in meta and "bf16-mixed" in meta
    assert "&lt;16 tensors&gt;" in meta  # the state_dict, summarized
    tied = _html(tmp_path, SAMPLES / "tied_lm.pt")
    assert "embed.weight" in tied and "lm_head.weight" in tied
    assert "tied: " in tied[tied.index('id="tied"') :]


def test_report_escapes_names_and_meta(tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "evil.pt"
    torch.save({EVIL: torch.randn(4, 4), "w\u202eb": torch.zeros(3, 3), "hparams": {EVIL: EVIL}}, ckpt)
    page = _html(tmp_path, ckpt)
    assert EVIL not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\u202e" not in page and "w\\u202eb" in page  # a bidi override is shown, not obeyed


@pytest.mark.slow  # plots or torch's own loader: seconds; CI runs it
def test_report_png_dir(tmp_path: Path) -> None:
    pngs = tmp_path / "plots"
    r = run_cli("report", SAMPLES / "uninit_cnn.pt", "-o", tmp_path / "r.html", "--png", pngs)
    assert r.exit_code == 0, r.stderr
    files = sorted(pngs.iterdir())
    assert (pngs / "depth.png") in files
    assert any(f.name.startswith("hist-") for f in files)
    for f in files:
        data = f.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, f
    # the same plots as the page
    assert len(files) == len(_images((tmp_path / "r.html").read_text(encoding="utf-8")))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]  # atomic writes leave nothing


def test_report_caps_histograms(tmp_path: Path) -> None:
    import torch

    tensors = {f"layer{i}.weight": torch.randn(4, 4) for i in range(30)}
    tensors["layer7.weight"] = torch.zeros(4, 4)  # flagged: always among the histograms shown
    page = _html(tmp_path, save_checkpoint(tmp_path / "many.safetensors", tensors), "--max-histograms", "5")
    hist = page[page.index('id="histograms"') : page.index('id="tensors"')]
    assert "histograms of 5 of 30 floating tensors are shown" in hist
    assert hist.count("<figure>") == 5
    assert "layer7.weight" in hist


def test_report_needs_an_output(tmp_path: Path) -> None:
    assert_one_error_line(run_cli("report", SAMPLES / "uninit_cnn.pt"))


def test_report_without_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out = tmp_path / "r.html"
    r = run_cli("report", SAMPLES / "uninit_cnn.pt", "-o", out)
    assert_one_error_line(r)
    assert "pip install 'pinit[report]'" in r.stderr
    assert not out.exists()


def test_help_imports_neither_torch_nor_matplotlib() -> None:
    probe = (
        "import sys\nfrom pinit.cli import main\nsys.argv = ['pinit', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n"
    )
    for args in (["--help"], ["report", "--help"], ["inspect", "--help"]):
        p = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert "LOADED []" in p.stdout, (args, p.stdout[-500:], p.stderr[-500:])


# --- the page in a real browser -------------------------------------------------------------------


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a headless browser: CI runs it, the fast loop does not
@pytest.mark.parametrize("sample", ["uninit_cnn.pt", "lightning.ckpt"])
def test_report_renders_in_headless_chromium(tmp_path: Path, sample: str) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium); the browser check did not run")
    import numpy as np
    from matplotlib.image import imread

    page = tmp_path / "report.html"
    assert run_cli("report", SAMPLES / sample, "-o", page).exit_code == 0
    url = page.resolve().as_uri()
    shot = tmp_path / "shot.png"
    p = _chromium(browser, f"--screenshot={shot}", "--window-size=1200,2000", url)
    assert shot.is_file(), p.stderr[-2000:]
    # every console message of the page (an error, a blocked resource) is logged as "CONSOLE"
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    pixels = imread(shot)
    assert pixels.ndim == 3 and pixels.shape[0] >= 1000
    rgb = pixels[..., :3].reshape(-1, 3)
    assert np.unique(rgb, axis=0).shape[0] > 50  # text and plots, not a blank page
    dark = (rgb.mean(axis=1) < 0.5).mean()
    assert 0.005 < dark < 0.5, dark
    # the DOM as the browser built it: the images are there and decoded from data: URLs only
    dom = _chromium(browser, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img\b[^>]*>", dom.stdout)
    assert imgs and all('src="data:image/png;base64,' in i for i in imgs)
    assert not [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.slow  # a headless browser: CI runs it, the fast loop does not
def test_browser_escaping_in_chromium(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium); the browser check did not run")
    import torch

    ckpt = tmp_path / "evil.pt"
    torch.save({EVIL: torch.randn(4, 4)}, ckpt)
    page = tmp_path / "evil.html"
    assert run_cli("report", ckpt, "-o", page).exit_code == 0
    dom = _chromium(browser, "--dump-dom", page.resolve().as_uri())
    assert "<script" not in dom.stdout.lower()  # the name stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    assert not [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]


# --- inspect --meta -------------------------------------------------------------------------------


def test_inspect_meta_json_lightning() -> None:
    r = run_cli("inspect", SAMPLES / "lightning.ckpt", "--meta", "--no-stats", "--format", "json")
    assert r.exit_code == 0, r.stderr
    meta = r.json()["meta"]
    assert meta["epoch"] == 3
    assert meta["global_step"] == 120
    assert meta["pytorch-lightning_version"] == "2.4.0"
    assert meta["state_dict"] == {"tensors": 16}
    groups = meta["optimizer_states"][0]["param_groups"]
    assert groups[0]["lr"] == 0.001 and groups[0]["betas"] == [0.9, 0.999]
    hp = meta["hyper_parameters"]
    assert hp["lr"] == 0.001
    assert hp["data_dir"] == {"object": "pathlib.PosixPath", "args": ["/", "data", "cifar10"]}
    assert hp["args"] == {"object": "argparse.Namespace", "state": {"batch_size": 32, "precision": "bf16-mixed"}}


def test_inspect_meta_text_lightning() -> None:
    r = run_cli("inspect", SAMPLES / "lightning.ckpt", "--meta", "--no-stats")
    assert r.exit_code == 0, r.stderr
    text = r.stdout[r.stdout.index("non-tensor content:") :]
    assert "\n  epoch: 3\n" in text
    assert "\n  global_step: 120\n" in text
    assert "\n  state_dict: <16 tensors>\n" in text
    assert "hyper_parameters:" in text and "args: <argparse.Namespace>" in text
    assert "precision: bf16-mixed" in text
    assert "lr: 0.001" in text


def test_inspect_without_meta_has_no_meta() -> None:
    r = run_cli("inspect", SAMPLES / "lightning.ckpt", "--no-stats", "--format", "json")
    assert "meta" not in r.json()
    assert "non-tensor content" not in run_cli("inspect", SAMPLES / "lightning.ckpt", "--no-stats").stdout


def test_inspect_meta_safetensors_metadata() -> None:
    r = run_cli("inspect", SAMPLES / "tiny_cnn.safetensors", "--meta", "--format", "json")
    assert r.json()["meta"] == {"source": "make_samples.py", "format": "pt"}
    text = run_cli("inspect", SAMPLES / "tiny_cnn.safetensors", "--meta").stdout
    assert "safetensors __metadata__:" in text and "source: make_samples.py" in text


def test_inspect_meta_plain_state_dict() -> None:
    r = run_cli("inspect", SAMPLES / "uninit_cnn.pt", "--meta", "--no-stats")
    assert "non-tensor content: none (the file holds tensors only)" in r.stdout
    assert run_cli("inspect", SAMPLES / "uninit_cnn.pt", "--meta", "-f", "json").json()["meta"] == {"tensors": 19}


def test_inspect_meta_is_bounded(tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "big.pt"
    big = "x" * 10_000_000
    torch.save(
        {
            "w": torch.randn(2, 2),
            "note": big,
            "many": list(range(10_000)),
            "deep": [[[[[[[[[[[[[[[[["bottom"]]]]]]]]]]]]]]]]],
            "bad\x1b[31m": "a\nb",
        },
        ckpt,
    )
    r = run_cli("inspect", ckpt, "--meta", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout) < 100_000
    meta = r.json()["meta"]
    assert len(meta["note"]) <= 1000 and "10,000,000 chars" in meta["note"]
    assert meta["many"][-1].endswith("more items not shown") and len(meta["many"]) <= 101
    assert "bottom" not in json.dumps(meta["deep"])
    assert meta["w"] == {"tensor": "w", "shape": [2, 2], "dtype": "float32"}
    text = run_cli("inspect", ckpt, "--meta", "--no-stats")
    assert text.exit_code == 0
    assert len(text.stdout) < 50_000
    assert "\x1b" not in text.stdout  # escaped for the terminal
    assert "bad\\x1b[31m: a\\nb" in text.stdout
    assert "shortened:" in text.stdout and "10,000,000 characters" in text.stdout


def test_inspect_meta_with_csv_is_usage_error() -> None:
    assert_one_error_line(run_cli("inspect", SAMPLES / "lightning.ckpt", "--meta", "--format", "csv"))


def test_inspect_meta_sharded() -> None:
    r = run_cli("inspect", SAMPLES / "sharded", "--meta", "--no-stats", "--format", "json")
    meta = r.json()["meta"]
    assert meta["index"] == {"total_size": 6648}
    assert set(meta["shards"]) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


if os.environ.get("CI") and _browser() is None:  # said once, at collection, where CI lacks the browser
    print("test_report: chromium is not installed; the headless-browser tests will be skipped", file=sys.stderr)


def test_inspect_meta_shared_references_stay_small(tmp_path: Path) -> None:
    import torch

    x: list[object] = ["leaf"]
    for _ in range(40):  # 2**40 paths through a few hundred bytes of pickle
        x = [x, x]
    ckpt = tmp_path / "dag.pt"
    torch.save({"w": torch.ones(2), "dag": x}, ckpt)
    r = run_cli("inspect", ckpt, "--meta", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout) < 20_000
    assert "the same object as dag.0" in r.stdout
    page = _html(tmp_path, ckpt)
    assert len(page) < 500_000


@pytest.mark.slow  # plots or torch's own loader: seconds; CI runs it
def test_report_refuses_to_overwrite_its_input_and_writes_nothing_on_failure(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    shutil.copy(SAMPLES / "tiny_cnn.pt", ckpt)
    before = ckpt.read_bytes()
    assert_one_error_line(run_cli("report", ckpt, "-o", ckpt))
    assert ckpt.read_bytes() == before
    pngs = tmp_path / "plots"
    assert_one_error_line(run_cli("report", ckpt, "-o", tmp_path / "missing" / "r.html", "--png", pngs))
    assert not pngs.exists()
