"""``reatt submit --cluster``: a study's runs as Slurm jobs, one sbatch per run or one job array.

Launch renders every script before writing or submitting any (a bad value stops it all),
writes them to ``<out_dir>/<study>/sbatch/``, and submits them one by one, each job id recorded
as soon as sbatch returns it: a failing sbatch leaves the runs before it recorded and its own
untouched. It returns without waiting for any job.

Poll asks Slurm once for the whole study (``client.query_jobs``: one ``squeue -t all``, which
also shows jobs that ended in the last few minutes, then at most one ``sacct`` for the jobs the
controller has forgotten) and falls back to the run directory where Slurm cannot tell.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reatt import rundir, states
from reatt.errors import ReattError, SlurmError
from reatt.executors.base import Job, Launch, Place, Preview, Tracked, read_files
from reatt.executors.slurm import client
from reatt.executors.slurm.client import JobInfo, JobQuery
from reatt.executors.slurm.logs import (
    ended_by,
    job_name,
    job_script,
    last_err_line,
    log_dir,
    log_files,
    script_dir,
)
from reatt.executors.slurm.render import ScriptContext, render_array_script, render_job_script
from reatt.executors.slurm.settings import SlurmSettings, settings_of
from reatt.files import utc_now, write_atomic
from reatt.rundir import attempt_text
from reatt.states import Active, Elsewhere, Ended, Evidence, Gone, Submitted, Unreachable, Waiting

# Slurm's job states (squeue %T, sacct State) -> reatt's run states
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
_HELD = ("SUSPENDED", "STOPPED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD")
_ENDED_HOW = {
    states.CANCELLED: "cancelled",
    states.TIMEOUT: "time limit reached",
    states.PREEMPTED: "preempted",
}
# a job unknown to squeue and sacct although accounting works is taken as ended (and its state
# read from its files) only once nothing of it changed for this long: sacct lags ~2 s
ACCOUNTING_GRACE_S = 120.0


def job_evidence(
    info: JobInfo, work_dir: Path, out_file: Path | None = None, err_file: Path | None = None
) -> Active | Ended:
    """What Slurm's answer about a run's job says (with the run's files where they matter)."""
    word = info.state
    if word in SLURM_ACTIVE:
        state = SLURM_ACTIVE[word]
        if state == states.PENDING and out_file is not None and out_file.exists():
            # Slurm writes the .out file when a job starts: a pending job with one ran before
            state = states.REQUEUED
        reason = info.reason
        if word in _HELD:
            reason = f"Slurm: {word}" + (f" ({info.reason})" if info.reason else "")
        return Active(state, reason)
    if word not in SLURM_TERMINAL:
        return Ended(states.UNKNOWN, f"Slurm state {info.detail or word}")
    if info.exit_code:
        exit_text = f" (exit {info.exit_code})"
    else:  # squeue gives no exit code, but a reason ("NonZeroExitCode")
        exit_text = f" ({info.reason})" if info.reason else ""
    state = SLURM_TERMINAL[word]
    # the job is over: its final.json (of whichever attempt) has the last word on these two
    if state == states.COMPLETED:
        return Ended(state, f"Slurm: COMPLETED{exit_text}", read_files(work_dir))
    if state == states.FAILED:
        tail = last_err_line(err_file)
        reason = f"Slurm: {info.detail or word}{exit_text}" + (f": {tail}" if tail else "")
        return Ended(state, reason, read_files(work_dir))
    return Ended(state, f"Slurm: {_ENDED_HOW[state]}" + (f" ({info.detail})" if info.detail else ""))


class SlurmExecutor:
    """Runs a study's jobs on Slurm (``reatt submit --cluster``)."""

    kind = "slurm"
    claims = False
    waits = False

    def __init__(
        self,
        *,
        array: bool = False,
        throttle: int | None = None,
        overrides: dict[str, Any] | None = None,
        project_dir: str | None = None,
        templates: str | None = None,
    ) -> None:
        self.array, self.throttle = array, throttle
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.project_dir, self.templates = project_dir, templates

    def settings(self, place: Place) -> SlurmSettings:
        """The study's [slurm] table with this submit's overrides, checked."""
        return settings_of(place.spec, place.study, **self.overrides)

    def check(self, place: Place) -> None:
        """The study's [slurm] table with this submit's overrides must make a valid script."""
        self.settings(place)

    # --- launch ---

    def _render(self, place: Place, jobs: Sequence[Job]) -> list[tuple[Path, str, list[Job]]]:
        """Every script of the submit, rendered (nothing written yet): (path, text, its jobs)."""
        settings = self.settings(place)
        ctx = ScriptContext.for_study(place.out_dir, settings, self.project_dir)
        if self.array:
            throttle = settings.array_throttle if self.throttle is None else self.throttle
            text = render_array_script(list(jobs), settings, ctx, throttle, templates=self.templates)
            return [(_next_array_path(script_dir(place.out_dir, place.study), place.study), text, list(jobs))]
        return [
            (
                job_script(place.out_dir, place.study, job.name),
                render_job_script(job, settings, ctx, templates=self.templates),
                [job],
            )
            for job in jobs
        ]

    def _write(self, place: Place, jobs: Sequence[Job]) -> list[tuple[Path, str, list[Job]]]:
        scripts = self._render(place, jobs)  # all of them first: a bad value stops it all
        script_dir(place.out_dir, place.study).mkdir(parents=True, exist_ok=True)
        for path, text, _ in scripts:
            write_atomic(path, text, durable=False)  # rewritten at each submit: no fsync for 6,000
        return scripts

    def preview(self, place: Place, jobs: Sequence[Job]) -> list[Preview]:
        return [Preview(text, str(path)) for path, text, _ in self._write(place, jobs)]

    def launch(self, place: Place, jobs: Sequence[Job], hooks: Launch) -> None:
        scripts = self._write(place, jobs)
        log_dir(place.out_dir).mkdir(parents=True, exist_ok=True)
        done: list[tuple[str, str]] = []
        for path, _, group in scripts:
            for job in group:
                hooks.archive(job)
            try:
                ids = self._submit_one(path, group, hooks)
            except SlurmError as e:
                before = ", ".join(f"{r} (job {j})" for r, j in done)
                raise SlurmError(
                    f"{e}\nnot submitted: {', '.join(job.name for job in group)} (state unchanged)"
                    + (f"; submitted before it, job ids recorded: {before}" if before else "")
                    + ". Fix the problem, then `reatt submit --cluster` submits the rest."
                ) from None
            done.extend((job.name, i) for job, i in zip(group, ids, strict=True))

    def _submit_one(self, script: Path, jobs: list[Job], hooks: Launch) -> list[str]:
        """sbatch one script and record its runs' job ids at once (an array task's id is
        ``<arrayid>_<position>``); if recording fails (or is interrupted), cancel the job again,
        and if that fails too, say which job now runs untracked. Returns the ids."""
        submission = client.sbatch(script)
        name = job_name(jobs[0].study, None if self.array else jobs[0].name)
        job_id = submission.job_id or client.find_job_id(name)  # no id printed: by its name
        if job_id is None:  # queued all the same: recorded so, never as "not submitted"
            blank = [""] * len(jobs)
            self._record_or_cancel(hooks, jobs, blank, Submitted(no_id=submission.output), script, name)
            return blank
        ids = [f"{job_id}_{job.position}" if self.array else job_id for job in jobs]
        self._record_or_cancel(hooks, jobs, ids, Submitted(), script, job_id)
        return ids

    def _record_or_cancel(
        self, hooks: Launch, jobs: list[Job], ids: list[str], evidence: Evidence, script: Path, job: str
    ) -> None:
        """Record the queued jobs; if that fails (or is interrupted), cancel the job again (by
        its id, or by its name where the id is not known), and if that fails too, say which job
        now runs untracked."""
        try:
            hooks.launched(jobs, ids, evidence, str(script))
        except BaseException as e:
            by_name = not any(ids)
            try:
                client.scancel_name(job) if by_name else client.scancel([job])
            except SlurmError as cancel_error:
                job_id = f"named {job}" if by_name else job
                # not a SlurmError: the submit would report the runs as "not submitted"
                how = f"scancel --name {job}" if by_name else f"scancel {job}"
                raise ReattError(
                    f"Slurm job {job_id} ({script}) was submitted, but recording it in the database "
                    f"failed ({type(e).__name__}: {e}) and cancelling it failed too ({cancel_error}). "
                    f"The job may run without reatt knowing it: cancel it yourself with "
                    f"`{how}`, then submit again"
                ) from e
            raise

    # --- poll and cancel ---

    def poll(self, place: Place, runs: Sequence[Tracked]) -> dict[int, Evidence]:
        ids = [r.job_id for r in runs if r.job_id]
        query = client.query_jobs(ids)
        return {r.key: self._evidence(place, r, query) for r in runs}

    def _evidence(self, place: Place, run: Tracked, query: JobQuery) -> Evidence:
        work_dir = Path(run.work_dir)
        if not run.job_id:  # queued, but sbatch gave no id: only its files can tell
            return Elsewhere(
                run.state_reason or "submitted without a job id", read_files(work_dir, run.submitted_at)
            )
        out_file, err_file = log_files(log_dir(place.out_dir), place.study, run.name, run.job_id)
        info = query.jobs.get(run.job_id)
        if info is not None:
            if info.source == "sacct" and info.state not in SLURM_TERMINAL:
                # left the controller, but its accounting record is not final yet (sacct lags)
                return Waiting("left the queue; waiting for Slurm's accounting record")
            return job_evidence(info, work_dir, out_file, err_file)

        def files() -> states.Files:
            return read_files(work_dir, run.submitted_at, ended_by(attempt_text(err_file)))

        if not query.answered:
            problem = query.problems[-1] if query.problems else "Slurm did not answer"
            # without Slurm's commands here at all (a machine that shares the file system, not a
            # login node), the run's files are all there is to go by
            files_only = not query.commands_found
            return Unreachable(problem, files_only, files() if files_only else None)
        # Slurm knows nothing of the job: not in the controller (ended more than MinJobAge ago), not in sacct
        if query.accounting is False or _quiet_for(run, work_dir, out_file, err_file) > ACCOUNTING_GRACE_S:
            return Gone(files())
        # accounting is on but has no record yet (it lags): never guess "completed" from a vanished job
        return Waiting("left the queue; no Slurm accounting record yet")

    def cancel(self, place: Place, runs: Sequence[Tracked]) -> dict[int, str]:
        """One ``scancel`` for all the runs' jobs (jobs that already ended are not an error); a
        run queued without a job id is cancelled by its job name (``scancel --name``)."""
        asked = {r.key: r.job_id for r in runs if r.job_id}
        client.scancel(list(dict.fromkeys(asked.values())))
        names = {r.key: _job_name(place, r) for r in runs if not r.job_id}
        for name in dict.fromkeys(names.values()):  # an array's runs share its one job name
            client.scancel_name(name)
        return asked | {key: f"--name {name}" for key, name in names.items()}


def _job_name(place: Place, run: Tracked) -> str:
    """The job name of a run's job: its own script's (``<run>.sbatch``), or else its array's."""
    own = run.script is None or Path(run.script).name == job_script(place.out_dir, place.study, run.name).name
    return job_name(place.study, run.name if own else None)


def _next_array_path(sbatch_dir: Path, study: str) -> Path:
    taken = [
        int(m.group(1))
        for p in sbatch_dir.glob(f"{study}-array-*.sbatch")
        if (m := re.fullmatch(re.escape(study) + r"-array-(\d+)\.sbatch", p.name))
    ]
    return sbatch_dir / f"{study}-array-{max(taken, default=0) + 1}.sbatch"


def _quiet_for(run: Tracked, work_dir: Path, *logs: Path) -> float:
    """Seconds since the run or its job last showed a sign of life (files, submission)."""
    latest = 0.0
    for path in (work_dir / rundir.FINAL, work_dir / rundir.LOSS, work_dir, *logs):
        try:
            latest = max(latest, path.stat().st_mtime)
        except OSError:
            pass
    if run.submitted_at is not None:
        latest = max(latest, time.time() - (utc_now() - run.submitted_at).total_seconds())
    return time.time() - latest
