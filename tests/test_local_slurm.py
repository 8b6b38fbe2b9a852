"""The real local Slurm that reatt's tests use works: submit, finish, fail, cancel, sacct.

Fast (a few seconds on a running cluster): both jobs of a test run side by side on 2 CPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm_helpers import SlurmCluster, job_state, sbatch, scancel, wait_for_job, wait_for_sacct

pytestmark = pytest.mark.slurm


def test_job_runs_and_writes_into_tmp_path(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = sbatch(
        "-J", "reatt-test-ok", f"--output={tmp_path}/slurm-%j.out",
        "--wrap", 'echo "hello $SLURM_JOB_ID" > result.txt; echo to-stdout',
        cwd=tmp_path,
    )  # fmt: skip
    assert job.isdigit()
    assert wait_for_job(job, timeout=60) == "COMPLETED"
    assert (tmp_path / "result.txt").read_text() == f"hello {job}\n"
    assert (tmp_path / f"slurm-{job}.out").read_text() == "to-stdout\n"


def test_sacct_records_completed_and_failed_jobs(slurm_accounting: SlurmCluster, tmp_path: Path) -> None:
    ok = sbatch("-J", "reatt-test-ok", "-o", "/dev/null", "--wrap", "true", cwd=tmp_path)
    bad = sbatch("-J", "reatt-test-fail", "-o", "/dev/null", "--wrap", "exit 3", cwd=tmp_path)
    assert wait_for_job(ok) == "COMPLETED"
    assert wait_for_job(bad) == "FAILED"
    rec = wait_for_sacct(ok)  # polls: the sacct row can lag squeue by up to ~2 s
    assert (rec.job_id, rec.state, rec.exit_code, rec.signal) == (ok, "COMPLETED", 0, 0)
    rec = wait_for_sacct(bad)
    assert (rec.job_id, rec.state, rec.exit_code, rec.signal) == (bad, "FAILED", 3, 0)


def test_wait_for_job_times_out_and_scancel_cancels(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = sbatch("-J", "reatt-test-cancel", "-o", "/dev/null", "--wrap", "sleep 300", cwd=tmp_path)
    try:
        with pytest.raises(TimeoutError, match=f"job {job} still queued"):
            wait_for_job(job, timeout=0.5)
    finally:
        scancel(job)
    assert wait_for_job(job, timeout=30) == "CANCELLED"
    assert job_state(job) == "CANCELLED"
