"""reatt submit without --cluster: a study's jobs run here, states recorded as they change.

One test trains real tiny runs (`python -m reatt.train`), two at a time, one of them failing on
a bad data line. The others use a stand-in training program (FAKE_TRAIN below: it writes the
run directory files and exits with reatt.train's exit codes) to check selection, --force,
Ctrl-C and the environment quickly.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

import reatt.train
from reatt import states
from reatt.executors import processes
from reatt.executors.local import LocalExecutor, ProcessRunner
from reatt.files import this_host
from reatt.study import store as db
from reatt.study.collect import collect
from reatt.study.plan import jobs_of, plan_study
from reatt.study.spec import JobSpec, load_spec
from reatt.study.submit import LaunchSession, SubmitResult, submit
from reatt.train import GLIBC_TUNABLES


def submit_local(
    engine, study, *, jobs=1, show_progress=True, dry_run=False, resubmit_failed=False, force=False
):
    """`reatt submit`: the one submit path, with the local executor."""
    executor = LocalExecutor(jobs=jobs, show_progress=show_progress)
    return submit(engine, study, executor, dry_run=dry_run, resubmit_failed=resubmit_failed, force=force)


def commands(result) -> list[str]:
    """A dry run's command lines."""
    return [text for _, text in result.previews]


def runs_of(engine, study: str) -> dict[str, db.Run]:
    with db.transaction(engine) as s:
        return {r.name: r for r in db.get_study(s, study).runs}


def dump(engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t.name: sorted(map(repr, conn.execute(select(t)))) for t in db.Base.metadata.sorted_tables}


def log_attempts(work_dir: str | Path) -> int:
    """How many times submit started this run (each start heads train.log with a line)."""
    return (Path(work_dir) / "train.log").read_text().count("=== reatt submit (local)")


@pytest.fixture
def engine(tmp_path):
    return db.open_db(tmp_path / "results.db")


def plan_spec(tmp_path: Path, engine, text: str) -> list[JobSpec]:
    spec_path = tmp_path / "study.toml"
    spec_path.write_text(text)
    return plan_study(load_spec(spec_path), engine).jobs


# ------------------------------------------------------------------------ real training runs

REAL_SPEC = """
[study]
name = "tiny"
matrix = "list"
seeds = [5]
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.batch_size = 2
trainer.max_iters = 4
trainer.eval_interval = 4
trainer.log_interval = 2
trainer.eval_windows = 4

[features]
rope = {{ "model.rope" = true }}

[runs.base]
features = []

[runs.rope]
features = ["rope"]

[runs.bad]
features = []
set = {{ "data.file_path" = "{bad}" }}
"""


@pytest.mark.slow
def test_real_study_in_parallel_with_a_failed_run_then_all_skipped(tmp_path, engine):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine first document"}\n{"text": oops}\n')
    jobs = plan_spec(tmp_path, engine, REAL_SPEC.format(out=tmp_path / "out", bad=bad))
    wd = {j.name: Path(j.work_dir) for j in jobs}

    res = submit_local(engine, None, jobs=2, show_progress=False)
    assert res.study == "tiny"
    assert res.completed == ["base", "rope"] and res.interrupted == [] and res.skipped == []
    assert [name for name, _ in res.failed] == ["bad"]
    reason = res.failed[0][1]
    assert f"{bad}:2" in reason, reason  # the file and line of the bad document
    runs = runs_of(engine, "tiny")
    for name in ("base", "rope"):
        r = runs[name]
        assert r.state == states.COMPLETED and r.executor == "local" and r.state_reason is None
        host, pid = processes.parse_local_job_id(r.job_id)
        assert r.job_id == f"local:{this_host()}:{pid}" and host == this_host()
        assert r.submitted_at is not None
        assert json.loads((wd[name] / "final.json").read_text())["status"] == "completed"
        assert (wd[name] / "ckpt.pt").exists() and (wd[name] / "loss.csv").exists()
        assert "step 4/4" in (wd[name] / "train.log").read_text()
    assert runs["bad"].state == states.FAILED and runs["bad"].state_reason == reason

    # again: everything was submitted already, nothing runs
    before = dump(engine)
    res = submit_local(engine, "tiny", jobs=2, show_progress=False)
    assert res.skipped == [("base", "completed"), ("rope", "completed"), ("bad", "failed")]
    assert (res.completed, res.failed) == ([], [])
    assert dump(engine) == before

    # the collected results agree with the run directories
    got = collect(engine, "tiny")
    assert got.runs_read == 3 and got.broken == []
    runs = runs_of(engine, "tiny")
    assert runs["rope"].final_nll == json.loads((wd["rope"] / "final.json").read_text())["final_nll"]
    assert runs["rope"].features == ["rope"] and runs["rope"].config["model"]["rope"] is True


