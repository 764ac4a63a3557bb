"""SARIF 2.1.0 for ``pinit check`` (``--format sarif``, ``CheckReport.as_sarif()``): GitHub code scanning
and the other dashboards that read SARIF.

One run; one rule per check code (``pinit.check.CHECK_CODES``, in that order, so ``ruleIndex`` is stable);
one result per finding, located at the checkpoint file as a whole (no ``region``: a checkpoint is binary,
it has no lines), with the tensor name in the message, in a logical location and in ``properties``. Names
are kept whole: JSON escapes what it must, nothing is shortened.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import PurePath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

if TYPE_CHECKING:
    from pinit.check import CheckReport, Finding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning"}
# what the URI of a file keeps unescaped besides ASCII letters, digits and -._~ (RFC 3986 unreserved):
# the path separator only, so a ':' in a first segment cannot read as a scheme and '%', '#', '?', ' '
# and non-ASCII bytes are percent-encoded
_URI_SAFE = "/"


def file_uri(path: str) -> str:
    """``path`` as a SARIF ``artifactLocation.uri``: relative stays relative (GitHub wants paths relative
    to the repository), absolute becomes ``file://``; ``/`` separators, percent-encoded UTF-8 (or the raw
    bytes of a name that is not UTF-8)."""
    p = PurePath(path)
    if p.is_absolute():
        return p.as_uri()
    return quote_from_bytes(os.fsencode(p.as_posix()), safe=_URI_SAFE)


def rule_description(code: str) -> str:
    from pinit.check import FILE_CODES, REFERENCE_CODES
    from pinit.flags import FLAG_CODES

    if code in FLAG_CODES:
        return FLAG_CODES[code][1]
    return REFERENCE_CODES.get(code) or FILE_CODES[code]


def _kind(code: str) -> str:
    from pinit.check import FILE_CODES, REFERENCE_CODES

    if code in REFERENCE_CODES:
        return "reference"
    return "file" if code in FILE_CODES else "flag"


_KIND_TEXT = {
    "flag": "a flag of the tensor's values",
    "reference": "a difference from --reference",
    "file": "a problem of the file",
}
_HELP = {
    "flag": "See the tensor's statistics and flags with `pinit inspect FILE --match NAME`; "
    "re-initialize it with `pinit reinit FILE --match NAME --scheme SCHEME`.",
    "reference": "Compare the two checkpoints tensor by tensor with `pinit diff FILE REFERENCE`.",
    "file": "`pinit inspect FILE` shows what was read of the file and the full error.",
}


def sarif_rules() -> list[dict[str, Any]]:
    """One ``reportingDescriptor`` per check code, in ``CHECK_CODES`` order."""
    from pinit.check import CHECK_CODES

    rules = []
    for code, severity in CHECK_CODES.items():
        text = rule_description(code)
        kind = _kind(code)
        full = f"pinit check code '{code}' ({_KIND_TEXT[kind]}): {text}. Default severity: {severity}."
        help_text = (
            f"{_HELP[kind]} Change the severity of '{code}' with --rule {code}=off|warning|error, "
            "or in the rules of [tool.pinit.check] in pyproject.toml."
        )
        rules.append(
            {
                "id": code,
                "shortDescription": {"text": text},
                "fullDescription": {"text": full},
                "help": {"text": help_text},
                "defaultConfiguration": {"level": _LEVEL[severity]},
                "properties": {"tags": ["pinit", "checkpoint", kind], "problem.severity": _LEVEL[severity]},
            }
        )
    return rules


def _fingerprint(finding: Finding) -> str:
    # GitHub tracks alerts by partialFingerprints.primaryLocationLineHash (and computes one from the
    # file's lines when it is missing, which a binary checkpoint does not have): without one, two tensors
    # with the same code in one file would be one alert
    key = f"{finding.code}\0{finding.tensor if finding.tensor is not None else ''}"
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16] + ":1"


def check_sarif(report: CheckReport) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one ``pinit check`` run."""
    from pinit import __version__
    from pinit.check import CHECK_CODES

    index = {code: i for i, code in enumerate(CHECK_CODES)}
    artifacts = []
    results = []
    for i, f in enumerate(report.files):
        uri = file_uri(f.path)
        artifact: dict[str, Any] = {"location": {"uri": uri}, "roles": ["analysisTarget"]}
        artifact["properties"] = {"format": f.format, "tensors": f.tensors, "status": "fail" if f.failed else "pass"}
        artifacts.append(artifact)
        for x in f.findings:
            location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": uri, "index": i}}}
            if x.tensor is not None:
                location["logicalLocations"] = [{"fullyQualifiedName": x.tensor, "kind": "variable"}]
            result: dict[str, Any] = {
                "ruleId": x.code,
                "ruleIndex": index[x.code],
                "level": _LEVEL[x.severity],
                "message": {"text": f"{x.tensor}: {x.message}" if x.tensor is not None else x.message},
                "locations": [location],
                "partialFingerprints": {"primaryLocationLineHash": _fingerprint(x)},
            }
            props: dict[str, Any] = {"tensor": x.tensor}
            if x.globals:
                props["globals"] = list(x.globals)
            result["properties"] = props
            results.append(result)
    overrides = [
        {
            "descriptor": {"id": code, "index": index[code]},
            "configuration": {"enabled": False} if sev == "off" else {"level": _LEVEL[sev]},
        }
        for code, sev in report.settings.rules.items()
        if code in index
    ]
    invocation: dict[str, Any] = {"executionSuccessful": True, "exitCode": report.exit_code}
    if overrides:
        invocation["ruleConfigurationOverrides"] = overrides
    invocation["properties"] = {"summary": report.summary()}
    run = {
        "tool": {"driver": {"name": "pinit", "version": __version__, "rules": sarif_rules()}},
        "invocations": [invocation],
        "artifacts": artifacts,
        "results": results,
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
