"""``reatt submit`` without ``--cluster``: a study's runs as processes on this machine.

Each job is ``python -m reatt.train <JobSpec.argv()>`` in its own process (stdout and stderr
appended to ``<work_dir>/train.log``), sequentially or ``jobs`` at a time from a thread pool.
Each state change is recorded as it happens through the launch's hooks, one short transaction
at a time (a ``reatt status`` in another terminal sees a run as running while it runs); no
transaction is held open while a job runs. A failed run is recorded and reported, and the
others go on.

Right before starting a run, its pool thread claims it (``Launch.claim``: one conditional
update); a run another command (a second ``reatt submit``, local or ``--cluster``) took
meanwhile is skipped and reported, never started twice. A started run's job id is
``local:<host>:<pid>``; a claimed one's, until it starts, is this submit's own.

Ctrl-C asks every running job to checkpoint and stop (SIGINT, which the training program
answers by saving ``ckpt.pt`` and exiting 75), records them as interrupted, and starts nothing
more; a second Ctrl-C kills them. ``reatt submit --resubmit-failed`` resumes them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import reatt
from reatt import rundir, states
from reatt import train as entry  # entry.TRAIN_MODULE: read at each launch
from reatt.errors import ReattError
from reatt.executors.base import Job, Launch, Place, Preview, Tracked, read_files
from reatt.executors.display import Display, Event, make_display
from reatt.executors.processes import (
    cpu_count,
    is_training,
    live_process,
    local_job_id,
    parse_local_job_id,
    pid_is_training,
)
from reatt.files import read_tail, this_host
from reatt.states import Active, Elsewhere, Evidence, Exited, Gone, LaunchFailed, RunState, Started, Unchanged

LOG_TAIL_LINES = 3  # lines of train.log quoted in the reason of a run that left no final.json
LOG_TAIL_BYTES = 16384
POLL_S = 0.5  # how often the display looks at the running jobs' loss.csv


def train_command(job: Job) -> list[str]:
    """The argv that trains ``job``: this Python, ``-m reatt.train``, the job's overrides."""
    return [sys.executable, "-m", entry.TRAIN_MODULE, *job.argv()]


