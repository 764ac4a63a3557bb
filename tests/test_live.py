"""Live models (issue #13): ``inspect --model``, ``pinit init``, ``check --model``.

The models live in tests/live_models.py; pinit imports them through the CLI, by file path or by
module name (tests/ is on sys.path). Expected values come from torch itself: the state dicts of
models built here, ``load_state_dict(strict=True)``, and the seeding rule re-derived with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file

import live_models
from conftest import ROOT, SAMPLES, assert_one_error_line, run_cli, run_subprocess

MODELS = ROOT / "tests" / "live_models.py"


def m(name: str) -> str:
    return f"{MODELS}:{name}"


def seed_of(seed: int, name: str) -> int:
    """The documented derivation, written out again: sha256(f"{seed}:{name}"), first 8 bytes LE, 63 bits."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def rederive_default(factory: type[torch.nn.Module], seed: int) -> torch.nn.Module:
    """``--scheme default --seed SEED`` by hand: built under manual_seed(seed), then every module's
    reset_parameters() in named_modules() order under manual_seed(seed_of(seed, module name))."""
    torch.manual_seed(seed)
    model = factory()
    for name, mod in model.named_modules():
        if callable(getattr(mod, "reset_parameters", None)):
            torch.manual_seed(seed_of(seed, name))
            mod.reset_parameters()
    return model


# --------------------------------------------------------------------------- inspect --model


def test_inspect_lists_state_dict_order_with_true_requires_grad_and_grad() -> None:
    r = run_cli("inspect", "--model", m("Net"), "--arg", "grad=True", "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["format"] == "model"
    ref = live_models.Net(grad=True)
    state = ref.state_dict()
    names = [t["name"] for t in doc["tensors"]]
    assert names[: len(state)] == list(state)  # state_dict order, tied names included
    assert names[len(state) :] == ["scratch"]  # then the non-persistent buffer
    real = {**dict(ref.named_parameters(remove_duplicate=False)), **dict(ref.named_buffers())}
    for t in doc["tensors"]:
        assert t["requires_grad"] is real[t["name"]].requires_grad, t["name"]
        assert list(t["shape"]) == list(real[t["name"]].shape)
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["frozen"]["requires_grad"] is False and by["fc.weight"]["requires_grad"] is True
    assert by["fc.weight"]["grad"]["mean"] == pytest.approx(0.5)
    assert by["fc.weight"]["grad"]["std"] == pytest.approx(0.0)
    assert by["fc.bias"]["grad"] is None
    assert by["head.weight"]["tied_with"] == ["embed.weight"]
    assert ["embed.weight", "head.weight"] in doc["summary"]["tied"]
    assert by["frozen"]["stats"]["mean"] == pytest.approx(1.0)
    assert by["norm.running_var"]["stats"]["min"] == 1.0


def test_file_reports_have_no_grad_key(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    doc = run_cli("inspect", path, "--format", "json").json()
    assert "grad" not in doc["tensors"][0]


def test_forgotten_torch_empty_is_flagged() -> None:
    # 64 MB: served by fresh (zeroed) pages, so the never-written weight reads as all zeros
    r = run_cli("inspect", "--model", m("Forgetful"), "--arg", "n=4096", "--format", "json")
    assert r.exit_code == 0, r.stderr
    (t,) = r.json()["tensors"]
    assert {f["code"] for f in t["flags"]} & {"all_zero", "uninitialized", "huge", "nan", "inf"}, t["flags"]


def test_garbage_memory_pattern_is_flagged_uninitialized() -> None:
    doc = run_cli("inspect", "--model", m("Garbage"), "--format", "json").json()
    assert "uninitialized" in {f["code"] for f in doc["tensors"][0]["flags"]}


def test_module_name_spec_and_dotted_callable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "tests")
    doc = run_cli("inspect", "--model", "live_models:Factories.small", "--no-stats", "--format", "json").json()
    assert {t["name"]: t["shape"] for t in doc["tensors"]}["fc.weight"] == [4, 4]


def test_args_are_python_literals() -> None:
    doc = run_cli(
        "inspect", "--model", m("make_net"), "--arg", "hidden=3", "--arg", "tie=False", "--no-stats", "-f", "json"
    ).json()
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["fc.weight"]["shape"] == [3, 3]
    assert by["head.weight"]["tied_with"] == []


def test_sample_walkthrough_model_lists_the_custom_layer() -> None:
    # what torch.empty returns varies (zeros, garbage, a freed tensor's values): the flags of the
    # forgotten layer are tested with Forgetful and Garbage; here the walkthrough's model works
    doc = run_cli("inspect", "--model", f"{SAMPLES / 'models.py'}:ScaledNet", "-f", "json").json()
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["conv.weight"]["flags"] == []
    assert by["scaled.weight"]["shape"] == [64, 128] and by["scaled.weight"]["requires_grad"] is True


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (m("broken"), "cannot build model '" + str(MODELS) + ":broken': ValueError: the config says no"),
        (m("not_a_module"), "returned dict, not a torch.nn.Module"),
        (m("nope"), "has no attribute 'nope'"),
        ("no_such_module_xyz:Net", "ModuleNotFoundError"),
        (f"{ROOT / 'tests' / 'missing.py'}:Net", "no such file"),
        ("Net", "MODULE:CALLABLE"),
    ],
)
def test_user_code_errors_are_one_error_line(spec: str, needle: str) -> None:
    r = run_cli("inspect", "--model", spec)
    assert_one_error_line(r)
    assert needle in r.stderr