# ------------------------------------------------------------- a stand-in training program

FAKE_TRAIN = r'''
"""Stands in for reatt.train: writes a run directory; data.tokenizer picks the behaviour."""
import json, os, signal, sys, time
from pathlib import Path

from reatt.training.config import parse_value

over = {k: parse_value(k, v) for k, v in (a[2:].split("=", 1) for a in sys.argv[1:])}
wd = Path(over["system.work_dir"])
mode = over.get("data.tokenizer", "")
wd.mkdir(parents=True, exist_ok=True)
(wd / "args.txt").write_text("".join(a + "\n" for a in sys.argv[1:]))
keep = ("OMP_NUM_THREADS", "GLIBC_TUNABLES", "PYTHONUNBUFFERED")
(wd / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in keep} | {"cwd": os.getcwd()}))
(wd / "config.json").write_text(json.dumps({"system": {"seed": over["system.seed"]}}))
print("fake training in", wd)


def final(status, error=None):
    nll = 5.0 if status == "completed" else None
    (wd / "final.json").write_text(json.dumps({"status": status, "final_nll": nll, "error": error}))


stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
if mode == "wait" and not (wd / "ckpt.pt").exists():
    (wd / "ready").write_text("")
    while not stop:
        time.sleep(0.02)
    (wd / "ckpt.pt").write_text("checkpoint")
    print("SIGINT: checkpoint saved; exiting 75")
    sys.exit(75)
if mode == "gate":  # runs until the test creates <work_dir>/go
    (wd / "ready").write_text("")
    while not (wd / "go").exists():
        time.sleep(0.02)
if mode == "fail-then-usage" and (wd / "final.json").exists():
    print("error: system.work_dir holds a run with a different config", file=sys.stderr)
    sys.exit(2)  # like reatt.train on a bad command line: nothing written, final.json untouched
if mode in ("fail", "fail-then-usage"):
    final("failed", "DataError: fake.jsonl:7: not JSON")
    sys.exit(1)
if mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
    sys.exit(3)
if mode == "diverge":
    final("diverged", "diverged at step 4: the training loss is nan")
    sys.exit(3)
(wd / "loss.csv").write_text("step,loss,val_loss,lr,tokens,elapsed_s\n0,,10.0,5e-4,0,0.1\n")
final("completed")
'''

TRACEBACK, BOOM = "Traceback (most recent call last):", "RuntimeError: boom"
FAKE_SPEC = """
[study]
name = "fake"
matrix = "list"
out_dir = "{out}"

[base]
trainer.max_iters = 5

[features]
rope = {{ "model.rope" = true }}
{runs}
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Submit runs the stand-in instead of reatt.train."""
    mod = tmp_path / "fakemod"
    mod.mkdir()
    (mod / "reatt_fake_train.py").write_text(FAKE_TRAIN)
    monkeypatch.setattr(reatt.train, "TRAIN_MODULE", "reatt_fake_train")
    monkeypatch.setenv("PYTHONPATH", str(mod))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def fake_study(tmp_path, engine, **modes: str) -> dict[str, Path]:
    runs = "".join(
        f'\n[runs.{name}]\nfeatures = []\nset = {{ "data.tokenizer" = "{mode}" }}\n'
        for name, mode in modes.items()
    )
    jobs = plan_spec(tmp_path, engine, FAKE_SPEC.format(out=tmp_path / "out", runs=runs))
    return {j.name: Path(j.work_dir) for j in jobs}


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, engine, fake_train):
    wd = fake_study(tmp_path, engine, a="", b="fail")
    before = dump(engine)
    res = submit_local(engine, "fake", dry_run=True, jobs=2)
    assert res.dry_run and res.completed == [] and res.skipped == []
    assert len(commands(res)) == 2
    cmd = commands(res)[0]
    assert cmd.startswith(f"GLIBC_TUNABLES={GLIBC_TUNABLES} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=")
    words = shlex.split(cmd)
    at = words.index(sys.executable)
    assert words[at : at + 4] == [sys.executable, "-m", "reatt_fake_train", "--trainer.max_iters=5"]
    assert f"--system.work_dir={wd['a']}" in words
    assert words[-3:] == [">>", str(wd["a"] / "train.log"), "2>&1"]
    assert not (tmp_path / "out").exists()
    assert dump(engine) == before


