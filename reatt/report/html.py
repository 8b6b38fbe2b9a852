"""The one-file HTML report (``reatt report --html``): the study's question and spec, the
final-NLL table with Δ, its CI and verdict, the figures inline as SVG, each run's details and the
commands that reproduce the study.

One self-contained file: no script at all, no request to any network (its Content-Security-Policy
forbids both, so a browser refuses anything that tries), the figures drawn into the page. It is
rendered with Jinja2 from ``templates/report.html.j2`` with autoescape on: every study, variant
and config text is escaped; only the SVG that matplotlib wrote for us is inserted as markup.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt import states
from reatt.errors import StudyError
from reatt.files import write_atomic
from reatt.report.build import (
    COL_FEATURES,
    COL_MEAN,
    COL_METHOD,
    COL_N,
    COL_PARAMS,
    COL_PARAMS_NE,
    COL_PLANNED,
    COL_STD,
    COL_TPS,
    COL_VARIANT,
    Report,
)
from reatt.report.fair import COL_CHOSEN, COL_VERDICT
from reatt.report.format import ci_text, excludes_zero, fmt_num, incomparable_line, legend_line, params_text
from reatt.report.tables import shared_text

if TYPE_CHECKING:  # pragma: no cover
    from jinja2 import Environment
    from matplotlib.figure import Figure

    from reatt.report.details import StudyDetails

HTML_NAME = "report.html"
TEMPLATE = "report.html.j2"
_ID = re.compile(r'\bid="([^"]+)"')


def svg_text(fig: Figure, prefix: str) -> str:
    """The figure as an SVG element to put in a page: no XML prolog, sized by the page's CSS
    (its viewBox kept), and every id prefixed so that two figures in one page never share one.
    Text stays drawn as glyph paths (matplotlib's default): as text it would be set in whatever
    font the reader's browser has, wider or narrower than the one the layout was measured in."""
    import matplotlib

    buf = io.StringIO()
    # a fixed salt for the clip paths' ids, no date: the same data gives the same page
    with matplotlib.rc_context({"svg.hashsalt": f"reatt-{prefix}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    text = head + f' role="img" class="figure" aria-label="{prefix}"' + text[head_end:]
    ids = set(_ID.findall(text))
    if ids:  # matplotlib's ids are [A-Za-z0-9_-]; references are #id in href and url(#id)
        text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
        text = re.sub(
            r"#([A-Za-z0-9_-]+)",
            lambda m: f"#{prefix}-{m.group(1)}" if m.group(1) in ids else m.group(0),
            text,
        )
    return text


def _figures(report: Report) -> list[tuple[str, str, str]]:
    """(id, caption, SVG) of each figure; a figure the study cannot give (no metrics rows) has
    no SVG and says why in its caption."""
    from reatt.report.curves import plot_loss_curves
    from reatt.report.finals import plot_final_nll
    from reatt.report.sensitivity import plot_sensitivity

    several = bool((report.table[COL_N] > 1).any())
    plots: list[tuple[str, str, Callable[[Report], Figure]]] = [
        ("final-nll", "Final held-out NLL per variant, and Δ vs the reference", plot_final_nll),
        ("loss-curves", "Loss curves" + (" (band: min–max over seeds)" if several else ""), plot_loss_curves),
    ]
    if report.tuning is not None and not report.tuning.empty:
        plots.append(("lr-sensitivity", "Sensitivity to the tuned value", plot_sensitivity))
    out = []
    for name, caption, plot in plots:
        try:
            out.append((name, caption, svg_text(plot(report), name)))
        except StudyError as e:
            out.append((name, f"{caption}: not drawn: {e}", ""))
    return out


def _rows(report: Report) -> list[dict[str, Any]]:
    """The final-NLL table, one dict of display text per variant, best first."""
    rows = []
    for _, row in report.table.iterrows():
        n, planned = int(row[COL_N]), int(row[COL_PLANNED])
        nll = fmt_num(row[COL_MEAN])
        if nll and fmt_num(row[COL_STD]):
            nll += f" ± {fmt_num(row[COL_STD])}"
        verdict = str(row[COL_VERDICT])
        rows.append(
            {
                "variant": str(row[COL_VARIANT]),
                "features": str(row[COL_FEATURES]),
                "chosen": row[COL_CHOSEN] if isinstance(row[COL_CHOSEN], str) else "",
                "shared": shared_text(row) if report.tuned else "",
                "n": str(n) if n == planned else f"{n}/{planned}",
                "short": n < planned,
                "nll": nll or "no run",
                "delta": ci_text(row) if nll else "",
                "resolved": excludes_zero(row),
                "verdict": "" if verdict == "reference" else verdict,
                "verdict_class": verdict.replace(" ", "-"),
                "method": "" if row[COL_METHOD] == "reference" else str(row[COL_METHOD]),
                "params": params_text(row[COL_PARAMS], row[COL_PARAMS_NE]),
                "tps": fmt_num(row[COL_TPS], 0),
                "best": row[COL_VARIANT] == report.best,
            }
        )
    return rows


def _run_rows(details: StudyDetails) -> list[dict[str, Any]]:
    def secs(x: float | None) -> str:
        return "" if x is None else f"{x:,.1f}"

    return [
        {
            "run": r,
            "nll": "" if r.final_nll is None else f"{r.final_nll:.4f}",
            "tps": "" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}",
            "wall": secs(r.wall_time_s),
            "commit": r.git_commit[:10],
            "ok": r.state == states.COMPLETED,
        }
        for r in details.runs
    ]


def environment() -> Environment:
    """The templates' Jinja environment: autoescape on, an undefined name an error."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("reatt.report", "templates"),
        autoescape=select_autoescape(["j2", "html"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: Report, details: StudyDetails) -> str:
    """The report as one HTML document."""
    from markupsafe import Markup

    env = environment()

    figures = [(name, caption, Markup(svg)) for name, caption, svg in _figures(report)]
    return env.get_template(TEMPLATE).render(
        report=report,
        details=details,
        rows=_rows(report),
        run_rows=_run_rows(details),
        figures=figures,
        legend=legend_line(report).replace("`", ""),
        warning="" if report.comparable else incomparable_line(report, details=True),
        missing=list(report.missing.itertuples(index=False)),
        commands=details.commands(),
    )


def write_html(report: Report, details: StudyDetails, path: Path) -> Path:
    """Write the report to ``path`` (a directory gets report.html), atomically."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / HTML_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_html(report, details))
    return path
