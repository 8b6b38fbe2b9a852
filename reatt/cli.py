"""The ``reatt`` command line: plan, submit, status, cancel, collect, report, train.

Each command parses its options, calls one plain function (which tests call directly), and
prints the result. A ``ReattError`` becomes ``Error: <message>`` and exit code 1, without a
traceback. Heavy libraries (torch, pandas, seaborn, and SQLAlchemy) are imported inside the
functions that need them, so ``reatt --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from reatt.errors import ReattError

app = typer.Typer(
    name="reatt",
    help="Architecture ablations of a small GPT, on this machine or on Slurm.\n\n"
    "Typical study: reatt plan ablations/demo.toml && reatt submit && reatt collect && reatt report --plot",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="Results database: a file path or SQLAlchemy URL [default: $REATT_DB or results.db]"
    ),
]
StudyOpt = Annotated[
    str | None, typer.Option("--study", "-s", help="Study name [default: the study planned most recently]")
]


def say(text: str, label: str = "", style: str = "") -> None:
    """Print ``text`` literally (no rich markup: user text holds brackets like [base]),
    after an optional styled ``label``."""
    from rich.text import Text

    line = Text.assemble((label, style), " " if label else "", text)
    console.print(line, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    from rich.text import Text

    err_console.print(Text.assemble(("Error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ReattError into a one-line error and exit code 1."""
    try:
        yield
    except ReattError as e:
        fail(str(e))


def engine_for(db: str | None, *, create: bool = False) -> Any:
    """The results database; only `plan` and `collect PATH` may create it."""
    from reatt.db import open_db

    return open_db(db, create=create)


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
    from reatt.plan import PLAN_KEYS, load_spec, plan_study

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


