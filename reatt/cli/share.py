"""``reatt compare`` (studies side by side) and ``reatt export`` (runs and metrics as files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, app, console, engine_for, say, user_errors
from reatt.report import ExportFormat


@app.command()
def compare(
    studies: Annotated[list[str], typer.Argument(help="Two or more study names", show_default=False)],
    *,
    out: Annotated[Path, typer.Option("--out", help="Directory for compare.md and compare.csv")] = Path(
        "out/compare"
    ),
    html: Annotated[bool, typer.Option("--html", help="Also write compare.html")] = False,
    db: DbOpt = None,
) -> None:
    """The same variants across studies side by side: final NLL and Δ vs each study's reference.

    Writes compare.md and compare.csv (the raw numbers) into --out; --html adds compare.html.

    Example: reatt compare python-docs debian-docs
    """
    from reatt.report.compare import compare_studies, render_compare, write_compare

    with user_errors():
        result = compare_studies(engine_for(db), studies)
        written = write_compare(result, out, html=html)
    console.print(render_compare(result))
    for note in result.notes:
        say(note, "note:", "bold")
    say("wrote " + ", ".join(str(p) for p in written))


@app.command()
def export(
    *,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", "-s", help="Study name, repeatable [default: the latest planned]"),
    ] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="File format")] = ExportFormat.csv,
    out: Annotated[Path, typer.Option("--out", help="Directory for runs.* and metrics.*")] = Path(
        "out/export"
    ),
    db: DbOpt = None,
) -> None:
    """Every run and every loss.csv row of the studies, as runs.csv and metrics.csv (or Parquet).

    Read them in a notebook with pandas: pd.read_parquet("out/export/runs.parquet").

    Example: reatt export --format parquet --out results/
    """
    from reatt.report.export import export as export_study

    with user_errors():
        names: list[str | None] = list(study) if study else [None]
        written = export_study(engine_for(db), names, out, fmt)
    say("wrote " + ", ".join(str(p) for p in written))
