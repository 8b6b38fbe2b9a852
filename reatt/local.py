"""``reatt submit`` without ``--cluster``: run a study's jobs on this machine.

Each job is ``python -m reatt.train <JobSpec.argv()>`` in its own process (stdout and stderr
appended to ``<work_dir>/train.log``), sequentially or ``jobs`` at a time from a thread pool.
The database learns each run's state as it changes, one short transaction at a time (a
``reatt status`` in another terminal sees a run as running while it runs); no transaction is
held open while a job runs. A failed run is recorded and reported, and the others go on.

Right before starting a run, its pool thread claims it with one conditional UPDATE (the run's
state and job id must still be what the selection saw); a run another command (a second
``reatt submit``, local or ``--cluster``) took meanwhile is skipped and reported, never started
twice. A started run's job id is ``local:<host>:<pid>`` (``parse_local_job_id`` also reads the
older ``local:<pid>``).

Ctrl-C asks every running job to checkpoint and stop (SIGINT, which the training program
answers by saving ``ckpt.pt`` and exiting 75), records them as interrupted, and starts nothing
more; a second Ctrl-C kills them. ``reatt submit --resubmit-failed`` resumes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from reatt import db, plan, rundir, states
from reatt.errors import DatabaseError, ReattError
from reatt.rundir import this_host

EXECUTOR = "local"
LOG_NAME = "train.log"
EXIT_OK, EXIT_INTERRUPTED = 0, 75  # reatt.train's exit codes (not imported: that pulls in torch)
LOG_TAIL_LINES = 3  # lines of train.log quoted in the reason of a run that left no final.json
POLL_S = 0.5  # how often the display looks at the running jobs' loss.csv
DB_RETRY_S = 600.0  # how long a state change waits for a database another command holds
TAKEN = "taken"  # an outcome, not a run state: another command claimed the run first


@dataclass
class LocalResult:
    """What ``submit_local`` did, run names in plan order."""

    study: str
    completed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, reason)
    interrupted: list[str] = field(default_factory=list)  # stopped by Ctrl-C; submit again to resume
    # (run, its state) not selected; or (run, "taken by another command (...)"): claimed
    # by another submit between this one's selection and its start
    skipped: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # dry run: each job's shell command line
    not_started: list[str] = field(default_factory=list)  # selected, but Ctrl-C came first
    archived: list[tuple[str, str]] = field(default_factory=list)  # --force: (run dir, moved to)
    dry_run: bool = False


def local_job_id(pid: int) -> str:
    """``local:<host>:<pid>``: a local job's id (the pid alone is ambiguous across machines)."""
    return f"local:{this_host()}:{pid}"


def parse_local_job_id(job_id: str | None) -> tuple[str | None, int] | None:
    """(host, pid) of a local job id; host is None for the older ``local:<pid>`` form.
    None if ``job_id`` is not a local job id."""
    if not job_id or not job_id.startswith("local:"):
        return None
    host, _, pid = job_id[len("local:") :].rpartition(":")
    if not pid.isdigit():
        return None
    return host or None, int(pid)


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask: what Slurm or taskset gives us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def train_command(job: plan.JobSpec) -> list[str]:
    """The argv that trains ``job``: this Python, ``-m reatt.train``, the job's overrides."""
    return [sys.executable, "-m", plan.TRAIN_MODULE, *job.argv()]


def train_env_changes(job: plan.JobSpec, jobs: int) -> dict[str, str]:
    """What a job's environment adds to ours.

    ``plan.TRAIN_ENV`` always. With several jobs at once and no thread count chosen (neither
    ``OMP_NUM_THREADS`` in our environment nor ``system.num_threads`` in the job), each job
    gets an equal share of the CPUs, so parallel runs do not oversubscribe them. When reatt
    runs from a source checkout that is not installed, the checkout goes on ``PYTHONPATH`` so
    the job trains with the same reatt whatever the current directory.
    """
    env = dict(plan.TRAIN_ENV)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ and not job.overrides.get("system.num_threads"):
        env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // jobs))
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env


