"""Recording a launch as it goes: ``SubmitResult`` (what a submit did) and ``LaunchSession``, the
hooks an executor's launch reports each job through (claim, archive for ``--force``, launched,
ended), each recorded at once in a short transaction of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from reatt import rundir, states
from reatt.errors import DatabaseError
from reatt.executors.base import Job
from reatt.files import utc_now
from reatt.states import Archived, Claimed, Evidence, Released, RunState
from reatt.study import store
from reatt.transitions import next_state

DB_RETRY_S = 600.0  # how long a state change waits for a database another command holds


@dataclass
class SubmitResult:
    """What ``submit`` did, run names in plan order."""

    study: str
    executor: str  # its kind: "local" or "slurm"
    waits: bool  # the executor waited for the jobs to end (their outcomes are below)
    dry_run: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run, state or why it was taken)
    previews: list[tuple[str | None, str]] = field(default_factory=list)  # dry run: (script path, text)
    scripts: list[str] = field(default_factory=list)  # the scripts submitted or written
    archived: list[tuple[str, str]] = field(default_factory=list)  # --force: (run dir, moved to)
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (run, job id)
    completed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, reason)
    interrupted: list[str] = field(default_factory=list)  # stopped by a signal; submit again to resume
    diverged: list[tuple[str, str]] = field(default_factory=list)  # (run, where its loss became non-finite)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # tuning runs stopped behind a sibling
    not_started: list[str] = field(default_factory=list)  # selected, but Ctrl-C came first


@dataclass(frozen=True)
class _Seen:
    """A run's row as the selection saw it: a claim requires it unchanged, a release restores it."""

    state: str
    state_reason: str | None
    executor: str | None
    job_id: str | None
    sbatch_path: str | None
    submitted_at: Any

    @classmethod
    def of(cls, run: store.Run) -> _Seen:
        return cls(run.state, run.state_reason, run.executor, run.job_id, run.sbatch_path, run.submitted_at)


