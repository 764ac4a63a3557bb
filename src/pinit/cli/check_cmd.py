"""``pinit check``: the CI gate.  Exit 0 clean, 1 findings at or above --fail-on, 2 bad usage."""

from __future__ import annotations

import re
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from pinit.cli import options as opt
from pinit.cli import output as out
from pinit.cli.common import load_options

if TYPE_CHECKING:
    from pinit.check import CheckReport


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    junit = "junit"
    sarif = "sarif"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"


def check(
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PATH", help="Checkpoint files, folders (searched) or globs.", show_default=False),
    ],
    fail_on: Annotated[
        FailOn | None,
        typer.Option("--fail-on", help="Fail on findings of this severity or worse.", show_default="error"),
    ] = None,
    rule: Annotated[
        list[str] | None,
        typer.Option("--rule", metavar="CODE=off|warning|error", help="Change a flag's severity; repeatable."),
    ] = None,
    max_abs: Annotated[
        float | None,
        typer.Option("--max-abs", metavar="FLOAT", help="Threshold of the 'huge' flag.", show_default="1e6", min=0.0),
    ] = None,
    exclude: opt.Exclude = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", metavar="PATH", help="Also compare names, shapes and dtypes with this checkpoint."),
    ] = None,
    model: opt.Model = None,
    arg: opt.ModelArg = None,
    strip_prefix: Annotated[
        str | None,
        typer.Option(
            "--strip-prefix",
            metavar="PREFIX",
            help="With --model: compare only the file's tensors under PREFIX (e.g. module., or "
            "state_dict.model. for Lightning), with PREFIX removed from their names.",
        ),
    ] = None,
    fmt: Annotated[CheckFormat, typer.Option("--format", "-f", help="Output format.")] = CheckFormat.text,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N",
            help="Check N files at once, in N processes (a sharded checkpoint is one file; with --model, "
            "one process); same report.",
            min=1,
        ),
    ] = 1,
    timeout: opt.Timeout = None,
    cache: opt.Cache = None,
    unsafe_pickle: opt.UnsafePickle = False,
    allow_global: opt.AllowGlobal = None,
    quiet: opt.Quiet = False,
    no_warnings: opt.NoWarnings = False,
    debug: opt.Debug = False,
) -> None:
    """Fail (exit 1) when checkpoints hold NaN/Inf, subnormals, huge values, or (with --fail-on warning)
    all-zero, constant or duplicated weights; settings may come from [tool.pinit.check] in pyproject.toml.

    --model MODULE:CALLABLE also reports what model.load_state_dict(sd, strict=True) would refuse; it imports
    and runs that code, so name only code you trust."""
    from pinit.check import find_pyproject, load_pyproject_settings, merge_settings, run_check
    from pinit.errors import PinitError

    settings = merge_settings(
        load_pyproject_settings(find_pyproject()),
        fail_on=fail_on.value if fail_on else None,
        rules=rule or [],
        max_abs=max_abs,
        exclude=exclude or [],
        reference=reference,
    )
    if (arg or strip_prefix) and model is None:
        raise PinitError("--arg and --strip-prefix go with --model")
    if model is not None:  # a model that cannot be built is bad usage (exit 2), like an unreadable reference
        from pinit.live import model_checkpoint, parse_model_spec

        settings.model = model_checkpoint(parse_model_spec(model, arg or ()))
        settings.strip_prefix = strip_prefix
    report = run_check(
        paths,
        settings,
        load_options(allow_global, unsafe_pickle, timeout, cache),
        progress=lambda total: out.progress_bar(total, "checking", quiet),
        jobs=jobs,
    )
    if fmt is CheckFormat.json:
        out.print_json(report.as_json())
    elif fmt is CheckFormat.github:
        _github(report)
    elif fmt is CheckFormat.junit:
        _junit(report)
    elif fmt is CheckFormat.sarif:
        _sarif(report)
    else:
        _text(report, quiet)
    raise typer.Exit(report.exit_code)


