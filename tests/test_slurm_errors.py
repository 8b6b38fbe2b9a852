"""`submit_cluster`, `sbatch` and `cancel` against a fake Slurm: missing, failing or babbling
commands, and what the database holds afterwards. The fakes are executables first on PATH,
so reatt runs them exactly as it would run Slurm's; each records its argv."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from reatt import states
from reatt.errors import ReattError, SlurmError, SpecError, StudyError
from reatt.executors.slurm import client, render
from reatt.executors.slurm.executor import SlurmExecutor
from reatt.study import status
from reatt.study import store as db
from reatt.study.collect import collect
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec
from reatt.study.submit import LaunchSession, submit


def submit_cluster(engine, study, *, dry_run=False, resubmit_failed=False, force=False, **options):
    """`reatt submit --cluster`: the one submit path, with the Slurm executor."""
    executor = SlurmExecutor(**options)
    return submit(engine, study, executor, dry_run=dry_run, resubmit_failed=resubmit_failed, force=force)


class FakeSlurm:
    """Fake ``sbatch``/``squeue``/``sacct``/``scontrol``/``scancel`` on PATH.

    ``respond(name, *answers)``: each later call takes the next answer (the last one repeats);
    an answer is ``(rc, stdout, stderr)``. Unset commands answer ``(0, "", "")``.
    """

    COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, commands=COMMANDS) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        program = textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, os, sys
            root = {str(root)!r}
            name = os.path.basename(sys.argv[0])
            with open(os.path.join(root, "calls.jsonl"), "a") as f:
                f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
            try:
                with open(os.path.join(root, name + ".json")) as f:
                    offset, answers = json.load(f)
            except FileNotFoundError:
                offset, answers = 0, [[0, "", ""]]
            n = sum(1 for line in open(os.path.join(root, "calls.jsonl")) if json.loads(line)[0] == name)
            rc, out, err = answers[min(n - offset, len(answers)) - 1]
            sys.stdout.write(out)
            sys.stderr.write(err)
            sys.exit(rc)
            """
        )
        for name in commands:
            path = self.bin / name
            path.write_text(program)
            path.chmod(0o755)
        monkeypatch.setenv("PATH", str(self.bin))  # nothing else: a real Slurm cannot answer

    def respond(self, name: str, *answers: tuple[int, str, str]) -> None:
        done = len(self.calls(name))
        (self.root / f"{name}.json").write_text(json.dumps([done, [list(a) for a in answers]]))

    def calls(self, name: str | None = None) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        return [c for c in calls if name is None or c[0] == name]


def make_study(tmp_path: Path, features: int = 4, slurm_table: str = "", name: str = "tiny") -> db.Engine:
    """A planned study of ``features + 1`` runs (standard matrix, one seed; ``all`` when > 1)."""
    feats = ["model.swiglu", "model.rmsnorm", "model.rope", "trainer.use_cosine"][:features]
    lines = [f'f{i} = {{ "{key}" = true }}' for i, key in enumerate(feats)]
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[study]\nname = "{name}"\nout_dir = {json.dumps(str(tmp_path / "out"))}\nseeds = [1]\n'
        '[base]\nmodel.model_type = "gpt-nano"\ntrainer.max_iters = 20\n'
        "[features]\n" + "\n".join(lines) + "\n[slurm]\n" + (slurm_table or 'time = "00:10:00"') + "\n"
    )
    engine = db.open_db(tmp_path / "results.db")
    plan_study(load_spec(spec), engine)
    return engine


def runs(engine) -> dict[str, db.Run]:
    with db.transaction(engine) as session:
        return {r.name: r for r in db.get_study(session, None).runs}


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeSlurm:
    return FakeSlurm(tmp_path / "fake", monkeypatch)