def shell_line(job: plan.JobSpec, jobs: int) -> str:
    """A copy-pasteable shell line doing what ``submit_local`` does for ``job``."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in train_env_changes(job, jobs).items())
    log = shlex.quote(str(Path(job.work_dir) / LOG_NAME))
    return f"{env} {shlex.join(train_command(job))} >> {log} 2>&1"


@dataclass(frozen=True)
class _Seen:
    """A run's row as the selection saw it: the claim requires it unchanged."""

    state: str
    state_reason: str | None
    executor: str | None
    job_id: str | None
    sbatch_path: str | None
    submitted_at: dt.datetime | None

    @classmethod
    def of(cls, run: db.Run) -> _Seen:
        return cls(run.state, run.state_reason, run.executor, run.job_id, run.sbatch_path, run.submitted_at)


@dataclass
class _Outcome:
    name: str
    state: str  # completed, failed, interrupted, TAKEN, or "" (not started)
    reason: str | None = None
    archived: tuple[str, str] | None = None


@dataclass
class _Event:
    kind: str  # "start", "end" or "taken"
    name: str
    text: str
    outcome: _Outcome | None = None


class _Runner:
    """Starts the jobs (from pool threads), records their states, stops them on Ctrl-C."""

    def __init__(self, engine: Engine, jobs: int, force: bool) -> None:
        self.engine, self.jobs, self.force = engine, jobs, force
        self.claim_id = local_job_id(os.getpid())  # a claimed run's job id until its process starts
        self.lock = threading.Lock()
        self.stopping = False  # Ctrl-C: start nothing more
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.signalled: set[str] = set()
        self.events: queue.Queue[_Event] = queue.Queue()

    # --- called from the main thread ---
    def interrupt(self, sig: int = signal.SIGINT) -> int:
        """Stop starting jobs; send ``sig`` to every running one. Returns how many got it."""
        with self.lock:
            self.stopping = True
            live = {n: p for n, p in self.procs.items() if p.poll() is None}
            for name, proc in live.items():
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:  # pragma: no cover - exited in between
                    continue
                self.signalled.add(name)
            return len(live)

    def running(self) -> list[str]:
        with self.lock:
            return [n for n, p in self.procs.items() if p.poll() is None]

    # --- called from the pool's threads ---
    def run(self, run_id: int, job: plan.JobSpec, seen: _Seen) -> _Outcome:
        with self.lock:
            if self.stopping:
                return _Outcome(job.name, "")
        taken = self._claim(run_id, seen)  # outside the lock: it may wait for the database
        if taken is not None:
            outcome = _Outcome(job.name, TAKEN, f"taken by another command ({taken})")
            self.events.put(_Event("taken", job.name, outcome.reason or "", outcome))
            return outcome
        try:
            outcome = self._start_and_wait(run_id, job)
        except BaseException:
            with contextlib.suppress(Exception):
                self._release(run_id, seen)  # a no-op once the run was recorded as started
            raise
        if not outcome.state:  # Ctrl-C came between the claim and the start
            self._release(run_id, seen)
        return outcome

    def _start_and_wait(self, run_id: int, job: plan.JobSpec) -> _Outcome:
        work_dir = Path(job.work_dir)
        archived = None
        with self.lock:  # so that Ctrl-C either sees this process or stops it from starting
            if self.stopping:
                return _Outcome(job.name, "")
            cmd = train_command(job)
            try:
                if self.force:
                    moved = rundir.archive(work_dir)
                    if moved is not None:
                        archived = (str(work_dir), str(moved))
                work_dir.mkdir(parents=True, exist_ok=True)
                log = open(work_dir / LOG_NAME, "ab")
            except OSError as e:
                outcome = _Outcome(job.name, states.FAILED, f"cannot prepare {work_dir}: {e}", archived)
                self._record_end(run_id, outcome)
                return outcome
            stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            log.write(f"=== reatt submit (local) {stamp}: {shlex.join(cmd)}\n".encode())
            log.flush()
            log_start = log.tell()
            old_final = _stat(work_dir / "final.json")  # a failed attempt's, until the job replaces it
            try:
                proc = subprocess.Popen(
                    cmd,
                    env={**os.environ, **train_env_changes(job, self.jobs)},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as e:
                log.close()
                outcome = _Outcome(job.name, states.FAILED, f"cannot start {cmd[0]}: {e}", archived)
                self._record_end(run_id, outcome)
                return outcome
            self.procs[job.name] = proc
        log.close()  # the child holds its own copy
        t0 = time.monotonic()
        try:
            self._record_start(run_id, proc.pid, archived is not None)
        except BaseException:
            proc.send_signal(signal.SIGINT)  # we cannot track it: stop it (it checkpoints)
            proc.wait()
            raise
        self.events.put(_Event("start", job.name, f"pid {proc.pid}, log {work_dir / LOG_NAME}"))
        rc = proc.wait()
        outcome = self._outcome(job, rc, log_start, old_final)
        outcome.archived = archived
        self._record_end(run_id, outcome)
        took = f"{time.monotonic() - t0:.1f} s"
        self.events.put(_Event("end", job.name, took, outcome))
        return outcome

    def _outcome(
        self, job: plan.JobSpec, rc: int, log_start: int, old_final: tuple[int, int] | None
    ) -> _Outcome:
        work_dir = Path(job.work_dir)
        path = work_dir / "final.json"
        try:
            final = rundir.read_json(path)
        except (OSError, ValueError) as e:
            final, final_problem = None, f"final.json unreadable ({e})"
        else:
            final_problem = "no final.json" if final is None else f"final.json status {final.get('status')!r}"
        if rc != EXIT_OK and final is not None and _stat(path) == old_final:
            # an earlier attempt's record: this one stopped before replacing it (e.g. exit 2)
            final, final_problem = None, "no new final.json"
        if rc == EXIT_OK and final is not None and final.get("status") == states.COMPLETED:
            nll = final.get("final_nll")
            return _Outcome(job.name, states.COMPLETED, f"final NLL {nll:.4f}" if nll is not None else None)
        if rc == EXIT_INTERRUPTED:
            return _Outcome(
                job.name,
                states.INTERRUPTED,
                "stopped with a checkpoint (exit 75); `reatt submit --resubmit-failed` resumes it",
            )
        if final is not None and final.get("status") == states.FAILED:
            return _Outcome(job.name, states.FAILED, str(final.get("error") or "final.json: failed"))
        with self.lock:
            signalled = job.name in self.signalled
        if signalled:  # stopped by our Ctrl-C before it could checkpoint (e.g. still starting up)
            return _Outcome(job.name, states.INTERRUPTED, f"stopped by Ctrl-C ({_exit_text(rc)})")
        if rc == EXIT_OK:
            return _Outcome(job.name, states.FAILED, f"exit 0 but {final_problem}")
        tail = _log_tail(work_dir / LOG_NAME, log_start)
        return _Outcome(job.name, states.FAILED, _exit_text(rc) + (f": {tail}" if tail else ""))

    def _claim(self, run_id: int, seen: _Seen) -> str | None:
        """Take the run for this command: one atomic conditional UPDATE to ``pending`` (with this
        submit's pid as job id until the training process starts), applied only if the run's
        state and job id are still what the selection saw. None if taken; else what another
        command made of the run meanwhile, e.g. "running, job local:host:123"."""
        t = db.Run
        same_job = t.job_id.is_(None) if seen.job_id is None else t.job_id == seen.job_id
        claim = (
            update(t)
            .where(t.id == run_id, t.state == seen.state, same_job)
            .values(
                state=states.PENDING,
                state_reason="starting (reatt submit, local)",
                executor=EXECUTOR,
                job_id=self.claim_id,
                sbatch_path=None,
                submitted_at=db.utc_now(),
            )
            .execution_options(synchronize_session=False)
        )

        def attempt(session: Session) -> str | None:
            if session.execute(claim).rowcount == 1:  # type: ignore[attr-defined]
                return None
            run = session.get(db.Run, run_id)
            if run is None:
                return "dropped from the plan"
            return f"{run.state}" + (f", job {run.job_id}" if run.job_id else "")

        return self._in_transaction(attempt)

    def _release(self, run_id: int, seen: _Seen) -> None:
        """Undo our claim of a run that was not started (Ctrl-C came first); a no-op if the run
        is no longer claimed by us."""
        t = db.Run
        release = (
            update(t)
            .where(t.id == run_id, t.state == states.PENDING, t.job_id == self.claim_id)
            .values(
                state=seen.state,
                state_reason=seen.state_reason,
                executor=seen.executor,
                job_id=seen.job_id,
                sbatch_path=seen.sbatch_path,
                submitted_at=seen.submitted_at,
            )
            .execution_options(synchronize_session=False)
        )
        self._in_transaction(lambda session: session.execute(release))

    def _record_start(self, run_id: int, pid: int, fresh: bool) -> None:
        def change(run: db.Run) -> None:
            run.state, run.state_reason = states.RUNNING, None
            run.executor, run.job_id = EXECUTOR, local_job_id(pid)
            run.sbatch_path = None
            run.submitted_at = db.utc_now()
            if fresh:  # the results and metrics collected so far belong to the directory moved aside
                from reatt.collect import clear_results

                clear_results(run)

        self._update(run_id, change)

    def _record_end(self, run_id: int, outcome: _Outcome) -> None:
        def change(run: db.Run) -> None:
            run.state = outcome.state
            run.state_reason = None if outcome.state == states.COMPLETED else outcome.reason

        self._update(run_id, change)

    def _update(self, run_id: int, change: Callable[[db.Run], None]) -> None:
        """Apply ``change`` to the run's row in a transaction of its own, committed at once."""

        def apply(session: Session) -> None:
            run = session.get(db.Run, run_id)
            if run is not None:  # None: dropped from the plan meanwhile (plan --force)
                change(run)

        self._in_transaction(apply)

    def _in_transaction(self, fn: Callable[[Session], Any]) -> Any:
        """``fn(session)`` in a transaction of its own, committed at once; its result.

        Another reatt command may hold the database for a while (a collect writes all its
        rows in one transaction); SQLite's busy timeout waits 30 s, and this keeps trying for
        DB_RETRY_S, so a long collect never costs a run its recorded state."""
        deadline = time.monotonic() + DB_RETRY_S
        while True:
            try:
                with db.transaction(self.engine) as session:
                    return fn(session)
            except (OperationalError, DatabaseError) as e:  # db.transaction wraps the first
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _log_tail(path: Path, start: int, max_bytes: int = 16384) -> str:
    """The last few non-empty lines this attempt wrote to train.log, joined with ' | '."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])


def submit_local(
    engine: Engine,
    study: str | None,
    *,
    jobs: int = 1,
    dry_run: bool = False,
    resubmit_failed: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> LocalResult:
    """Run the study's selected jobs here, ``jobs`` at a time, and record their states.

    The runs are chosen by ``status.select_runs`` after a ``status.refresh``: runs already
    submitted, running or completed are skipped; ``resubmit_failed`` reruns the failed,
    cancelled, timed-out and interrupted ones (resuming from their checkpoints); ``force``
    reruns all, each run's old directory moved aside first (refused while one is active).
    ``dry_run`` runs nothing and returns the command lines.
    A failed run does not stop the others. Returns when every started job has ended.
    """
    from reatt.status import refresh, select_runs

    if jobs < 1:
        raise ReattError(f"--jobs {jobs}: expected at least 1")
    # current states first: a run left "running" by a submit that was killed is seen as gone
    name, _ = refresh(engine, study)
    with db.transaction(engine) as session:
        st = db.get_study(session, name)
        to_submit, skipped = select_runs(list(st.runs), resubmit_failed=resubmit_failed, force=force)
        by_name = {j.name: j for j in plan.jobs_of(st)}
        selected = sorted(
            ((r.position, r.id, by_name[r.name], _Seen.of(r)) for r in to_submit), key=lambda t: t[0]
        )
    result = LocalResult(study=name, skipped=skipped, dry_run=dry_run)
    if dry_run:
        result.commands = [shell_line(job, jobs) for _, _, job, _ in selected]
        return result
    if not selected:
        return result

    runner = _Runner(engine, jobs, force)
    display = _display(show_progress, [job for _, _, job, _ in selected])
    outcomes: dict[str, _Outcome] = {}
    interrupts = 0
    with display, ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="reatt-job") as pool:
        futures: list[Future[_Outcome]] = [
            pool.submit(runner.run, rid, job, seen) for _, rid, job, seen in selected
        ]
        pending = set(futures)
        while pending:
            try:
                _, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                _drain(runner, display)
                display.tick(runner.running())
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    n = runner.interrupt(signal.SIGINT)
                    display.message(
                        f"Ctrl-C: asked {n} running job(s) to checkpoint and stop; "
                        "starting nothing more (Ctrl-C again to kill them)"
                    )
                else:
                    n = runner.interrupt(signal.SIGKILL)
                    display.message(f"Ctrl-C again: killed {n} job(s)")
        _drain(runner, display)
        for fut in futures:
            out = fut.result()  # a bug in a pool thread surfaces here
            outcomes[out.name] = out
    for _, _, job, _ in selected:
        out = outcomes[job.name]
        if out.archived:
            result.archived.append(out.archived)
        if out.state == TAKEN:
            result.skipped.append((job.name, out.reason or "taken by another command"))
        elif out.state == states.COMPLETED:
            result.completed.append(job.name)
        elif out.state == states.INTERRUPTED:
            result.interrupted.append(job.name)
        elif out.state == states.FAILED:
            result.failed.append((job.name, out.reason or "failed"))
        else:
            result.not_started.append(job.name)
    return result


def _drain(runner: _Runner, display: _Display) -> None:
    while True:
        try:
            event = runner.events.get_nowait()
        except queue.Empty:
            return
        display.event(event)


# ----------------------------------------------------------------------------- the display


class _Display:
    """Plain lines (a log file, a pipe, a test) or nothing; ``_RichDisplay`` on a terminal."""

    def __init__(self, jobs: list[plan.JobSpec], out: Callable[[str], None] | None) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.total = len(jobs)
        self.done = 0
        self.out = out

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def message(self, text: str) -> None:
        if self.out:
            self.out(text)

    def event(self, ev: _Event) -> None:
        if ev.kind == "start":
            self.message(f"started {ev.name} ({ev.text})")
            return
        self.done += 1
        if ev.kind == "taken":
            self.message(f"[{self.done}/{self.total}] skipped {ev.name}: {ev.text}")
            return
        out = ev.outcome
        assert out is not None
        detail = f": {out.reason}" if out.reason else ""
        self.message(f"[{self.done}/{self.total}] {out.state} {ev.name} in {ev.text}{detail}")

    def tick(self, running: list[str]) -> None:
        pass


class _RichDisplay(_Display):
    """An overall bar and one line per running job (its step, loss and held-out NLL)."""

    def __init__(self, jobs: list[plan.JobSpec]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        super().__init__(jobs, None)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.overall = self.progress.add_task("[bold]study", total=self.total, info="")
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def event(self, ev: _Event) -> None:
        if ev.kind == "start":
            job = self.jobs[ev.name]
            total = job.overrides.get("trainer.max_iters") or _default_max_iters()
            self.tasks[ev.name] = self.progress.add_task(f"  {ev.name}", total=total, info="starting")
            return
        task = self.tasks.pop(ev.name, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        super().event(ev)

    def tick(self, running: list[str]) -> None:
        for name in running:
            task = self.tasks.get(name)
            if task is None:
                continue
            row = rundir.last_loss_row(Path(self.jobs[name].work_dir) / "loss.csv")
            if row is None:
                continue
            parts = []
            if row["loss"] is not None:
                parts.append(f"loss {row['loss']:.4f}")
            if row["val_loss"] is not None:
                parts.append(f"val {row['val_loss']:.4f}")
            self.progress.update(task, completed=row["step"], info=" ".join(parts))


def _default_max_iters() -> int:
    from reatt.config import get_default_config

    return int(get_default_config().trainer.max_iters)


def _display(show_progress: bool, jobs: list[plan.JobSpec]) -> _Display:
    if not show_progress:
        return _Display(jobs, None)
    if sys.stdout.isatty():
        return _RichDisplay(jobs)
    return _Display(jobs, lambda text: print(text, flush=True))
