"""``reatt submit [--cluster]``: one command, one result, whichever executor runs the jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from reatt.cli.app import DbOpt, StudyOpt, app, engine_for, say, user_errors

if TYPE_CHECKING:
    from reatt.executors.base import Executor


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
    gpus: Annotated[
        int | None, typer.Option(min=0, help="GPUs of a one-process job: 0 or 1 (ranks: gpus_per_node)")
    ] = None,
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
            raise typer.BadParameter("only applies with --cluster", param_hint=", ".join(used))
    elif jobs != 1:
        raise typer.BadParameter(
            "only applies without --cluster (Slurm runs the jobs in parallel)", param_hint="--jobs"
        )
    from reatt.study.submit import submit as submit_runs

    executor: Executor
    if cluster:
        from reatt.executors.slurm.executor import SlurmExecutor

        overrides = {("cpus_per_task" if k == "cpus" else k): v for k, v in slurm_options.items()}
        executor = SlurmExecutor(array=array, throttle=throttle, overrides=overrides)
    else:
        from reatt.executors.local import LocalExecutor

        executor = LocalExecutor(jobs=jobs)
    with user_errors():
        result = submit_runs(
            engine_for(db), study, executor, dry_run=dry_run, resubmit_failed=resubmit_failed, force=force
        )
    _print(result)
    if result.failed or result.interrupted or result.diverged:
        raise typer.Exit(code=1)


def _print(result: Any) -> None:
    """What a submit did (``reatt.study.submit.SubmitResult``), whichever executor ran it."""
    for path, text in result.previews:
        if path is not None:
            print(f"# ----- {path}")  # plain print: a script must not be re-wrapped
        print(text)
    for old, new in result.archived:
        say(f"moved aside: {old} -> {new}")
    for name, state in result.skipped:
        say(f"skipped {name}: {state}")
    if result.dry_run:
        if not result.waits:  # a queuing executor writes its scripts
            say(f"dry run: wrote {len(result.scripts)} script(s); submitted nothing")
        return
    rerun = "(see `reatt status`; --resubmit-failed or --force to rerun)"
    if not result.waits:  # queued: they run later
        for name, job_id in result.submitted:
            if job_id:
                say(f"submitted {name}: job {job_id}")
            else:
                say(
                    f"submitted {name}, but sbatch printed no job id: see `reatt status`",
                    "warning:",
                    "yellow",
                )
        say(f"nothing to submit {rerun}" if not result.submitted else "follow with: reatt status")
        return
    if result.completed:
        say(", ".join(result.completed), "completed:", "green")
    for name in result.interrupted:
        say(f"{name}: checkpoint saved; `reatt submit --resubmit-failed` resumes it", "interrupted", "yellow")
    if result.not_started:
        say(", ".join(result.not_started), "not started:", "yellow")
    for name, reason in result.pruned:  # a result of tuning: not a failure
        say(f"{name}: {reason}", "pruned", "bright_black")
    for name, reason in result.diverged:
        say(f"{name}: {reason}", "diverged", "bold magenta")
    for name, reason in result.failed:
        say(f"{name}: {reason}", "failed", "bold red")
    if not (result.completed or result.failed or result.interrupted or result.diverged or result.pruned):
        say(f"nothing to run {rerun}")
