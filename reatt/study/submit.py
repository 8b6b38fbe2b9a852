"""``reatt submit [--cluster]``: the one way a study's runs are started, whatever the executor.

refresh the states -> select the runs -> (dry run: preview) -> ``executor.launch``, which
reports each job back through a ``LaunchSession``: claim, archive for ``--force``, launched,
ended. Each of those is recorded at once, in a short transaction of its own, so a failure
later leaves what was started known, and a ``reatt status`` in another terminal sees it.
``reatt submit`` and ``reatt submit --cluster`` differ only in the executor they pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine

from reatt import rundir, states
from reatt.errors import StudyError
from reatt.executors.base import Executor, Job
from reatt.study import store
from reatt.study.launch import DB_RETRY_S, LaunchSession, SubmitResult, forget
from reatt.study.plan import jobs_of
from reatt.study.selection import needs_collect, record_choices
from reatt.study.status import place_of, refresh
from reatt.study.tune import EVAL, TUNE

__all__ = ["LaunchSession", "SubmitResult", "select_runs", "submit"]


def select_runs(
    runs: Sequence[store.Run], *, resubmit_failed: bool, force: bool
) -> tuple[list[store.Run], list[tuple[str, str]]]:
    """The runs a submit starts, and the others as (name, state), both in the given order.

    Default: only ``planned`` runs. ``resubmit_failed``: also the failed, cancelled, timed-out,
    preempted, interrupted, broken and unknown ones (they resume from their checkpoint).
    ``force``: every run (each run's directory is moved aside first, so it starts over);
    refused while any run is pending or running, which `reatt cancel` stops first.
    """
    if force:
        active = [r for r in runs if r.state in states.ACTIVE_STATES]
        if active:
            listed = ", ".join(f"{r.name} ({r.state}, job {r.job_id})" for r in active)
            raise StudyError(
                f"--force would start over runs that are still active: {listed}. "
                "Cancel them first with `reatt cancel` (or wait until they end), then submit again"
            )
        return list(runs), []
    wanted = {states.PLANNED} | (states.RESUBMITTABLE_STATES if resubmit_failed else frozenset())
    chosen = [r for r in runs if r.state in wanted]
    skipped = [(r.name, r.state) for r in runs if r.state not in wanted]
    return chosen, skipped


def submit(
    engine: Engine,
    study: str | None,
    executor: Executor,
    *,
    dry_run: bool = False,
    resubmit_failed: bool = False,
    force: bool = False,
) -> SubmitResult:
    """Start the study's selected runs with ``executor`` (see ``select_runs``).

    States are refreshed first: a run left "running" by a submit that was killed is seen as
    gone. ``dry_run`` starts nothing and returns what would run (scripts are written). A failed
    run does not stop the others. Returns when the executor's launch returns: when every job has
    ended (local), or once they are all queued (Slurm).

    A tuned study runs in two stages (``reatt.study.selection``): an evaluation run starts only
    once its variant's tuning runs have ended, been collected and chosen from. An executor that
    waits for its jobs (local) runs both stages in one submit; a queuing one (Slurm) submits
    stage 1, and a later submit, once those jobs have ended, stage 2 (a follow-up submit rather
    than ``--dependency=afterok``: the value stage 2 runs at is only known from stage 1's results,
    and afterok would leave stage 2 queued forever behind one failed tuning run).
    """
    name, _ = refresh(engine, study)
    with store.transaction(engine) as session:
        tuned = any(r.stage == TUNE for r in store.get_study(session, name).runs)
    if tuned and force and not dry_run:
        _start_over(engine, name)  # every run and every choice: stage 1 runs first again
        force = False
    result: SubmitResult | None = None
    launched: list[Job] = []
    hooks: LaunchSession | None = None
    rounds = 2 if tuned and executor.waits and not dry_run else 1
    for _round in range(rounds):
        waiting: dict[str, str] = {}
        if tuned:
            with store.transaction(engine) as session:
                collect_first = needs_collect(list(store.get_study(session, name).runs))
            if collect_first:
                from reatt.study.collect import collect

                collect(engine, study=name)
            waiting = record_choices(engine, name)
        with store.transaction(engine) as session:
            st = store.get_study(session, name)
            chosen, skipped = select_runs(list(st.runs), resubmit_failed=resubmit_failed, force=force)
            by_name = {j.name: j for j in jobs_of(st)}
            done = {job.name for job in launched}
            selected = sorted(
                ((by_name[r.name], r) for r in chosen if r.name not in waiting and r.name not in done),
                key=lambda pair: pair[0].position,
            )
            skipped = [(n, s) for n, s in skipped if n not in done]
            skipped += [(r.name, f"stage 2 {waiting[r.name]}") for r in chosen if r.name in waiting]
            place = place_of(st)
        executor.check(place)  # bad options are refused whether or not anything is to be started
        if result is None:
            result = SubmitResult(name, executor.kind, executor.waits, dry_run=dry_run)
        result.skipped = skipped
        jobs = [job for job, _ in selected]
        if not jobs:
            break
        if dry_run:
            result.previews = [(p.path, p.text) for p in executor.preview(place, jobs)]
            result.scripts = [p for p, _ in result.previews if p is not None]
            return result
        # a claiming executor (local) holds its runs for as long as they train: its records wait
        # for a database another command holds; a queuing one (Slurm) fails fast and cancels the
        # job it could not record
        retry_s = DB_RETRY_S if executor.claims else 0.0
        hooks = LaunchSession(engine, executor.kind, force, selected, result, retry_s=retry_s)
        executor.launch(place, jobs, hooks)
        launched += jobs
    assert result is not None
    if tuned and launched and not executor.waits:  # stage 1 just queued: say so, not "planned"
        again = "; submit again once it has ended" if executor.kind == "slurm" else ""
        waiting = record_choices(engine, name)
        result.skipped = [
            (n, f"stage 2 {waiting[n]}{again}" if n in waiting else s) for n, s in result.skipped
        ]
    if hooks is not None:
        hooks.finish(launched)
    return result


def _start_over(engine: Engine, name: str) -> None:
    """``--force`` in a tuned study: every run's directory moved aside, its results and every
    choice of stage 2 forgotten, before anything starts (stage 2 must wait for the new stage 1).
    Refused while a run is active, as ``select_runs`` says."""
    with store.transaction(engine) as session:
        runs = list(store.get_study(session, name).runs)
        select_runs(runs, resubmit_failed=False, force=True)
        for run in runs:
            moved = rundir.archive(Path(run.work_dir))
            if moved is not None or run.state != states.PLANNED:
                forget(run, str(moved) if moved is not None else "nowhere (it had none)", claimed=False)
            if run.stage == EVAL:
                run.tuning = None