class LaunchSession:
    """The hooks an executor's launch reports through (``executors.base.Launch``): each call
    records at once, in a transaction of its own; pool threads may call them concurrently."""

    def __init__(
        self,
        engine: Engine,
        kind: str,
        force: bool,
        selected: Sequence[tuple[Job, store.Run]],
        result: SubmitResult,
        *,
        retry_s: float = DB_RETRY_S,
    ) -> None:
        """``selected``: each job to launch with its run's row as the selection saw it (the
        executor of ``kind`` runs them; ``force``: their old directories are moved aside);
        ``result`` is filled as they go; a record waits up to ``retry_s`` for a locked database."""
        self.engine, self.kind, self.force, self.result = engine, kind, force, result
        self.retry_s = retry_s
        self.rows = {job.name: (run.id, _Seen.of(run)) for job, run in selected}
        self.claims: dict[str, str] = {}  # run -> the job id it was claimed with
        self.moved: dict[str, str] = {}  # claimed run -> where --force moved its old directory
        self.done: set[str] = set()  # runs launched, ended or taken
        self.lock = threading.Lock()  # the result is filled from pool threads

    def claim(self, job: Job, job_id: str) -> str | None:
        """One atomic conditional UPDATE to ``pending`` (with ``job_id``, the launcher's own, until
        the job starts), applied only if the run's state and job id are still what the selection
        saw. None if it is ours; else what another command made of the run meanwhile."""
        run_id, seen = self.rows[job.name]
        t = store.Run
        claimed = next_state(RunState(seen.state, seen.state_reason), Claimed())
        same_job = t.job_id.is_(None) if seen.job_id is None else t.job_id == seen.job_id
        sql = (
            update(t)
            .where(t.id == run_id, t.state == seen.state, same_job)
            .values(
                state=claimed.state,
                state_reason=claimed.reason,
                executor=self.kind,
                job_id=job_id,
                sbatch_path=None,
                submitted_at=utc_now(),
            )
            .execution_options(synchronize_session=False)
        )

        def attempt(session: Session) -> str | None:
            if session.execute(sql).rowcount == 1:  # type: ignore[attr-defined]
                return None
            run = session.get(store.Run, run_id)
            if run is None:
                return "dropped from the plan"
            return f"{run.state}" + (f", job {run.job_id}" if run.job_id else "")

        taken = self._in_transaction(attempt)
        with self.lock:
            if taken is None:
                self.claims[job.name] = job_id
                return None
            why = f"taken by another command ({taken})"
            self.result.skipped.append((job.name, why))
            self.done.add(job.name)
            return why

    def release(self, job: Job) -> None:
        """Undo our claim of a run that was not started; a no-op if it is no longer ours."""
        run_id, seen = self.rows[job.name]
        with self.lock:
            job_id = self.claims.pop(job.name, None)
            moved = self.moved.pop(job.name, None)
        if job_id is None:
            return
        if moved is not None:  # its old directory is gone: it starts over, whatever it was

            def start_over(run: store.Run) -> None:
                if run.state == states.PENDING and run.job_id == job_id:  # still our claim
                    forget(run, moved, claimed=False)

            self._update(job.name, start_over)
            return
        t = store.Run
        back = next_state(RunState(states.PENDING), Released(RunState(seen.state, seen.state_reason)))
        sql = (
            update(t)
            .where(t.id == run_id, t.state == states.PENDING, t.job_id == job_id)
            .values(
                state=back.state,
                state_reason=back.reason,
                executor=seen.executor,
                job_id=seen.job_id,
                sbatch_path=seen.sbatch_path,
                submitted_at=seen.submitted_at,
            )
            .execution_options(synchronize_session=False)
        )
        self._in_transaction(lambda session: session.execute(sql))

    def archive(self, job: Job) -> Path | None:
        """``--force``: move the run's old directory aside. Its results are forgotten, and an
        unclaimed run is planned again, at once; a claimed run's are forgotten with its next
        record (started, ended), so that its launcher never waits for the database while it
        starts the job."""
        if not self.force:
            return None
        moved = rundir.archive(Path(job.work_dir))
        if moved is None:
            return None
        with self.lock:
            self.result.archived.append((job.work_dir, str(moved)))
            claimed = job.name in self.claims
            if claimed:
                self.moved[job.name] = str(moved)
        if not claimed:
            self._update(job.name, lambda run: forget(run, str(moved), claimed=False))
        return moved

    def launched(
        self, jobs: Sequence[Job], job_ids: Sequence[str], evidence: Evidence, script: str | None
    ) -> None:
        now = utc_now()

        with self.lock:
            moved = {job.name: self.moved.get(job.name) for job in jobs}

        def record(session: Session) -> None:
            for job, job_id in zip(jobs, job_ids, strict=True):
                run = session.get(store.Run, self.rows[job.name][0])
                if run is None:  # dropped from the plan meanwhile (plan --force)
                    continue
                if moved[job.name] is not None:
                    forget(run, str(moved[job.name]), claimed=True)
                run.job_id, run.executor, run.sbatch_path, run.submitted_at = (
                    job_id or None,
                    self.kind,
                    script,
                    now,
                )
                store.advance(run, evidence)

        self._in_transaction(record)  # may run ``record`` again: it keeps nothing between tries
        with self.lock:
            for job, job_id in zip(jobs, job_ids, strict=True):
                self.moved.pop(job.name, None)
                self.claims.pop(job.name, None)
                self.done.add(job.name)
                self.result.submitted.append((job.name, job_id))
            if script is not None and script not in self.result.scripts:
                self.result.scripts.append(script)

    def ended(self, job: Job, evidence: Evidence) -> RunState:
        outcome: list[RunState] = []
        with self.lock:
            moved = self.moved.get(job.name)

        def record(run: store.Run) -> None:
            if moved is not None:
                forget(run, moved, claimed=True)
            outcome[:] = [store.advance(run, evidence)]  # the try that committed

        self._update(job.name, record)
        new = outcome[0] if outcome else next_state(RunState(states.PENDING), evidence)
        with self.lock:
            self.moved.pop(job.name, None)
            self.claims.pop(job.name, None)
            self.done.add(job.name)
            if new.state == states.COMPLETED:
                self.result.completed.append(job.name)
            elif new.state == states.INTERRUPTED:
                self.result.interrupted.append(job.name)
            elif new.state == states.DIVERGED:
                self.result.diverged.append((job.name, new.reason or new.state))
            elif new.state == states.PRUNED:
                self.result.pruned.append((job.name, new.reason or new.state))
            else:
                self.result.failed.append((job.name, new.reason or new.state))
        return new

    def finish(self, jobs: Sequence[Job]) -> None:
        """After the launch: the runs never started, and every list in plan order."""
        order = {job.name: i for i, job in enumerate(jobs)}
        r = self.result
        r.not_started = [job.name for job in jobs if job.name not in self.done]
        r.completed.sort(key=order.__getitem__)
        r.interrupted.sort(key=order.__getitem__)
        for pairs in (r.failed, r.diverged, r.pruned, r.submitted, r.skipped):
            pairs.sort(key=lambda pair: order.get(pair[0], -1))

    def _update(self, name: str, change: Callable[[store.Run], None]) -> None:
        """Apply ``change`` to the run's row in a transaction of its own."""

        def apply(session: Session) -> None:
            run = session.get(store.Run, self.rows[name][0])
            if run is not None:  # None: dropped from the plan meanwhile (plan --force)
                change(run)

        self._in_transaction(apply)

    def _in_transaction(self, fn: Callable[[Session], Any]) -> Any:
        """``fn(session)`` in a transaction of its own, committed at once; its result.

        Another reatt command may hold the database for a while (a collect writes all its
        rows in one transaction); SQLite's busy timeout waits ``store.SQLITE_BUSY_TIMEOUT_S``, and
        this keeps trying for ``retry_s``, so a long collect never costs a local run its recorded
        state."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                with store.transaction(self.engine) as session:
                    return fn(session)
            except (OperationalError, DatabaseError) as e:  # store.transaction wraps the first
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def forget(run: store.Run, moved: str, *, claimed: bool) -> None:
    """The run starts over in a new directory: nothing collected from the old one (results,
    metrics rows, files fingerprint) is kept on it; unclaimed, it is planned again."""
    store.advance(run, Archived(moved, claimed))
    if not claimed:
        run.job_id = None
    store.clear_results(run)  # they belong to the directory moved aside