@app.command()
def submit(
    *,
    study: StudyOpt = None,
    cluster: Annotated[
        bool, typer.Option("--cluster", help="Submit to Slurm with sbatch (default: run here)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write and print what would run; run nothing")
    ] = False,
    array: Annotated[
        bool, typer.Option("--array", help="With --cluster: one job array for the study")
    ] = False,
    throttle: Annotated[
        int | None, typer.Option("--throttle", min=0, help="With --array: at most N tasks at once (%N)")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Without --cluster: runs in parallel")] = 1,
    resubmit_failed: Annotated[
        bool,
        typer.Option(
            "--resubmit-failed",
            help="Also resubmit runs that failed, were cancelled, timed out, were preempted or interrupted "
            "(they resume from their checkpoints)",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Resubmit every run from scratch (old run dirs are moved aside)")
    ] = False,
    partition: Annotated[str | None, typer.Option(help="Slurm partition (overrides the spec)")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account")] = None,
    qos: Annotated[str | None, typer.Option(help="Slurm QOS")] = None,
    time: Annotated[str | None, typer.Option(help="Slurm time limit, e.g. 02:00:00")] = None,
    cpus: Annotated[int | None, typer.Option(min=1, help="CPUs per task")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per job, e.g. 16G")] = None,
    gpus: Annotated[int | None, typer.Option(min=0, help="GPUs per job")] = None,
    db: DbOpt = None,
) -> None:
    """Run a study's planned jobs here, or submit them to Slurm with --cluster.

    Runs already submitted, running or completed are skipped.

    Example: reatt submit --cluster --partition gpu --time 02:00:00
    """
    slurm_options = dict(
        partition=partition, account=account, qos=qos, time=time, cpus=cpus, mem=mem, gpus=gpus
    )
    if not cluster:
        used = [f"--{k}" for k, v in slurm_options.items() if v is not None]
        used = ["--array"] * array + ["--throttle"] * (throttle is not None) + used
        if used:
            fail(f"{', '.join(used)} only apply with --cluster")
    elif jobs != 1:
        fail("--jobs only applies without --cluster (Slurm runs the jobs in parallel)")
    with user_errors():
        engine = engine_for(db)
        if cluster:
            from reatt.slurm import submit_cluster

            overrides = {("cpus_per_task" if k == "cpus" else k): v for k, v in slurm_options.items()}
            result = submit_cluster(
                engine,
                study,
                dry_run=dry_run,
                array=array,
                resubmit_failed=resubmit_failed,
                force=force,
                overrides=overrides,
                throttle=throttle,
            )
            _print_cluster_submit(result)
            return
        from reatt.local import submit_local

        local = submit_local(
            engine, study, jobs=jobs, dry_run=dry_run, resubmit_failed=resubmit_failed, force=force
        )
    _print_local_submit(local)
    if local.failed or local.interrupted:
        raise typer.Exit(code=1)


def _print_cluster_submit(result: Any) -> None:
    if result.dry_run:
        for path in result.scripts:
            print(f"# ----- {path}")  # plain print: a script must not be re-wrapped
            print(Path(path).read_text())
    for old, new in result.archived:
        say(f"moved aside: {old} -> {new}")
    for name, state in result.skipped:
        say(f"skipped {name}: {state}")
    if result.dry_run:
        say(f"dry run: wrote {len(result.scripts)} script(s); submitted nothing")
        return
    for name, job_id in result.submitted:
        say(f"submitted {name}: job {job_id}")
    if not result.submitted:
        say("nothing to submit (see `reatt status`; --resubmit-failed or --force to rerun)")
    else:
        say("follow with: reatt status")


def _print_local_submit(result: Any) -> None:
    for cmd in result.commands:  # dry run
        print(cmd)
    for old, new in result.archived:
        say(f"moved aside: {old} -> {new}")
    for name, state in result.skipped:
        say(f"skipped {name}: {state}")
    if result.completed:
        say(", ".join(result.completed), "completed:", "green")
    for name in result.interrupted:
        say(f"{name}: checkpoint saved; `reatt submit --resubmit-failed` resumes it", "interrupted", "yellow")
    if result.not_started:
        say(", ".join(result.not_started), "not started:", "yellow")
    for name, reason in result.failed:
        say(f"{name}: {reason}", "failed", "bold red")
    if not (result.dry_run or result.completed or result.failed or result.interrupted):
        say("nothing to run (see `reatt status`; --resubmit-failed or --force to rerun)")


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

    from reatt.status import refresh

    with user_errors():
        name, statuses = refresh(engine_for(db), study)
    if as_json:
        print(json.dumps([asdict(s) for s in statuses], indent=2, default=str))
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from reatt import states

    colors = {
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
    }
    table = Table(title=f"study {name}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = {
        "run": [s.name for s in statuses],
        "state": [f"[{colors.get(s.state, 'white')}]{s.state}[/]" for s in statuses],
        "job": [s.job_id or "" for s in statuses],
        "step": ["" if s.last_step is None else str(s.last_step) for s in statuses],
        "loss": [_fmt(s.last_loss) for s in statuses],
        "val loss": [_fmt(s.last_val_loss) for s in statuses],
        "elapsed": [_duration(s.elapsed_s) for s in statuses],
        "final NLL": [_fmt(s.final_nll) for s in statuses],
        "reason": [escape(s.reason or "") for s in statuses],
    }
    columns = {k: v for k, v in columns.items() if k in ("run", "state") or any(v)}  # no empty columns
    widths = {
        col: max(len(col), *(len(Text.from_markup(v).plain) for v in values))
        for col, values in columns.items()
    }
    if "reason" in widths:
        widths["reason"] = min(widths["reason"], 20)  # the reason wraps: it needs only some room
    hidden = []
    for col in ("job", "elapsed", "loss", "step", "val loss"):  # least useful first
        if sum(widths.values()) + 3 * len(widths) <= console.width:  # padding and separators
            break
        if col in widths:
            del widths[col], columns[col]
            hidden.append(col)
    for col in columns:  # whole numbers or nothing: only the reason wraps
        table.add_column(col, overflow="fold", min_width=None if col == "reason" else widths[col])
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    if hidden:
        table.caption = f"hidden for lack of width: {', '.join(hidden)} (see --json)"
    console.print(table)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    say(", ".join(f"{n} {state}" for state, n in counts.items()))


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
    """Cancel a study's pending and running Slurm jobs (one scancel call).

    Example: reatt cancel --study demo
    """
    from reatt.slurm import cancel as cancel_jobs

    with user_errors():
        cancelled = cancel_jobs(engine_for(db), study)
    if cancelled:
        say(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
    else:
        say("no pending or running jobs to cancel")


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
    from reatt.collect import collect as collect_runs

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


@app.command()
def report(
    *,
    study: StudyOpt = None,
    plot: Annotated[
        bool, typer.Option("--plot", help="Also write loss-curve and final-NLL figures (PNG, SVG)")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="What to print: table, markdown, csv or latex")
    ] = "table",
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

    Writes final_nll.md and final_nll.csv (and final_nll.tex with --format latex); --plot adds figures.

    Example: reatt report --plot
    """
    formats = ("table", "markdown", "csv", "latex")
    if fmt not in formats:
        fail(f"--format {fmt!r}: expected one of {', '.join(formats)}")
    from reatt.report import build_report, render_table, to_text, write_report

    with user_errors():
        rep = build_report(engine_for(db), study)
        out_dir = out or rep.report_dir
        written = write_report(
            rep,
            out_dir,
            formats=("markdown", "csv", "latex") if fmt == "latex" else ("markdown", "csv"),
            plot=plot,
        )
    if fmt == "table":
        console.print(render_table(rep))
    else:
        print(to_text(rep, fmt))
    for note in rep.notes:
        say(note, "note:", "bold")
    say("wrote " + ", ".join(str(p) for p in written))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train one variant: the same as `python -m reatt.train [--key=value ...]` (--help lists the keys).

    Example: reatt train --model.rope=True --trainer.max_iters=500 --system.work_dir=out/rope
    """
    import os

    from reatt.plan import TRAIN_ENV

    missing = {k: v for k, v in TRAIN_ENV.items() if os.environ.get(k) != v}
    if missing:  # the allocator setting only works from process start: re-exec with it
        env = {**os.environ, **missing}
        os.execvpe(sys.executable, [sys.executable, "-m", "reatt.train", *ctx.args], env)
    from reatt.train import main as train_main

    raise typer.Exit(code=train_main(list(ctx.args)))


def main() -> None:
    app()
