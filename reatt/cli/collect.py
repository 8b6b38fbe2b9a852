"""``reatt collect [PATHS]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, StudyOpt, app, engine_for, say, user_errors


@app.command()
def collect(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Directory trees of runs made by hand with `python -m reatt.train` (optional)"),
    ] = None,
    *,
    study: StudyOpt = None,
    as_study: Annotated[
        str | None,
        typer.Option("--as", help="Study name for runs collected from PATHS [default: the dir name]"),
    ] = None,
    all_studies: Annotated[bool, typer.Option("--all", help="Collect every study in the database")] = False,
    db: DbOpt = None,
) -> None:
    """Read run directories (config, final.json, loss.csv) into the results database.

    Idempotent and incremental: unchanged runs are skipped; one transaction per collect.

    Example: reatt collect            (the latest study)
             reatt collect out/manual --as manual
    """
    from reatt.study.collect import collect as collect_runs

    with user_errors():
        result = collect_runs(
            engine_for(db, create=bool(paths)), study, paths or [], as_study=as_study, all_studies=all_studies
        )
    say(
        f"collected {', '.join(result.studies)}: {result.runs_read} run(s) read, "
        f"{result.runs_unchanged} unchanged, {result.runs_not_started} not started, "
        f"{result.metric_rows} metric rows"
    )
    for warning in result.warnings:
        say(warning, "warning:", "yellow")
    for st, run, reason in result.broken:
        say(f"{st}/{run}: {reason}", "broken", "red")