def test_submit_records_each_job_id(tmp_path, fake):
    engine = make_study(tmp_path, features=2)  # baseline, f0, f1, all
    fake.respond("sbatch", (0, "101\n", ""), (0, "102;cluster\n", ""), (0, "103\n", ""), (0, "104\n", ""))
    result = submit_cluster(engine, None, project_dir=str(tmp_path))
    assert result.submitted == [("baseline", "101"), ("f0", "102"), ("f1", "103"), ("all", "104")]
    sbatch_dir = tmp_path / "out" / "tiny" / "sbatch"
    assert fake.calls() == [
        ["sbatch", "--parsable", str(sbatch_dir / f"{r}.sbatch")] for r, _ in result.submitted
    ]
    assert (tmp_path / "out" / "slurm").is_dir()
    got = runs(engine)
    for name, job_id in result.submitted:
        r = got[name]
        assert (r.state, r.job_id, r.executor) == (states.PENDING, job_id, "slurm")
        assert r.sbatch_path == str(sbatch_dir / f"{name}.sbatch") and r.submitted_at is not None


def test_sbatch_fails_on_the_third_of_five(tmp_path, fake):
    engine = make_study(tmp_path, features=3)  # baseline, f0, f1, f2, all
    fake.respond(
        "sbatch",
        (0, "11\n", ""),
        (0, "12\n", ""),
        (
            1,
            "",
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination\n",
        ),
    )
    with pytest.raises(SlurmError) as e:
        submit_cluster(engine, None, project_dir=str(tmp_path))
    msg = str(e.value)
    assert "Invalid account or account/partition combination" in msg  # sbatch's stderr, quoted
    assert "not submitted: f1" in msg and "baseline (job 11), f0 (job 12)" in msg
    assert len(fake.calls("sbatch")) == 3  # stops at the failure
    got = runs(engine)
    assert [(got[n].state, got[n].job_id) for n in ("baseline", "f0")] == [
        ("pending", "11"),
        ("pending", "12"),
    ]
    for name in ("f1", "f2", "all"):
        assert (got[name].state, got[name].job_id, got[name].executor) == (states.PLANNED, None, None)
    # fixed: the next submit sends exactly the rest; squeue is asked once about the first two
    fake.respond("sbatch", (0, "13\n", ""), (0, "14\n", ""), (0, "15\n", ""))
    fake.respond("squeue", (0, "11|RUNNING|None\n12|PENDING|Resources\n", ""))
    result = submit_cluster(engine, None, project_dir=str(tmp_path))
    assert result.submitted == [("f1", "13"), ("f2", "14"), ("all", "15")]
    assert result.skipped == [("baseline", "running"), ("f0", "pending")]
    squeue = fake.calls("squeue")
    assert squeue == [["squeue", "-h", "-r", "-t", "all", "-j", "11,12", "-o", "%i|%T|%r"]]


def test_sbatch_missing(tmp_path, monkeypatch):
    engine = make_study(tmp_path, features=1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SlurmError, match="not found on PATH .are you on the cluster's login node"):
        submit_cluster(engine, None, project_dir=str(tmp_path))
    assert {r.state for r in runs(engine).values()} == {states.PLANNED}
    with pytest.raises(SlurmError, match="sbatch not found"):
        client.sbatch(tmp_path / "x.sbatch")


@pytest.mark.parametrize(
    "stdout", ["", "Submitted to the fair-share queue\n", "sbatch: warning: nope\n", "12a\n", "-1\n"]
)
def test_sbatch_exit_0_without_a_readable_id_is_submitted_with_the_id_unknown(tmp_path, fake, stdout):
    """sbatch exited 0: the job is queued. Recording "not submitted" would queue it again at the
    next submit; it is recorded as submitted (pending: no submit starts it again), id unknown,
    with what sbatch printed; its final.json says how it ended; cancel finds it by its name."""
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, stdout, "some warning\n"))
    result = submit_cluster(engine, None, project_dir=str(tmp_path))
    assert result.submitted == [("baseline", ""), ("f0", "")]
    assert fake.calls("squeue") == [["squeue", "-h", "--name", "tiny-baseline", "-o", "%F"],
                                    ["squeue", "-h", "--name", "tiny-f0", "-o", "%F"]]  # fmt: skip
    got = runs(engine)
    for r in got.values():
        assert (r.state, r.job_id, r.executor) == (states.PENDING, None, "slurm")
        assert "no job id could be read" in r.state_reason and "some warning" in r.state_reason
    fake.respond("sbatch", (0, "77\n", ""))
    for again in (submit_cluster(engine, None, project_dir=str(tmp_path)),
                  submit_cluster(engine, None, resubmit_failed=True, project_dir=str(tmp_path))):  # fmt: skip
        assert again.submitted == [] and len(fake.calls("sbatch")) == 2  # never queued twice
    # its own final.json tells how it ended, without a job id to ask Slurm about
    wd = Path(got["baseline"].work_dir)
    wd.mkdir(parents=True)
    (wd / "final.json").write_text(json.dumps({"status": "completed", "final_nll": 5.0}))
    _, statuses = status.refresh(engine, None)
    assert [s.state for s in statuses] == ["completed", "pending"]
    assert status.cancel(engine, None) == ["--name tiny-f0"]  # by its job name
    assert fake.calls("scancel") == [["scancel", "--name", "tiny-f0"]]
    assert runs(engine)["f0"].state == states.CANCELLED  # unwatchable: cancelled at once
    again = submit_cluster(engine, None, resubmit_failed=True, project_dir=str(tmp_path))
    assert again.submitted == [("f0", "77")]


