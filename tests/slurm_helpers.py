"""Helpers for tests that run jobs on a real local Slurm.

The cluster itself comes from the session fixture ``slurm_cluster`` in ``conftest.py``,
which uses ``scripts/slurm/start-local-slurm.sh`` (one node = this machine, partition
``debug``). Job output can go to ``tmp_path``: the node is this machine.

Slurm is asynchronous everywhere (submit -> start: 0.3-3 s; squeue -> sacct: up to ~2 s),
so every helper here polls with a timeout instead of reading once or sleeping a fixed time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SLURM_SCRIPTS = REPO_ROOT / "scripts" / "slurm"
START_SCRIPT = SLURM_SCRIPTS / "start-local-slurm.sh"
STOP_SCRIPT = SLURM_SCRIPTS / "stop-local-slurm.sh"

#: With ``REATT_REQUIRE_SLURM=1`` (CI) a missing Slurm fails the tests instead of skipping them.
REQUIRE_ENV = "REATT_REQUIRE_SLURM"

#: Job states after which a job never runs again on its own (sacct may append " by UID").
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def slurm_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def slurm_installed() -> bool:
    # Not `sbatch --version`: without a slurm.conf every client command fails (DNS SRV lookup).
    return shutil.which("sbatch") is not None


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def cluster_answers(timeout: float = 10) -> bool:
    """True when a Slurm controller answers ``scontrol ping``."""
    try:
        return _run(["scontrol", "ping"], timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def accounting_enabled() -> bool:
    """True when the running cluster stores accounting in slurmdbd (so ``sacct`` works)."""
    out = _run(["scontrol", "show", "config"]).stdout
    return any(
        line.split("=", 1)[0].strip() == "AccountingStorageType"
        and line.split("=", 1)[1].strip() == "accounting_storage/slurmdbd"
        for line in out.splitlines()
        if "=" in line
    )


def sbatch(*args: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """Submit with ``sbatch --parsable ARGS``; return the job id (``"123"``)."""
    cmd = ["sbatch", "--parsable"] + ([f"--chdir={cwd}"] if cwd is not None else []) + list(args)
    r = _run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip().split(";", 1)[0]  # "ID" or "ID;CLUSTER"


def scancel(job_id: str) -> None:
    _run(["scancel", job_id])


def job_state(job_id: str) -> str | None:
    """JobState from ``scontrol show job`` (first record for an array), or None when Slurm
    no longer knows the job (records go ``MinJobAge`` = 300 s after the job ended)."""
    r = _run(["scontrol", "show", "job", job_id])
    if r.returncode != 0 or "JobState=" not in r.stdout:
        return None
    return r.stdout.split("JobState=", 1)[1].split()[0]


def _in_queue(job_id: str) -> bool | None:
    """True while squeue lists the job (any array task), False once gone, None if unsure."""
    try:
        r = _run(["squeue", "-h", "-j", job_id, "-o", "%i"], timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode == 0:
        return bool(r.stdout.strip())
    if "Invalid job id" in r.stderr:  # record already purged: long gone
        return False
    return None  # controller busy or restarting: ask again


def wait_for_job(job_id: str, timeout: float = 60, poll: float = 0.2) -> str:
    """Poll until the job (all tasks of an array) has left squeue; return its final state.

    The state comes from ``scontrol show job`` (first task for an array), else from sacct
    when accounting is on, else ``"UNKNOWN"``. Raises TimeoutError after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _in_queue(job_id) is False:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Slurm job {job_id} still queued after {timeout} s (state {job_state(job_id)})"
            )
        time.sleep(poll)
    state = job_state(job_id)
    if state is None and accounting_enabled():
        rec = sacct_record(job_id)
        state = rec.state if rec else None
    return state or "UNKNOWN"


@dataclass(frozen=True)
class SacctRecord:
    job_id: str  # "123", or "123_4" for an array task
    state: str  # first word: "CANCELLED by 0" -> "CANCELLED"
    exit_code: int
    signal: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def sacct_records(job_id: str) -> list[SacctRecord]:
    """Rows of ``sacct -n -X -P -j ID -o JobID,State,ExitCode`` (-X: no .batch steps)."""
    r = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"])
    if r.returncode != 0:
        raise RuntimeError(f"sacct -j {job_id} failed (rc {r.returncode}): {r.stderr.strip()}")
    records = []
    for line in r.stdout.splitlines():
        if not line.strip():
            continue
        jid, state, code = line.split("|")
        exit_code, _, signal = code.partition(":")
        word = (state.split() or ["UNKNOWN"])[0]
        records.append(SacctRecord(jid, word, int(exit_code or 0), int(signal or 0)))
    return records


def sacct_record(job_id: str) -> SacctRecord | None:
    """The sacct row of a (non-array) job, or None while sacct does not have it yet."""
    return next((rec for rec in sacct_records(job_id) if rec.job_id == job_id), None)


def wait_for_sacct(job_id: str, timeout: float = 30, poll: float = 0.2) -> SacctRecord:
    """Poll sacct until the job's row shows a terminal state (slurmctld reports to slurmdbd
    asynchronously: a row can lag squeue by 0.1-2 s). Needs accounting on."""
    deadline = time.monotonic() + timeout
    while True:
        rec = sacct_record(job_id)
        if rec is not None and rec.terminal:
            return rec
        if time.monotonic() >= deadline:
            raise TimeoutError(f"sacct has no final record of job {job_id} after {timeout} s (last: {rec})")
        time.sleep(poll)


@dataclass(frozen=True)
class SlurmCluster:
    """What the ``slurm_cluster`` fixture yields."""

    started_here: bool  # this test session started it (and will stop it)
    accounting: bool  # sacct works

    # The helpers, for tests that prefer `slurm_cluster.sbatch(...)` to an import.
    sbatch = staticmethod(sbatch)
    scancel = staticmethod(scancel)
    wait_for_job = staticmethod(wait_for_job)
    wait_for_sacct = staticmethod(wait_for_sacct)
