"""``reatt status`` and ``reatt cancel``."""

from __future__ import annotations

import functools
import json
from collections import Counter
from typing import Annotated

import typer

from reatt.cli.app import DbOpt, StudyOpt, app, console, engine_for, say, user_errors

REASON_WIDTH = 20  # the reason wraps: it needs only some room
HIDDEN_FIRST = ("job", "elapsed", "loss", "step", "val loss")  # least useful first


@app.command()
def status(
    *,
    study: StudyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statuses as JSON")] = False,
    db: DbOpt = None,
) -> None:
    """Show each run's state, job id, last step and loss, and elapsed time.

    Asks Slurm once for the whole study (squeue, then sacct), else reads the run directories.

    Example: reatt status --study demo
    """
    from dataclasses import asdict

    from reatt.study.status import refresh

    with user_errors():
        name, statuses = refresh(engine_for(db), study)
    if as_json:
        print(json.dumps([asdict(s) for s in statuses], indent=2, default=str))
        return
    from rich import box
    from rich.markup import escape
    from rich.text import Text

    from reatt.terminal import FittingTable

    columns = {
        "run": [s.name for s in statuses],
        "state": [f"[{_state_colors().get(s.state, 'white')}]{s.state}[/]" for s in statuses],
        "job": [s.job_id or "" for s in statuses],
        "step": ["" if s.last_step is None else str(s.last_step) for s in statuses],
        "loss": [_fmt(s.last_loss) for s in statuses],
        "val loss": [_fmt(s.last_val_loss) for s in statuses],
        "elapsed": [_duration(s.elapsed_s) for s in statuses],
        "final NLL": [_fmt(s.final_nll) for s in statuses],
        "reason": [escape(s.reason or "") for s in statuses],
    }
    columns = {k: v for k, v in columns.items() if k in ("run", "state") or any(v)}  # no empty columns
    names = list(columns)
    table = FittingTable(
        title=f"study {name}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        droppable=[names.index(c) for c in HIDDEN_FIRST if c in columns],
        caps={names.index("reason"): REASON_WIDTH} if "reason" in columns else {},
        note="hidden for lack of width: {columns} (see --json)",
    )
    for col, values in columns.items():  # whole numbers or nothing: only the reason wraps
        width = max(len(col), *(len(Text.from_markup(v).plain) for v in values))
        table.add_column(col, overflow="fold", min_width=None if col == "reason" else width)
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    console.print(table)
    say(", ".join(f"{n} {state}" for state, n in Counter(s.state for s in statuses).items()))


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@app.command()
def cancel(*, study: StudyOpt = None, db: DbOpt = None) -> None:
    """Cancel a study's pending and running jobs (Slurm: one scancel call; local: SIGTERM to each
    training process on this machine, which checkpoints first).

    Example: reatt cancel --study demo
    """
    from reatt.study.status import cancel as cancel_jobs

    with user_errors():
        cancelled = cancel_jobs(engine_for(db), study)
    if cancelled:
        say(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
    else:
        say("no pending or running jobs to cancel")


@functools.cache
def _state_colors() -> dict[str, str]:
    from reatt import states  # here: `reatt --help` loads no stage

    return {
        states.COMPLETED: "green",
        states.RUNNING: "cyan",
        states.PENDING: "blue",
        states.REQUEUED: "blue",
        states.FAILED: "red",
        states.BROKEN: "red",
        states.CANCELLED: "yellow",
        states.TIMEOUT: "yellow",
        states.PREEMPTED: "yellow",
        states.INTERRUPTED: "yellow",
        states.DIVERGED: "magenta",
        states.PRUNED: "bright_black",  # set aside by tuning: neither a failure nor a result
    }
