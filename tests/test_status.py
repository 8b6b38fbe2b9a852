"""`status.refresh` and `status.select_runs` against a fake Slurm (executables first on PATH
that record their argv): one squeue and one sacct call for a whole study, Slurm's states
mapped to reatt's, and the rules: a job is completed only if its final.json says so; a job
that left the controller before its accounting record exists is never taken as completed; and
where Slurm cannot be asked, only a current final.json changes a recorded state."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_slurm_errors import FakeSlurm, make_study, runs, submit_cluster

from reatt import rundir, states
from reatt.errors import StudyError
from reatt.executors import processes
from reatt.executors.base import read_files
from reatt.executors.slurm import client
from reatt.executors.slurm import executor as slurm_executor
from reatt.executors.slurm.client import JobInfo
from reatt.executors.slurm.executor import job_evidence
from reatt.executors.slurm.logs import ended_by, last_err_line
from reatt.files import read_tail, this_host, utc_now
from reatt.states import RunState
from reatt.study import status
from reatt.study import store as db
from reatt.study.submit import select_runs
from reatt.transitions import next_state


def map_slurm_state(info, work_dir, out_file=None):
    """A run's (state, reason) from what Slurm says about its job (a pending run before)."""
    return next_state(RunState(states.PENDING), job_evidence(info, work_dir, out_file))


def state_from_files(work_dir, err_file):
    """A stopped run's (state, reason) from its files and its job's .err file alone."""
    return next_state(
        RunState(states.PENDING), read_files(work_dir, ended_by=ended_by(rundir.attempt_text(err_file)))
    )


SQUEUE = ["squeue", "-h", "-r", "-t", "all", "-j"]
SQUEUE_FORMAT = ["-o", "%i|%T|%r"]
SACCT_FORMAT = ["-o", "JobID,State,ExitCode,Elapsed"]


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeSlurm:
    return FakeSlurm(tmp_path / "fake", monkeypatch)


def submitted_study(tmp_path, fake, features=3, first_id=101):
    """A study whose runs were submitted (job ids first_id, first_id+1, ...), fake calls reset."""
    engine = make_study(tmp_path, features=features)
    n = len(runs(engine))
    fake.respond("sbatch", *[(0, f"{first_id + i}\n", "") for i in range(n)])
    submit_cluster(engine, None, project_dir=str(tmp_path))
    (fake.root / "calls.jsonl").unlink()
    for name in ("sbatch", "squeue", "sacct", "scontrol"):
        (fake.root / f"{name}.json").unlink(missing_ok=True)
    return engine


def write_final(engine, name, status_="completed", **extra):
    wd = Path(runs(engine)[name].work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "final.json").write_text(json.dumps({"status": status_, "final_nll": 5.25, "error": None, **extra}))
    return wd


def by_name(statuses):
    return {s.name: s for s in statuses}


def test_one_squeue_and_one_sacct_for_the_whole_study(tmp_path, fake):
    engine = submitted_study(tmp_path, fake)  # baseline 101, f0 102, f1 103, f2 104, all 105
    write_final(engine, "f1")
    fake.respond("squeue", (0, "101|RUNNING|None\n102|PENDING|Resources\n", ""))
    fake.respond(
        "sacct",
        (0, "103|COMPLETED|0:0|00:01:02\n104|COMPLETED|0:0|00:00:40\n105|CANCELLED by 0|0:15|00:00:09\n", ""),
    )
    name, got = status.refresh(engine, None)
    assert name == "tiny"
    assert fake.calls() == [
        [*SQUEUE, "101,102,103,104,105", *SQUEUE_FORMAT],
        ["sacct", "-n", "-X", "-P", "-j", "103,104,105", *SACCT_FORMAT],
    ]  # one call each, whatever the number of jobs
    assert [s.name for s in got] == ["baseline", "f0", "f1", "f2", "all"]  # plan order
    table = {s.name: (s.state, s.reason) for s in got}
    assert table["baseline"] == ("running", None)
    assert table["f0"] == ("pending", "Resources")
    assert table["f1"] == ("completed", None)
    assert table["f2"][0] == "failed" and "no final.json" in table["f2"][1]  # COMPLETED is not enough
    assert table["all"][0] == "cancelled" and "CANCELLED by 0" in table["all"][1]
    assert by_name(got)["f1"].final_nll == 5.25
    stored = runs(engine)
    assert {n: (r.state, r.state_reason) for n, r in stored.items()} == table  # recorded