def test_syntax_error_names_the_callable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    r = run_cli("check", SAMPLES / "tiny_cnn.safetensors", "--model", f"{bad}:f")
    assert_one_error_line(r)
    assert f"'{bad}:f'" in r.stderr and "SyntaxError" in r.stderr


def test_debug_shows_the_users_traceback() -> None:
    r = run_subprocess("inspect", "--model", m("broken"), "--debug")
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and "the config says no" in r.stderr and "live_models.py" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot build model")


def test_file_import_restores_sys_path(tmp_path: Path) -> None:
    (tmp_path / "helper_mod_for_pinit.py").write_text("N = 5\n")
    (tmp_path / "model_file.py").write_text(
        "import torch, helper_mod_for_pinit\ndef build():\n    return torch.nn.Linear(helper_mod_for_pinit.N, 2)\n"
    )
    import sys

    before = list(sys.path)
    doc = run_cli("inspect", "--model", f"{tmp_path / 'model_file.py'}:build", "--no-stats", "-f", "json").json()
    assert doc["tensors"][0]["shape"] == [2, 5]
    assert sys.path == before


def test_user_prints_go_to_stderr(tmp_path: Path) -> None:
    r = run_cli("inspect", "--model", m("Chatty"), "--format", "json")
    assert r.exit_code == 0
    assert [t["name"] for t in r.json()["tensors"]] == ["fc.weight", "fc.bias"]
    assert "building Chatty" in r.stderr
    r = run_cli("init", m("Chatty"), "--out", tmp_path / "c.pt", "--format", "json")
    assert r.json()["out"] == str(tmp_path / "c.pt")


