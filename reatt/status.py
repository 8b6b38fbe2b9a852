"""A study's live run states, and which runs a submit (re)starts.

``refresh`` asks Slurm once per command for the whole study (``slurm.query_jobs``: one
``squeue -t all``, which also shows jobs that ended in the last few minutes, then at most one
``sacct`` for the jobs the controller has forgotten), falls back to the run directory where
Slurm cannot tell (``rundir.state_from_files``), and records each run's state in the database
in one transaction.

Three rules hold throughout: a job is ``completed`` only when Slurm says COMPLETED *and* its
``final.json`` says completed; a job that left the controller but is not yet in the accounting
records (sacct lags by up to ~2 s) keeps its last state, never ``completed``; and where Slurm
could not be asked, only the run's own final.json changes its recorded state (anything else in
its files is a guess, given as the reason).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt import rundir, slurm, states
from reatt.errors import StudyError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from reatt.db import Run


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


# Slurm's job states (squeue %T, sacct State, scontrol JobState) -> reatt's run states
SLURM_ACTIVE = {
    "PENDING": states.PENDING,
    "RUNNING": states.RUNNING,
    "COMPLETING": states.RUNNING,
    "CONFIGURING": states.RUNNING,
    "RESIZING": states.RUNNING,
    "SIGNALING": states.RUNNING,
    "STAGE_OUT": states.RUNNING,
    "SUSPENDED": states.RUNNING,
    "STOPPED": states.RUNNING,
    "REQUEUED": states.REQUEUED,
    "REQUEUE_FED": states.REQUEUED,
    "REQUEUE_HOLD": states.REQUEUED,
    "SPECIAL_EXIT": states.REQUEUED,
    "RESV_DEL_HOLD": states.PENDING,
}
SLURM_TERMINAL = {
    "COMPLETED": states.COMPLETED,  # only with final.json completed; else failed
    "FAILED": states.FAILED,
    "OUT_OF_MEMORY": states.FAILED,
    "NODE_FAIL": states.FAILED,
    "BOOT_FAIL": states.FAILED,
    "CANCELLED": states.CANCELLED,
    "REVOKED": states.CANCELLED,
    "TIMEOUT": states.TIMEOUT,
    "DEADLINE": states.TIMEOUT,
    "PREEMPTED": states.PREEMPTED,
}
# a job unknown to squeue and sacct although accounting works is taken as ended (and its state
# read from its files) only once nothing of it changed for this long: sacct lags ~2 s
ACCOUNTING_GRACE_S = 120.0
# DB states whose Slurm job may still change: asked about at each refresh
WATCHED_STATES = states.ACTIVE_STATES | {states.UNKNOWN, states.PREEMPTED}


def map_slurm_state(
    info: slurm.JobInfo, work_dir: Path, out_file: Path | None = None, err_file: Path | None = None
) -> tuple[str, str | None]:
    """A run's (state, reason) from what Slurm says about its job (and its files where needed)."""
    word = info.state
    if word in SLURM_ACTIVE:
        state = SLURM_ACTIVE[word]
        if state == states.PENDING and out_file is not None and out_file.exists():
            # Slurm writes the .out file when a job starts: a pending job with one ran before
            state = states.REQUEUED
        reason = info.reason
        if word in ("SUSPENDED", "STOPPED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"):
            reason = f"Slurm: {word}" + (f" ({info.reason})" if info.reason else "")
        return state, reason
    if word not in SLURM_TERMINAL:
        return states.UNKNOWN, f"Slurm state {info.detail or word}"
    final = rundir.read_final(work_dir)
    if info.exit_code:
        exit_text = f" (exit {info.exit_code})"
    else:  # squeue gives no exit code, but a reason ("NonZeroExitCode")
        exit_text = f" ({info.reason})" if info.reason else ""
    if word == "COMPLETED":
        if final is not None:
            return final.state, final.reason
        return states.FAILED, f"Slurm: COMPLETED{exit_text} but the run wrote no final.json"
    state = SLURM_TERMINAL[word]
    if state == states.FAILED:
        if final is not None and final.state == states.FAILED:
            return state, final.reason
        tail = rundir.last_err_line(err_file)
        return state, f"Slurm: {info.detail or word}{exit_text}" + (f": {tail}" if tail else "")
    what = {
        states.CANCELLED: "cancelled",
        states.TIMEOUT: "time limit reached",
        states.PREEMPTED: "preempted",
    }
    return state, f"Slurm: {what[state]}" + (f" ({info.detail})" if info.detail else "")


