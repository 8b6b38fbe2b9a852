"""Ablation specs: matrix expansion, validation with file/run/key errors, recording a plan."""

import json
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from reatt.errors import SpecError
from reatt.study import store as db
from reatt.study.plan import plan_study
from reatt.study.spec import expand_matrix, load_spec
from reatt.training.config import format_value, get_default_config, parse_value

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["swiglu", "rmsnorm", "rope", "warmup", "cosine"]

SPEC = """
[study]
name = "{name}"
matrix = "{matrix}"
seeds = {seeds}
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.max_iters = 20

[features]
swiglu = {{ "model.swiglu" = true }}
rmsnorm = {{ "model.rmsnorm" = true }}
rope = {{ "model.rope" = true }}
warmup = {{ "trainer.warmup_steps" = 5 }}
cosine = {{ "trainer.use_cosine" = true, "trainer.min_lr" = 1e-5 }}
"""


def write_spec(tmp_path, text=None, name="demo", matrix="standard", seeds="[1]", fname="spec.toml"):
    path = tmp_path / fname
    body = (
        text if text is not None else SPEC.format(name=name, matrix=matrix, seeds=seeds, out=tmp_path / "out")
    )
    path.write_text(textwrap.dedent(body))
    return path


def names(matrix, feats=FEATURES):
    return [name for name, _, _ in expand_matrix(matrix, feats)]


def test_standard_matrix_is_the_labs_seven_runs():
    assert names("standard") == ["baseline", *FEATURES, "all"]
    variants = expand_matrix("standard", FEATURES)
    assert variants[0][1] == () and variants[-1][1] == tuple(FEATURES)
    assert all(v[1] == (v[0],) for v in variants[1:-1])  # exactly one feature each
    assert names("standard", ["rope"]) == ["baseline", "rope"]  # "all" would repeat rope


