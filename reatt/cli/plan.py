"""``reatt plan SPEC``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, app, console, engine_for, say, user_errors


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="Ablation spec (TOML), e.g. ablations/demo.toml")],
    *,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job specs as JSON (for scripts)")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the plan of a study whose spec changed")
    ] = False,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Plan a changed spec as a new study <name>-vN")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Expand an ablation spec into jobs and record the study in the database.

    Planning the same spec twice changes nothing.

    Example: reatt plan ablations/demo.toml
    """
    from reatt.study.plan import plan_study
    from reatt.study.spec import PLAN_KEYS, load_spec

    with user_errors():
        parsed = load_spec(spec)
        result = plan_study(parsed, engine_for(db, create=True), force=force, new_version=new_version)
    if as_json:
        print(json.dumps([j.to_json() for j in result.jobs], indent=2))
        return
    from rich.table import Table

    table = Table(
        title=f"study {result.study}: {len(result.jobs)} jobs ({result.action})", title_justify="left"
    )
    table.add_column("#", justify="right")
    table.add_column("run", no_wrap=True)
    table.add_column("seed", justify="right")
    table.add_column("overrides beyond the base", overflow="fold")
    for j in result.jobs:
        extra = [
            f"{k}={v!r}"
            for k, v in j.overrides.items()
            if k not in PLAN_KEYS and (k not in parsed.base or parsed.base[k] != v)
        ]
        table.add_row(str(j.position), j.name, str(j.seed), "\n".join(extra) or "—")
    console.print(table)
    if result.jobs:
        say(f"work dirs: {Path(result.jobs[0].work_dir).parent}/<run>")
    for old, new in result.moved:
        say(f"moved the changed run's directory aside: {old} -> {new}")
    for name in result.dropped:
        say(f"dropped run {name} (no longer in the spec; its files are kept)")
    say("next: reatt submit            (this machine)\n      reatt submit --cluster  (Slurm)")
