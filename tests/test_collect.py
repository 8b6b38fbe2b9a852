"""reatt collect: run directories -> results.db, idempotent, incremental, one transaction.

Most run directories here are written by hand as docs/run-directory.md describes them (fast);
one test collects a real `python -m reatt.train` run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from reatt import rundir, states
from reatt.errors import DatabaseError, StudyError
from reatt.study import metrics
from reatt.study import store as db
from reatt.study.collect import collect
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec
from reatt.train import TRAIN_ENV, TRAIN_MODULE
from reatt.training.config import get_default_config

SPEC = """
[study]
name = "demo"
seeds = [1, 2]
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.max_iters = 20

[features]
rope = {{ "model.rope" = true }}
"""
NAMES = ["baseline-s1", "baseline-s2", "rope-s1", "rope-s2"]


def loss_rows(steps: int, seed: int) -> list[str]:
    out = [f"0,,{10.5 + seed / 100:.6f},5.000000e-04,0,0.100"]
    for s in range(1, steps + 1):
        val = f"{9.0 - s / 10:.6f}" if s % 5 == 0 else ""
        out.append(f"{s},{10.0 - s / 10 + seed / 100:.6f},{val},5.000000e-04,{s * 128},{0.1 + s * 0.05:.3f}")
    return out


def write_run(
    work: Path,
    *,
    steps: int = 10,
    seed: int = 1,
    status: str | None = "completed",
    final_nll: float = 5.5,
    overrides: dict | None = None,
    csv_tail: str = "",
    finished_at: str = "2026-11-30T13:00:00+00:00",
) -> None:
    """The files `python -m reatt.train` leaves in a run directory (docs/run-directory.md)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = get_default_config()
    over = {"system.seed": seed, "system.work_dir": str(work), **(overrides or {})}
    cfg.merge_from_dict(over)
    config = {**cfg.to_dict(), "meta": {"n_params": 4000, "n_params_non_embedding": 1000, "device": "cpu"}}
    (work / "args.txt").write_text("".join(f"--{k}={v}\n" for k, v in over.items()))
    (work / "config.json").write_text(json.dumps(config, indent=2))
    lines = ["step,loss,val_loss,lr,tokens,elapsed_s", *loss_rows(steps, seed)]
    (work / "loss.csv").write_text("\n".join(lines) + "\n" + csv_tail)
    if status is not None:
        final = {
            "status": status,
            "final_nll": final_nll if status == "completed" else None,
            "final_train_loss": final_nll - 0.1 if status == "completed" else None,
            "steps": steps,
            "tokens": steps * 128,
            "wall_time_s": 1.5,
            "train_time_s": 1.2,
            "tokens_per_s": 1066.7,
            "mfu": None,
            "n_params": 4000,
            "n_params_non_embedding": 1000,
            "error": None if status == "completed" else "DataError: data.jsonl:3: not JSON",
            "finished_at": finished_at,
        }
        (work / "final.json").write_text(json.dumps(final, indent=2))


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order: the database's whole state."""
    out = {}
    with engine.connect() as conn:
        for table in db.Base.metadata.sorted_tables:
            out[table.name] = sorted(tuple(map(repr, r)) for r in conn.execute(select(table)))
    return out


def runs_by_name(engine, study: str = "demo") -> dict[str, db.Run]:
    with db.transaction(engine) as s:
        return {r.name: r for r in db.get_study(s, study).runs}


def metric_count(engine, name: str, study: str = "demo") -> int:
    run = runs_by_name(engine, study)[name]
    with db.transaction(engine) as s:
        return s.scalar(select(func.count()).select_from(db.Metric).where(db.Metric.run_id == run.id))