def test_leave_one_out_and_factorial():
    assert names("leave-one-out") == ["all"] + [f"no-{f}" for f in FEATURES]
    loo = dict((n, f) for n, f, _ in expand_matrix("leave-one-out", FEATURES))
    assert set(loo["no-rope"]) == set(FEATURES) - {"rope"}
    fact = expand_matrix("factorial", ["a", "b", "c"])
    assert [n for n, _, _ in fact] == ["baseline", "a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    assert len(expand_matrix("factorial", FEATURES)) == 32


def test_jobs_are_runs_times_seeds_with_work_dirs(tmp_path):
    spec = load_spec(write_spec(tmp_path, seeds="[1, 2]"))
    jobs = spec.jobs()
    assert len(jobs) == 14
    assert [j.name for j in jobs[:4]] == ["baseline-s1", "baseline-s2", "swiglu-s1", "swiglu-s2"]
    assert jobs[0].work_dir == str(tmp_path / "out" / "demo" / "baseline-s1")
    allon = jobs[-1]
    assert allon.overrides["model.swiglu"] is True and allon.overrides["trainer.warmup_steps"] == 5
    assert allon.overrides["system.seed"] == 2 and allon.overrides["data.block_size"] == 32
    assert [j.position for j in jobs] == list(range(14))
    single = load_spec(write_spec(tmp_path, seeds="[7]")).jobs()
    assert single[0].name == "baseline" and single[0].work_dir.endswith("/demo/baseline")


def test_argv_round_trips_through_the_training_config(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    for job in spec.jobs():
        cfg = get_default_config()
        cfg.merge_from_args(job.argv())
        assert cfg.system.work_dir == job.work_dir
        for key, value in job.overrides.items():
            assert cfg.get(key) == value
    for tricky in ("a 'quoted' $(touch /tmp/x) \"path\"", "'looks quoted'", "True", "", "3"):
        assert parse_value("system.work_dir", format_value("system.work_dir", tricky)) == tricky
    assert format_value("model.model_type", "gpt-nano") == "gpt-nano"
    assert format_value("trainer.learning_rate", 1e-3) == "0.001"
    assert format_value("system.work_dir", "'x'") == "\"'x'\""


def test_shipped_specs_are_valid():
    lab = load_spec(ROOT / "ablations" / "reatt.toml")
    assert [v[0] for v in lab.variants()] == ["baseline", *FEATURES, "all"]
    base = lab.base
    assert base["model.model_type"] == "gpt-nano" and base["data.block_size"] == 256
    assert base["trainer.batch_size"] == 1 and base["trainer.max_iters"] == 1000
    demo = load_spec(ROOT / "ablations" / "demo.toml")
    assert len(demo.jobs()) == 7


@pytest.mark.parametrize(
    "snippet,message",
    [
        (
            "[base]\ntrainer.max_itres = 5\n",
            "[base]: unknown config key 'trainer.max_itres'; did you mean 'trainer.max_iters'",
        ),
        ('[base]\ntrainer.max_iters = "lots"\n', "[base]: trainer.max_iters='lots': expected an int"),
        (
            '[features]\nrope = { "model.rope" = "yes please" }\n',
            "feature 'rope': model.rope='yes please': expected a bool",
        ),
        ("[base]\nsystem.seed = 3\n", "system.seed is set by reatt plan"),
        ('[base]\nsystem.work_dir = "x"\n', "system.work_dir is set by reatt plan"),
        ("[slurm]\npartition = 3\n", "[slurm] partition = 3: expected a string"),
        ("[slurm]\nnode_count = 2\n", "[slurm]: unknown key 'node_count'"),
        ("[slurm]\ngpus = 2\n", "slurm.gpus = 2: one training process uses one GPU"),
        ("[slurm]\ngpus_per_node = 2\nntasks_per_node = 4\n", "ntasks_per_node = 4 but gpus_per_node = 2"),
        ("[extra]\na = 1\n", "unknown table(s) extra"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, snippet, message):
    text = '[study]\nname = "x"\n' + snippet
    path = write_spec(tmp_path, text=text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(str(path))
    assert message in str(e.value)


def test_full_config_checked_per_run(tmp_path):
    """Keys can be valid alone and wrong together: each run's whole config is checked."""

    def spec_with_warmup(n):
        return SPEC.format(name="x", matrix="standard", seeds="[1]", out=tmp_path).replace(
            '"trainer.warmup_steps" = 5', f'"trainer.warmup_steps" = {n}'
        )

    with pytest.raises(SpecError, match=r"run 'warmup': invalid config:\n  trainer.warmup_steps=50 exceeds"):
        load_spec(write_spec(tmp_path, text=spec_with_warmup(50)))
    # warmup alone may take all 20 steps; with cosine there would be none left to decay over
    with pytest.raises(
        SpecError, match=r"run 'all': invalid config:\n  trainer.warmup_steps=20 leaves no steps"
    ):
        load_spec(write_spec(tmp_path, text=spec_with_warmup(20)))


def test_relative_data_paths_become_absolute_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.jsonl").write_text('{"text": "hello"}\n')
    text = '[study]\nname = "x"\n[base]\ndata.file_path = "data/c.jsonl"\ndata.cache_dir = "cache"\n'
    spec = load_spec(write_spec(tmp_path, text=text))
    assert spec.base["data.file_path"] == str(tmp_path / "data" / "c.jsonl")
    assert spec.base["data.cache_dir"] == str(tmp_path / "cache")
    missing = text.replace("data/c.jsonl", "data/nope.jsonl")
    with pytest.raises(SpecError, match=r"\[base\]: data.file_path = 'data/nope.jsonl': no such file \(/"):
        load_spec(write_spec(tmp_path, text=missing))


def test_list_matrix_and_its_errors(tmp_path):
    text = """
    [study]
    name = "picked"
    matrix = "list"
    [features]
    rope = { "model.rope" = true }
    swiglu = { "model.swiglu" = true }
    [runs.baseline]
    features = []
    [runs.rope-fast]
    features = ["rope"]
    set = { "trainer.learning_rate" = 1e-3 }
    """
    spec = load_spec(write_spec(tmp_path, text=text))
    jobs = spec.jobs()
    assert [j.name for j in jobs] == ["baseline", "rope-fast"]
    assert jobs[1].overrides["trainer.learning_rate"] == 1e-3 and jobs[1].overrides["model.rope"] is True
    assert spec.reference == "baseline"
    with pytest.raises(SpecError, match="run 'oops': unknown feature\\(s\\) ropey; defined: rope, swiglu"):
        load_spec(write_spec(tmp_path, text=text + '[runs.oops]\nfeatures = ["ropey"]\n'))
    with pytest.raises(SpecError, match="expected a name"):
        load_spec(write_spec(tmp_path, text=text + '[runs."bad name;rm"]\nfeatures = []\n'))


def test_colliding_run_names_are_refused(tmp_path):
    text = '[study]\nname = "x"\n[features]\nall = { "model.rope" = true }\nb = { "model.swiglu" = true }\n'
    with pytest.raises(SpecError, match="gives several runs named 'all'; rename the feature"):
        load_spec(write_spec(tmp_path, text=text))
    text = (
        '[study]\nname = "x"\nmatrix = "factorial"\n[features]\na = { "model.rope" = true }\n'
        'b = { "model.swiglu" = true }\n"a+b" = { "model.rmsnorm" = true }\n'
    )
    with pytest.raises(SpecError, match="several runs named 'a\\+b'"):
        load_spec(write_spec(tmp_path, text=text))


@pytest.mark.parametrize("name", ["has space", "$(x)", "-dash", "a/b", "", "demo\\n"])
def test_study_names_are_validated(tmp_path, name):
    with pytest.raises(SpecError, match="name"):
        load_spec(write_spec(tmp_path, text=f'[study]\nname = "{name}"\n'))


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write_spec(tmp_path, text='[study]\nname = "x"\n[base]\nmodel.rope = tru\n')
    with pytest.raises(SpecError, match=r"spec.toml: not valid TOML: .*line 4"):
        load_spec(path)


@pytest.fixture
def engine(db_url):
    """A fresh database on each backend (conftest.py's db_url): every test here runs on both."""
    eng = db.open_db(db_url)
    yield eng
    eng.dispose()


def study_rows(engine, name):
    with db.transaction(engine) as s:
        study = s.scalar(select(db.Study).where(db.Study.name == name))
        return study, [(r.name, r.state, r.overrides, r.work_dir) for r in study.runs]


def test_plan_records_study_and_is_idempotent(tmp_path, engine):
    spec = load_spec(write_spec(tmp_path))
    first = plan_study(spec, engine)
    assert first.action == "created" and len(first.jobs) == 7
    study, runs = study_rows(engine, "demo")
    assert study.matrix == "standard" and study.reference == "baseline" and study.spec_hash == spec.spec_hash
    assert [r[0] for r in runs] == [j.name for j in first.jobs] and {r[1] for r in runs} == {"planned"}
    again = plan_study(load_spec(write_spec(tmp_path)), engine)
    assert again.action == "unchanged"
    assert study_rows(engine, "demo")[1] == runs
    # layout and comments do not count as a change
    path = write_spec(tmp_path)
    path.write_text(
        "# a comment\n" + path.read_text().replace("trainer.max_iters = 20", "trainer.max_iters   =   20")
    )
    assert plan_study(load_spec(path), engine).action == "unchanged"


def test_changed_spec_refused_then_new_version_or_force(tmp_path, engine):
    plan_study(load_spec(write_spec(tmp_path)), engine)
    with db.transaction(engine) as s:  # pretend baseline ran
        run = s.scalar(select(db.Run).where(db.Run.name == "baseline"))
        run.state, run.final_nll = "completed", 5.0
    Path(run.work_dir).mkdir(parents=True)
    (Path(run.work_dir) / "loss.csv").write_text("step\n")
    rope_dir = tmp_path / "out" / "demo" / "rope"
    rope_dir.mkdir(parents=True)

    changed = write_spec(tmp_path, fname="changed.toml")
    changed.write_text(
        changed.read_text().replace(
            'rope = { "model.rope" = true }', 'rope = { "model.rope" = true, "model.rope_base" = 500.0 }'
        )
    )
    with pytest.raises(
        SpecError,
        match=r"different spec .*changed: features.rope.model.rope_base: '<unset>' -> 500.0\).*--new-version",
    ):
        plan_study(load_spec(changed), engine)
    assert study_rows(engine, "demo")[0].spec_hash != load_spec(changed).spec_hash  # nothing changed

    v2 = plan_study(load_spec(changed), engine, new_version=True)
    assert v2.action == "new version" and v2.study == "demo-v2"
    assert v2.jobs[0].work_dir == str(tmp_path / "out" / "demo-v2" / "baseline")
    assert (
        plan_study(load_spec(changed), engine, new_version=True).study == "demo-v2"
    )  # no v3 for the same spec

    forced = plan_study(load_spec(changed), engine, force=True)
    assert forced.action == "replaced"
    study, runs = study_rows(engine, "demo")
    by_name = {r[0]: r for r in runs}
    assert by_name["rope"][2]["model.rope_base"] == 500.0 and by_name["rope"][1] == "planned"
    with db.transaction(engine) as s:
        kept = s.scalar(select(db.Run).where(db.Run.name == "baseline", db.Run.study_id == study.id))
        assert kept.state == "completed" and kept.final_nll == 5.0  # unchanged runs keep their results
    assert [Path(old).name for old, _ in forced.moved] == ["rope"]  # its old dir moved aside, not deleted
    assert not rope_dir.exists() and Path(forced.moved[0][1]).exists()


def test_force_refuses_to_change_a_running_run(tmp_path, engine):
    plan_study(load_spec(write_spec(tmp_path)), engine)
    with db.transaction(engine) as s:
        run = s.scalar(select(db.Run).where(db.Run.name == "rope"))
        run.state, run.job_id = "running", "42"
    changed = write_spec(tmp_path, fname="c.toml")
    changed.write_text(
        changed.read_text().replace('"model.rope" = true', '"model.rope" = true, "model.rope_base" = 9.0')
    )
    with pytest.raises(SpecError, match=r"run 'rope' of study 'demo' is running \(job 42\); cancel it first"):
        plan_study(load_spec(changed), engine, force=True)


def test_job_json_is_serialisable(tmp_path):
    job = load_spec(write_spec(tmp_path)).jobs()[-1]
    data = json.loads(json.dumps(job.to_json()))
    assert data["name"] == "all" and data["argv"][-1].startswith("--system.work_dir=")