def _sarif(report: CheckReport) -> None:
    """SARIF 2.1.0 (GitHub code scanning): one JSON document, built by ``CheckReport.as_sarif``."""
    out.print_json(report.as_sarif())


def _text(report: CheckReport, quiet: bool) -> None:
    style = {"error": "bold red", "warning": "yellow"}
    rows: list[list[out.Cell]] = []
    for f in report.files:
        for x in f.findings:
            rows.append(
                [
                    (f.path, None),
                    (out.safe_text(x.tensor) if x.tensor else "—", None),
                    (x.severity, style[x.severity]),
                    (x.code, None),
                    (x.message, None),
                ]
            )
    if rows:
        out.render_table(
            [  # on a narrow terminal the file goes first, then the message (wrapped between words)
                out.Col("file", "name", 2),
                out.Col("tensor", "name", 0),
                out.Col("severity", "text", 0),
                out.Col("code", "text", 0),
                out.Col("message", "prose", 1),
            ],
            rows,
        )
    s = report.summary()
    verdict = "FAIL" if report.failed else "ok"
    print(
        f"{verdict}: {out.plural(s['files'], 'file')} checked, {s['failed_files']} failed "
        f"({out.plural(s['errors'], 'error')}, {out.plural(s['warnings'], 'warning')}; failing on {s['fail_on']})"
    )


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _github(report: CheckReport) -> None:
    """GitHub Actions workflow commands: ::error file=...,title=...::message."""
    for f in report.files:
        for x in f.findings:
            level = "error" if x.severity == "error" else "warning"
            # escaped and shortened first: no raw newline (a second workflow command) or ESC
            tensor = out.safe_text(x.tensor) if x.tensor else ""
            title = f"pinit {x.code}" + (f" in {tensor}" if tensor else "")
            msg = out.safe_line(f"{tensor}: {x.message}" if tensor else x.message)
            path = out.safe_text(f.path, 4096)
            sys.stdout.write(
                f"::{level} file={_gh_escape(path, True)},title={_gh_escape(title, True)}::{_gh_escape(msg)}\n"
            )
    s = report.summary()
    sys.stdout.write(
        f"pinit check: {out.plural(s['files'], 'file')}, {s['failed_files']} failed, "
        f"{out.plural(s['errors'], 'error')}, {out.plural(s['warnings'], 'warning')}\n"
    )


# characters XML 1.0 cannot hold: a control character in a tensor name must not make the report unparsable
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """``text`` with each character XML cannot hold written as ``\\xNN``."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _junit(report: CheckReport) -> None:
    """JUnit XML: one testcase per file, one failure per finding at or above --fail-on."""
    import xml.etree.ElementTree as ET

    rank = {"warning": 1, "error": 2}
    threshold = rank[report.settings.fail_on]
    suites = ET.Element("testsuites", name="pinit check")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="pinit check",
        tests=str(len(report.files)),
        failures=str(sum(f.failed for f in report.files)),
        errors="0",
        skipped="0",
    )
    suites.set("tests", suite.get("tests", "0"))
    suites.set("failures", suite.get("failures", "0"))
    for f in report.files:
        case = ET.SubElement(suite, "testcase", classname="pinit.check", name=_xml_text(f.path))
        below = []
        for x in f.findings:
            where = _xml_text(f"{x.tensor}: ") if x.tensor else ""
            if rank[x.severity] >= threshold:
                msg = _xml_text(x.message)
                fail = ET.SubElement(case, "failure", type=x.code, message=f"{where}{msg}")
                fail.text = f"{x.severity}: {where}{x.code}: {msg}"
            else:
                below.append(f"{x.severity}: {where}{x.code}: {_xml_text(x.message)}")
        if below:
            ET.SubElement(case, "system-out").text = "\n".join(below)
    ET.indent(suites)
    sys.stdout.write('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n")