def test_finished_runs_are_not_asked_about_again(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=1)  # baseline 101, f0 102
    write_final(engine, "baseline")
    fake.respond("squeue", (1, "", "slurm_load_jobs error: Invalid job id specified\n"))  # all gone
    fake.respond("sacct", (0, "101|COMPLETED|0:0|00:01:00\n102|FAILED|1:0|00:00:05\n", ""))
    status.refresh(engine, None)
    assert len(fake.calls()) == 2
    _, got = status.refresh(engine, None)
    assert len(fake.calls()) == 2  # completed and failed: no Slurm call at all
    assert [s.state for s in got] == ["completed", "failed"]


def test_planned_runs_stay_planned_without_asking_slurm(tmp_path, fake):
    engine = make_study(tmp_path, features=2)
    _, got = status.refresh(engine, None)
    assert {s.state for s in got} == {"planned"} and fake.calls() == []


def test_sacct_lagging_behind_squeue_is_never_completed(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=1)  # baseline 101, f0 102
    for name in ("baseline", "f0"):
        write_final(engine, name)  # training has finished and written final.json ...
    with db.transaction(engine) as session:
        for r in db.get_study(session, None).runs:
            r.state = states.RUNNING
    fake.respond("squeue", (0, "", ""))  # ... the controller forgot the jobs ...
    fake.respond("sacct", (0, "102|RUNNING|0:0|00:00:30\n", ""))  # ... sacct is behind
    _, got = status.refresh(engine, None)
    assert [c[0] for c in fake.calls()] == ["squeue", "sacct"]  # never scontrol (every job on the cluster)
    for s in got:
        assert s.state == "running" and "accounting" in s.reason
    # the record arrives: now they are done
    fake.respond("sacct", (0, "101|COMPLETED|0:0|00:00:31\n102|COMPLETED|0:0|00:00:30\n", ""))
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["completed", "completed"]


def test_the_controller_answers_for_jobs_that_just_ended(tmp_path, fake):
    """squeue -t all shows jobs that ended within MinJobAge: sacct (which may lag) is not asked."""
    engine = submitted_study(tmp_path, fake, features=1)
    write_final(engine, "baseline")
    write_final(engine, "f0", "failed", error="data.file_path: line 3: not valid JSON")
    fake.respond("squeue", (0, "101|COMPLETED|None\n102|FAILED|NonZeroExitCode\n99|RUNNING|None\n", ""))
    _, got = status.refresh(engine, None)
    assert [(s.state, s.reason) for s in got] == [
        ("completed", None),
        ("failed", "data.file_path: line 3: not valid JSON"),
    ]
    assert [c[0] for c in fake.calls()] == ["squeue"]


def test_no_accounting_falls_back_to_the_controller_then_files(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=2)  # 101..104
    write_final(engine, "f0", "failed", error="boom")
    wd = Path(runs(engine)["f1"].work_dir)
    wd.mkdir(parents=True)
    (wd / "ckpt.pt").write_bytes(b"x")
    log_dir = tmp_path / "out" / "slurm"
    (log_dir / "tiny-all-104.err").write_text(
        "step 10\n"
        "slurmstepd: error: *** JOB 104 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***\n"
    )
    (log_dir / "tiny-baseline-101.out").write_text("reatt: run baseline, job 101, attempt 1\n")  # it ran
    fake.respond("squeue", (0, "101|PENDING|BeginTime\n", ""))
    fake.respond("sacct", (1, "", "sacct: error: Slurm accounting storage is disabled\n"))
    _, got = status.refresh(engine, None)
    assert len(fake.calls("squeue")) == 1 and len(fake.calls("sacct")) == 1 and not fake.calls("scontrol")
    table = {s.name: s.state for s in got}
    assert table == {"baseline": "requeued", "f0": "failed", "f1": "interrupted", "all": "timeout"}
    assert by_name(got)["f0"].reason == "boom"