def test_an_id_less_array_is_cancelled_once_by_the_study_name(tmp_path, fake):
    engine = make_study(tmp_path, features=2)  # baseline, f0, f1, all: one array
    fake.respond("sbatch", (0, "queued\n", ""))
    result = submit_cluster(engine, None, array=True, project_dir=str(tmp_path))
    assert [job_id for _, job_id in result.submitted] == ["", "", "", ""]
    assert status.cancel(engine, None) == ["--name tiny"]
    assert fake.calls("scancel") == [["scancel", "--name", "tiny"]]  # one call for the whole array


def test_an_id_less_run_named_like_an_array_script_is_cancelled_by_its_own_name(tmp_path, fake):
    """Regression: any script named ``*-array-<n>.sbatch`` was taken for an array's, so this
    run's job was cancelled by the study's name."""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[study]\nname = "tiny"\nout_dir = {json.dumps(str(tmp_path / "out"))}\nseeds = [1]\n'
        '[base]\nmodel.model_type = "gpt-nano"\ntrainer.max_iters = 20\n'
        '[features]\nbig-array-2 = { "model.rope" = true }\n[slurm]\ntime = "00:10:00"\n'
    )
    engine = db.open_db(tmp_path / "results.db")
    plan_study(load_spec(spec), engine)
    fake.respond("sbatch", (0, "queued\n", ""))
    submit_cluster(engine, None, project_dir=str(tmp_path))
    assert runs(engine)["big-array-2"].sbatch_path.endswith("/big-array-2.sbatch")
    status.cancel(engine, None)
    assert ["scancel", "--name", "tiny-big-array-2"] in fake.calls("scancel")


def test_an_id_sbatch_did_not_print_is_found_by_the_job_name(tmp_path, fake):
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, "Your job has been queued (the scheduler is busy)\n", ""))
    fake.respond("squeue", (0, "301\n", ""), (0, "302\n", ""))
    result = submit_cluster(engine, None, project_dir=str(tmp_path))
    assert result.submitted == [("baseline", "301"), ("f0", "302")]
    assert {r.name: (r.state, r.job_id) for r in runs(engine).values()} == {
        "baseline": ("pending", "301"),
        "f0": ("pending", "302"),
    }


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [
        ("42\n", "42"),
        ("42;cluster-b\n", "42"),
        ("banner line\n43\n", "43"),
        ("Submitted batch job 44\n", "44"),
        ("45\nsite note: jobs over 2 h wait for the weekend\n", "45"),  # a note after the id
        ("46;c1\n\nNOTE: 3 jobs in queue\n", "46"),
    ],
)
def test_sbatch_output_forms(tmp_path, fake, stdout, job_id):
    fake.respond("sbatch", (0, stdout, ""))
    assert client.sbatch(tmp_path / "job.sbatch").job_id == job_id