@pytest.fixture
def engine(db_url):
    """A fresh database on each backend (conftest.py's db_url): every test here runs on both."""
    eng = db.open_db(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def demo(tmp_path, engine):
    """A planned 4-run study (baseline, rope x seeds 1, 2), every run completed on disk."""
    spec_path = tmp_path / "demo.toml"
    spec_path.write_text(SPEC.format(out=tmp_path / "out"))
    jobs = plan_study(load_spec(spec_path), engine).jobs
    for i, job in enumerate(jobs):
        write_run(Path(job.work_dir), seed=job.seed, final_nll=5.0 + i / 10, overrides=job.overrides)
    return {j.name: Path(j.work_dir) for j in jobs}


def test_collect_reads_results_config_and_metrics(engine, demo):
    res = collect(engine)  # the latest planned study
    assert res.studies == ["demo"]
    assert (res.runs_read, res.runs_unchanged, res.metric_rows) == (4, 0, 4 * 11)
    assert res.broken == [] and res.warnings == []
    runs = runs_by_name(engine)
    assert sorted(runs) == NAMES
    r = runs["rope-s2"]
    assert r.state == states.COMPLETED and r.collect_error is None and r.state_reason is None
    assert r.final_nll == pytest.approx(5.3) and r.final_train_loss == pytest.approx(5.2)
    assert (r.steps, r.tokens, r.n_params, r.n_params_non_embedding) == (10, 1280, 4000, 1000)
    assert r.tokens_per_s == pytest.approx(1066.7) and r.wall_time_s == 1.5 and r.mfu is None
    assert r.config["model"]["rope"] is True and r.config["system"]["seed"] == 2
    assert r.files == rundir.fingerprint(demo["rope-s2"]) and r.collected_at is not None
    with db.transaction(engine) as s:
        got = s.execute(
            select(db.Metric.step, db.Metric.loss, db.Metric.val_loss, db.Metric.lr, db.Metric.tokens)
            .where(db.Metric.run_id == r.id)
            .order_by(db.Metric.step)
        ).all()
    want = rundir.read_loss_csv(demo["rope-s2"] / "loss.csv").rows
    assert [tuple(g) for g in got] == [w[:5] for w in want]
    assert got[0] == (0, None, pytest.approx(10.52), 5e-4, 0)


def test_collecting_twice_adds_nothing(engine, demo):
    collect(engine, "demo")
    before = dump(engine)
    res = collect(engine, "demo")
    assert (res.runs_read, res.runs_unchanged, res.metric_rows) == (0, 4, 0)
    assert dump(engine) == before


def test_only_changed_runs_are_read_again(engine, demo):
    collect(engine)
    before = runs_by_name(engine)
    # a run that grew: more rows and a new final.json
    write_run(demo["baseline-s2"], seed=2, steps=15, final_nll=4.9, overrides={"model.rope": False})
    res = collect(engine)
    assert (res.runs_read, res.runs_unchanged, res.metric_rows) == (1, 3, 16)
    after = runs_by_name(engine)
    assert after["baseline-s2"].steps == 15 and after["baseline-s2"].final_nll == pytest.approx(4.9)
    assert metric_count(engine, "baseline-s2") == 16  # replaced, not added to the old 11
    for name in ("baseline-s1", "rope-s1", "rope-s2"):
        assert after[name].collected_at == before[name].collected_at
    assert after["baseline-s2"].collected_at > before["baseline-s2"].collected_at


def test_run_still_writing_truncated_last_line_ignored_and_live_state_kept(engine, demo):
    wd = demo["rope-s1"]
    (wd / "final.json").unlink()
    with open(wd / "loss.csv", "a") as f:
        f.write("11,5.1234")  # no newline: the training program is mid-write
    with db.transaction(engine) as s:
        run = next(r for r in db.get_study(s, "demo").runs if r.name == "rope-s1")
        run.state, run.executor, run.job_id = states.RUNNING, "slurm", "4242"
    res = collect(engine)
    assert res.broken == []
    truncated = "loss.csv: truncated last line ignored (a run still writing, or killed)"
    assert res.warnings == [f"demo/rope-s1: {truncated}"]
    r = runs_by_name(engine)["rope-s1"]
    assert r.state == states.RUNNING and r.job_id == "4242"  # status.py owns live states
    assert r.final_nll is None and r.steps == 10 and r.wall_time_s == pytest.approx(0.6)  # from the last row
    assert metric_count(engine, "rope-s1") == 11
    # the run finishes: read again, completed
    write_run(wd, seed=1, steps=12, final_nll=5.05, overrides={"model.rope": True})
    res = collect(engine)
    assert res.runs_read == 1 and res.warnings == []
    r = runs_by_name(engine)["rope-s1"]
    assert r.state == states.COMPLETED and r.final_nll == pytest.approx(5.05)
    assert metric_count(engine, "rope-s1") == 13


def test_missing_run_dir_is_broken_and_reported_every_time(engine, demo):
    collect(engine)
    shutil.rmtree(demo["rope-s2"])
    for _ in range(2):
        res = collect(engine)
        assert res.broken == [("demo", "rope-s2", "run directory missing")]
        r = runs_by_name(engine)["rope-s2"]
        assert r.state == states.BROKEN and r.collect_error == "run directory missing"
        assert r.final_nll == pytest.approx(5.3)  # what was collected is kept, never silently dropped
        assert metric_count(engine, "rope-s2") == 11
    # back again: read again and repaired
    write_run(demo["rope-s2"], seed=2, final_nll=5.3, overrides={"model.rope": True})
    res = collect(engine)
    assert res.broken == [] and res.runs_read == 1
    r = runs_by_name(engine)["rope-s2"]
    assert r.state == states.COMPLETED and r.collect_error is None


def test_planned_run_not_started_is_not_broken(engine, demo):
    shutil.rmtree(demo["baseline-s1"])  # never run: no directory, state planned
    res = collect(engine)
    assert res.broken == [] and res.runs_not_started == 1 and res.runs_read == 3
    assert runs_by_name(engine)["baseline-s1"].state == states.PLANNED


def test_broken_final_json_is_recorded_metrics_kept_then_repaired(engine, demo):
    wd = demo["baseline-s1"]
    (wd / "final.json").write_text('{"status": "completed", "final_nll": ')  # torn write
    res = collect(engine)
    assert [(st, run) for st, run, _ in res.broken] == [("demo", "baseline-s1")]
    reason = res.broken[0][2]
    assert reason.startswith("final.json unreadable: ")
    r = runs_by_name(engine)["baseline-s1"]
    assert r.state == states.BROKEN and r.collect_error == reason and r.final_nll is None
    assert metric_count(engine, "baseline-s1") == 11  # loss.csv was fine: its rows are in
    assert collect(engine).broken == res.broken  # still reported while unchanged
    write_run(wd, seed=1, final_nll=5.0)
    res = collect(engine)
    assert res.broken == []
    r = runs_by_name(engine)["baseline-s1"]
    assert r.state == states.COMPLETED and r.collect_error is None and r.final_nll == pytest.approx(5.0)


def test_bad_loss_csv_header_and_bad_final_values_are_broken(engine, demo):
    (demo["baseline-s2"] / "loss.csv").write_text("iter,loss\n1,2.0\n")
    final = json.loads((demo["rope-s1"] / "final.json").read_text())
    final["final_nll"] = "5.1"
    (demo["rope-s1"] / "final.json").write_text(json.dumps(final))
    res = collect(engine)
    broken = {run: reason for _, run, reason in res.broken}
    assert set(broken) == {"baseline-s2", "rope-s1"}
    assert "loss.csv unreadable" in broken["baseline-s2"] and "header" in broken["baseline-s2"]
    assert broken["rope-s1"] == "final.json: final_nll = '5.1', expected a number"
    assert metric_count(engine, "baseline-s2") == 0
    assert runs_by_name(engine)["rope-s1"].final_nll is None


def test_malformed_and_repeated_lines_are_warnings(engine, demo):
    wd = demo["rope-s2"]
    with open(wd / "loss.csv", "a") as f:
        f.write("11,4.9\n")  # too few fields
        f.write("10,4.8,,5e-4,1280,0.6\n")  # step 10 again
    res = collect(engine)
    assert res.broken == []
    assert res.warnings == [
        "demo/rope-s2: loss.csv:13: 2 fields, expected 6 (line ignored)",
        "demo/rope-s2: loss.csv: 1 row(s) repeat an earlier step; the last one kept",
    ]
    assert metric_count(engine, "rope-s2") == 11
    with db.transaction(engine) as s:
        run_id = runs_by_name(engine)["rope-s2"].id
        assert s.get(db.Metric, (run_id, 10)).loss == pytest.approx(4.8)


def test_interrupted_collect_leaves_the_previous_state(engine, demo, monkeypatch):
    collect(engine)
    write_run(demo["baseline-s1"], seed=1, steps=14, final_nll=4.0)
    write_run(demo["rope-s1"], seed=1, steps=14, final_nll=4.1, overrides={"model.rope": True})
    before = dump(engine)
    real = rundir.read_loss_csv
    calls = []

    def read_then_interrupt(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C half-way: one run already written in the transaction
        return real(path)

    monkeypatch.setattr(rundir, "read_loss_csv", read_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect(engine)
    assert len(calls) == 2
    assert dump(engine) == before
    monkeypatch.setattr(rundir, "read_loss_csv", real)
    res = collect(engine)
    assert res.runs_read == 2 and res.metric_rows == 2 * 15


def test_dict_executemany_fallback_gives_the_same_rows(tmp_path, demo, engine):
    collect(engine)
    fast = dump(engine)["metrics"]
    other = db.open_db(tmp_path / "other.db")
    spec_path = tmp_path / "demo.toml"
    plan_study(load_spec(spec_path), other)
    mp = pytest.MonkeyPatch()
    mp.setattr(metrics, "positional_insert_sql", lambda dialect, table: None)
    try:
        res = collect(other)
    finally:
        mp.undo()
    assert res.metric_rows == 44
    assert dump(other)["metrics"] == fast


def make_tree(root: Path) -> None:
    write_run(root / "baseline", seed=3, final_nll=5.5)
    write_run(root / "sweep" / "rope", seed=3, final_nll=5.2, overrides={"model.rope": True})
    write_run(
        root / "sweep" / "all",
        seed=4,
        status="failed",
        overrides={"model.swiglu": True, "trainer.warmup_steps": 10, "trainer.use_cosine": True},
    )
    write_run(root / "sweep" / "all" / "nested", seed=5, status=None)  # a run dir inside a run dir
    write_run(root / "baseline.prev-20260101T000000123456Z", final_nll=9.9)  # moved aside by --force
    write_run(root / ".hidden" / "x")
    (root / "notes").mkdir()
    (root / "notes" / "samples.txt").write_text("not a run\n")


def test_collect_hand_made_tree(tmp_path, engine):
    root = tmp_path / "manual"
    make_tree(root)
    res = collect(engine, paths=[root])
    assert res.studies == ["manual"] and res.runs_added == 4 and res.runs_read == 4
    assert res.broken == []
    with db.transaction(engine) as s:
        st = db.get_study(s, "manual")
        assert (st.matrix, st.spec, st.spec_hash, st.out_dir) == ("collected", None, None, str(root))
        assert st.reference == "baseline"
        runs = {r.name: r for r in st.runs}
        names = ["baseline", "sweep/all", "sweep/all/nested", "sweep/rope"]
        assert [r.name for r in st.runs] == names
    assert [runs[n].position for n in names] == [0, 1, 2, 3]
    rope, allr, nested = runs["sweep/rope"], runs["sweep/all"], runs["sweep/all/nested"]
    assert rope.variant == "sweep/rope" and rope.seed == 3 and rope.features == ["rope"]
    assert rope.state == states.COMPLETED and rope.final_nll == pytest.approx(5.2)
    assert rope.work_dir == str(root / "sweep" / "rope")
    assert rope.overrides == {"system.seed": 3, "system.work_dir": rope.work_dir, "model.rope": True}
    assert allr.features == ["swiglu", "warmup", "cosine"] and allr.seed == 4
    assert allr.state == states.FAILED and allr.state_reason == "DataError: data.jsonl:3: not JSON"
    assert nested.state == states.UNKNOWN and nested.state_reason == "no final.json" and nested.steps == 10
    # twice: nothing new
    before = dump(engine)
    res = collect(engine, paths=[root])
    assert (res.runs_read, res.runs_unchanged, res.runs_added) == (0, 4, 0) and dump(engine) == before
    # one run deleted, one added
    shutil.rmtree(root / "sweep" / "rope")
    write_run(root / "extra", seed=9)
    res = collect(engine, paths=[root])
    assert res.runs_added == 1 and res.runs_read == 1
    assert res.broken == [("manual", "sweep/rope", "run directory missing")]
    assert [r.name for r in runs_by_name(engine, "manual").values()] == [
        "baseline",
        "extra",
        "sweep/all",
        "sweep/all/nested",
        "sweep/rope",
    ]


def test_collect_path_as_named_study_and_name_conflicts(tmp_path, engine, demo):
    root = tmp_path / "manual"
    write_run(root, seed=2)  # the path is itself a run directory
    res = collect(engine, paths=[root], as_study="mine")
    assert res.studies == ["mine"]
    assert list(runs_by_name(engine, "mine")) == ["manual"]
    with pytest.raises(StudyError, match="planned from"):
        collect(engine, paths=[root], as_study="demo")
    other = tmp_path / "elsewhere" / "manual"
    write_run(other)
    with pytest.raises(StudyError, match="holds runs collected from"):
        collect(engine, paths=[other], as_study="mine")
    with pytest.raises(StudyError, match="not a directory"):
        collect(engine, paths=[tmp_path / "nope"])
    with pytest.raises(StudyError, match="not both"):
        collect(engine, "demo", paths=[root])
    with pytest.raises(StudyError, match="give a PATH"):
        collect(engine, as_study="x")
    with pytest.raises(StudyError, match="or --all, not both"):
        collect(engine, "demo", all_studies=True)


def test_all_studies(tmp_path, engine, demo):
    collect(engine, paths=[tmp_path / "out" / "demo" / "rope-s1"], as_study="single")
    res = collect(engine, all_studies=True)
    assert res.studies == ["demo", "single"]
    assert res.runs_read == 4 and res.runs_unchanged == 1


def test_schema_version_mismatch_is_refused(tmp_path):
    path = tmp_path / "results.db"
    db.open_db(path).dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(DatabaseError, match="schema version 999"):
        db.open_db(path)


def test_any_sqlalchemy_url(tmp_path):
    path = tmp_path / "sub dir" / "r.db"
    path.parent.mkdir()
    root = tmp_path / "runs"
    write_run(root / "a")
    engine = db.open_db(f"sqlite:///{path}")
    assert collect(engine, paths=[root]).runs_read == 1
    memory = db.open_db("sqlite://")
    assert collect(memory, paths=[root]).metric_rows == 11
    # the file is a plain SQLite database any tool can read
    raw = create_engine(f"sqlite:///{path}")
    with raw.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM metrics").scalar() == 11


@pytest.mark.slow
def test_collect_a_real_training_run(tmp_path):
    # SQLite only: the training run is what costs the time, and what it writes is collected
    # like the hand-written runs every other test here collects on both backends
    engine = db.open_db(tmp_path / "results.db")
    wd = tmp_path / "manual" / "real"
    argv = [
        "--data.block_size=32",
        "--trainer.max_iters=4",
        "--trainer.batch_size=2",
        "--trainer.eval_interval=2",
        "--trainer.log_interval=1",
        "--trainer.eval_windows=4",
        "--model.rope=True",
        "--system.seed=11",
        f"--system.work_dir={wd}",
    ]
    env = {**os.environ, **TRAIN_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", TRAIN_MODULE, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = collect(engine, paths=[tmp_path / "manual"])
    assert res.broken == [] and res.warnings == [] and res.metric_rows == 5
    final = json.loads((wd / "final.json").read_text())
    r = runs_by_name(engine, "manual")["real"]
    assert r.state == states.COMPLETED and r.seed == 11 and r.features == ["rope"]
    assert r.final_nll == final["final_nll"] and r.n_params == final["n_params"] > 0
    assert r.tokens == 4 * 2 * 32 and r.steps == 4
    assert r.overrides["trainer.max_iters"] == 4 and r.overrides["system.work_dir"] == str(wd)
    assert r.config["meta"]["n_params"] == final["n_params"]
    with db.transaction(engine) as s:
        q = select(db.Metric.val_loss).where(db.Metric.run_id == r.id).order_by(db.Metric.step)
        vals = s.scalars(q).all()
    assert vals[0] > 10 and vals[-1] == pytest.approx(final["final_nll"], abs=1e-5)


# ------------------------------------------------- live states: a resubmitted run's old final.json


def utc_iso_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def test_resubmitted_run_stays_pending_despite_the_old_final_json(tmp_path, engine, demo, monkeypatch):
    """Regression: collect read the failed attempt's final.json while the new job was queued,
    recorded `failed`, and a later --resubmit-failed submitted a second job on the same work dir."""
    from test_slurm_errors import FakeSlurm, submit_cluster

    wd = demo["baseline-s1"]
    write_run(wd, seed=1, status="failed")  # attempt 1 failed (finished_at: an hour before "now")
    collect(engine)
    assert runs_by_name(engine)["baseline-s1"].state == states.FAILED
    fake = FakeSlurm(tmp_path / "fake", monkeypatch)
    fake.respond("sbatch", (0, "999\n", ""))
    sent = submit_cluster(engine, "demo", resubmit_failed=True, project_dir=str(tmp_path))
    assert sent.submitted == [("baseline-s1", "999")]
    os.utime(wd / "loss.csv")  # collect sees changed files; final.json is still attempt 1's
    res = collect(engine)
    assert res.runs_read == 1 and res.broken == []
    r = runs_by_name(engine)["baseline-s1"]
    assert (r.state, r.job_id) == (states.PENDING, "999")  # status.py's, not final.json's
    assert r.steps == 10 and r.final_nll is None  # progress from loss.csv, nothing from the old record
    # status keeps watching it, and a second --resubmit-failed sends nothing
    fake.respond("squeue", (0, "999|PENDING|Priority\n", ""))
    again = submit_cluster(engine, "demo", resubmit_failed=True, project_dir=str(tmp_path))
    assert again.submitted == [] and ("baseline-s1", "pending") in again.skipped
    assert len(fake.calls("sbatch")) == 1
    # the new attempt ends: its own final.json decides
    write_run(wd, seed=1, steps=12, final_nll=4.75, finished_at=utc_iso_now())
    collect(engine)
    r = runs_by_name(engine)["baseline-s1"]
    assert r.state == states.COMPLETED and r.final_nll == pytest.approx(4.75)


def test_running_local_run_keeps_its_state_over_an_old_final_json(engine, demo):
    wd = demo["rope-s1"]
    write_run(wd, seed=1, status="failed", overrides={"model.rope": True})
    with db.transaction(engine) as s:  # what `reatt submit --resubmit-failed` (local) records
        run = next(r for r in db.get_study(s, "demo").runs if r.name == "rope-s1")
        run.state, run.executor, run.job_id = states.RUNNING, "local", f"local:{os.getpid()}"
        run.submitted_at = db.utc_now()
    collect(engine)
    r = runs_by_name(engine)["rope-s1"]
    assert (r.state, r.job_id) == (states.RUNNING, f"local:{os.getpid()}") and r.state_reason is None


def test_active_run_with_unreadable_files_keeps_its_state(engine, demo):
    wd = demo["rope-s2"]
    (wd / "final.json").unlink()
    (wd / "loss.csv").write_text("iter,loss\n1,2.0\n")
    with db.transaction(engine) as s:
        run = next(r for r in db.get_study(s, "demo").runs if r.name == "rope-s2")
        run.state, run.executor, run.job_id = states.RUNNING, "slurm", "77"
        run.submitted_at = db.utc_now()
    res = collect(engine)
    r = runs_by_name(engine)["rope-s2"]
    assert r.state == states.RUNNING and "header" in r.collect_error  # not broken: status.py watches it
    assert res.broken == [] and any("demo/rope-s2: loss.csv unreadable" in w for w in res.warnings)


# ------------------------------------------------------------ collected studies and names


def test_collected_study_does_not_become_the_default(tmp_path, engine, demo):
    """Regression: `collect PATH --as NAME` made NAME the study of every later command without
    --study (db.get_study(None) took the latest planned_at, which defaults to now).

    NOTE: the fix is in db.py (not collect.py): db.get_study(None) only considers studies with a
    spec (``Study.spec_hash IS NOT NULL``), i.e. planned ones; collected studies have none."""
    root = tmp_path / "manual"
    write_run(root / "a", seed=2)
    collect(engine, paths=[root], as_study="mine")
    with db.transaction(engine) as s:
        assert db.get_study(s, None).name == "demo"
    assert collect(engine).studies == ["demo"]


@pytest.mark.parametrize("name", ["mine\n", "mine\nother", " mine", "-mine"])
def test_collect_refuses_bad_study_names(tmp_path, engine, name):
    root = tmp_path / "manual"
    write_run(root / "a")
    with pytest.raises(StudyError, match="study name"):
        collect(engine, paths=[root], as_study=name)
    with db.transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(db.Study)) == 0


def test_clear_results_forgets_columns_and_metrics(engine, demo):
    collect(engine)
    with db.transaction(engine) as s:
        run = next(r for r in db.get_study(s, "demo").runs if r.name == "rope-s1")
        db.clear_results(run)
    r = runs_by_name(engine)["rope-s1"]
    assert all(getattr(r, c) is None for c in db.RESULT_COLUMNS)
    assert metric_count(engine, "rope-s1") == 0 and metric_count(engine, "rope-s2") == 11
    assert (r.state, r.seed, r.work_dir) == (states.COMPLETED, 1, str(demo["rope-s1"]))
    res = collect(engine)  # read again whole
    assert res.runs_read == 1 and metric_count(engine, "rope-s1") == 11


# ------------------------------------------------------------ trust: one bad run, not all


def test_a_run_with_a_huge_integer_in_loss_csv_is_broken_and_the_others_are_collected(engine, demo):
    """Regression: an integer beyond 64 bits raised OverflowError at the insert and rolled back
    every run of the study."""
    with open(demo["rope-s1"] / "loss.csv", "a") as f:
        f.write(f"12,4.9,,5e-4,{2**70},2.5\n")
    res = collect(engine)
    assert res.runs_read == 4
    runs = runs_by_name(engine)
    assert runs["baseline-s1"].state == states.COMPLETED and metric_count(engine, "baseline-s1") == 11
    assert any("does not fit in 64 bits" in w for w in res.warnings)  # the row is dropped, said
    assert runs["rope-s1"].state == states.COMPLETED and metric_count(engine, "rope-s1") == 11


def test_a_run_directory_that_cannot_be_read_is_broken_not_a_traceback(engine, demo, monkeypatch):
    real = rundir.fingerprint

    def no_permission(work_dir):
        if work_dir == demo["rope-s2"]:
            raise PermissionError(13, "Permission denied", str(work_dir / "config.json"))
        return real(work_dir)

    monkeypatch.setattr(rundir, "fingerprint", no_permission)
    res = collect(engine)
    assert res.broken == [("demo", "rope-s2", f"cannot read {demo['rope-s2']}: Permission denied")]
    assert runs_by_name(engine)["rope-s1"].state == states.COMPLETED  # the others are collected


def test_a_diverged_run_is_collected_as_diverged(engine, demo):
    write_run(demo["rope-s2"], seed=2, status="diverged")
    final = json.loads((demo["rope-s2"] / "final.json").read_text())
    final["error"], final["diverged_at"] = "diverged at step 7: the training loss is nan", 7
    (demo["rope-s2"] / "final.json").write_text(json.dumps(final))
    collect(engine)
    r = runs_by_name(engine)["rope-s2"]
    assert (r.state, r.state_reason, r.final_nll) == ("diverged", final["error"], None)


@pytest.mark.parametrize(
    "content, reason",
    [
        (json.dumps({"status": "completed", "final_nll": 5.0, "steps": 2**70}), "steps"),
        ("[" * 100_000 + "]" * 100_000, "final.json unreadable"),
    ],
    ids=["huge-int", "deeply-nested"],
)
def test_a_final_json_beyond_what_can_be_stored_is_broken_and_the_others_are_collected(
    engine, demo, content, reason
):
    """Regression: an int beyond 64 bits failed the insert of the whole study; a deeply nested
    document raised RecursionError through the CLI."""
    (demo["rope-s1"] / "final.json").write_text(content)
    res = collect(engine)
    broken = {run: why for _, run, why in res.broken}
    assert list(broken) == ["rope-s1"] and reason in broken["rope-s1"]
    runs = runs_by_name(engine)
    assert runs["rope-s1"].state == states.BROKEN and runs["rope-s1"].collect_error == broken["rope-s1"]
    assert all(runs[n].state == states.COMPLETED for n in NAMES if n != "rope-s1")


def test_a_deeply_nested_config_json_is_broken_not_a_traceback(engine, demo):
    (demo["baseline-s2"] / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    res = collect(engine)
    broken = {run: why for _, run, why in res.broken}
    assert list(broken) == ["baseline-s2"] and "config.json" in broken["baseline-s2"]
    assert runs_by_name(engine)["baseline-s1"].state == states.COMPLETED


def test_a_collected_study_is_reported_without_its_run_directories(engine, demo, tmp_path):
    """The database holds everything the report shows (table, files, figures), on both backends."""
    from typer.testing import CliRunner

    from reatt.cli import app

    url = engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    assert runner.invoke(app, ["collect", "--db", url]).exit_code == 0

    def report(out: Path, *plot: str) -> tuple[str, dict[str, str]]:
        result = runner.invoke(app, ["report", "--db", url, "--out", str(out), *plot])
        assert result.exit_code == 0, result.output
        texts = {p.name: p.read_text() for p in sorted(out.iterdir()) if p.suffix in (".md", ".csv")}
        return result.output.replace(str(out), "OUT"), texts

    before = report(tmp_path / "before")
    assert "5.05" in before[1]["final_nll.csv"] and "5.25" in before[1]["final_nll.csv"]  # the two means
    shutil.rmtree(tmp_path / "out")  # every run directory of the study
    assert not any(d.exists() for d in demo.values())
    output, texts = report(tmp_path / "after", "--plot")
    assert texts == before[1] and output.startswith(before[0].rsplit("wrote ", 1)[0])
    assert {"loss_curves.png", "final_nll.png"} <= {p.name for p in (tmp_path / "after").iterdir()}


def test_every_command_takes_the_database_from_db_or_reatt_db(db_url, tmp_path, monkeypatch):
    """plan, submit, status, collect, report, cancel: --db on half of them, $REATT_DB on the rest."""
    from typer.testing import CliRunner

    from reatt.cli import app

    monkeypatch.chdir(tmp_path)  # no results.db here: a command that ignored both would fail
    url = db_url if "://" in db_url else str(tmp_path / "elsewhere.db")
    spec_path = tmp_path / "demo.toml"
    spec_path.write_text(SPEC.format(out=tmp_path / "out"))
    by_flag, by_env = CliRunner(), CliRunner(env={"REATT_DB": url})

    def ok(runner: CliRunner, *args: str) -> str:
        result = runner.invoke(app, [*args, *(["--db", url] if runner is by_flag else [])])
        assert result.exit_code == 0, result.output
        return result.output

    assert "demo" in ok(by_flag, "plan", str(spec_path))
    assert ok(by_env, "submit", "--dry-run").count(" -m reatt.train ") == 4
    for job in load_spec(spec_path).jobs():  # the runs ran (by hand, as docs/run-directory.md says)
        write_run(Path(job.work_dir), seed=job.seed, overrides=job.overrides)
    assert ok(by_flag, "status").count("planned") >= 4
    assert "4 run(s) read" in ok(by_env, "collect")
    assert "rope" in ok(by_flag, "report")
    ok(by_env, "cancel")
    assert not (tmp_path / "results.db").exists()
    if "://" not in db_url:
        assert (tmp_path / "elsewhere.db").exists()