def test_pending_jobs_keep_their_reason_and_requeued_ones_show(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=2)  # 101..104
    (tmp_path / "out" / "slurm" / "tiny-f0-102.out").write_text("reatt: run f0, job 102, attempt 1\n")
    fake.respond(
        "squeue",
        (
            0,
            "101|PENDING|DependencyNeverSatisfied\n102|PENDING|BeginTime\n103|PENDING|(null)\n"
            "104|REQUEUE_HOLD|JobHeldUser\n",
            "",
        ),
    )
    _, got = status.refresh(engine, None)
    assert [(s.state, s.reason) for s in got] == [
        ("pending", "DependencyNeverSatisfied"),  # pending, never shown as killed
        ("requeued", "BeginTime"),  # it ran before: Slurm wrote its .out file
        ("pending", None),
        ("requeued", "Slurm: REQUEUE_HOLD (JobHeldUser)"),
    ]
    assert [c[0] for c in fake.calls()] == ["squeue"]  # all queued: nothing else asked


def test_array_tasks(tmp_path, fake):
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, "300\n", ""))
    submit_cluster(engine, None, array=True, project_dir=str(tmp_path))
    write_final(engine, "f0")
    fake.respond("squeue", (0, "300_0|RUNNING|None\n", ""))
    fake.respond("sacct", (0, "300_1|COMPLETED|0:0|00:00:30\n", ""))
    _, got = status.refresh(engine, None)
    assert [(s.state, s.job_id) for s in got] == [("running", "300_0"), ("completed", "300_1")]
    assert fake.calls("squeue") == [[*SQUEUE, "300_0,300_1", *SQUEUE_FORMAT]]
    assert fake.calls("sacct") == [["sacct", "-n", "-X", "-P", "-j", "300", *SACCT_FORMAT]]


def test_array_tasks_cancelled_before_they_started(tmp_path, fake):
    """sacct shows unstarted tasks only as a range of the array: 12_[1-3%1] (squeue -r, one per line)."""
    engine = make_study(tmp_path, features=3)  # 5 runs
    fake.respond("sbatch", (0, "12\n", ""))
    submit_cluster(engine, None, array=True, throttle=1, project_dir=str(tmp_path))
    fake.respond("squeue", (0, "12_4|CANCELLED|JobArrayTaskLimit\n", ""))  # still in the controller
    fake.respond(
        "sacct", (0, "12_0|CANCELLED by 0|0:15|00:00:02\n12_[1-3%1]|CANCELLED by 0|0:0|00:00:00\n", "")
    )
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["cancelled"] * 5
    assert fake.calls("sacct") == [["sacct", "-n", "-X", "-P", "-j", "12", *SACCT_FORMAT]]


def test_array_ranges():
    assert client.task_ids("1-3%1") == ["1", "2", "3"]
    assert client.task_ids("0,4-5") == ["0", "4", "5"]
    assert client.task_ids("0-6:3") == ["0", "3", "6"]
    assert client.expand_job_ids("12_[1-2,7%2]") == ["12_1", "12_2", "12_7"]
    assert client.expand_job_ids("12_3") == ["12_3"] and client.expand_job_ids("12.batch") == ["12.batch"]


def test_failed_reason_from_the_err_file(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=1)
    (tmp_path / "out" / "slurm" / "tiny-baseline-101.err").write_text(
        "module: command not found\n/bin/python: No module named reatt\n"
    )
    fake.respond("squeue", (0, "", ""))
    fake.respond("sacct", (0, "101|FAILED|1:0|00:00:01\n102|OUT_OF_MEMORY|0:125|00:00:01\n", ""))
    _, got = status.refresh(engine, None)
    assert (
        got[0].state == "failed"
        and got[0].reason == "Slurm: FAILED (exit 1:0): /bin/python: No module named reatt"
    )
    assert got[1].state == "failed" and got[1].reason.startswith("Slurm: OUT_OF_MEMORY")


def test_controller_down_keeps_states(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=1)
    fake.respond("squeue", (1, "", "squeue: error: Unable to contact slurm controller (connect failure)\n"))
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["pending", "pending"]
    assert "Unable to contact slurm controller" in got[0].reason
    assert [c[0] for c in fake.calls()] == ["squeue"]


