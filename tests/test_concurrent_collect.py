"""Many collectors at once, on both backends: real processes, started together.

Four processes collect at the same moment: two of them the same study (two people), the other
two a study each (a lab's jobs), into a new database whose tables the first of them creates.
The rule (docs/guarantees.md): collects of one study take
turns, so the second finds the first's rows and neither loses nor repeats one; no collect
fails with "database is locked".
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_collect import write_run

from reatt.study import store as db

RUNS_PER_STUDY = 6
STEPS = 400  # loss.csv rows per run: enough that the collects overlap


def _collect_when_all_ready(url: str, root: str, name: str, barrier, results) -> None:  # noqa: ANN001
    """One collector process: wait for the others, then open the database (the first opens
    create its tables, at once) and collect ``root``."""
    from reatt.study.collect import collect

    barrier.wait(timeout=120)
    engine = None
    try:
        engine = db.open_db(url)
        res = collect(engine, paths=[Path(root)], as_study=name)
        results.put((name, "ok", res.runs_read, res.runs_unchanged, res.metric_rows))
    except Exception as e:  # reported to the test, which fails with it
        results.put((name, "error", f"{type(e).__name__}: {e}", 0, 0))
    finally:
        if engine is not None:
            engine.dispose()


@pytest.mark.slow
def test_four_processes_collect_at_once_two_of_them_one_study(db_url, tmp_path):
    trees = {}
    for name in ("shared", "lab-a", "lab-b"):
        trees[name] = tmp_path / name
        for i in range(RUNS_PER_STUDY):
            write_run(trees[name] / f"run{i}", steps=STEPS, seed=i + 1, final_nll=5.0 + i / 100)
    jobs = [("shared", trees["shared"]), ("shared", trees["shared"]), ("lab-a", trees["lab-a"])]
    jobs.append(("lab-b", trees["lab-b"]))

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate commands are
    barrier, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [
        ctx.Process(target=_collect_when_all_ready, args=(db_url, str(root), name, barrier, results))
        for name, root in jobs
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    errors = [g for g in got if g[1] != "ok"]
    assert errors == []
    rows = (STEPS + 1) * RUNS_PER_STUDY
    by_study = sorted(g for g in got if g[0] != "shared")
    assert by_study == [
        ("lab-a", "ok", RUNS_PER_STUDY, 0, rows),
        ("lab-b", "ok", RUNS_PER_STUDY, 0, rows),
    ]
    # the two collects of one study took turns: the second read nothing, and wrote nothing
    shared = sorted(g[2:] for g in got if g[0] == "shared")
    assert shared == [(0, RUNS_PER_STUDY, 0), (RUNS_PER_STUDY, 0, rows)]

    engine = db.open_db(db_url)
    with db.transaction(engine) as s:
        for name in trees:
            study = db.get_study(s, name)
            assert sorted(r.name for r in study.runs) == [f"run{i}" for i in range(RUNS_PER_STUDY)]
            assert all(r.state == "completed" for r in study.runs)
            n = s.scalar(
                select(func.count()).select_from(db.Metric).join(db.Run).where(db.Run.study_id == study.id)
            )
            assert n == rows
        assert s.scalar(select(func.count()).select_from(db.Study)) == 3
    engine.dispose()


def _plan_and_collect_when_all_ready(url: str, spec_path: str, barrier, results) -> None:  # noqa: ANN001
    """One person: plan the spec at the same moment as the other, then collect it (at once too)."""
    from reatt.study.collect import collect
    from reatt.study.plan import plan_study
    from reatt.study.spec import load_spec

    spec = load_spec(Path(spec_path))
    engine = db.open_db(url)
    with engine.connect():  # connected: the barrier lets both into plan_study at once
        pass
    barrier.wait(timeout=120)
    try:
        action = plan_study(spec, engine).action
        barrier.wait(timeout=120)
        res = collect(engine, spec.name)
        results.put(("ok", action, res.runs_read, res.runs_unchanged, res.metric_rows))
    except Exception as e:  # reported to the test, which fails with it
        barrier.abort()
        results.put(("error", f"{type(e).__name__}: {e}", 0, 0, 0))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_two_people_plan_and_collect_one_study_at_once(db_url, tmp_path):
    from test_collect import SPEC

    from reatt.study.spec import load_spec

    spec_path = tmp_path / "demo.toml"
    spec_path.write_text(SPEC.format(out=tmp_path / "out"))
    jobs = load_spec(spec_path).jobs()
    for job in jobs:  # the runs have run: both people collect them once planned
        write_run(Path(job.work_dir), steps=STEPS, seed=job.seed, overrides=job.overrides)
    db.open_db(db_url).dispose()  # the tables exist: what the two race on is the plan
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_plan_and_collect_when_all_ready, args=(db_url, str(spec_path), barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    rows = len(jobs) * (STEPS + 1)
    # one plan created the study, the other found it; one collect read the runs, the other
    # found them read (which of the two did which is the scheduler's choice)
    assert sorted(g[1] for g in got) == ["created", "unchanged"], got
    assert sorted(g[2:] for g in got) == [(0, len(jobs), 0), (len(jobs), 0, rows)], got
    engine = db.open_db(db_url)
    with db.transaction(engine) as s:
        assert [st.name for st in s.scalars(select(db.Study))] == ["demo"]
        assert len(db.get_study(s, "demo").runs) == len(jobs)
        assert s.scalar(select(func.count()).select_from(db.Metric)) == rows
    engine.dispose()
