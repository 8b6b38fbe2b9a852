"""Writing a report's files: tables (final_nll.md / .csv / .tex) and figures (PNG, SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reatt.report.build import Report
from reatt.report.tables import FORMATS, to_text


def write_report(
    report: Report,
    out_dir: Path,
    *,
    formats: Sequence[str] = ("markdown", "csv"),
    plot: bool = False,
) -> list[Path]:
    """Write final_nll.md / .csv / .tex (as ``formats`` ask; "table" writes nothing) and, with
    ``plot``, loss_curves.png/.svg and final_nll.png/.svg into ``out_dir``; return the paths."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; expected {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, name in (("markdown", "final_nll.md"), ("csv", "final_nll.csv"), ("latex", "final_nll.tex")):
        if fmt in formats:
            path = out_dir / name
            path.write_text(to_text(report, fmt), encoding="utf-8")
            written.append(path)
    if plot:
        from reatt.report.curves import plot_loss_curves
        from reatt.report.figures import save_figure
        from reatt.report.finals import plot_final_nll

        written += save_figure(plot_loss_curves(report), out_dir / "loss_curves")
        written += save_figure(plot_final_nll(report), out_dir / "final_nll")
    return written