def test_slurm_output_that_is_not_utf8_is_read_all_the_same(tmp_path, fake):
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, "101\n", ""), (0, "102\n", ""))
    submit_cluster(engine, None, project_dir=str(tmp_path))
    program = (fake.bin / "squeue").read_text()
    (fake.bin / "squeue").write_text(
        program.replace("sys.stdout.write(out)", "sys.stdout.buffer.write(out.encode('latin-1'))")
    )
    fake.respond("squeue", (0, "101|RUNNING|None\n102|PENDING|Priorit\xe9\n", ""))
    _, got = status.refresh(engine, None)
    assert [s.state for s in got] == ["running", "pending"] and got[1].reason == "Priorit\ufffd"


def test_array_submission_and_resubmit_failed_subset(tmp_path, fake):
    engine = make_study(tmp_path, features=3, slurm_table='time = "00:10:00"\narray_throttle = 2')
    fake.respond("sbatch", (0, "500\n", ""))
    result = submit_cluster(engine, None, array=True, project_dir=str(tmp_path))
    assert result.submitted == [(n, f"500_{i}") for i, n in enumerate(["baseline", "f0", "f1", "f2", "all"])]
    script = Path(result.scripts[0])
    assert script.name == "tiny-array-1.sbatch" and "#SBATCH --array=0,1,2,3,4%2" in script.read_text()
    assert fake.calls("sbatch") == [["sbatch", "--parsable", str(script)]]
    # f0 and f2 fail; the rest complete (final.json written by the "training")
    for name in ("baseline", "f1", "all"):
        wd = Path(runs(engine)[name].work_dir)
        wd.mkdir(parents=True)
        (wd / "final.json").write_text(json.dumps({"status": "completed", "final_nll": 5.0}))
    fake.respond("squeue", (0, "", ""))
    fake.respond(
        "sacct",
        (0, "500_0|COMPLETED|0:0|00:01:00\n500_1|FAILED|1:0|00:00:10\n500_2|COMPLETED|0:0|00:01:00\n"
            "500_3|OUT_OF_MEMORY|0:125|00:00:10\n500_4|COMPLETED|0:0|00:01:00\n", ""),
    )  # fmt: skip
    fake.respond("sbatch", (0, "600\n", ""))
    result = submit_cluster(
        engine, None, array=True, resubmit_failed=True, throttle=1, project_dir=str(tmp_path)
    )
    assert result.submitted == [("f0", "600_1"), ("f2", "600_3")]
    assert sorted(result.skipped) == [("all", "completed"), ("baseline", "completed"), ("f1", "completed")]
    script = Path(result.scripts[0])
    assert script.name == "tiny-array-2.sbatch"
    text = script.read_text()
    assert "#SBATCH --array=1,3%1" in text and "  0)" not in text and "  1)" in text and "  3)" in text
    assert len(fake.calls("squeue")) == 1 and len(fake.calls("sacct")) == 1


def test_dry_run_writes_scripts_and_submits_nothing(tmp_path, fake):
    engine = make_study(tmp_path, features=1)
    result = submit_cluster(
        engine, None, dry_run=True, overrides={"partition": "debug", "time": "00:20:00"}, project_dir="/p"
    )
    assert result.dry_run and result.submitted == [] and len(result.scripts) == 2
    text = Path(result.scripts[0]).read_text()
    assert "#SBATCH --partition=debug" in text and "#SBATCH --time=00:20:00" in text
    assert fake.calls() == []
    assert {r.state for r in runs(engine).values()} == {states.PLANNED}


@pytest.mark.parametrize(
    "overrides",
    [{"partition": "$(touch /tmp/x)"}, {"time": "1:00:00\n#SBATCH --wrap=id"}, {"mem": "'; touch x; '"}],
)
def test_hostile_overrides_are_refused_before_anything_is_written(tmp_path, fake, overrides):
    engine = make_study(tmp_path, features=1)
    with pytest.raises(SpecError, match="invalid Slurm settings"):
        submit_cluster(engine, None, overrides=overrides, project_dir=str(tmp_path))
    assert fake.calls() == []
    assert not (tmp_path / "out" / "tiny" / "sbatch").exists()


