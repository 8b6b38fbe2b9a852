"""Writing a report's files: tables (final_nll.md / .csv / .tex) and figures (PNG, SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reatt.errors import ReattError
from reatt.files import write_atomic
from reatt.report import FORMATS
from reatt.report.build import Report
from reatt.report.tables import to_text


def write_report(
    report: Report,
    out_dir: Path,
    *,
    formats: Sequence[str] = ("markdown", "csv"),
    plot: bool = False,
) -> list[Path]:
    """Write final_nll.md / .csv / .tex (as ``formats`` ask; "table" writes nothing) and, with
    ``plot``, loss_curves.png/.svg and final_nll.png/.svg (a tuned study: lr_sensitivity.png/.svg too)
    into ``out_dir``; return the paths."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; expected {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReattError(f"{out_dir} is not a directory: give --out a directory for the report's files")
    written: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for fmt, name in (("markdown", "final_nll.md"), ("csv", "final_nll.csv"), ("latex", "final_nll.tex")):
            if fmt in formats:
                write_atomic(out_dir / name, to_text(report, fmt))  # a full disk leaves the old file
                written.append(out_dir / name)
        if plot:
            from reatt.report.curves import plot_loss_curves
            from reatt.report.figures import save_figure
            from reatt.report.finals import plot_final_nll

            written += save_figure(plot_loss_curves(report), out_dir / "loss_curves")
            written += save_figure(plot_final_nll(report), out_dir / "final_nll")
            if report.tuning is not None and not report.tuning.empty:
                from reatt.report.sensitivity import plot_sensitivity

                written += save_figure(plot_sensitivity(report), out_dir / "lr_sensitivity")
    except OSError as e:
        done = f"; written before it: {', '.join(map(str, written))}" if written else ""
        raise ReattError(f"cannot write the report into {out_dir}: {e.strerror or e}{done}") from None
    return written
