"""Every Slurm command reatt runs: ``sbatch``, ``squeue``/``sacct`` (one call each for a whole
study, never one per job) and ``scancel``.

Every command runs as an argv list without a shell (``_run``); a missing command or a non-zero
exit becomes a ``SlurmError`` that quotes Slurm's stderr. Parsing follows ``--parsable`` output
and skips job steps.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from reatt.errors import SlurmError

COMMAND_TIMEOUT = 120  # seconds for one Slurm client command (a busy controller can be slow)


def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command (no shell). Missing or hung: SlurmError."""
    try:
        return subprocess.run(  # bytes that are not UTF-8 (a site's locale) are replaced, not fatal
            argv, shell=False, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} not found: Slurm's client commands were not found on PATH "
            "(are you on the cluster's login node?)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"{shlex.join(argv[:4])} ...: no answer after {timeout:.0f} s (is the Slurm controller up?)"
        ) from None
    except OSError as e:
        raise SlurmError(f"cannot run {argv[0]}: {e}") from None


def _output(r: subprocess.CompletedProcess[str]) -> str:
    text = (r.stderr or "").strip() or (r.stdout or "").strip()
    return text[-2000:] if text else "no output"


_PARSABLE = re.compile(r"(\d+)(?:;\S+)?")  # `sbatch --parsable`: "123" or "123;cluster"
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


@dataclass(frozen=True)
class Submission:
    """What ``sbatch`` said: the job id, or (it exited 0: the job is queued) why none was read."""

    job_id: str | None
    output: str  # its stdout and stderr, cut: what a warning quotes when there is no id


def sbatch(script: str | os.PathLike[str]) -> Submission:
    """Submit a script with ``sbatch --parsable``. Its id is the first line that is one
    (``123`` or ``123;cluster``: a site may print a banner before it or a note after it), else
    "Submitted batch job 123"; exit 0 with neither is a job queued under an id unknown."""
    argv = ["sbatch", "--parsable", str(script)]
    try:
        r = _run(argv)
    except SlurmError as e:
        if "no answer" in str(e):
            raise SlurmError(
                f"{e}; the job may or may not be queued: check `squeue --me` before submitting again"
            ) from None
        raise
    if r.returncode != 0:
        raise SlurmError(f"sbatch {script} failed (exit {r.returncode}): {_output(r)}")
    said = f"stdout {r.stdout.strip()[:300]!r}" + (
        f", stderr {r.stderr.strip()[:300]!r}" if r.stderr.strip() else ""
    )
    for line in r.stdout.splitlines():
        m = _PARSABLE.fullmatch(line.strip())
        if m is not None:
            return Submission(m.group(1), said)
    m = _SUBMITTED.search(r.stdout)
    return Submission(m.group(1) if m else None, said)


def find_job_id(job_name: str) -> str | None:
    """The id of the newest job of this name the controller holds (one ``squeue``), or None:
    where sbatch queued a job but printed no id it could be read from."""
    try:
        r = _run(["squeue", "-h", "--name", job_name, "-o", "%F"])  # %F: an array's own id
    except SlurmError:
        return None
    ids = [int(line.strip()) for line in r.stdout.splitlines() if line.strip().isdigit()]
    return str(max(ids)) if r.returncode == 0 and ids else None


def scancel_name(job_name: str) -> None:
    """Cancel the jobs of this name (``scancel --name``): for a job whose id is not known."""
    r = _run(["scancel", "--name", job_name])
    if r.returncode != 0:
        raise SlurmError(f"scancel --name {job_name} failed (exit {r.returncode}): {_output(r)}")


_IGNORABLE_SCANCEL = re.compile(r"already completing or completed|Invalid job id", re.I)


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs with one ``scancel`` call. Jobs that already ended are not an error."""
    if not job_ids:
        return
    r = _run(["scancel", *job_ids])
    if r.returncode != 0:
        errors = [
            line for line in r.stderr.splitlines() if line.strip() and not _IGNORABLE_SCANCEL.search(line)
        ]
        if errors:
            raise SlurmError(f"scancel {' '.join(job_ids)} failed (exit {r.returncode}): {_output(r)}")


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job, by the id reatt records (``123`` or ``123_4``)."""

    job_id: str
    state: str  # Slurm's state, first word: PENDING, RUNNING, COMPLETED, CANCELLED ...
    source: str  # "squeue" (the controller: queued, or ended minutes ago) or "sacct"
    reason: str | None = None  # squeue's reason ("Resources", "NonZeroExitCode"); None for "None"
    exit_code: str | None = None  # "1:0" (exit code:signal), from sacct
    elapsed: str | None = None
    detail: str | None = None  # sacct's state text when longer than the word ("CANCELLED by 0")