def test_skips_and_force(tmp_path, fake):
    engine = make_study(tmp_path, features=1)  # baseline, f0
    fake.respond("sbatch", (0, "7\n", ""), (0, "8\n", ""))
    submit_cluster(engine, None, project_dir=str(tmp_path))
    fake.respond("squeue", (0, "7|RUNNING|None\n8|PENDING|Priority\n", ""))
    result = submit_cluster(engine, None, project_dir=str(tmp_path))
    assert result.submitted == [] and result.skipped == [("baseline", "running"), ("f0", "pending")]
    with pytest.raises(StudyError, match="reatt cancel"):
        submit_cluster(engine, None, force=True, project_dir=str(tmp_path))
    # both end; --force starts them over, their directories moved aside first
    for r in runs(engine).values():
        Path(r.work_dir).mkdir(parents=True)
        (Path(r.work_dir) / "final.json").write_text('{"status": "completed"}')
    fake.respond("squeue", (1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    fake.respond("sacct", (0, "7|COMPLETED|0:0|00:00:30\n8|COMPLETED|0:0|00:00:30\n", ""))
    fake.respond("sbatch", (0, "9\n", ""), (0, "10\n", ""))
    result = submit_cluster(engine, None, force=True, project_dir=str(tmp_path))
    assert result.submitted == [("baseline", "9"), ("f0", "10")]
    assert len(result.archived) == 2
    for old, new in result.archived:
        assert not Path(old).exists() and (Path(new) / "final.json").exists()
    assert {(r.state, r.job_id) for r in runs(engine).values()} == {("pending", "9"), ("pending", "10")}


def test_cancel_is_one_scancel_for_all_active_jobs(tmp_path, fake):
    engine = make_study(tmp_path, features=2)
    fake.respond("sbatch", (0, "21\n", ""), (0, "22\n", ""), (0, "23\n", ""), (0, "24\n", ""))
    submit_cluster(engine, None, project_dir=str(tmp_path))
    fake.respond(
        "squeue",
        (0, "21|RUNNING|None\n22|PENDING|Resources\n23|PENDING|Priority\n", ""),  # 24 has ended
        (0, "", ""),
    )
    Path(runs(engine)["all"].work_dir).mkdir(parents=True)
    (Path(runs(engine)["all"].work_dir) / "final.json").write_text('{"status": "completed"}')
    fake.respond(
        "sacct",
        (0, "24|COMPLETED|0:0|00:00:10\n", ""),
        (
            0,
            "21|CANCELLED by 0|0:15|00:00:10\n22|CANCELLED by 0|0:0|00:00:00\n"
            "23|CANCELLED by 0|0:0|00:00:00\n",
            "",
        ),
    )
    assert status.cancel(engine, None) == ["21", "22", "23"]
    assert fake.calls("scancel") == [["scancel", "21", "22", "23"]]
    # one refresh picks the jobs, one scancel cancels them; Slurm is not asked again
    assert [c[0] for c in fake.calls() if c[0] != "sbatch"] == ["squeue", "sacct", "scancel"]
    names = ("baseline", "f0", "f1", "all")
    got = runs(engine)
    # active until Slurm says they ended (a running job checkpoints first): no resubmit meanwhile
    assert [got[n].state for n in names] == ["running", "pending", "pending", "completed"]
    assert all("reatt cancel" in got[n].state_reason for n in names[:3])
    status.refresh(engine, None)  # the next `reatt status`
    got = runs(engine)
    assert [got[n].state for n in ("baseline", "f0", "f1", "all")] == ["cancelled"] * 3 + ["completed"]
    assert status.cancel(engine, None) == []  # nothing active: no scancel
    assert len(fake.calls("scancel")) == 1


def test_scancel_failure_is_reported(tmp_path, fake):
    fake.respond("scancel", (1, "", "scancel: error: Kill job error on job id 5: Access/permission denied\n"))
    with pytest.raises(SlurmError, match="permission denied"):
        client.scancel(["5"])
    fake.respond(
        "scancel",
        (1, "", "scancel: error: Kill job error on job id 5: Job/step already completing or completed\n"),
    )
    client.scancel(["5"])  # already ended: not an error


def test_database_failure_after_sbatch_cancels_the_job(tmp_path, fake, monkeypatch):
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, "31\n", ""))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LaunchSession, "launched", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        submit_cluster(engine, None, project_dir=str(tmp_path))
    assert fake.calls("scancel") == [["scancel", "31"]]  # no job runs unrecorded
    assert {r.state for r in runs(engine).values()} == {states.PLANNED}


