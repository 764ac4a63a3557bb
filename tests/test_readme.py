"""Every ``$ pinit ...`` line of README.md's ```console blocks, run through the real CLI.

Each command runs in a fresh temporary folder holding a copy of ``sample_checkpoints/`` and the
README's placeholder paths (``model.pt``, ``checkpoints/``, ``before.pt``, ...) made from the
samples, so that a command that writes never touches the repository. A command must exit 0
(``inspect``, ``reinit``, ``schemes``, ``report``) or 0/1 (``check``, ``diff``: findings and
differences are results), never 2, with no traceback and no "internal error". A path the README
names that this mapping does not provide fails the test: map it below, or skip the command in
``SKIP`` with a reason.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SAMPLES, run_cli, save_checkpoint

README = ROOT / "README.md"

# substring of a command line -> why it is not run (none today; keep each reason specific)
SKIP: dict[str, str] = {}

EXPECTED_EXIT = {
    "inspect": {0},
    "reinit": {0},
    "init": {0},
    "schemes": {0},
    "report": {0},
    "check": {0, 1},
    "diff": {0, 1},
}
# options whose value is a path the command writes (need not exist beforehand)
OUTPUT_OPTIONS = {"--out", "-o", "--png"}
PATH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".toml", ".json", ".jit", ".tar")


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line number in README.md
    text: str  # after "$ "

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.text[:60]}"


def readme_commands() -> list[Command]:
    out: list[Command] = []
    in_console = False
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_console = not in_console and stripped == "```console"
            continue
        if in_console and stripped.startswith("$ pinit"):
            out.append(Command(n, stripped[2:]))
    return out


COMMANDS = readme_commands()


def readme_plan() -> str:
    """The README's ResNet plan (its first ```toml block with [[rule]] tables), as init.toml."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return next(b for b in blocks if "[[rule]]" in b)


def make_placeholders(root: Path) -> None:
    """The README's placeholder paths, made from the samples."""
    shutil.copytree(SAMPLES, root / "sample_checkpoints")
    s = root / "sample_checkpoints"
    # a CNN with a flagged (never initialized) weight, for --flagged and check
    shutil.copy(s / "uninit_cnn.pt", root / "model.pt")
    shutil.copy(s / "lightning.ckpt", root / "lightning.ckpt")
    shutil.copy(s / "tiny_cnn.safetensors", root / "base.safetensors")
    shutil.copy(s / "tiny_cnn.safetensors", root / "a.safetensors")
    shutil.copy(s / "uninit_cnn.safetensors", root / "b.safetensors")
    # model.safetensors: conv weights and an lm_head
    from safetensors.torch import load_file

    tensors = load_file(str(s / "tiny_cnn.safetensors"))
    tensors["lm_head.weight"] = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    save_checkpoint(root / "model.safetensors", tensors)
    # before/after: a small transformer-like state dict whose layer 1 changed
    g = torch.Generator().manual_seed(1)
    before = {f"layers.{i}.{k}": torch.randn(8, 8, generator=g) for i in range(2) for k in ("q", "k")}
    after = {k: v.clone() for k, v in before.items()}
    after["layers.1.q"][0, 0] += 1.0
    save_checkpoint(root / "before.pt", before)
    save_checkpoint(root / "after.pt", after)
    save_checkpoint(root / "after.safetensors", after)
    for folder in ("checkpoints", "ckpts"):
        (root / folder).mkdir()
        shutil.copy(s / "tiny_cnn.safetensors", root / folder / "tiny_cnn.safetensors")
        shutil.copy(s / "uninit_cnn.safetensors", root / folder / "uninit_cnn.safetensors")
    shutil.copytree(s / "sharded", root / "checkpoints" / "llama-sharded")
    (root / "runs" / "exp1").mkdir(parents=True)
    shutil.copy(s / "tiny_cnn.safetensors", root / "runs" / "exp1" / "last.safetensors")
    (root / "init.toml").write_text(readme_plan(), encoding="utf-8")


def split(text: str) -> tuple[list[str], list[str]]:
    """The arguments after ``pinit`` (comments and redirections dropped, unquoted globs expanded
    as a shell would) and the paths the command reads, which must exist."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="><")
    lexer.commenters = "#"
    lexer.whitespace_split = True
    raw = list(lexer)
    assert raw[0] == "pinit", text
    args: list[str] = []
    reads: list[str] = []
    skip_next = False
    writes_next = False
    for tok in raw[1:]:
        if skip_next:  # the target of a redirection
            skip_next = False
            continue
        if tok in (">", ">>"):
            skip_next = True
            continue
        if writes_next:
            writes_next = False
            args.append(tok)
            continue
        if tok in OUTPUT_OPTIONS:
            writes_next = True
            args.append(tok)
            continue
        if "*" in tok and "/" in tok:  # a path glob (a regex such as 'conv.*weight' has no slash)
            matches = sorted(glob.glob(tok, recursive=True))
            assert matches, f"README glob {tok!r} matches nothing in the mapping"
            quoted = f"'{tok}'" in text or f'"{tok}"' in text
            args += [tok] if quoted else matches  # quoted: pinit expands it
            continue
        args.append(tok)
        if not tok.startswith("-") and (tok.endswith(PATH_SUFFIXES) or tok.endswith("/")):
            reads.append(tok)
    return args, reads


def test_the_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20
    subcommands = {shlex.split(c.text, comments=True)[1] for c in COMMANDS}
    assert {"inspect", "reinit", "check", "diff", "schemes"} <= subcommands


@pytest.mark.parametrize(
    "cmd",
    [  # the report lines draw plots with matplotlib (seconds each): CI runs them, the fast loop does not
        pytest.param(c, marks=pytest.mark.slow) if " report " in f" {c.text} " else c for c in COMMANDS
    ],
    ids=[c.id for c in COMMANDS],
)
def test_readme_command(cmd: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part, reason in SKIP.items():
        if part in cmd.text:
            pytest.skip(reason)
    make_placeholders(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, reads = split(cmd.text)
    sub = args[0]
    if sub == "report" and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("pinit report needs the report extra (matplotlib), not installed here")
    for p in reads:
        assert Path(p).exists(), f"README line {cmd.line} names {p!r}, which the test's mapping lacks"
    samples_before = {p: p.read_bytes() for p in SAMPLES.rglob("*") if p.is_file()}
    r = run_cli(*args)
    assert "Traceback" not in r.stderr, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    assert r.exit_code in EXPECTED_EXIT[sub], (cmd.text, r.exit_code, r.stdout[-2000:], r.stderr[-2000:])
    if "--format" in args and args[args.index("--format") + 1] in ("json", "sarif"):
        json.loads(r.stdout)  # one JSON document on stdout, nothing else
    # the repository's samples are never modified (commands ran on copies)
    assert {p: p.read_bytes() for p in SAMPLES.rglob("*") if p.is_file()} == samples_before