def test_without_slurm_commands_the_run_directory_decides(tmp_path, fake, monkeypatch):
    engine = submitted_study(tmp_path, fake, features=1)
    write_final(engine, "baseline")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    _, got = status.refresh(engine, None)
    assert got[0].state == "completed"
    assert got[1].state == "pending" and "not found on PATH" in got[1].reason


def test_vanished_job_without_accounting_record_is_read_from_files_after_a_while(tmp_path, fake, monkeypatch):
    engine = submitted_study(tmp_path, fake, features=1)
    write_final(engine, "baseline", "failed", error="NaN loss")
    fake.respond("squeue", (0, "", ""))
    fake.respond("sacct", (0, "", ""))
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["pending", "pending"]  # just now: maybe sacct lags
    monkeypatch.setattr(slurm_executor, "ACCOUNTING_GRACE_S", -1.0)  # long after: not lag any more
    _, got = status.refresh(engine, None)
    assert [(s.state, s.reason) for s in got] == [("failed", "NaN loss"), ("unknown", "no run directory")]


def test_loss_columns_and_elapsed(tmp_path, fake):
    engine = submitted_study(tmp_path, fake, features=1)
    wd = Path(runs(engine)["baseline"].work_dir)
    wd.mkdir(parents=True)
    (wd / "loss.csv").write_text(
        "step,loss,val_loss,lr,tokens,elapsed_s\n0,,10.8,5e-4,0,1.5\n10,10.5,10.4,5e-4,1280,12.25\n20,10.1,,5e"
    )
    fake.respond("squeue", (0, "101|RUNNING|None\n102|RUNNING|None\n", ""))
    _, got = status.refresh(engine, None)
    s = got[0]
    assert (s.last_step, s.last_loss, s.last_val_loss, s.elapsed_s) == (10, 10.5, 10.4, 12.25)
    assert s.final_nll is None and s.work_dir == str(wd) and s.executor == "slurm" and s.job_id == "101"
    assert got[1].last_step is None


def test_a_submit_during_refresh_is_not_overwritten(tmp_path, fake, monkeypatch):
    engine = submitted_study(tmp_path, fake, features=1)
    real = client.query_jobs

    def query_while_resubmitted(ids):
        answer = real(ids)
        with db.transaction(engine) as session:  # meanwhile another `reatt submit` records job 200
            run = next(r for r in db.get_study(session, None).runs if r.name == "baseline")
            run.job_id, run.state = "200", states.PENDING
        return answer

    monkeypatch.setattr(client, "query_jobs", query_while_resubmitted)
    fake.respond("squeue", (0, "", ""))
    fake.respond("sacct", (0, "101|FAILED|1:0|00:00:01\n102|FAILED|1:0|00:00:01\n", ""))
    _, got = status.refresh(engine, None)
    assert [(s.state, s.job_id) for s in got] == [("pending", "200"), ("failed", "102")]


@pytest.mark.parametrize(
    ("slurm_state", "final", "expected"),
    [
        ("PENDING", None, "pending"),
        ("RUNNING", None, "running"),
        ("COMPLETING", None, "running"),
        ("CONFIGURING", None, "running"),
        ("SUSPENDED", None, "running"),
        ("REQUEUED", None, "requeued"),
        ("COMPLETED", "completed", "completed"),
        ("COMPLETED", None, "failed"),
        ("COMPLETED", "failed", "failed"),
        ("FAILED", "completed", "failed"),  # a failed job is never shown as completed
        ("FAILED", None, "failed"),
        ("OUT_OF_MEMORY", None, "failed"),
        ("NODE_FAIL", None, "failed"),
        ("BOOT_FAIL", None, "failed"),
        ("CANCELLED", None, "cancelled"),
        ("TIMEOUT", None, "timeout"),
        ("DEADLINE", None, "timeout"),
        ("PREEMPTED", None, "preempted"),
        ("SOMETHING_NEW", None, "unknown"),
    ],
)
def test_state_mapping(tmp_path, slurm_state, final, expected):
    if final is not None:
        (tmp_path / "final.json").write_text(
            json.dumps({"status": final, "error": "x" if final == "failed" else None})
        )
    info = JobInfo("1", slurm_state, "sacct", exit_code="0:0")
    assert map_slurm_state(info, tmp_path)[0] == expected