def test_failures_are_recorded_with_reasons_and_the_others_go_on(tmp_path, engine, fake_train, capsys):
    wd = fake_study(tmp_path, engine, crash="crash", ok="", fail="fail")
    res = submit_local(engine, "fake")  # sequential; plain lines (not a terminal)
    assert res.completed == ["ok"]
    assert res.failed == [
        ("crash", f"exit code 3: fake training in {wd['crash']} | {TRACEBACK} | {BOOM}"),
        ("fail", "DataError: fake.jsonl:7: not JSON"),
    ]
    runs = runs_of(engine, "fake")
    assert {n: r.state for n, r in runs.items()} == {"crash": "failed", "ok": "completed", "fail": "failed"}
    assert runs["fail"].state_reason == "DataError: fake.jsonl:7: not JSON"
    assert all(r.executor == "local" and r.job_id.startswith("local:") for r in runs.values())
    out = capsys.readouterr().out.splitlines()
    pid = processes.parse_local_job_id(runs["crash"].job_id)[1]
    assert out[0] == f"started crash (pid {pid}, log {wd['crash'] / 'train.log'})"
    assert out[1].startswith("[1/3] failed crash in ") and out[1].endswith("RuntimeError: boom")
    assert out[3].startswith("[2/3] completed ok in ") and out[3].endswith(": final NLL 5.0000")
    env = json.loads((wd["ok"] / "env.json").read_text())
    assert env == {
        "OMP_NUM_THREADS": None,  # one job at a time: torch's own default
        "GLIBC_TUNABLES": GLIBC_TUNABLES,
        "PYTHONUNBUFFERED": "1",
        "cwd": os.getcwd(),
    }

    # plain submit: all submitted already
    res = submit_local(engine, "fake", show_progress=False)
    assert res.skipped == [("crash", "failed"), ("ok", "completed"), ("fail", "failed")]
    assert [log_attempts(wd[n]) for n in ("crash", "ok", "fail")] == [1, 1, 1]

    # --resubmit-failed: exactly the failed ones, in place (no directory moved)
    res = submit_local(engine, "fake", resubmit_failed=True, show_progress=False)
    assert res.skipped == [("ok", "completed")] and res.archived == []
    assert [n for n, _ in res.failed] == ["crash", "fail"]
    assert [log_attempts(wd[n]) for n in ("crash", "ok", "fail")] == [2, 1, 2]

    # --force: every run again from scratch, each old directory moved aside, nothing deleted
    collect(engine, "fake")
    assert runs_of(engine, "fake")["ok"].final_nll == 5.0
    res = submit_local(engine, "fake", force=True, show_progress=False)
    assert res.completed == ["ok"] and len(res.failed) == 2 and res.skipped == []
    assert [old for old, _ in res.archived] == [str(wd[n]) for n in ("crash", "ok", "fail")]
    for old, new in res.archived:
        assert Path(new).name.startswith(Path(old).name + ".prev-")
        assert log_attempts(new) >= 1 and (Path(new) / "args.txt").exists()
        assert log_attempts(old) == 1
    ok = runs_of(engine, "fake")["ok"]
    assert ok.state == "completed" and ok.final_nll is None and ok.files is None  # results were the old dir's
    with db.transaction(engine) as s:  # and so were the metrics rows
        assert s.scalars(select(db.Metric).where(db.Metric.run_id == ok.id)).all() == []


