"""``report``: one self-contained HTML page of a checkpoint (SPEC section 5), and its plots as PNG.

The page holds the summary and the flags first, a plot of each floating tensor's std and abs_max
in file order (a badly initialized or diverging layer shows as a step), a histogram per floating
tensor (at most ``max_histograms``: every flagged one, then the largest), the tied groups, the
tensor table and the non-tensor content (:mod:`pinit.meta`) as data.  Plots are drawn by
matplotlib (the ``report`` extra, imported only here and only when a report is built, without
pyplot, so no global backend is changed) and embedded as base64 PNG: the page needs no network and
runs no script.  Every text from the file is HTML-escaped, with control and format characters
shown as ``\\uXXXX``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pinit.dtypes import human_bytes
from pinit.errors import PinitError
from pinit.inspect import Report, TensorReport
from pinit.meta import Meta, shorten, tree_lines
from pinit.writers import atomic_file, check_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'pinit[report]'"
MAX_HISTOGRAMS = 200
MAX_TABLE_ROWS = 2000
MAX_FLAG_ROWS = 2000
MAX_DEPTH_LABELS = 60  # up to this many tensors, the depth plot names each one
NAME_SHOWN = 300  # characters of a tensor name on the page
DPI = 96
PLOT_LIMIT = 1e100  # larger magnitudes are clipped (depth plot) or scaled (histogram axes)


def require_matplotlib() -> None:
    """Raise a PinitError naming the extra to install when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PinitError(f"pinit report needs matplotlib, which is not installed: {INSTALL_HINT}") from None


@dataclass
class Plot:
    """One PNG image: ``stem`` names its file under ``--png``; ``tensor`` is the tensor it shows."""

    stem: str
    title: str
    png: bytes
    tensor: str | None = None


@dataclass
class Page:
    html: str
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the page left out, said on the page too


def text(value: object, limit: int = NAME_SHOWN) -> str:
    """``value`` for HTML: shortened to ``limit`` characters, control/format characters written as
    ``\\uXXXX`` (a name cannot hide text or flip its direction), then HTML-escaped."""
    s = shorten(str(value), limit)
    s = "".join(
        f"\\u{ord(c):04x}"
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
        else c
        for c in s
    )
    return html.escape(s, quote=True)


def _num(v: float | int | None) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:
        return "nan"
    return f"{v:.4g}"


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _plain(label: str, limit: int = 60) -> str:
    """A label for matplotlib: shortened, and printable (matplotlib draws it; math text is off)."""
    s = shorten(label, limit)
    return "".join(c if c.isprintable() else "?" for c in s)


def _floating(report: Report) -> list[TensorReport]:
    return [t for t in report.tensors if t.entry.dt.is_float and t.stats is not None and t.entry.numel > 0]