def test_pending_after_a_restart_is_requeued(tmp_path):
    info = JobInfo("1", "PENDING", "squeue", reason="BeginTime")
    out = tmp_path / "tiny-x-1.out"
    out.write_text("reatt: run x, job 1, attempt 1\n")  # Slurm wrote it: the job ran before
    assert map_slurm_state(info, tmp_path, out) == ("requeued", "BeginTime")


# ------------------------------------------------- the .err file: attempts, requeues, reasons

ATTEMPT = "reatt: run baseline, job 101, attempt {n}, on vm at 2026-11-30T12:0{n}:00+00:00\n"
REQUEUE = "slurmstepd: error: *** JOB 101 ON vm CANCELLED AT 2026-11-30T12:01:00 DUE TO JOB REQUEUE ***\n"


def end_line(why=None):
    due = f" DUE TO {why}" if why else ""
    return f"slurmstepd: error: *** JOB 101 ON vm CANCELLED AT 2026-11-30T12:05:00{due} ***\n"


OOM = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=101.batch. Some of your processes ...\n"


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        # Slurm writes "DUE TO JOB REQUEUE" whenever the job requeues itself: no end
        (ATTEMPT.format(n=1) + "step 40\n" + REQUEUE + ATTEMPT.format(n=2) + "step 45\n", "interrupted"),
        (ATTEMPT.format(n=1) + REQUEUE, "interrupted"),  # requeued, attempt 2 not started yet
        # an earlier attempt's end lines are not the latest attempt's
        (ATTEMPT.format(n=1) + end_line("PREEMPTION") + ATTEMPT.format(n=2), "interrupted"),
        (ATTEMPT.format(n=1) + end_line("PREEMPTION"), "preempted"),
        (ATTEMPT.format(n=1) + end_line("TIME LIMIT"), "timeout"),
        (ATTEMPT.format(n=1) + end_line(), "cancelled"),
        (ATTEMPT.format(n=1) + end_line("NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS"), "failed"),
        (ATTEMPT.format(n=1) + end_line("TIME LIMIT") + OOM, "failed"),  # a later OOM is not hidden
        (ATTEMPT.format(n=1) + OOM + end_line(), "cancelled"),  # the later event decides
        (REQUEUE + OOM, "failed"),  # no attempt line (an older script): the whole tail
    ],
)
def test_state_from_the_err_file_of_the_latest_attempt(tmp_path, err, expected):
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    (tmp_path / "job.err").write_text(err)
    state, reason = state_from_files(tmp_path, tmp_path / "job.err")
    assert state == expected, reason
    if expected == "failed" and "NODE" in err:
        assert reason == "Slurm: node failure"


def test_tails_start_at_a_whole_line(tmp_path):
    """loss.csv and .err files are read from their tail (files.read_tail), never from a cut line."""
    path = tmp_path / "loss.csv"
    path.write_text("step,loss,val_loss,lr,tokens,elapsed_s\n125,1.5,1.4,5e-4,1280,2.5\nnot a row\n")
    assert rundir.last_loss_row(path).step == 125
    assert rundir.last_loss_row(path, max_bytes=35) is None  # not step 25 from "...25,1.5,1.4,..."
    assert read_tail(path, max_bytes=35) == "not a row\n"
    err = tmp_path / "job.err"
    err.write_text(ATTEMPT.format(n=1) + "x" * 100_000 + "\n" + ATTEMPT.format(n=2) + "boom\n")
    assert rundir.attempt_text(err).strip() == "boom" and last_err_line(err) == "boom"
    assert rundir.attempt_text(None) == "" and last_err_line(tmp_path / "none.err") is None


def test_failed_reason_is_the_latest_attempts_last_err_line(tmp_path, fake):
    """The reason quotes what the failing attempt wrote, never an earlier attempt's lines nor
    the attempt line itself."""
    engine = submitted_study(tmp_path, fake, features=1)
    log_dir = tmp_path / "out" / "slurm"
    (log_dir / "tiny-baseline-101.err").write_text(
        ATTEMPT.format(n=1) + "RuntimeError: an old problem\n" + REQUEUE + ATTEMPT.format(n=2)
    )
    (log_dir / "tiny-f0-102.err").write_text(ATTEMPT.format(n=1) + "ImportError: no reatt  \n\n")
    fake.respond("squeue", (0, "101|FAILED|NonZeroExitCode\n102|FAILED|NonZeroExitCode\n", ""))
    _, got = status.refresh(engine, None)
    assert [(s.state, s.reason) for s in got] == [
        ("failed", "Slurm: FAILED (NonZeroExitCode)"),
        ("failed", "Slurm: FAILED (NonZeroExitCode): ImportError: no reatt"),
    ]