def _slurm_run_state(run: Any, query: slurm.JobQuery, log_dir: Path, study: str) -> tuple[str, str | None]:
    work_dir = Path(run.work_dir)
    out_file, err_file = slurm.log_files(log_dir, study, run.name, run.job_id)
    info = query.jobs.get(run.job_id)
    if info is not None:
        if info.source == "sacct" and info.state not in SLURM_TERMINAL:
            # left the controller, but its accounting record is not final yet (sacct lags)
            return run.state, "left the queue; waiting for Slurm's accounting record"
        return map_slurm_state(info, work_dir, out_file, err_file)
    if not query.answered:
        problem = query.problems[-1] if query.problems else "Slurm did not answer"
        if not query.commands_found:
            # No Slurm commands here (a machine that shares the file system, not a login node):
            # a final.json written since the job was submitted is the run's own word on its end,
            # and is recorded. Anything else in the files is only a guess, given as the reason:
            # the .err file is appended by every attempt, and a job that was requeued (it
            # requeues itself before its time limit; preemption and node failure requeue it too)
            # is queued again although its file ends with Slurm's "CANCELLED"; a checkpoint says
            # nothing of whether the job still runs. Recorded, such a guess would end the run
            # for good: a cancelled or failed run is not watched any more, and
            # `submit --resubmit-failed` would start a second job on the same work dir.
            final = rundir.read_final(work_dir, since=run.submitted_at)
            if final is not None:
                return final.state, final.reason
            guess, why = rundir.state_from_files(work_dir, err_file, since=run.submitted_at)
            if guess != states.UNKNOWN:
                return run.state, f"{problem}; its files suggest {guess} ({why}); state as last seen"
        return run.state, f"{problem}; state as last seen"
    # Slurm knows nothing of the job: not in the controller (ended more than MinJobAge ago), not in sacct
    if query.accounting is False or _quiet_for(run, work_dir, out_file, err_file) > ACCOUNTING_GRACE_S:
        return rundir.state_from_files(work_dir, err_file, since=run.submitted_at)
    # accounting is on but has no record yet (it lags): never guess "completed" from a vanished job
    return run.state, "left the queue; no Slurm accounting record yet"


def _quiet_for(run: Any, work_dir: Path, *logs: Path) -> float:
    """Seconds since the run or its job last showed a sign of life (files, submission)."""
    import time

    from reatt.db import utc_now

    latest = 0.0
    for path in (work_dir / "final.json", work_dir / "loss.csv", work_dir, *logs):
        try:
            latest = max(latest, path.stat().st_mtime)
        except OSError:
            pass
    if run.submitted_at is not None:
        latest = max(latest, time.time() - (utc_now() - run.submitted_at).total_seconds())
    return time.time() - latest


def _live_process(pid: int) -> list[str] | None:
    """The arguments of the live (not zombie) process ``pid``; None if there is none."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return None
        return [a.decode(errors="replace") for a in cmdline]
    try:  # no /proc (macOS): ask ps
        r = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = r.stdout.strip()
    if r.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def _pid_is_training(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) `python -m reatt.train` process."""
    args = _live_process(pid)
    return args is not None and ("reatt.train" in args or any(a.endswith("reatt/train.py") for a in args))