def depth_plot(report: Report) -> Plot | None:
    """std and abs_max of every floating tensor, in file order, on a symmetric-log scale."""
    import numpy as np

    ts = sorted(_floating(report), key=lambda t: t.entry.index)
    if not ts:
        return None
    n = len(ts)
    x = np.arange(n)
    std = np.array([_finite(t.stats.std) for t in ts], dtype=np.float64)  # type: ignore[union-attr]
    amax = np.array([_finite(t.stats.abs_max) for t in ts], dtype=np.float64)  # type: ignore[union-attr]
    flagged = np.array([any(f.severity == "error" for f in t.flags) for t in ts])
    clipped = bool((amax > PLOT_LIMIT).any() or (std > PLOT_LIMIT).any())
    std, amax = np.minimum(std, PLOT_LIMIT), np.minimum(amax, PLOT_LIMIT)  # matplotlib overflows near 1e308
    positive = np.concatenate([std[std > 0], amax[amax > 0]])
    linthresh = float(min(1e-3, positive.min())) if positive.size else 1e-3
    labels = n <= MAX_DEPTH_LABELS
    fig = _figure(min(16.0, max(7.0, 0.2 * n + 3)), 5.2 if labels else 4.0)
    ax = fig.add_subplot()
    style = {"marker": "o", "markersize": 3 if n <= 500 else 0, "linewidth": 1.2}
    ax.plot(x, std, label="std", color="#1f77b4", **style)
    ax.plot(x, amax, label="abs_max", color="#ff7f0e", **style)
    if flagged.any():
        ax.scatter(x[flagged], amax[flagged], s=40, facecolors="none", edgecolors="#d62728", zorder=3)
        ax.scatter([], [], s=40, facecolors="none", edgecolors="#d62728", label="error flag")
    no_std = ~np.isfinite(std)
    if no_std.any():  # a std that NaN or Inf values leave undefined: marked at the bottom
        marks = np.full(int(no_std.sum()), 0.03)
        ax.scatter(x[no_std], marks, marker="x", s=50, color="#d62728", transform=ax.get_xaxis_transform(), zorder=3)
        ax.scatter([], [], marker="x", s=50, color="#d62728", label="std not finite (NaN/Inf values)")
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("value (symmetric log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    title = "std and abs_max across depth (floating tensors in file order)"
    ax.set_title(
        title + (f"\nvalues above {PLOT_LIMIT:.0e} are drawn at {PLOT_LIMIT:.0e}" if clipped else ""), fontsize=10
    )
    if labels:
        ax.set_xticks(x)
        ax.set_xticklabels([_plain(t.name, 40) for t in ts], rotation=90, fontsize=6)
        for lab in ax.get_xticklabels():
            lab.set_parse_math(False)
    else:
        ax.set_xlabel("tensor index (file order)")
    return Plot("depth", "std and abs_max across depth", _png(fig))


def _finite(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _hist_figure() -> Figure:
    return _figure(3.6, 2.2, layout=None)


def histogram_plot(t: TensorReport, fig: Figure | None = None) -> Plot | None:
    """The tensor's histogram (``inspect --hist``'s bins between its min and max)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    s = t.stats
    if t.hist is None or s is None or s.min is None or s.max is None:
        return None
    lo, hi = float(s.min), float(s.max)
    counts = np.asarray(t.hist, dtype=np.float64)
    exponent = 0
    if max(abs(lo), abs(hi)) > PLOT_LIMIT:  # matplotlib overflows on axes near 1e308: scale them
        exponent = math.floor(math.log10(max(abs(lo), abs(hi))))
        lo, hi = lo / 10.0**exponent, hi / 10.0**exponent
    if hi > lo:
        edges = 2 * np.linspace(lo / 2, hi / 2, len(counts) + 1)  # halved: hi - lo may overflow
    else:  # a constant tensor: one bar
        half = abs(lo) * 0.05 or 0.5
        edges, counts = np.array([lo - half, lo + half]), np.array([counts.sum()])
    fig = fig or _hist_figure()
    fig.clear()
    # a fixed layout: constrained layout took half of each histogram's drawing time
    ax = fig.add_axes((0.14, 0.14, 0.82, 0.74))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    bad = any(f.severity == "error" for f in t.flags)
    ax.stairs(counts, edges, fill=True, color="#d62728" if bad else "#1f77b4", alpha=0.85)
    ax.set_title(_plain(t.name, 48), fontsize=8, parse_math=False)
    ax.tick_params(labelsize=6)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    if exponent:
        ax.set_xlabel(f"× 1e{exponent}", fontsize=7)
    return Plot("", t.name, _png(fig), tensor=t.name)


def choose_histograms(report: Report, limit: int) -> list[TensorReport]:
    """At most ``limit`` floating tensors with a histogram: every flagged one first (file order),
    then the largest; returned in file order."""
    with_hist = [t for t in report.tensors if t.hist is not None]
    if len(with_hist) <= limit:
        return sorted(with_hist, key=lambda t: t.entry.index)
    flagged = [t for t in with_hist if t.flags]
    rest = sorted((t for t in with_hist if not t.flags), key=lambda t: (-t.entry.numel, t.entry.index))
    chosen = (flagged + rest)[:limit]
    return sorted(chosen, key=lambda t: t.entry.index)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "tensor"
    return s[:80]


# --- the page ------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.4em;word-break:break-all}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b00020;font-weight:600}.warning{color:#9a6700}.ok{color:#1a7f37}.note{color:#555;font-size:.9em}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #eee;padding:4px;width:350px}
figcaption{font-size:.75em;word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace}
img{max-width:100%;height:auto}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.85em}
"""


def _img(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return f'<img alt="{text(plot.title)}" src="data:image/png;base64,{data}">'


def _flag_html(t: TensorReport) -> str:
    return ", ".join(f'<span class="{f.severity}">{text(f.code)}</span>' for f in t.flags)


def build_page(report: Report, meta: Meta | None, *, max_histograms: int = MAX_HISTOGRAMS, version: str = "") -> Page:
    """The HTML page and its plots, all in memory (nothing is written)."""
    require_matplotlib()
    import numpy as np

    page = Page("")
    chosen = choose_histograms(report, max_histograms)
    hists: list[Plot] = []
    # overflow in matplotlib's axis arithmetic for extreme (but clipped) values is not news
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        depth = depth_plot(report)
        if depth is not None:
            page.plots.append(depth)
        fig = _hist_figure() if chosen else None
        for i, t in enumerate(chosen):
            p = histogram_plot(t, fig)
            if p is not None:
                p.stem = f"hist-{i + 1:04d}-{_slug(t.name)}"
                hists.append(p)
    page.plots += hists
    with_hist = sum(t.hist is not None for t in report.tensors)
    if with_hist > len(chosen):
        page.notes.append(
            f"histograms of {len(chosen):,} of {with_hist:,} floating tensors are shown "
            "(flagged ones first, then the largest)"
        )
    page.html = _html(report, meta, depth, hists, page.notes, version)
    return page


def _html(
    report: Report, meta: Meta | None, depth: Plot | None, hists: Sequence[Plot], notes: list[str], version: str
) -> str:
    s = report.summary()
    by_name = {t.name: t for t in report.tensors}
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing may be fetched: images are data: URLs, and there is no script
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>pinit report: {text(report.path)}</title>",
        f"<style>{CSS}</style></head><body>",
        f'<h1>pinit report: <span class="name">{text(report.path)}</span></h1>',
        f'<p class="note">format: {text(report.format)}{" · pinit " + text(version) if version else ""}</p>',
    ]
    # summary
    verdict = (
        f'<span class="error">{s["errors"]:,} error flag{"s" if s["errors"] != 1 else ""}</span>'
        if s["errors"]
        else '<span class="ok">no error flags</span>'
    )
    warn = f'<span class="warning">{s["warnings"]:,} warning{"s" if s["warnings"] != 1 else ""}</span>'
    dtypes = ", ".join(f"{text(k)}: {v:,}" for k, v in s["by_dtype"].items())
    cov = s["coverage"]
    parts += [
        '<h2 id="summary">Summary</h2>',
        f"<p>{verdict}, {warn}</p>",
        "<table>",
        f'<tr><th>tensors</th><td class="n">{s["tensors"]:,}</td></tr>',
        f'<tr><th>parameters</th><td class="n">{s["parameters"]:,}</td></tr>',
        f'<tr><th>bytes</th><td class="n">{human_bytes(s["bytes"])}</td></tr>',
        f"<tr><th>by dtype</th><td>{dtypes or '—'}</td></tr>",
        f"<tr><th>coverage</th><td>{cov['tensors_read']:,} of {cov['tensors_found']:,} tensors found were read"
        "</td></tr>",
        "</table>",
    ]
    if cov["uninterpreted"] or not cov["tensors_found"]:
        parts.append('<p class="warning">Not everything was read:</p><ul>')
        parts += [f"<li>{text(u, 2000)}</li>" for u in cov["uninterpreted"][:100]]
        parts.append("</ul>")
    # flags
    flagged = [(t, f) for t in report.tensors for f in t.flags]
    flagged.sort(key=lambda tf: (tf[1].severity != "error", tf[0].entry.index))
    parts.append('<h2 id="flags">Flags</h2>')
    if not flagged:
        parts.append('<p class="ok">No tensor is flagged.</p>')
    else:
        parts.append("<table><tr><th>severity</th><th>tensor</th><th>code</th><th>message</th></tr>")
        for t, f in flagged[:MAX_FLAG_ROWS]:
            parts.append(
                f'<tr><td class="{f.severity}">{text(f.severity)}</td><td class="name">{text(t.name)}</td>'
                f"<td>{text(f.code)}</td><td>{text(f.message, 2000)}</td></tr>"
            )
        parts.append("</table>")
        if len(flagged) > MAX_FLAG_ROWS:
            parts.append(f'<p class="note">{len(flagged) - MAX_FLAG_ROWS:,} more flags not listed.</p>')
    # depth plot
    parts.append('<h2 id="depth">std and abs_max across depth</h2>')
    if depth is None:
        parts.append('<p class="note">No floating tensor with statistics.</p>')
    else:
        parts += [
            '<p class="note">Each floating tensor in file order; a jump between neighbours points at a layer '
            "that was not initialized (or diverged). Red circles: tensors with an error flag.</p>",
            f'<div class="plot">{_img(depth)}</div>',
        ]
    # tied groups
    parts.append('<h2 id="tied">Tied groups</h2>')
    if not s["tied"]:
        parts.append('<p class="note">No tensors share storage.</p>')
    else:
        parts.append("<ul>")
        for group in s["tied"][:1000]:
            first = by_name.get(group[0])
            same = first is not None and all(n == group[0] or n in first.identical for n in group)
            joined = (" = " if same else ", ").join(f'<span class="name">{text(n)}</span>' for n in group)
            parts.append(f"<li>{'tied' if same else 'share storage'}: {joined}</li>")
        parts.append("</ul>")
    # histograms
    parts.append('<h2 id="histograms">Histograms</h2>')
    parts += [f'<p class="note">{text(n)}.</p>' for n in notes]
    if not hists:
        parts.append('<p class="note">No floating tensor with values to plot.</p>')
    else:
        parts.append('<div class="grid">')
        for p in hists:
            t = by_name[p.tensor or ""]
            st = t.stats
            rng = f"min {_num(st.min)}, max {_num(st.max)}, std {_num(st.std)}" if st else ""
            flags = f" · {_flag_html(t)}" if t.flags else ""
            parts.append(f"<figure>{_img(p)}<figcaption>{text(t.name)}<br>{text(rng)}{flags}</figcaption></figure>")
        parts.append("</div>")
    # tensor table
    parts.append('<h2 id="tensors">Tensors</h2>')
    cols = ("name", "shape", "dtype", "params", "mean", "std", "min", "max", "abs_max", "flags")
    parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for t in report.tensors[:MAX_TABLE_ROWS]:
        e, st = t.entry, t.stats
        nums = [st.mean, st.std, st.min, st.max, st.abs_max] if st else [None] * 5
        parts.append(
            f'<tr><td class="name">{text(e.name)}</td><td>{text(list(e.shape))}</td><td>{text(e.dtype)}</td>'
            f'<td class="n">{e.numel:,}</td>'
            + "".join(f'<td class="n">{_num(v)}</td>' for v in nums)
            + f"<td>{_flag_html(t)}</td></tr>"
        )
    parts.append("</table>")
    if len(report.tensors) > MAX_TABLE_ROWS:
        parts.append(
            f'<p class="note">{len(report.tensors) - MAX_TABLE_ROWS:,} more tensors not listed '
            "(see <code>pinit inspect</code>).</p>"
        )
    # non-tensor content
    parts.append('<h2 id="meta">Non-tensor content</h2>')
    parts += _meta_html(meta)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meta_html(meta: Meta | None) -> list[str]:
    if meta is None or meta.empty:
        return ['<p class="note">None: the file holds tensors only.</p>']
    lines = []
    for depth, key, value in tree_lines(meta.data):
        head = "  " * depth + (f"<b>{text(key)}</b>:" if key is not None else "")
        lines.append(
            head if value is None else f"{head} {text(value, 2000)}" if key is not None else head + text(value)
        )
    out = [f'<pre class="meta">{chr(10).join(lines)}</pre>']
    if meta.cut:
        out.append('<p class="note">Shortened or left out:</p><ul class="note">')
        out += [f"<li>{text(c, 2000)}</li>" for c in meta.cut]
        out.append("</ul>")
    doc = json.dumps(meta.data, indent=1, ensure_ascii=True, allow_nan=False)
    out.append(f"<details><summary>as JSON</summary><pre>{text(doc, 1_000_000)}</pre></details>")
    return out


# --- writing -------------------------------------------------------------------------------------


def write_page(
    page: Page, out_html: str | os.PathLike[str] | None, png_dir: str | os.PathLike[str] | None
) -> list[str]:
    """Write the page and/or the plots (each file atomically); return the paths written."""
    written: list[str] = []
    if out_html is not None:  # refused before any plot is written: a failed command writes nothing
        check_write(out_html)
        parent = Path(out_html).parent
        if not parent.is_dir():
            raise PinitError(f"cannot write: the folder {os.fspath(parent)} does not exist", os.fspath(out_html))
    if png_dir is not None:
        folder = Path(png_dir)
        if folder.exists() and not folder.is_dir():
            raise PinitError("--png needs a folder, and this is not one", os.fspath(png_dir))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PinitError(f"cannot create the folder: {e.strerror}", os.fspath(png_dir)) from None
        for p in page.plots:
            target = folder / f"{p.stem}.png"
            _write(target, p.png)
            written.append(os.fspath(target))
    if out_html is not None:
        _write(out_html, page.html.encode("utf-8"))
        written.append(os.fspath(out_html))
    return written


def _write(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(target) as fd:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
