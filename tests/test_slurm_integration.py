"""reatt on a real single-node Slurm (the `slurm_cluster` fixture; 2 CPUs here): submit tiny
studies with `submit_cluster` (one job per run, and a job array), poll `status.refresh` until
the jobs end, collect and report; a failing run is reported failed and `--resubmit-failed`
sends exactly that one again; a run sent USR1 (what Slurm sends before the time limit)
checkpoints, requeues itself and resumes with a loss.csv equal to an uninterrupted run's;
`cancel` stops a running job.

Skipped without `sbatch`; required under REATT_REQUIRE_SLURM=1 (CI). About 2-3 minutes: every
job trains a gpt-nano for a few dozen steps on 1 CPU, and Python + torch take ~10 s to start.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from slurm_helpers import REPO_ROOT, SlurmCluster
from test_slurm_errors import submit_cluster

from reatt import rundir, states
from reatt.executors.slurm.logs import ended_by
from reatt.report.build import build_report
from reatt.report.write import write_report
from reatt.study import status
from reatt.study import store as db
from reatt.study.collect import collect
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BASE = """\
[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.batch_size = 4
trainer.max_iters = {iters}
trainer.eval_interval = {eval_interval}
trainer.eval_windows = 8
trainer.log_interval = 5
trainer.ckpt_interval = 0
system.num_threads = 1
trainer.precision = "fp32"  # bit-exact comparisons in fp32 (docs/guarantees.md: bf16 on CPU)

[slurm]
time = "00:10:00"
cpus_per_task = 1
mem = "1G"
signal_seconds = 60
"""
DONE = {states.COMPLETED, states.FAILED, states.CANCELLED, states.TIMEOUT, states.INTERRUPTED, states.BROKEN}
DONE |= {states.DIVERGED, states.PRUNED}


def setup_study(tmp_path: Path, name: str, runs_toml: str, iters: int = 20, eval_interval: int = 10):
    spec = tmp_path / f"{name}.toml"
    spec.write_text(
        f'[study]\nname = "{name}"\nmatrix = "list"\nout_dir = {json.dumps(str(tmp_path / "out"))}\n\n'
        + BASE.format(iters=iters, eval_interval=eval_interval)
        + '\n[features]\nrope = { "model.rope" = true }\n\n'
        + runs_toml
    )
    engine = db.open_db(tmp_path / "results.db")
    plan_study(load_spec(spec), engine)
    return engine


def wait_until_done(engine, study, timeout=240.0, on_poll=None):
    """Poll `status.refresh` (as `reatt status` does) until every run has ended.
    Returns the final statuses and every state each run was seen in."""
    seen: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    while True:
        _, statuses = status.refresh(engine, study)
        for s in statuses:
            if not seen[s.name] or seen[s.name][-1] != s.state:
                seen[s.name].append(s.state)
        if on_poll is not None:
            on_poll(statuses)
        if all(s.state in DONE for s in statuses):
            return statuses, dict(seen)
        if time.monotonic() > deadline:
            squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            pytest.fail(f"jobs of {study} not done after {timeout} s: {dict(seen)}\n{squeue}")
        time.sleep(1.0)


def loss_rows(work_dir: str) -> list[dict[str, str]]:
    with open(Path(work_dir) / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_jsonl(path: Path, bad_line: int | None = None) -> None:
    words = "the quick brown fox jumps over the lazy dog while a model learns to predict text".split()
    lines = [
        json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(120))}) for i in range(30)
    ]
    if bad_line is not None:
        lines[bad_line - 1] = "{this is not json"
    path.write_text("\n".join(lines) + "\n")


def test_study_one_job_per_run_failure_and_resubmit_failed(slurm_cluster: SlurmCluster, tmp_path: Path):
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, bad_line=3)
    runs_toml = (
        '[runs.baseline]\nfeatures = []\n[runs.rope]\nfeatures = ["rope"]\n'
        f'[runs.bad]\nfeatures = []\nset = {{ "data.file_path" = {json.dumps(str(data))} }}\n'
    )
    engine = setup_study(tmp_path, "it-jobs", runs_toml)
    t0 = time.monotonic()
    result = submit_cluster(engine, "it-jobs", project_dir=str(REPO_ROOT))
    assert time.monotonic() - t0 < 30  # returns once queued, never waits for the jobs
    assert [n for n, _ in result.submitted] == ["baseline", "rope", "bad"]
    ids = dict(result.submitted)
    assert all(j.isdigit() for j in ids.values())

    statuses, seen = wait_until_done(engine, "it-jobs")
    got = {s.name: s for s in statuses}
    assert got["baseline"].state == "completed" and got["rope"].state == "completed", seen
    assert got["bad"].state == "failed", seen
    assert "bad.jsonl:3" in got["bad"].reason  # the training program's own error, from final.json
    for name in ("baseline", "rope"):
        s = got[name]
        assert s.final_nll is not None and s.last_step == 20 and s.elapsed_s > 0
        assert [int(r["step"]) for r in loss_rows(s.work_dir)] == [0, 5, 10, 15, 20]
        assert not any("completed" in x for x in seen[name][:-1])  # never completed before the end
    log_dir = tmp_path / "out" / "slurm"
    out = (log_dir / f"it-jobs-baseline-{ids['baseline']}.out").read_text()
    assert f"reatt: run baseline, job {ids['baseline']}, attempt 1" in out and "python exited 0" in out
    assert "python exited 1" in (log_dir / f"it-jobs-bad-{ids['bad']}.out").read_text()

    collect(engine, "it-jobs")
    with db.transaction(engine) as session:
        nll = {r.name: r.final_nll for r in db.get_study(session, "it-jobs").runs}
    assert nll["baseline"] is not None and nll["rope"] is not None and nll["bad"] is None
    written = write_report(build_report(engine, "it-jobs"), tmp_path / "report", formats=("csv",))
    assert written and all(Path(p).exists() for p in written)

    # fix the data; --resubmit-failed sends exactly the failed run
    write_jsonl(data)
    again = submit_cluster(engine, "it-jobs", resubmit_failed=True, project_dir=str(REPO_ROOT))
    assert [n for n, _ in again.submitted] == ["bad"]
    assert again.skipped == [("baseline", "completed"), ("rope", "completed")]
    statuses, seen = wait_until_done(engine, "it-jobs")
    assert {s.name: s.state for s in statuses} == dict.fromkeys(("baseline", "rope", "bad"), "completed"), (
        seen
    )
    assert {s.name: s.job_id for s in statuses}["bad"] == again.submitted[0][1] != ids["bad"]


def test_array_task_requeued_by_usr1_resumes_exactly(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Two identical runs in one array; task 0 gets USR1 mid-run (as before a time limit)."""
    runs_toml = "[runs.a]\nfeatures = []\n[runs.b]\nfeatures = []\n"
    engine = setup_study(tmp_path, "it-array", runs_toml, iters=120, eval_interval=20)
    result = submit_cluster(engine, "it-array", array=True, throttle=2, project_dir=str(REPO_ROOT))
    ids = dict(result.submitted)
    array_id = ids["a"].split("_")[0]
    assert ids == {"a": f"{array_id}_0", "b": f"{array_id}_1"}
    assert "#SBATCH --array=0,1%2" in Path(result.scripts[0]).read_text()
    work = {s.name: s.work_dir for s in status.refresh(engine, "it-array")[1]}
    signalled: list[int] = []

    def signal_a_mid_run(statuses):
        if signalled:
            return
        rows = loss_rows(work["a"]) if (Path(work["a"]) / "loss.csv").exists() else []
        if len(rows) >= 3:  # training is under way (its signal handlers are set)
            r = subprocess.run(
                ["scancel", "--signal=USR1", "--batch", ids["a"]], capture_output=True, text=True
            )
            assert r.returncode == 0, r.stderr
            signalled.append(int(rows[-1]["step"]))

    statuses, seen = wait_until_done(engine, "it-array", timeout=300, on_poll=signal_a_mid_run)
    assert signalled and signalled[0] < 120, "run a ended before it could be signalled"
    got = {s.name: s for s in statuses}
    assert got["a"].state == "completed" and got["b"].state == "completed", seen
    assert "requeued" in seen["a"], seen  # pending again after its own requeue
    assert "requeued" not in seen["b"], seen

    log_dir = tmp_path / "out" / "slurm"
    out_a = (log_dir / f"it-array-{ids['a']}.out").read_text()
    out_b = (log_dir / f"it-array-{ids['b']}.out").read_text()
    assert "checkpoint saved at step" in out_a and f"requeueing {ids['a']}" in out_a
    assert f"job {ids['a']}, attempt 2" in out_a  # SLURM_RESTART_COUNT=1: Slurm ran it again
    assert "attempt 2" not in out_b and "requeueing" not in out_b  # only its own task requeued
    assert "resuming" in out_a
    # the .err file marks each attempt; its latest one ended without any Slurm end line (Slurm's
    # "CANCELLED ... DUE TO JOB REQUEUE" of the requeue, if written, belongs to attempt 1)
    err_a = log_dir / f"it-array-{ids['a']}.err"
    assert len(list(rundir.ATTEMPT_LINE.finditer(err_a.read_text()))) == 2
    assert ended_by(rundir.attempt_text(err_a)) is None

    rows_a, rows_b = loss_rows(work["a"]), loss_rows(work["b"])
    steps = [int(r["step"]) for r in rows_a]
    assert steps == sorted(set(steps)) == list(range(0, 121, 5))  # no step repeated or missing
    assert steps == [int(r["step"]) for r in rows_b]  # = the uninterrupted run's
    for ra, rb in zip(rows_a, rows_b, strict=True):  # same config and seed: same numbers on CPU
        for col in ("loss", "val_loss", "tokens"):
            if rb[col] == "":
                assert ra[col] == ""
            else:
                assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-5), (ra, rb)