def test_path_and_model_are_exclusive() -> None:
    assert_one_error_line(run_cli("inspect", SAMPLES / "tiny_cnn.safetensors", "--model", m("Net")))
    assert_one_error_line(run_cli("inspect"))
    assert_one_error_line(run_cli("inspect", SAMPLES / "tiny_cnn.safetensors", "--arg", "a=1"))


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_init_default_equals_the_documented_derivation(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"init{suffix}"
    r = run_cli("init", m("WithCustom"), "--out", out, "--seed", "0", "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["seed"] == 0 and doc["scheme"] == "default"
    assert "plain" in doc["modules_without_reset"]
    expected = rederive_default(live_models.WithCustom, 0).state_dict()
    got = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert list(got) == list(expected) or set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    fresh = live_models.WithCustom()
    fresh.load_state_dict(got, strict=True)  # loads with strict=True


def test_init_per_module_seed_is_independent_of_other_modules(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert run_cli("init", m("WithCustom"), "--out", a, "--seed", "7").exit_code == 0
    assert run_cli("init", m("WithCustom"), "--out", b, "--seed", "7").exit_code == 0
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # reproducible
    c = tmp_path / "c.pt"
    assert run_cli("init", m("WithCustom"), "--out", c, "--seed", "8").exit_code == 0
    assert not torch.equal(torch.load(c, weights_only=True)["custom.weight"], sa["custom.weight"])
    # one module's values depend on its own name only: re-derive 'custom' alone with plain torch
    torch.manual_seed(seed_of(7, "custom"))
    alone = live_models.Custom(6)
    torch.manual_seed(seed_of(7, "custom"))
    alone.reset_parameters()
    assert torch.equal(alone.weight.detach(), sa["custom.weight"])


def test_init_tied_safetensors_follows_save_model(tmp_path: Path) -> None:
    out = tmp_path / "tied.safetensors"
    r = run_cli("init", m("Net"), "--out", out, "--seed", "1", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["aliases"] == {"head.weight": "embed.weight"}
    with safe_open(str(out), "pt") as f:
        names = list(f.keys())
        assert "head.weight" not in names
        assert f.metadata()["head.weight"] == "embed.weight"
        assert json.loads(f.metadata()["pinit"])["seed"] == 1
    model = live_models.Net()
    missing, unexpected = load_model(model, str(out), strict=True)
    assert not missing and not unexpected
    assert model.head.weight is model.embed.weight
    expected = rederive_default(live_models.Net, 1).state_dict()
    assert torch.equal(model.embed.weight.detach(), expected["embed.weight"])


def test_init_tied_pt_keeps_ties_shared(tmp_path: Path) -> None:
    out = tmp_path / "tied.pt"
    assert run_cli("init", m("Net"), "--out", out, "--seed", "1").exit_code == 0
    sd = torch.load(out, weights_only=True)
    assert sd["head.weight"].untyped_storage().data_ptr() == sd["embed.weight"].untyped_storage().data_ptr()
    live_models.Net().load_state_dict(sd, strict=True)


def test_init_named_scheme_matches_reinit_derivation(tmp_path: Path) -> None:
    out = tmp_path / "k.pt"
    r = run_cli(
        "init", m("WithCustom"), "--out", out, "--scheme", "kaiming_normal", "--match", r"weight$",
        "--exclude", "norm", "--seed", "3", "-f", "json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert "custom.bias" in doc["not_covered"]
    sd = torch.load(out, weights_only=True)
    want = torch.empty(6, 6)
    torch.nn.init.kaiming_normal_(want, generator=torch.Generator().manual_seed(seed_of(3, "custom.weight")))
    assert torch.equal(sd["custom.weight"], want)
    live_models.WithCustom().load_state_dict(sd, strict=True)


def test_init_plan(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('seed = 5\n[[rule]]\nmatch = "custom.weight"\nscheme = "orthogonal"\n')
    out = tmp_path / "p.safetensors"
    r = run_cli("init", m("WithCustom"), "--out", out, "--plan", plan, "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["seed"] == 5
    w = load_file(str(out))["custom.weight"]
    assert torch.allclose(w @ w.T, torch.eye(6), atol=1e-5)


def test_init_refuses_an_uninitialized_result(tmp_path: Path) -> None:
    out = tmp_path / "g.pt"
    r = run_cli("init", m("Garbage"), "--out", out, "--seed", "0")
    assert_one_error_line(r)
    assert "weight" in r.stderr and "--allow-uninitialized" in r.stderr
    assert not out.exists()
    r = run_cli("init", m("Garbage"), "--out", out, "--seed", "0", "--allow-uninitialized")
    assert r.exit_code == 0, r.stderr
    assert out.exists() and "uninitialized" in r.stderr


def test_init_sample_walkthrough(tmp_path: Path) -> None:
    models = SAMPLES / "models.py"
    out = tmp_path / "fixed.safetensors"
    r = run_cli("init", f"{models}:FixedNet", "--out", out, "--seed", "0")
    assert r.exit_code == 0, r.stderr
    r = run_cli("check", out, "--model", f"{models}:FixedNet", "--format", "json")
    assert r.exit_code == 0, r.stdout
    inspected = run_cli("inspect", out, "-f", "json").json()
    assert inspected["summary"]["errors"] == 0


def test_init_user_error_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.pt"
    r = run_cli("init", m("broken"), "--out", out)
    assert_one_error_line(r)
    assert "cannot build model" in r.stderr and not out.exists()
    assert os.listdir(tmp_path) == []


def test_init_draws_and_prints_a_seed(tmp_path: Path) -> None:
    out = tmp_path / "d.pt"
    r = run_cli("init", m("Net"), "--out", out, "-f", "json")
    assert r.exit_code == 0
    seed = r.json()["seed"]
    assert f"--seed {seed}" in r.stderr
    expected = rederive_default(live_models.Net, seed).state_dict()
    got = torch.load(out, weights_only=True)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


# --------------------------------------------------------------------------- check --model


@pytest.fixture
def fitting(tmp_path: Path) -> Path:
    path = tmp_path / "fit.pt"
    torch.save(live_models.Net().state_dict(), path)
    return path


def _codes(r: object) -> dict[str, set[str | None]]:
    doc = r.json()  # type: ignore[attr-defined]
    out: dict[str, set[str | None]] = {}
    for x in doc["files"][0]["findings"]:
        out.setdefault(x["code"], set()).add(x["tensor"])
    return out


def test_check_model_passes_a_fitting_checkpoint(fitting: Path) -> None:
    r = run_cli("check", fitting, "--model", m("Net"), "--format", "json")
    assert r.exit_code == 0, r.stdout
    live_models.Net().load_state_dict(torch.load(fitting, weights_only=True), strict=True)


def test_check_model_reports_each_mismatch_kind(tmp_path: Path) -> None:
    sd = live_models.Net().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(2, 2)
    sd["fc.weight"] = torch.zeros(8, 9)
    sd["norm.weight"] = sd["norm.weight"].double()
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(RuntimeError) as refused:  # torch refuses it too
        live_models.Net().load_state_dict(torch.load(path, weights_only=True), strict=True)
    for word in ("fc.bias", "extra.weight", "fc.weight"):
        assert word in str(refused.value)
    r = run_cli("check", path, "--model", m("Net"), "--format", "json")
    assert r.exit_code == 1
    codes = _codes(r)
    assert codes["missing"] == {"fc.bias"}
    assert codes["unexpected"] == {"extra.weight"}
    assert codes["shape_mismatch"] == {"fc.weight"}
    assert codes["dtype_mismatch"] == {"norm.weight"}
    assert "prefix_mismatch" not in codes


@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod."])
def test_check_model_detects_a_prefix_and_strip_prefix_fixes_it(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "pre.safetensors"
    sd = live_models.Net(tie=False).state_dict()
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    r = run_cli("check", path, "--model", m("Net"), "--arg", "tie=False", "--format", "json")
    assert r.exit_code == 1
    doc = r.json()
    (hint,) = [x for x in doc["files"][0]["findings"] if x["code"] == "prefix_mismatch"]
    assert f"--strip-prefix {prefix}" in hint["message"]
    r = run_cli("check", path, "--model", m("Net"), "--arg", "tie=False", "--strip-prefix", prefix)
    assert r.exit_code == 0, r.stdout


def test_check_model_lightning_state_dict_prefix(tmp_path: Path) -> None:
    path = tmp_path / "l.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in live_models.Net().state_dict().items()}, "epoch": 3}, path)
    doc = run_cli("check", path, "--model", m("Net"), "-f", "json").json()
    (hint,) = [x for x in doc["files"][0]["findings"] if x["code"] == "prefix_mismatch"]
    assert "'state_dict.model.'" in hint["message"]
    assert run_cli("check", path, "--model", m("Net"), "--strip-prefix", "state_dict.model.").exit_code == 0


def test_check_model_accepts_save_model_aliases(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    from safetensors.torch import save_model

    save_model(live_models.Net(), str(path))  # keeps embed.weight, drops its tie head.weight
    with safe_open(str(path), "pt") as f:
        names = list(f.keys())
        assert "head.weight" not in names
    assert run_cli("check", path, "--model", m("Net")).exit_code == 0
    # untied, the same file lacks a real parameter
    codes = _codes(run_cli("check", path, "--model", m("Net"), "--arg", "tie=False", "-f", "json"))
    assert codes["missing"] == {"head.weight"}


def test_check_model_file_of_a_submodule(tmp_path: Path) -> None:
    path = tmp_path / "sub.pt"
    torch.save(live_models.Net(tie=False).state_dict(), path)
    doc = run_cli("check", path, "--model", m("WithCustom"), "-f", "json").json()
    (hint,) = [x for x in doc["files"][0]["findings"] if x["code"] == "prefix_mismatch"]
    assert "get_submodule('net')" in hint["message"]


def test_check_model_bad_model_is_usage_error(fitting: Path) -> None:
    r = run_cli("check", fitting, "--model", m("broken"))
    assert_one_error_line(r)
    assert "ValueError: the config says no" in r.stderr
    assert_one_error_line(run_cli("check", fitting, "--strip-prefix", "module."))


def test_help_mentions_running_code() -> None:
    for cmd in ("inspect", "check", "init"):
        text = " ".join(run_cli(cmd, "--help").stdout.split())
        assert "runs" in text.lower() and "trust" in text.lower(), cmd


def test_init_help_and_top_help_do_not_import_torch() -> None:
    from test_lazy_import import run_probe

    for args in (("--help",), ("init", "--help"), ("check", "--help")):
        r = run_probe(*args)
        assert r["code"] == 0, r["stderr"]
        assert r["torch"] == [], args


# --- found by review -----------------------------------------------------------------------------


def test_strip_prefix_compares_only_the_names_under_it(tmp_path: Path) -> None:
    net = live_models.Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = tmp_path / "lit.ckpt"  # a Lightning-like checkpoint: the model's state under state_dict.model.
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "optimizer_states": [opt.state_dict()], "epoch": 3}, path)
    plain = run_cli("check", path, "--model", m("Net"), "--format", "json")
    assert plain.exit_code == 1
    findings = plain.json()["files"][0]["findings"]
    prefix = [f for f in findings if f["code"] == "prefix_mismatch"]
    assert len(prefix) == 1 and "--strip-prefix state_dict.model." in prefix[0]["message"], findings
    # the finding explains the names: they are not listed one by one as missing or unexpected too
    assert not [f for f in findings if f["code"] in ("missing", "unexpected")], findings
    for given in ("state_dict.model.", "state_dict.model"):  # the trailing dot may be left out
        r = run_cli("check", path, "--model", m("Net"), "--strip-prefix", given, "--format", "json")
        assert r.exit_code == 0, (given, r.stdout)
        assert not [f for f in r.json()["files"][0]["findings"] if f["code"] in CHECK_MODEL_CODES]


CHECK_MODEL_CODES = ("missing", "unexpected", "shape_mismatch", "dtype_mismatch", "prefix_mismatch")


def test_dtype_mismatch_against_a_model_is_a_warning(tmp_path: Path) -> None:
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in live_models.Net().state_dict().items()}
    path = tmp_path / "bf16.pt"
    torch.save(sd, path)
    live_models.Net().load_state_dict(torch.load(path, weights_only=True), strict=True)  # torch casts it
    r = run_cli("check", path, "--model", m("Net"), "--format", "json")
    assert r.exit_code == 0, r.stdout
    codes = {(f["code"], f["severity"]) for f in r.json()["files"][0]["findings"]}
    assert ("dtype_mismatch", "warning") in codes and ("dtype_mismatch", "error") not in codes, codes
    assert run_cli("check", path, "--model", m("Net"), "--fail-on", "warning").exit_code == 1


def test_default_init_names_a_tensor_two_modules_reset(tmp_path: Path) -> None:
    r = run_cli("init", m("TiedLM"), "--out", tmp_path / "t.pt", "--seed", "0")
    assert r.exit_code == 0, r.stderr
    assert "head.weight is the same tensor as emb.weight" in r.stderr, r.stderr


def test_init_does_not_judge_a_buffer_it_does_not_save(tmp_path: Path) -> None:
    out = tmp_path / "s.pt"
    r = run_cli("init", m("Scratch"), "--out", out, "--seed", "0")
    assert r.exit_code == 0, r.stderr
    assert list(torch.load(out, weights_only=True)) == ["lin.weight", "lin.bias"]


def test_lazy_module_is_one_clear_error() -> None:
    r = run_cli("inspect", "--model", m("lazy"))
    assert_one_error_line(r)
    assert "not materialized" in r.stderr and "forward pass" in r.stderr, r.stderr


def test_init_takes_scheme_options_as_reinit_does(tmp_path: Path) -> None:
    out = tmp_path / "n.pt"
    r = run_cli(
        "init", m("Net"), "--scheme", "normal", "--std", "0.02", "--match", r"^fc\.weight$", "--seed", "1", "--out", out
    )
    assert r.exit_code == 0, r.stderr
    want = torch.empty(8, 8)
    torch.nn.init.normal_(want, std=0.02, generator=torch.Generator().manual_seed(seed_of(1, "fc.weight")))
    assert torch.equal(torch.load(out, weights_only=True)["fc.weight"], want)
    bad = run_cli("init", m("Net"), "--std", "0.02", "--out", tmp_path / "x.pt")  # --scheme default takes none
    assert_one_error_line(bad)
    assert not (tmp_path / "x.pt").exists()