def train_env_changes(job: Job, jobs: int) -> dict[str, str]:
    """What a job's environment adds to ours.

    ``TRAIN_ENV`` always. With several jobs at once and no thread count chosen (neither
    ``OMP_NUM_THREADS`` in our environment nor ``system.num_threads`` in the job), each job
    gets an equal share of the CPUs, so parallel runs do not oversubscribe them. When reatt
    runs from a source checkout that is not installed, the checkout goes on ``PYTHONPATH`` so
    the job trains with the same reatt whatever the current directory.
    """
    env = dict(entry.TRAIN_ENV)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ and not job.overrides.get("system.num_threads"):
        env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // jobs))
    root = Path(reatt.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env


def shell_line(job: Job, jobs: int) -> str:
    """A copy-pasteable shell line doing what a local launch does for ``job``."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in train_env_changes(job, jobs).items())
    log = shlex.quote(str(Path(job.work_dir) / rundir.TRAIN_LOG))
    return f"{env} {shlex.join(train_command(job))} >> {log} 2>&1"


def log_tail(path: Path, start: int) -> str:
    """The last few non-empty lines an attempt wrote to train.log (from ``start``), joined with ' | '."""
    text = read_tail(path, LOG_TAIL_BYTES, start) or ""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])


class LocalExecutor:
    """Runs a study's jobs on this machine, ``jobs`` at a time (``reatt submit``)."""

    kind = "local"
    claims = True
    waits = True

    def __init__(self, *, jobs: int = 1, show_progress: bool = True) -> None:
        if jobs < 1:
            raise ReattError(f"--jobs {jobs}: expected at least 1")
        self.jobs, self.show_progress = jobs, show_progress

    def check(self, place: Place) -> None:
        """Nothing to refuse: ``jobs`` was checked when this executor was made."""

    def preview(self, place: Place, jobs: Sequence[Job]) -> list[Preview]:
        return [Preview(shell_line(job, self.jobs)) for job in jobs]

    def launch(self, place: Place, jobs: Sequence[Job], hooks: Launch) -> None:
        """Run the jobs, ``self.jobs`` at a time; returns when every started job has ended."""
        if not jobs:
            return
        runner = ProcessRunner(hooks, self.jobs)
        display = make_display(self.show_progress, jobs)
        interrupts = 0
        with display, ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="reatt-job") as pool:
            futures: list[Future[None]] = [pool.submit(runner.run, job) for job in jobs]
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
                fut.result()  # a bug in a pool thread surfaces here

    def poll(self, place: Place, runs: Sequence[Tracked]) -> dict[int, Evidence]:
        return {r.key: _evidence(r) for r in runs}

    def cancel(self, place: Place, runs: Sequence[Tracked]) -> dict[int, str]:
        """SIGTERM to each run's training process on this machine (it checkpoints and exits 75;
        the `reatt submit` that started it records it as interrupted). A run still being
        started, or running on another host, is left alone."""
        asked = {}
        for run in runs:
            host, pid = parse_local_job_id(run.job_id) or (None, None)
            if pid is None or (host is not None and host != this_host()) or not pid_is_training(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                asked[run.key] = run.job_id
        return asked


def _evidence(run: Tracked) -> Evidence:
    """A local run's job: its process (``local:<host>:<pid>``, or the older ``local:<pid>``),
    else its files. A ``pending`` local run is claimed by a `reatt submit` (its pid) that is
    about to start it: pending while that process lives."""
    host, pid = parse_local_job_id(run.job_id) or (None, None)
    if host is not None and host != this_host():
        # not a process of this machine: its final.json (shared filesystem) may say it ended;
        # else only `reatt status` on that host can look at the process
        return Elsewhere(
            f"runs on {host} (pid {pid}); `reatt status` there tells whether it still runs",
            read_files(run.work_dir, since=run.submitted_at),
        )
    if pid is not None:
        args = live_process(pid)
        if run.state == states.PENDING and args is not None:
            return Unchanged()
        if is_training(args):
            return Active(states.RUNNING)
    # read after the process was seen gone: a final.json it wrote on its way out is there
    files = read_files(run.work_dir, since=run.submitted_at)
    return Gone(files, note=f"the local process {pid or '?'} is gone")


def _drain(runner: ProcessRunner, display: Display) -> None:
    while True:
        try:
            event = runner.events.get_nowait()
        except queue.Empty:
            return
        display.event(event)


class ProcessRunner:
    """Starts the jobs (``run``, from pool threads), reports them through the hooks, stops them
    on Ctrl-C (``interrupt``, from the main thread)."""

    def __init__(self, hooks: Launch, jobs: int) -> None:
        self.hooks, self.jobs = hooks, jobs
        self.claim_id = local_job_id(os.getpid())  # a claimed run's job id until its process starts
        self.lock = threading.Lock()
        self.stopping = False  # Ctrl-C: start nothing more
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.signalled: set[str] = set()
        self.events: queue.Queue[Event] = queue.Queue()

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
    def run(self, job: Job) -> None:
        with self.lock:
            if self.stopping:
                return
        taken = self.hooks.claim(job, self.claim_id)  # outside the lock: it may wait for the database
        if taken is not None:
            self.events.put(Event("taken", job.name, taken))
            return
        try:
            started = self._start_and_wait(job)
        except BaseException:
            with contextlib.suppress(Exception):
                self.hooks.release(job)  # a no-op once the run was recorded as started
            raise
        if not started:  # Ctrl-C came between the claim and the start
            self.hooks.release(job)

    def _start_and_wait(self, job: Job) -> bool:
        """Start the job's process and wait for it; False if Ctrl-C came first."""
        work_dir = Path(job.work_dir)
        failure = None
        with self.lock:  # so that Ctrl-C either sees this process or stops it from starting
            if self.stopping:
                return False
            cmd = train_command(job)
            try:
                self.hooks.archive(job)
                work_dir.mkdir(parents=True, exist_ok=True)
                log = open(work_dir / rundir.TRAIN_LOG, "ab")
            except OSError as e:
                failure = f"cannot prepare {work_dir}: {e}"
            else:
                log.write(rundir.local_attempt_line(shlex.join(cmd)).encode())
                log.flush()
                log_start = log.tell()
                old_final = _stat(work_dir / rundir.FINAL)  # a failed attempt's, until replaced
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
                    failure = f"cannot start {cmd[0]}: {e}"
                else:
                    self.procs[job.name] = proc
        if failure is not None:  # recorded outside the lock: Ctrl-C never waits for the database
            self.hooks.ended(job, LaunchFailed(failure))
            return True
        log.close()  # the child holds its own copy
        t0 = time.monotonic()
        try:
            self.hooks.launched([job], [local_job_id(proc.pid)], Started(), None)
        except BaseException:
            proc.send_signal(signal.SIGINT)  # we cannot track it: stop it (it checkpoints)
            proc.wait()
            raise
        self.events.put(Event("start", job.name, f"pid {proc.pid}, log {work_dir / rundir.TRAIN_LOG}"))
        rc = proc.wait()
        final = rundir.read_final(work_dir)
        with self.lock:
            signalled = job.name in self.signalled
        exited = Exited(
            rc=rc,
            final=final,
            # an earlier attempt's record: this one stopped before replacing it (e.g. exit 2)
            stale=rc != rundir.EXIT_OK and final is not None and _stat(work_dir / rundir.FINAL) == old_final,
            signalled=signalled,
            log_tail=log_tail(work_dir / rundir.TRAIN_LOG, log_start),
        )
        outcome = self.hooks.ended(job, exited)
        self.events.put(Event("end", job.name, f"{time.monotonic() - t0:.1f} s", _shown(outcome, final)))
        return True


def _shown(outcome: RunState, final: rundir.FinalFile | None) -> RunState:
    """How the display shows a run's end: a completed run with its final NLL."""
    if outcome.state == states.COMPLETED and final is not None and final.record is not None:
        nll = final.record.final_nll
        return RunState(outcome.state, f"final NLL {nll:.4f}" if nll is not None else None)
    return outcome


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