def test_cancel_stops_a_running_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    engine = setup_study(
        tmp_path, "it-cancel", "[runs.long]\nfeatures = []\n", iters=5000, eval_interval=1000
    )
    result = submit_cluster(engine, "it-cancel", project_dir=str(REPO_ROOT))
    job_id = result.submitted[0][1]
    deadline = time.monotonic() + 120
    while status.refresh(engine, "it-cancel")[1][0].state != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    assert status.cancel(engine, "it-cancel") == [job_id]
    statuses, seen = wait_until_done(engine, "it-cancel", timeout=120)
    assert statuses[0].state == "cancelled", seen
    assert status.cancel(engine, "it-cancel") == []


def test_a_tuned_study_submits_stage_2_in_a_follow_up_submit(slurm_cluster: SlurmCluster, tmp_path: Path):
    runs_toml = (
        "[runs.baseline]\nfeatures = []\n\n[tune]\nseeds = [7]\n"
        '"trainer.learning_rate" = [5e-4, 3e-3]\nprune_margin = 0\n'
    )
    engine = setup_study(tmp_path, "it-tuned", runs_toml)
    first = submit_cluster(engine, "it-tuned", project_dir=str(REPO_ROOT))
    # stage 1 is queued; stage 2 is not, and says why
    assert [n for n, _ in first.submitted] == ["tune-baseline-lr0.0005-s7", "tune-baseline-lr0.003-s7"]
    assert [n for n, _ in first.skipped] == ["baseline"]
    assert "stage 2 waits for its tuning: tune-baseline-lr0.0005-s7 is pending" in first.skipped[0][1]
    assert first.skipped[0][1].endswith("submit again once it has ended")
    deadline = time.monotonic() + 240
    while True:
        _, statuses = status.refresh(engine, "it-tuned")
        tuning = [s for s in statuses if s.name.startswith("tune-")]
        if all(s.state in DONE for s in tuning):
            break
        assert time.monotonic() < deadline, [(s.name, s.state) for s in statuses]
        time.sleep(1.0)
    assert {s.state for s in tuning} == {states.COMPLETED}
    # the follow-up submit collects stage 1, chooses, and queues stage 2 at the chosen value
    second = submit_cluster(engine, "it-tuned", project_dir=str(REPO_ROOT))
    assert [n for n, _ in second.submitted] == ["baseline"]
    statuses, seen = wait_until_done(engine, "it-tuned")
    assert {s.state for s in statuses} == {states.COMPLETED}, seen
    with db.transaction(engine) as session:
        runs = {r.name: r for r in db.get_study(session, "it-tuned").runs}
        nll = {lr: runs[f"tune-baseline-lr{lr}-s7"].final_nll for lr in ("0.0005", "0.003")}
        chosen = runs["baseline"].tuning["chosen"]["trainer.learning_rate"]
    assert chosen == (5e-4 if nll["0.0005"] <= nll["0.003"] else 3e-3)
    cfg = json.loads((tmp_path / "out" / "it-tuned" / "baseline" / "config.json").read_text())
    assert cfg["trainer"]["learning_rate"] == chosen and cfg["system"]["seed"] == 3407