def test_without_slurm_the_err_file_is_a_hint_never_a_recorded_state(tmp_path, fake, monkeypatch):
    """Regression: with Slurm unreachable, an .err file ending in CANCELLED (the job requeued
    itself, and is queued again) was recorded as cancelled, and the run never watched again."""
    engine = submitted_study(tmp_path, fake, features=1)  # baseline 101, f0 102: pending
    log_dir = tmp_path / "out" / "slurm"
    (log_dir / "tiny-baseline-101.err").write_text(ATTEMPT.format(n=1) + end_line("PREEMPTION"))
    wd = write_final(engine, "f0", "failed", error="an earlier attempt's error")
    old = (utc_now() - dt.timedelta(hours=1)).timestamp()
    os.utime(wd / "final.json", (old, old))  # written before job 102 was submitted
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["pending", "pending"]
    assert "not found on PATH" in got[0].reason and "suggest preempted" in got[0].reason
    assert "earlier attempt" not in got[1].reason
    assert {r.state for r in runs(engine).values()} == {"pending"}  # recorded: still watched


def test_vanished_job_ignores_a_final_json_from_before_its_submission(tmp_path, fake, monkeypatch):
    engine = submitted_study(tmp_path, fake, features=1)
    wd = write_final(
        engine, "baseline", "failed", error="attempt 1: NaN loss", finished_at="2020-01-01T00:00:00Z"
    )
    (wd / "ckpt.pt").write_bytes(b"x")
    fake.respond("squeue", (0, "", ""))
    fake.respond("sacct", (1, "", "sacct: error: Slurm accounting storage is disabled\n"))
    _, got = status.refresh(engine, None)
    assert got[0].state == "interrupted"  # this job left no final.json of its own


def test_accounting_off_never_asks_scontrol(tmp_path, fake):
    """Regression: a run left unknown with accounting off ran `scontrol -o show job` (every job
    on the cluster) at each status; now each status is one squeue (and one sacct) at most."""
    engine = submitted_study(tmp_path, fake, features=1)
    fake.respond("squeue", (0, "", ""))
    fake.respond("sacct", (1, "", "sacct: error: Slurm accounting storage is disabled\n"))
    for n in (1, 2, 3):
        _, got = status.refresh(engine, None)
        assert [s.state for s in got] == ["unknown", "unknown"]
        assert [c[0] for c in fake.calls()] == ["squeue", "sacct"] * n


# ----------------------------------------------------------------------- local runs


def test_local_runs_alive_or_from_files(tmp_path):
    engine = make_study(tmp_path, features=1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "reatt.train"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wd = write_final(engine, "f0")
        with db.transaction(engine) as session:
            for r in db.get_study(session, None).runs:
                r.executor, r.state = "local", states.RUNNING
                r.job_id = f"local:{proc.pid}" if r.name == "baseline" else f"local:{other.pid}"
        _, got = status.refresh(engine, None)
        assert [s.state for s in got] == ["running", "completed"]  # f0: pid not reatt.train
        proc.kill()
        proc.wait()
        _, got = status.refresh(engine, None)
        assert got[0].state == "unknown" and f"process {proc.pid} is gone" in got[0].reason
        assert wd.exists()
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def test_local_job_ids_with_a_host(tmp_path):
    """local.py records ``local:<host>:<pid>`` (and, while a submit starts the run, its own pid)."""
    engine = make_study(tmp_path, features=2)  # baseline, f0, f1, all
    train = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "reatt.train"])
    submit = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with db.transaction(engine) as session:
            by = {r.name: r for r in db.get_study(session, None).runs}
            for r in by.values():
                r.executor, r.state, r.submitted_at = "local", states.RUNNING, utc_now()
            by["baseline"].job_id = processes.local_job_id(train.pid)
            by["f0"].job_id = f"local:{this_host()}-elsewhere:{train.pid}"
            by["f1"].state, by["f1"].state_reason = states.PENDING, "starting (reatt submit, local)"
            by["f1"].job_id = processes.local_job_id(submit.pid)
            by["all"].job_id = processes.local_job_id(submit.pid)  # running, but not reatt.train
        _, got = status.refresh(engine, None)
        assert [(s.state, s.reason) for s in got] == [
            ("running", None),
            ("running", f"runs on {this_host()}-elsewhere (pid {train.pid}); "
                        "`reatt status` there tells whether it still runs"),
            ("pending", "starting (reatt submit, local)"),
            ("unknown", f"the local process {submit.pid} is gone; no run directory"),
        ]  # fmt: skip
        submit.kill()
        submit.wait()
        _, got = status.refresh(engine, None)
        assert got[2].state == "unknown"  # the submit died before starting it
    finally:
        for p in (train, submit):
            p.kill()
            p.wait()