def _local_run_state(run: Any) -> tuple[str, str | None]:
    """A local run's state: its process's (``local:<host>:<pid>``, or the older ``local:<pid>``),
    else its files'. A ``pending`` local run is claimed by a `reatt submit` (its pid) that is
    about to start it: pending while that process lives."""
    from reatt.local import parse_local_job_id, this_host  # sqlalchemy: only where there are local runs

    host, pid = parse_local_job_id(run.job_id) or (None, None)
    if host is not None and host != this_host():
        # not a process of this machine: its final.json (shared filesystem) may say it ended;
        # else only `reatt status` on that host can look at the process
        state, reason = rundir.state_from_files(Path(run.work_dir), since=run.submitted_at)
        if state in (states.COMPLETED, states.FAILED):
            return state, reason
        return run.state, f"runs on {host} (pid {pid}); `reatt status` there tells whether it still runs"
    if pid is not None:
        if run.state == states.PENDING and _live_process(pid) is not None:
            return run.state, run.state_reason
        if _pid_is_training(pid):
            return states.RUNNING, None
    state, reason = rundir.state_from_files(Path(run.work_dir), since=run.submitted_at)
    if state == states.UNKNOWN:
        reason = f"the local process {pid or '?'} is gone; {reason}"
    return state, reason


def _status(run: Any) -> RunStatus:
    work_dir = Path(run.work_dir)
    last = rundir.last_loss_row(work_dir / "loss.csv") or {}
    final = rundir.read_final(work_dir) if run.state == states.COMPLETED else None
    final_nll = final.final_nll if final is not None else None
    return RunStatus(
        name=run.name,
        variant=run.variant,
        seed=run.seed,
        state=run.state,
        reason=run.state_reason,
        job_id=run.job_id,
        executor=run.executor,
        last_step=last.get("step"),
        last_loss=last.get("loss"),
        last_val_loss=last.get("val_loss"),
        elapsed_s=last.get("elapsed_s"),
        final_nll=final_nll,
        work_dir=run.work_dir,
    )


def refresh(engine: Engine, study: str | None) -> tuple[str, list[RunStatus]]:
    """Each run's current state, recorded in the database; returns (study name, statuses) in
    plan order. Planned runs stay planned; finished ones keep their state."""
    from reatt import db

    with db.transaction(engine) as session:
        st = db.get_study(session, study)
        name, log_dir = st.name, Path(st.out_dir) / "slurm"
        seen = {r.id: (r.executor, r.job_id, r.state) for r in st.runs}
        watched = [
            r.job_id for r in st.runs if r.executor == "slurm" and r.job_id and r.state in WATCHED_STATES
        ]
    # Slurm is asked outside any transaction: a slow controller must not hold the database
    query = slurm.query_jobs(watched) if watched else slurm.JobQuery()
    with db.transaction(engine) as session:
        st = db.get_study(session, name)
        for run in st.runs:
            if seen.get(run.id) != (run.executor, run.job_id, run.state):
                continue  # changed meanwhile (a submit recorded a new job): keep that
            if run.state not in WATCHED_STATES or not run.job_id:
                continue
            if run.executor == "slurm":
                state, reason = _slurm_run_state(run, query, log_dir, name)
            elif run.executor == "local":
                state, reason = _local_run_state(run)
            else:
                continue
            run.state, run.state_reason = state, reason
        statuses = [_status(run) for run in st.runs]
    return name, statuses


def select_runs(
    runs: list[Run], *, resubmit_failed: bool, force: bool
) -> tuple[list[Run], list[tuple[str, str]]]:
    """The runs a submit starts, and the others as (name, state), both in the given order.

    Default: only ``planned`` runs. ``resubmit_failed``: also the failed, cancelled, timed-out,
    preempted, interrupted, broken and unknown ones (they resume from their checkpoint).
    ``force``: every run (callers move each run's directory aside first, so it starts over);
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