@dataclass
class JobQuery:
    """The answer of ``query_jobs``: each job Slurm knows, and how far Slurm could be asked."""

    jobs: dict[str, JobInfo] = field(default_factory=dict)
    answered: bool = True  # squeue answered: a job missing from ``jobs`` has left the controller
    commands_found: bool = True  # Slurm's client commands are on PATH
    accounting: bool | None = None  # sacct worked (None: not asked)
    problems: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # the commands run, in order


def _reason(text: str | None) -> str | None:
    text = (text or "").strip()
    return None if text in ("", "None", "(null)") else text


def _parse_squeue(out: str, wanted: set[str]) -> dict[str, JobInfo]:
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or parts[0] not in wanted:
            continue
        job_id, state, reason = parts
        word = state.split()[0] if state.split() else "UNKNOWN"
        jobs[job_id] = JobInfo(job_id, word, "squeue", _reason(reason))
    return jobs


def task_ids(spec: str) -> list[str]:
    """Task ids of an array range as sacct prints them: ``1-3%1``, ``2,5-6``, ``0-9:2``."""
    out: list[str] = []
    for part in spec.split("%", 1)[0].split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if m is None:
            continue
        first = int(m.group(1))
        last = int(m.group(2) or first)
        step = int(m.group(3) or 1)
        if last - first > 100_000 or step < 1:
            continue
        out.extend(str(i) for i in range(first, last + 1, step))
    return out


def expand_job_ids(job_id: str) -> list[str]:
    """The ids a row stands for: itself, or each task of an unstarted range (``12_[1-3%1]``)."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    return [f"{m.group(1)}_{t}" for t in task_ids(m.group(2))] if m else [job_id]


def _parse_sacct(out: str, wanted: set[str]) -> dict[str, JobInfo]:
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        row_id, state_text, exit_code, elapsed = parts[:4]
        words = state_text.split()
        state = words[0].rstrip("+") if words else "UNKNOWN"
        detail = state_text.strip() if len(words) > 1 else None
        for job_id in expand_job_ids(row_id):  # steps ("123.batch") match nothing wanted
            if job_id in wanted:
                jobs[job_id] = JobInfo(
                    job_id, state, "sacct", None, exit_code or None, elapsed or None, detail
                )
    return jobs


def query_jobs(job_ids: Iterable[str]) -> JobQuery:
    """What Slurm knows about these jobs, in at most two calls whatever their number:
    ``squeue -t all`` (the controller: queued and running jobs, and the ones that ended within
    its MinJobAge, 300 s by default), then ``sacct`` for the jobs it no longer holds.

    No ``scontrol show job``: without job ids it prints every job on the cluster, and with one
    it answers for that job only (one call per job). ``squeue -t all`` gives what it gave here:
    the final state of a job that ended minutes ago, before sacct has it or with accounting off.

    Never raises for an unreachable Slurm: ``answered``/``problems`` say what is missing.
    """
    ids = sorted({j for j in job_ids if j})
    query = JobQuery()
    if not ids:
        return query
    wanted = set(ids)

    def call(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
        query.calls.append(argv)
        try:
            return _run(argv)
        except SlurmError as e:
            if "not found on PATH" in str(e):
                query.commands_found = False
            query.problems.append(str(e))
            return None

    r = call(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    if r is None:
        query.answered = False
        return query
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        query.answered = False
        query.problems.append(f"squeue failed (exit {r.returncode}): {_output(r)}")
        return query
    query.jobs.update(_parse_squeue(r.stdout if r.returncode == 0 else "", wanted))

    gone = [j for j in ids if j not in query.jobs]
    if gone:
        # an array task that never started has no row of its own (sacct -j 12_3 prints nothing):
        # ask for the array (12), whose rows include the range "12_[1-3%1]"
        asked = sorted({j.split("_", 1)[0] for j in gone}, key=lambda j: (len(j), j))
        r = call(["sacct", "-n", "-X", "-P", "-j", ",".join(asked), "-o", "JobID,State,ExitCode,Elapsed"])
        if r is not None and r.returncode == 0:
            query.accounting = True
            query.jobs.update(_parse_sacct(r.stdout, set(gone)))
        else:
            query.accounting = False
            if r is not None and "accounting storage is disabled" not in r.stderr.lower():
                query.problems.append(f"sacct failed (exit {r.returncode}): {_output(r)}")
    return query