# ----------------------------------------------------------------------- select_runs


def _run(name, state, job_id=None):
    return SimpleNamespace(name=name, state=state, job_id=job_id)


ALL = [
    _run("a", "planned"),
    _run("b", "completed", "1"),
    _run("c", "failed", "2"),
    _run("d", "cancelled", "3"),
    _run("e", "timeout", "4"),
    _run("f", "interrupted", "local:5"),
    _run("g", "preempted", "6"),
    _run("h", "unknown", "7"),
    _run("i", "broken"),
]


def test_select_default_is_planned_only():
    chosen, skipped = select_runs(ALL, resubmit_failed=False, force=False)
    assert [r.name for r in chosen] == ["a"]
    assert skipped == [(r.name, r.state) for r in ALL[1:]]


def test_select_resubmit_failed():
    chosen, skipped = select_runs(ALL, resubmit_failed=True, force=False)
    assert [r.name for r in chosen] == ["a", "c", "d", "e", "f", "g", "h", "i"]
    assert skipped == [("b", "completed")]


def test_select_force_takes_all_but_refuses_active_runs():
    chosen, skipped = select_runs(ALL, resubmit_failed=False, force=True)
    assert chosen == ALL and skipped == []
    active = [*ALL, _run("p", "pending", "8"), _run("r", "running", "9"), _run("q", "requeued", "10")]
    with pytest.raises(StudyError) as e:
        select_runs(active, resubmit_failed=True, force=True)
    assert "p (pending, job 8), r (running, job 9), q (requeued, job 10)" in str(e.value)
    assert "reatt cancel" in str(e.value)


def test_status_module_has_no_heavy_imports():
    heavy = "('torch', 'pandas', 'jinja2', 'numpy')"
    code = f"import sys, reatt.study.status; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.stdout.strip() == "[]", out.stderr


def test_cancel_stops_local_training_processes_of_this_machine_only(tmp_path):
    """`reatt cancel` SIGTERMs a local run's training process (it checkpoints and exits 75); a run
    still being started (its id is the submit's own process) or on another host is left alone."""
    engine = make_study(tmp_path, features=2)  # baseline, f0, f1, all
    sleeper = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); time.sleep(60)"
    )
    train = subprocess.Popen([sys.executable, "-c", sleeper, "-m", "reatt.train"])
    submit_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)  # both have set up
        with db.transaction(engine) as session:
            by = {r.name: r for r in db.get_study(session, None).runs}
            for r in by.values():
                r.executor, r.submitted_at = "local", utc_now()
            by["baseline"].state, by["baseline"].job_id = states.RUNNING, processes.local_job_id(train.pid)
            by["f0"].state, by["f0"].job_id = states.PENDING, processes.local_job_id(submit_proc.pid)
            by["f1"].state, by["f1"].job_id = states.RUNNING, f"local:{this_host()}-elsewhere:{train.pid}"
        assert status.cancel(engine, None) == [processes.local_job_id(train.pid)]
        assert train.wait(timeout=30) == 75  # asked to stop: it checkpoints and exits
        assert submit_proc.poll() is None  # the submit starting f0 was not touched
        got = runs(engine)
        assert "reatt cancel" in got["baseline"].state_reason
        assert got["f0"].state == states.PENDING and "reatt cancel" not in (got["f0"].state_reason or "")
    finally:
        for p in (train, submit_proc):
            p.kill()
            p.wait()
