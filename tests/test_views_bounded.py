"""Strided, broadcast and self-overlapping views, and compressed zip members (SPEC section 7,
"Resources and files"): statistics, ``--values``, duplicate checks and the safetensors writer
stream them with bounded memory and in time linear in the bytes read; nothing materializes a
broadcast view, and a compressed member is inflated once.

Statistics are compared with torch on the materialized tensor, with the tolerance rule of
test_stats.py (mean and std within 1e-6 of the data's scale; min, max and counts exact).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import pinit.stats
import pinit.storage
from conftest import run_cli
from pinit import open_checkpoint
from pinit.stats import compute_stats, first_values, histogram
from pinit.storage import MemoryStorage, Storage, TensorEntry

HYP = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=["kernel", "numpy"])
def stats_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with pinit's C kernel and with its numpy fallback (in-process runs only)."""
    if request.param == "numpy":
        monkeypatch.setattr(pinit.stats, "_kernel", None)
    elif not pinit.stats.kernel_available():
        pytest.skip("pinit._kernel is not built")
    return str(request.param)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks and read windows, so that small tensors take every path of the gather
    (many blocks, windows over parts of a dimension, one read per element)."""
    monkeypatch.setattr(pinit.storage, "BLOCK_BYTES", 48)
    monkeypatch.setattr(pinit.storage, "WINDOW_BYTES", 40)
    monkeypatch.setattr(pinit.storage, "READ_CALL_BYTES", 8)


# ---------------------------------------------------------------- reference (as test_stats.py)


def reference(t: torch.Tensor) -> dict[str, Any]:
    a = t.detach().contiguous().double().reshape(-1).numpy()
    finite = a[np.isfinite(a)]
    ref: dict[str, Any] = {
        "zeros": int(np.count_nonzero(a == 0)),
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
    }
    if t.dtype.is_floating_point:
        tiny = torch.finfo(t.dtype).tiny
        ref.update(
            nan=int(np.count_nonzero(np.isnan(a))),
            inf=int(np.count_nonzero(np.isinf(a))),
            subnormal=int(np.count_nonzero((finite != 0) & (np.abs(finite) < tiny))),
            abs_max=float(np.abs(finite).max()) if finite.size else None,
        )
    if finite.size:
        ref.update(mean=float(finite.mean()), min=float(finite.min()), max=float(finite.max()))
    if finite.size >= 2 and t.dtype.is_floating_point:
        ref["std"] = float(finite.std(ddof=1))
    return ref


def assert_matches(got: dict[str, Any], ref: dict[str, Any], label: str) -> None:
    for key in ("zeros", "nan", "inf", "subnormal", "min", "max", "abs_max"):
        if key in ref:
            assert got[key] == ref[key], (label, key, got[key], ref[key])
    scale = max(abs(ref["mean"]) if ref["mean"] is not None else 0.0, ref["std"] or 0.0)
    for key in ("mean", "std"):
        if ref[key] is None:
            assert got[key] is None, (label, key, got[key])
        else:
            assert got[key] is not None and abs(got[key] - ref[key]) <= 1e-6 * scale, (label, key, got[key], ref[key])


def contiguous_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def views() -> dict[str, torch.Tensor]:
    """Non-contiguous views of every kind that torch.save keeps as views (storage + strides)."""
    x = torch.randn(40, 30, generator=gen(1))
    specials = torch.tensor([math.nan, 1.5, 1e-40, 0.0, -math.inf, -2.0])
    return {
        "expand": torch.randn(3, 1, generator=gen(2)).expand(3, 1000),
        "expand_new_leading_dims": torch.randn(5, generator=gen(3)).expand(4, 7, 5),
        "expand_real_leading_dim": torch.randn(4, 1, 3, generator=gen(4)).expand(4, 5, 3),
        "expand_scalar": torch.tensor(-0.75).expand(6, 4),
        "expand_one_element": torch.tensor([2.5]).expand(1, 1),
        "expand_to_one_row": torch.tensor([2.5]).expand(1, 9),
        "expand_specials": specials.view(6, 1).expand(6, 7),
        "expand_of_step": x[:1, ::2].expand(5, 15),
        "transposed": x.t(),
        "step": x[:, ::3],
        "slice": x[1:, 2:5],
        "column": x[:, 7],
        "permuted": torch.randn(4, 5, 6, generator=gen(5)).permute(2, 0, 1),
        "unfold": torch.randn(300, generator=gen(6)).unfold(0, 20, 3),
        "bf16_transposed": x.bfloat16().t()[::2],
        "f16_step": x.half()[::3, 1::2],
        "f64_slice": x.double()[5:9, ::7],
        "int_transposed": torch.arange(35).view(5, 7).t(),
        "int_expand": torch.arange(-3, 4).expand(9, 7),
        "bool_step": (x > 0)[:, ::4],
        "empty_transposed": torch.zeros(0, 3).t(),
    }


@pytest.fixture(scope="module")
def views_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    ts = views()
    path = tmp_path_factory.mktemp("views") / "views.pt"
    torch.save(ts, path)
    return path, ts


# ---------------------------------------------------------------- the 32768 x 32768 broadcast

MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run([sys.executable, "-m", "pinit", *sys.argv[1:]], capture_output=True, text=True, timeout=300)
print(json.dumps({"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "seconds": time.monotonic() - t,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measured(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``python -m pinit ARGS`` in a fresh process, with its wall time and peak RSS (measured by a
    parent of its own, so that no other child of pytest counts)."""
    p = subprocess.run(
        [sys.executable, "-c", MEASURE, *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert p.returncode == 0, p.stderr
    result: dict[str, Any] = json.loads(p.stdout)
    return result


@pytest.fixture(scope="module")
def broadcast_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("broadcast") / "broadcast.pt"
    torch.save({"w": torch.zeros(1).expand(32768, 32768)}, path)
    assert path.stat().st_size < 4096  # a legitimate 1.5 KB file
    return path


N = 32768 * 32768


@pytest.mark.parametrize("kernel", ["kernel", "numpy"])
def test_broadcast_32768_squared_inspect_is_fast_and_small(broadcast_file: Path, kernel: str) -> None:
    env = {"PINIT_NO_KERNEL": "1"} if kernel == "numpy" else {}
    r = measured("inspect", broadcast_file, "--format", "json", env=env)
    assert r["code"] == 0, r["stderr"]
    assert r["seconds"] < 20, r["seconds"]  # about half a second; the materializing reader took 25 s
    assert r["maxrss_kib"] < 300 * 1024, r["maxrss_kib"]  # 4.2 GB before
    (t,) = json.loads(r["stdout"])["tensors"]
    assert t["numel"] == N and t["shape"] == [32768, 32768]
    s = t["stats"]
    assert (s["mean"], s["std"], s["min"], s["max"], s["abs_max"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert (s["zeros"], s["nan"], s["inf"], s["subnormal"]) == (N, 0, 0, 0)
    assert [f["code"] for f in t["flags"]] == ["all_zero"]


def test_broadcast_32768_squared_values_and_check(broadcast_file: Path) -> None:
    r = measured("inspect", broadcast_file, "--values", "5", "--hist", "--format", "json")
    assert r["code"] == 0, r["stderr"]
    assert r["seconds"] < 20 and r["maxrss_kib"] < 300 * 1024, (r["seconds"], r["maxrss_kib"])
    (t,) = json.loads(r["stdout"])["tensors"]
    assert t["values"] == [0.0] * 5
    r = measured("check", broadcast_file, "--format", "json")
    assert r["code"] == 0, r["stderr"]  # a warning only
    assert r["seconds"] < 20 and r["maxrss_kib"] < 300 * 1024, (r["seconds"], r["maxrss_kib"])
    (f,) = json.loads(r["stdout"])["files"]
    assert [(x["code"], x["severity"]) for x in f["findings"]] == [("all_zero", "warning")]
    assert str(N) in f["findings"][0]["message"]


def test_broadcast_iter_bytes_is_bounded_in_memory(broadcast_file: Path) -> None:
    """Row-major bytes (for --values, duplicates and the safetensors writer) of the 4 GiB view:
    chunk by chunk, a bounded amount allocated whatever the tensor's size."""
    with open_checkpoint(broadcast_file) as ckpt:
        (e,) = ckpt.tensors
        tracemalloc.start()
        try:
            seen = 0
            for chunk in e.iter_bytes():
                assert chunk.size == pinit.storage.CHUNK_BYTES
                seen += chunk.size
                if seen >= 256 << 20:
                    break
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 64 << 20, peak


# ---------------------------------------------------------------- statistics of views


def test_view_stats_match_torch_through_the_cli(
    views_file: tuple[Path, dict[str, torch.Tensor]], stats_path: str
) -> None:
    path, ts = views_file
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = {t["name"]: t for t in r.json()["tensors"]}
    assert set(doc) == set(ts)
    for name, t in ts.items():
        got = doc[name]
        assert got["numel"] == t.numel(), name
        if t.numel() == 0:
            continue
        assert_matches(got["stats"], reference(t), name)


def test_view_stats_with_tiny_blocks_and_chunks(
    views_file: tuple[Path, dict[str, torch.Tensor]], stats_path: str, small_blocks: None
) -> None:
    path, ts = views_file
    with open_checkpoint(path) as ckpt:
        for e in ckpt.tensors:
            t = ts[e.name]
            for chunk_bytes in (1, 12, 4096):
                st = compute_stats(e, chunk_bytes=chunk_bytes)
                assert st is not None and st.numel == t.numel()
                if t.numel():
                    assert_matches(st.as_json(), reference(t), f"{e.name} chunk {chunk_bytes}")


def test_histogram_of_views_counts_every_element(views_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, ts = views_file
    with open_checkpoint(path) as ckpt:
        for e in ckpt.tensors:
            t = ts[e.name]
            if not t.dtype.is_floating_point or t.numel() == 0:
                continue
            st = compute_stats(e)
            assert st is not None
            hist = histogram(e, st)
            assert hist is not None
            a = t.contiguous().double().numpy().reshape(-1)
            assert sum(hist) == int(np.isfinite(a).sum()), e.name
            assert hist == histogram(entry_of(t.contiguous()), st), e.name  # as if materialized


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_broadcast_std_is_exact(dtype: torch.dtype, stats_path: str) -> None:
    """Repetition is accounted for exactly: the unbiased std of k copies of n values is
    sqrt(k*M2 / (k*n - 1)), not the std of the n values (sqrt(M2 / (n - 1)), 22% more here)."""
    base = torch.tensor([[1.0], [2.0], [4.0]], dtype=dtype)
    t = base.expand(3, 1000)
    st = compute_stats(entry_of(t))
    assert st is not None
    m2 = float(((base.double() - base.double().mean()) ** 2).sum())
    rel = 1e-12 if dtype == torch.float64 or stats_path == "kernel" else 1e-6  # float32 sums: 1e-6
    assert st.std == pytest.approx(math.sqrt(1000 * m2 / (3000 - 1)), rel=rel)
    assert st.std == pytest.approx(float(t.double().std()), rel=rel)
    one = compute_stats(entry_of(torch.tensor([3.0], dtype=dtype).expand(5, 1)))
    assert one is not None and (one.numel, one.mean, one.std, one.zeros) == (5, 3.0, 0.0, 0)
    single = compute_stats(entry_of(torch.tensor([3.0], dtype=dtype).expand(1, 1)))
    assert single is not None and (single.numel, single.mean, single.std) == (1, 3.0, None)
    zero = compute_stats(entry_of(torch.zeros(1, dtype=dtype).expand(0, 4)))
    assert zero is not None and (zero.numel, zero.mean, zero.std, zero.zeros) == (0, None, None, 0)


def entry_of(t: torch.Tensor, storage: Storage | None = None) -> TensorEntry:
    """A TensorEntry for the view ``t`` over its storage (held in memory unless given)."""
    dtype = str(t.dtype).removeprefix("torch.")
    if storage is None:
        storage = MemoryStorage(storage_bytes(t), key=("mem", id(t)))
    return TensorEntry("t", dtype, tuple(t.shape), storage, t.storage_offset(), tuple(t.stride()))


class CountingStorage(Storage):
    """Bytes in memory, read like a file (no zero-copy view), counting what is read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.nbytes = data.size
        self.key = ("counting", id(self))
        self.read = 0
        self.calls = 0
        self.largest = 0

    def read_into(self, start: int, out: np.ndarray) -> None:
        assert start >= 0 and start + out.size <= self.nbytes
        out[:] = self.data[start : start + out.size]
        self.read += out.size
        self.calls += 1
        self.largest = max(self.largest, out.size)


def storage_bytes(t: torch.Tensor) -> np.ndarray:
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().copy()


def counting_entry(t: torch.Tensor) -> tuple[TensorEntry, CountingStorage]:
    s = CountingStorage(storage_bytes(t))
    return entry_of(t, s), s


def strided_views(draw: Any) -> torch.Tensor:
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    strides = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    offset = draw(st.integers(0, 5))
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides) if n)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32]))
    seed = draw(st.integers(0, 2**31))
    base = (torch.randn(offset + span, generator=gen(seed)) * 3).round(decimals=draw(st.sampled_from([0, 3])))
    if draw(st.booleans()) and base.numel() > 2:
        base[1] = math.nan if dtype.is_floating_point else 0
    return base.to(dtype).as_strided(shape, strides, offset)


@HYP
@given(data=st.data(), chunk_bytes=st.sampled_from([1, 10, 64, 1 << 20]), tiny=st.booleans())
def test_any_view_stats_values_and_bytes_match_torch(
    data: st.DataObject, chunk_bytes: int, tiny: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any shape, strides (0 included, overlapping included) and offset: statistics equal
    torch's of the materialized tensor (kernel and numpy), the row-major bytes equal
    ``contiguous()``'s, chunks have the promised size, and ``first_values`` is row-major."""
    t = strided_views(data.draw)
    with monkeypatch.context() as m:
        if tiny:
            m.setattr(pinit.storage, "BLOCK_BYTES", 24)
            m.setattr(pinit.storage, "WINDOW_BYTES", 20)
            m.setattr(pinit.storage, "READ_CALL_BYTES", 4)
        e, _ = counting_entry(t)
        chunks = [c.tobytes() for c in e.iter_bytes(chunk_bytes)]
        step = max(1, chunk_bytes // t.element_size()) * t.element_size()
        assert all(len(c) == step for c in chunks[:-1]) and all(0 < len(c) <= step for c in chunks)
        assert b"".join(chunks) == contiguous_bytes(t)
        assert e.read_bytes(7).tobytes() == contiguous_bytes(t)[:7]
        vals = first_values(e, 5)
        want = t.contiguous().reshape(-1)[:5].double().tolist()
        assert [("nan" if isinstance(v, float) and math.isnan(v) else v) for v in want] == vals
        for kernel in (pinit.stats._kernel, None):
            m.setattr(pinit.stats, "_kernel", kernel)
            st_ = compute_stats(e, chunk_bytes=chunk_bytes)
            assert st_ is not None and st_.numel == t.numel()
            if t.numel():
                assert_matches(st_.as_json(), reference(t), f"{tuple(t.shape)} {t.stride()} {t.dtype}")


# ---------------------------------------------------------------- reading only what is needed


def test_first_values_reads_only_what_they_need() -> None:
    x = torch.randn(1000, 1000, generator=gen(7))
    for t in (x, x.t(), x[:, ::3], x[::2, 5:], torch.randn(1000, 1, generator=gen(8)).expand(1000, 1000)):
        e, s = counting_entry(t)
        assert first_values(e, 5) == t.reshape(-1)[:5].double().tolist()
        # a few elements, or a window over them where that is cheaper than a call for each
        assert s.read <= 5 * (4 + pinit.storage.READ_CALL_BYTES), (tuple(t.shape), t.stride(), s.read)


def test_stats_of_a_transposed_view_read_storage_once_in_large_reads() -> None:
    t = torch.randn(512, 768, generator=gen(9)).t()
    e, s = counting_entry(t)
    compute_stats(e)
    assert s.read == t.numel() * 4 and s.largest >= 1 << 20  # storage order: one contiguous pass


@pytest.mark.parametrize("call_bytes", [0, 32 << 10])
def test_strided_row_major_reads_stay_within_windows(monkeypatch: pytest.MonkeyPatch, call_bytes: int) -> None:
    """A transposed 2048x2048 view in row-major order with 1 MiB blocks and 256 KiB windows:
    memory of a block and a window, no read larger than a window; with reads costing nothing
    (READ_CALL_BYTES 0) no gap is read, otherwise gaps are read only to save calls."""
    monkeypatch.setattr(pinit.storage, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(pinit.storage, "WINDOW_BYTES", 256 << 10)
    monkeypatch.setattr(pinit.storage, "READ_CALL_BYTES", call_bytes)
    t = torch.randn(2048, 2048, generator=gen(10)).t()
    e, s = counting_entry(t)
    h = hashlib.sha256()
    tracemalloc.start()
    try:
        chunks = e.iter_bytes()
        for c in itertools.islice(chunks, 3):  # three blocks: allocations are made by the first
            h.update(c)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()  # (it slows every allocation down: the rest runs without it)
    for c in chunks:
        h.update(c)
    assert h.digest() == hashlib.sha256(contiguous_bytes(t)).digest()
    assert s.largest <= 256 << 10
    if call_bytes == 0:
        assert s.read == t.numel() * 4
    else:  # 128-element runs, 32 storage rows a window: 16 times the bytes, 1/32 of the calls
        assert s.read <= 17 * t.numel() * 4 and s.calls <= t.numel() // 128 // 16
    assert peak < 4 << 20, peak


def test_hostile_self_overlapping_view_is_read_once(tmp_path: Path) -> None:
    """2**40 elements over a storage of 41 (every stride 1): the statistics come from the 41
    values weighted by how often the view visits each (binomial coefficients), in no time."""
    base = torch.randn(41, generator=gen(11))
    path = tmp_path / "overlap.pt"
    torch.save({"w": base.as_strided((2,) * 40, (1,) * 40)}, path)
    start = time.monotonic()
    r = run_cli("inspect", path, "--format", "json", "--values", "3")
    assert r.exit_code == 0, r.stderr
    assert time.monotonic() - start < 10
    (t,) = r.json()["tensors"]
    w = np.array([math.comb(40, i) for i in range(41)], dtype=np.float64)
    b = base.double().numpy()
    mean = float((w * b).sum() / 2**40)
    std = math.sqrt(float((w * (b - mean) ** 2).sum()) / (2**40 - 1))
    s = t["stats"]
    assert t["numel"] == 2**40
    assert abs(s["mean"] - mean) <= 1e-6 * std and abs(s["std"] - std) <= 1e-6 * std
    assert (s["min"], s["max"]) == (float(base.min()), float(base.max()))
    assert t["values"] == base[[0, 1, 1]].double().tolist()  # indices (0, ..., 0), (0, ..., 1), (0, ..., 1, 0)


# ---------------------------------------------------------------- --values, duplicates, writer


def test_values_are_row_major_for_views(views_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, ts = views_file
    r = run_cli("inspect", path, "--format", "json", "--values", "7")
    assert r.exit_code == 0, r.stderr
    for got in r.json()["tensors"]:
        t = ts[got["name"]]
        flat = t.contiguous().reshape(-1)[:7]
        if t.dtype == torch.bool:
            want: list[Any] = [bool(v) for v in flat.tolist()]
        elif t.dtype.is_floating_point:
            want = [
                {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan" if math.isnan(v) else v)
                for v in flat.double().tolist()
            ]
        else:
            want = flat.tolist()
        assert got["values"] == want, got["name"]


def test_duplicate_views_found_by_comparing_what_they_reach(tmp_path: Path) -> None:
    x = torch.randn(300, 200, generator=gen(12))
    row = torch.randn(1, 5000, generator=gen(13))
    path = tmp_path / "dups.pt"
    torch.save(
        {
            "a": x.t(),
            "b": x.clone().t(),  # same bytes, separate storage
            "c": x.t().contiguous(),  # same bytes again, another layout
            "d": row.expand(4000, 5000),
            "e": row.clone().expand(4000, 5000),
            "f": (row + 1).expand(4000, 5000),
        },
        path,
    )
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0, r.stderr
    flags = {t["name"]: [f["code"] for f in t["flags"]] for t in r.json()["tensors"]}
    assert all("duplicate" in flags[n] for n in "abcde"), flags
    assert "duplicate" not in flags["f"], flags


@pytest.mark.parametrize("tiny", [False, True])
def test_safetensors_output_of_unselected_views_equals_contiguous(
    views_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, tiny: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ts = views_file
    src = tmp_path / "src.pt"
    torch.save({**ts, "other": torch.randn(3, 3, generator=gen(14))}, src)
    if tiny:
        monkeypatch.setattr(pinit.storage, "BLOCK_BYTES", 48)
        monkeypatch.setattr(pinit.storage, "WINDOW_BYTES", 40)
    out = tmp_path / "out.safetensors"
    r = run_cli("reinit", src, "--match", "^other$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stderr
    got = load_file(out)
    assert torch.equal(got["other"], torch.zeros(3, 3))
    for name, t in ts.items():
        assert tuple(got[name].shape) == tuple(t.shape), name
        assert contiguous_bytes(got[name]) == contiguous_bytes(t), name


def test_safetensors_output_of_a_large_broadcast(tmp_path: Path) -> None:
    """A 64 MiB broadcast (one 32 KiB row) written through the streaming writer."""
    src = tmp_path / "src.pt"
    row = torch.randn(1, 8192, generator=gen(15))
    torch.save({"w": row.expand(2048, 8192), "other": torch.ones(2, 2)}, src)
    out = tmp_path / "out.safetensors"
    r = run_cli("reinit", src, "--match", "^other$", "--scheme", "zeros", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert torch.equal(load_file(out)["w"], row.expand(2048, 8192).contiguous())


# ---------------------------------------------------------------- compressed zip members


def deflate(src: Path, dst: Path) -> Path:
    """``src`` (a torch zip) rewritten by Python's zipfile with every member DEFLATE-compressed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return dst


@pytest.fixture(scope="module")
def deflated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("deflated")
    g = gen(16)
    ts = {f"layer.{i}.weight": torch.randn(64, 32, generator=g) for i in range(64)}
    # 16 MiB of few distinct values: compressed 6:1, so a reader that re-inflates from the start
    # for each 1 MiB chunk does 8 times the work of one pass
    ts["big"] = torch.randint(-3, 4, (2048, 2048), generator=g).float() / 4
    ts["big_t"] = torch.randn(256, 512, generator=g).t()
    flat = torch.randn(3000, generator=g)
    ts.update({"part_small": flat[:10].view(2, 5), "part_large": flat[100:].view(29, 100)})  # views of one storage
    stored = d / "stored.pt"
    torch.save(ts, stored)
    return stored, deflate(stored, d / "deflated.pt"), ts


def test_deflated_members_are_inflated_once(
    deflated: tuple[Path, Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stored, path, ts = deflated
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
        data_bytes = sum(i.file_size for i in z.infolist() if "/data/" in i.filename)
    inflated = [0]
    real = zlib.decompressobj

    class Counting:
        """A zlib decompressor that counts its output (whoever inflates: zipfile or pinit)."""

        def __init__(self, *args: Any) -> None:
            self._d = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._d.decompress(data, max_length)
            inflated[0] += len(out)
            return out

        def flush(self, *args: Any) -> bytes:
            out = self._d.flush(*args)
            inflated[0] += len(out)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._d, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    start = time.monotonic()
    r = run_cli("inspect", path, "--format", "json")
    seconds = time.monotonic() - start
    assert r.exit_code == 0, r.stderr
    assert seconds < 10, seconds  # a reopen per chunk took minutes
    assert inflated[0] >= data_bytes  # the counter sees the inflation
    # linear, not quadratic: each data member inflated at most twice (a reader may check a
    # member's inflated size when it opens the file), the pickle and small members besides
    assert inflated[0] <= 2 * data_bytes + (1 << 20), (inflated[0], data_bytes)
    want = {t["name"]: t["stats"] for t in run_cli("inspect", stored, "--format", "json").json()["tensors"]}
    got = {t["name"]: t["stats"] for t in r.json()["tensors"]}
    assert got == want
    for name, t in ts.items():
        assert_matches(got[name], reference(t), name)


def test_deflated_values_hist_and_check(deflated: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    stored, path, ts = deflated
    start = time.monotonic()
    r = run_cli("inspect", path, "--format", "json", "--values", "4", "--hist")
    assert r.exit_code == 0, r.stderr
    assert time.monotonic() - start < 20
    ref = run_cli("inspect", stored, "--format", "json", "--values", "4", "--hist").json()["tensors"]
    assert r.json()["tensors"] == ref
    for t in r.json()["tensors"]:
        assert t["values"] == ts[t["name"]].reshape(-1)[:4].double().tolist()
    c = run_cli("check", path)
    assert c.exit_code == 0, c.stdout + c.stderr


def test_stream_storage_skips_forward_and_reopens_only_backwards(
    deflated: tuple[Path, Path, dict[str, torch.Tensor]],
) -> None:
    _, path, ts = deflated
    with open_checkpoint(path) as ckpt:
        e = next(e for e in ckpt.tensors if e.name == "big")
        s = e.storage
        assert isinstance(s, pinit.storage.StreamStorage)
        buf = np.empty(4096, dtype=np.uint8)
        want = contiguous_bytes(ts["big"])
        s.read_into(8192, buf)
        s.read_into(1 << 20, buf)  # forward: goes on, inflating the gap
        assert buf.tobytes() == want[1 << 20 : (1 << 20) + 4096]
        assert s.inflated == (1 << 20) + 4096
        small = pinit.storage.STREAM_CACHE_MEMBER
        pinit.storage.STREAM_CACHE_MEMBER = 1 << 20
        try:
            s.read_into(0, buf)  # backwards, a member over the cache limit: reopened
        finally:
            pinit.storage.STREAM_CACHE_MEMBER = small
        assert buf.tobytes() == want[:4096] and s.inflated == (1 << 20) + 8192
        s.read_into(4096, buf)
        assert buf.tobytes() == want[4096:8192] and s.inflated == (1 << 20) + 12288
        s.read_into(0, buf)  # backwards again, under the limit: inflated whole, kept
        assert s.inflated == (1 << 20) + 12288 + len(want)
        for at in (len(want) - 4096, 0, 1 << 22):
            s.read_into(at, buf)
            assert buf.tobytes() == want[at : at + 4096]
        assert s.inflated == (1 << 20) + 12288 + len(want)
        s.close()
