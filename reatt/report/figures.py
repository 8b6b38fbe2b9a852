"""What the report's figures share: one color per variant, the reference's name, the caption of
what is missing or not comparable, and saving as PNG and SVG. seaborn and matplotlib are
imported inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.report.build import COL_METHOD, COL_N, COL_PLANNED, COL_VARIANT, Report
from reatt.report.format import incomparable_line

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

PNG_DPI = 150


def colors(report: Report) -> dict[str, Any]:
    """One color per variant, in plan order (so a variant keeps its color from study to study
    of the same matrix); the reference in near-black."""
    import seaborn as sns

    names = [str(v) for v in (report.variants or report.table[COL_VARIANT]) if v != report.reference]
    if len(names) <= 10:  # seaborn's colorblind palette, reordered so the first six differ most
        base = sns.color_palette("colorblind", 10)
        palette = [base[i] for i in (0, 1, 2, 4, 9, 3, 5, 8, 6, 7)][: len(names)]
    else:
        palette = sns.color_palette("husl", len(names))
    colors: dict[str, Any] = dict(zip(names, palette, strict=True))
    if report.reference is not None:
        colors[report.reference] = (0.1, 0.1, 0.1)
    return colors


def ref_label(report: Report) -> str:
    """How the figures name the reference: "baseline", or "baseline (all)" for leave-one-out."""
    ref = report.reference or "reference"
    return "baseline" if ref == "baseline" else f"baseline ({ref})"


def gaps_caption(fig: Figure, report: Report, *, delta: bool = False) -> None:
    """Under the figure, in red: that the runs' final NLLs are not comparable (measured on
    different held-out windows), and the variants with fewer completed seeds than planned."""
    import textwrap

    t = report.table
    lines = []
    if not report.comparable:
        warning = f"{incomparable_line(report, details=True)}."
        lines += textwrap.wrap(warning, 160)
    short = t[t[COL_N] < t[COL_PLANNED]]
    if not short.empty:
        parts = [f"{r[COL_VARIANT]} {int(r[COL_N])}/{int(r[COL_PLANNED])}" for _, r in short.iterrows()]
        text = f"Incomplete (seeds completed/planned): {', '.join(parts)}."
        if delta and (t[COL_METHOD] == "paired").any() and report.reference in set(short[COL_VARIANT]):
            text += f" Δ uses only the seeds {report.reference} completed."
        lines.append(text)
    if lines:
        fig.supxlabel("\n".join(lines) + " See final_nll.md.", fontsize="small", color="#b00020")


def save_figure(fig: Figure, base: Path) -> list[Path]:
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    fig.savefig(png, dpi=PNG_DPI)
    fig.savefig(svg, metadata={"Date": None})  # no timestamp: the same data gives the same file
    return [png, svg]
