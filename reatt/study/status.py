"""``reatt status`` and ``reatt cancel``: a study's live run states, from each run's executor.

``refresh`` asks each executor that holds watched runs of the study to ``poll`` them (the
Slurm executor: one ``squeue -t all`` and at most one ``sacct`` for the whole study; the local
one: the process table), outside any transaction, then records what each run's evidence makes
of its state (``store.advance``) in one transaction. A run that changed meanwhile (another
command recorded a new job for it) keeps that change.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from reatt import rundir, states
from reatt.executors.base import Place, Tracked
from reatt.executors.registry import executor_for
from reatt.states import CancelRequested, Evidence
from reatt.study import store


@dataclass
class RunStatus:
    """One row of `reatt status`."""

    name: str
    variant: str
    seed: int
    state: str
    reason: str | None
    job_id: str | None
    executor: str | None
    last_step: int | None
    last_loss: float | None
    last_val_loss: float | None
    elapsed_s: float | None  # training wall time so far (loss.csv), summed over resumes
    final_nll: float | None  # final.json's, once completed
    work_dir: str


def place_of(st: store.Study) -> Place:
    return Place(st.name, Path(st.out_dir), dict(st.spec or {}))


def tracked(run: store.Run) -> Tracked:
    job_id = run.job_id or ""  # "": queued under an id its executor could not read
    return Tracked(
        run.id, run.name, job_id, run.work_dir, run.state, run.state_reason, run.submitted_at, run.sbatch_path
    )


def _by_executor(runs: list[store.Run], wanted: frozenset[str]) -> dict[str, list[Tracked]]:
    """The runs in ``wanted`` states that an executor launched, by the kind of that executor."""
    out: dict[str, list[Tracked]] = defaultdict(list)
    for run in runs:
        if run.executor and (run.job_id or run.sbatch_path) and run.state in wanted:
            out[run.executor].append(tracked(run))
    return out


def refresh(engine: Engine, study: str | None) -> tuple[str, list[RunStatus]]:
    """Each run's current state, recorded in the database; returns (study name, statuses) in
    plan order. Planned runs stay planned; finished ones keep their state."""
    with store.transaction(engine) as session:
        st = store.get_study(session, study)
        name, place = st.name, place_of(st)
        seen = {r.id: (r.executor, r.job_id, r.state) for r in st.runs}
        watched = _by_executor(list(st.runs), states.WATCHED_STATES)
    # executors are asked outside any transaction: a slow Slurm controller must not hold the database
    evidence: dict[int, Evidence] = {}
    for kind, runs in watched.items():
        executor = executor_for(kind)
        if executor is not None:
            evidence.update(executor.poll(place, runs))
    with store.transaction(engine) as session:
        st = store.get_study(session, name)
        for run in st.runs:
            if seen.get(run.id) != (run.executor, run.job_id, run.state):
                continue  # changed meanwhile (a submit recorded a new job): keep that
            if run.id in evidence:
                store.advance(run, evidence[run.id])
        statuses = [_status(run) for run in st.runs]
    return name, statuses


def _status(run: store.Run) -> RunStatus:
    work_dir = Path(run.work_dir)
    last = rundir.last_loss_row(work_dir / rundir.LOSS)
    final = rundir.read_final(work_dir) if run.state == states.COMPLETED else None
    nll = final.record.final_nll if final is not None and final.record is not None else None
    return RunStatus(
        name=run.name,
        variant=run.variant,
        seed=run.seed,
        state=run.state,
        reason=run.state_reason,
        job_id=run.job_id,
        executor=run.executor,
        last_step=last.step if last else None,
        last_loss=last.loss if last else None,
        last_val_loss=last.val_loss if last else None,
        elapsed_s=last.elapsed_s if last else None,
        final_nll=float(nll) if nll is not None else None,  # a number: read_final checked it
        work_dir=run.work_dir,
    )


def cancel(engine: Engine, study: str | None) -> list[str]:
    """Ask the executors of the study's pending and running jobs to stop them; returns the job ids.

    One refresh picks the jobs, and each executor is asked once for all of its runs (Slurm: one
    ``scancel``; local: SIGTERM to each training process on this machine); Slurm is not asked
    again. A cancelled job ends only once it has checkpointed, so its run keeps its active state,
    noted as cancelled, until `reatt status` sees the end: meanwhile no submit starts a second job
    on its work dir.
    """
    name, _ = refresh(engine, study)
    with store.transaction(engine) as session:
        st = store.get_study(session, name)
        place = place_of(st)
        active = _by_executor(list(st.runs), states.ACTIVE_STATES)
    asked: dict[int, str] = {}
    try:
        for kind, runs in active.items():
            executor = executor_for(kind)
            if executor is not None:
                asked.update(executor.cancel(place, runs))
    finally:  # also when an executor fails: the jobs asked so far are asked
        if asked:
            with store.transaction(engine) as session:
                for run in store.get_study(session, name).runs:
                    if run.id in asked and run.state in states.ACTIVE_STATES:
                        # without a job id, its end cannot be watched: cancelled now
                        store.advance(run, CancelRequested(watched=bool(run.job_id)))
    return list(dict.fromkeys(asked.values()))