def test_untracked_job_is_named_when_its_cancel_fails_too(tmp_path, fake, monkeypatch):
    """Regression: a failing scancel after a failed recording was ignored, leaving a job running
    that reatt did not know about, without a word."""
    engine = make_study(tmp_path, features=1)
    fake.respond("sbatch", (0, "31\n", ""))
    fake.respond("scancel", (1, "", "scancel: error: Unable to contact slurm controller\n"))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LaunchSession, "launched", broken)
    with pytest.raises(ReattError) as e:
        submit_cluster(engine, None, project_dir=str(tmp_path))
    msg = str(e.value)
    assert "Slurm job 31" in msg and "scancel 31" in msg and "disk full" in msg
    assert "Unable to contact slurm controller" in msg and "not submitted" not in msg
    assert fake.calls("scancel") == [["scancel", "31"]] and len(fake.calls("sbatch")) == 1


def test_force_starts_over_without_the_old_results(tmp_path, fake):
    """Regression: --force under Slurm kept the moved run's final_nll, metrics and files fingerprint."""
    engine = make_study(tmp_path, features=1)  # baseline, f0
    for r in runs(engine).values():
        wd = Path(r.work_dir)
        wd.mkdir(parents=True)
        (wd / "loss.csv").write_text("step,loss,val_loss,lr,tokens,elapsed_s\n0,,10.5,5e-4,0,0.1\n")
        (wd / "final.json").write_text('{"status": "completed", "final_nll": 5.0, "steps": 20}')
    collect(engine)
    assert {(r.state, r.final_nll) for r in runs(engine).values()} == {("completed", 5.0)}
    fake.respond("sbatch", (0, "9\n", ""), (0, "10\n", ""))
    result = submit_cluster(engine, None, force=True, project_dir=str(tmp_path))
    assert len(result.archived) == 2
    for r in runs(engine).values():
        assert r.state == "pending" and r.job_id in ("9", "10")
        assert all(getattr(r, c) is None for c in db.RESULT_COLUMNS), r.name
    with db.transaction(engine) as session:
        assert session.query(db.Metric).count() == 0


def test_env_override_of_templates(tmp_path, fake, monkeypatch):
    engine = make_study(tmp_path, features=1)
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "job.sbatch.j2").write_text(
        "#!/bin/bash\n#SBATCH --job-name={{ job_name }}\necho {{ jobs[0].name | q }}\n"
    )
    monkeypatch.setenv(render.TEMPLATE_DIR_ENV, str(tpl))
    result = submit_cluster(engine, None, dry_run=True, project_dir=str(tmp_path))
    assert (
        Path(result.scripts[0]).read_text()
        == "#!/bin/bash\n#SBATCH --job-name=tiny-baseline\necho baseline\n"
    )
    monkeypatch.setenv(render.TEMPLATE_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="REATT_SLURM_TEMPLATES"):
        submit_cluster(engine, None, dry_run=True, project_dir=str(tmp_path))
    assert os.environ[render.TEMPLATE_DIR_ENV]


def test_nothing_to_submit_still_checks_the_options_and_previews_nothing(tmp_path, fake):
    engine = make_study(tmp_path, features=1)  # baseline, f0
    fake.respond("sbatch", (0, "7\n", ""), (0, "8\n", ""))
    submit_cluster(engine, None, project_dir=str(tmp_path))
    fake.respond("squeue", (0, "7|RUNNING|None\n8|PENDING|Priority\n", ""))
    result = submit_cluster(engine, None, array=True, dry_run=True, project_dir=str(tmp_path))
    assert (
        result.dry_run
        and result.scripts == []
        and result.skipped == [("baseline", "running"), ("f0", "pending")]
    )
    with pytest.raises(SpecError, match="slurm.time"):
        submit_cluster(engine, None, overrides={"time": "soon"}, project_dir=str(tmp_path))
    assert len(fake.calls("sbatch")) == 2
