"""``reatt report [--plot] [--html]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, StudyOpt, app, console, engine_for, say, user_errors
from reatt.report import ReportFormat as Format


@app.command()
def report(
    *,
    study: StudyOpt = None,
    plot: Annotated[
        bool, typer.Option("--plot", help="Also write loss-curve and final-NLL figures (PNG, SVG)")
    ] = False,
    html: Annotated[
        bool,
        typer.Option("--html", help="Also write report.html: one self-contained page, figures inline (SVG)"),
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="What to print")] = Format.table,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for the files [default: <out_dir>/<study>/report, or <dir>/report if collected]",
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Final held-out NLL per variant (mean, std, n, difference to the baseline with a 95% CI).

    Writes final_nll.md and final_nll.csv (and final_nll.tex with --format latex); --plot adds figures;
    --html adds report.html (table, figures, runs, spec and the commands to reproduce, in one file).

    Example: reatt report --plot --html
    """
    from reatt.report.build import build_report
    from reatt.report.tables import render_table, to_text
    from reatt.report.write import write_report  # figures: seaborn only once they are drawn

    with user_errors():
        engine = engine_for(db)
        rep = build_report(engine, study)
        out_dir = out or rep.report_dir
        written = write_report(
            rep,
            out_dir,
            formats=("markdown", "csv", "latex") if fmt is Format.latex else ("markdown", "csv"),
            plot=plot,
        )
        if html:
            from reatt.report.details import study_details
            from reatt.report.html import write_html

            written.append(write_html(rep, study_details(engine, rep.study), out_dir))
    if fmt is Format.table:
        console.print(render_table(rep))
    else:
        print(to_text(rep, fmt.value))
    for note in rep.notes:
        say(note, "note:", "bold")
    say("wrote " + ", ".join(str(p) for p in written))