def test_parallel_jobs_share_the_cpus(tmp_path, engine, fake_train):
    wd = fake_study(tmp_path, engine, a="", b="")
    res = submit_local(engine, "fake", jobs=2, show_progress=False)
    assert res.completed == ["a", "b"]
    share = str(max(1, processes.cpu_count() // 2))
    assert [json.loads((wd[n] / "env.json").read_text())["OMP_NUM_THREADS"] for n in "ab"] == [share, share]


def test_ctrl_c_forwards_sigint_records_interrupted_and_starts_nothing_more(tmp_path, engine, fake_train):
    wd = fake_study(tmp_path, engine, w1="wait", w2="wait", later="")
    seen = {}

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while not all((wd[n] / "ready").exists() for n in ("w1", "w2")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        # what `reatt status` in another terminal sees while they run
        other_terminal = db.open_db(tmp_path / "results.db")
        seen.update({n: (r.state, r.job_id) for n, r in runs_of(other_terminal, "fake").items()})
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    res = submit_local(engine, "fake", jobs=2, show_progress=False)
    presser.join()
    assert seen["w1"][0] == seen["w2"][0] == states.RUNNING and seen["later"] == (states.PLANNED, None)
    assert seen["w1"][1].startswith("local:")
    assert res.interrupted == ["w1", "w2"] and res.not_started == ["later"] and res.completed == []
    runs = runs_of(engine, "fake")
    assert [runs[n].state for n in ("w1", "w2", "later")] == ["interrupted", "interrupted", "planned"]
    assert "checkpoint" in runs["w1"].state_reason
    assert (wd["w1"] / "ckpt.pt").exists() and not (wd["later"]).exists()

    # a plain submit runs what never started; --resubmit-failed resumes the interrupted
    res = submit_local(engine, "fake", show_progress=False)
    assert res.completed == ["later"] and res.skipped == [("w1", "interrupted"), ("w2", "interrupted")]
    res = submit_local(engine, "fake", resubmit_failed=True, show_progress=False)
    assert res.completed == ["w1", "w2"]
    assert [r.state for r in runs_of(engine, "fake").values()] == ["completed"] * 3


def test_an_earlier_attempts_final_json_is_not_this_attempts_reason(tmp_path, engine, fake_train):
    fake_study(tmp_path, engine, r="fail-then-usage")
    res = submit_local(engine, "fake", show_progress=False)
    assert res.failed == [("r", "DataError: fake.jsonl:7: not JSON")]
    res = submit_local(engine, "fake", resubmit_failed=True, show_progress=False)
    [(name, reason)] = res.failed
    assert reason.startswith("exit code 2: ") and "DataError" not in reason
    assert reason.endswith(" | error: system.work_dir holds a run with a different config")
    assert runs_of(engine, "fake")["r"].state_reason == res.failed[0][1]


def test_a_run_left_running_by_a_killed_submit_is_seen_as_gone(tmp_path, engine, fake_train):
    fake_study(tmp_path, engine, a="", b="")
    with db.transaction(engine) as s:
        for run in db.get_study(s, "fake").runs:
            run.state, run.executor, run.job_id = states.RUNNING, "local", "local:999999999"
    res = submit_local(engine, "fake", show_progress=False)
    assert res.skipped == [("a", "unknown"), ("b", "unknown")] and res.completed == []
    assert "process 999999999 is gone" in runs_of(engine, "fake")["a"].state_reason
    res = submit_local(engine, "fake", resubmit_failed=True, show_progress=False)
    assert res.completed == ["a", "b"]


def test_state_changes_wait_while_another_command_holds_the_database(tmp_path, engine, fake_train):
    fake_study(tmp_path, engine, a="")
    path = tmp_path / "results.db"
    # SQLite's own wait made short, so that local.py's retry loop is what waits here
    impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a long collect's write transaction
    release = threading.Timer(2.5, holder.execute, args=("ROLLBACK",))
    release.start()
    t0 = time.monotonic()
    try:
        res = submit_local(impatient, "fake", show_progress=False)
    finally:
        release.join()
        holder.close()
    assert res.completed == ["a"] and time.monotonic() - t0 > 2
    assert runs_of(engine, "fake")["a"].state == states.COMPLETED


def test_local_job_ids_name_the_host_and_old_ids_still_parse():
    assert processes.local_job_id(123) == f"local:{this_host()}:123"
    assert processes.parse_local_job_id(processes.local_job_id(123)) == (this_host(), 123)
    assert processes.parse_local_job_id("local:node-7:42") == ("node-7", 42)
    assert processes.parse_local_job_id("local:42") == (None, 42)  # before hosts were recorded
    for other in (None, "", "123", "123_4", "local:", "local:node-7:", "local:node-7:x"):
        assert processes.parse_local_job_id(other) is None


def test_a_run_another_command_took_meanwhile_is_skipped_not_started(tmp_path, engine, fake_train):
    wd = fake_study(tmp_path, engine, first="gate", second="", third="")

    def other_command_takes_second() -> None:
        deadline = time.monotonic() + 60
        while not (wd["first"] / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        # e.g. a `reatt submit --cluster` in another terminal, while `second` waits in our queue
        with db.transaction(db.open_db(tmp_path / "results.db")) as s:
            run = next(r for r in db.get_study(s, "fake").runs if r.name == "second")
            run.state, run.executor, run.job_id = states.PENDING, "slurm", "4242"
        (wd["first"] / "go").touch()

    other = threading.Thread(target=other_command_takes_second)
    other.start()
    res = submit_local(engine, "fake", show_progress=False)  # one at a time: second waits for first
    other.join()
    assert res.completed == ["first", "third"] and res.failed == []
    assert res.skipped == [("second", "taken by another command (pending, job 4242)")]
    assert not wd["second"].exists()  # never started here
    second = runs_of(engine, "fake")["second"]
    assert (second.state, second.executor, second.job_id) == ("pending", "slurm", "4242")


def test_the_claim_is_atomic_and_undone_when_ctrl_c_comes_before_the_start(tmp_path, engine, fake_train):
    wd = fake_study(tmp_path, engine, a="")

    def launch_session():
        """What `reatt submit` hands the executor: the selected run, as the selection saw it."""
        with db.transaction(engine) as s:
            st = db.get_study(s, "fake")
            job, run = jobs_of(st)[0], st.runs[0]
        return job, LaunchSession(engine, "local", False, [(job, run)], SubmitResult("fake", "local", True))

    job, mine = launch_session()
    _, theirs = launch_session()  # another submit, with the same selection
    before = dump(engine)
    claim_id = processes.local_job_id(os.getpid())
    assert mine.claim(job, claim_id) is None  # taken: pending, with this submit's pid
    # the same selection: refused
    assert theirs.claim(job, "local:elsewhere:7") == f"taken by another command (pending, job {claim_id})"
    r = runs_of(engine, "fake")["a"]
    assert (r.state, r.executor, r.job_id) == (states.PENDING, "local", claim_id)
    mine.release(job)
    assert dump(engine) == before

    # Ctrl-C between the claim and the start: nothing started, the run is as it was
    job, mine = launch_session()
    runner = ProcessRunner(mine, 1)
    real_claim = mine.claim

    def claim_then_ctrl_c(*a):
        got = real_claim(*a)
        runner.interrupt()
        return got

    mine.claim = claim_then_ctrl_c
    runner.run(job)
    mine.finish([job])
    assert mine.result.not_started == ["a"]
    assert dump(engine) == before and not wd["a"].exists()


def test_a_diverged_run_is_reported_as_diverged_and_not_rerun_by_resubmit_failed(
    tmp_path, engine, fake_train
):
    fake_study(tmp_path, engine, ok="", nan="diverge")
    res = submit_local(engine, "fake", show_progress=False)
    assert res.completed == ["ok"] and res.failed == []
    assert res.diverged == [("nan", "diverged at step 4: the training loss is nan")]
    nan = runs_of(engine, "fake")["nan"]
    assert (nan.state, nan.state_reason) == ("diverged", "diverged at step 4: the training loss is nan")
    again = submit_local(engine, "fake", resubmit_failed=True, show_progress=False)  # it would diverge again
    assert again.diverged == [] and ("nan", "diverged") in again.skipped
