"""Rendering sbatch scripts: golden files, shell syntax, quoting of hostile values, the
requeue logic of the script itself (run by bash with a stub `python` and a fake `scontrol`),
and the validation of #SBATCH values.

Golden files: tests/golden/job.sbatch and tests/golden/array.sbatch. After an intended change
to a template, regenerate them and review the diff:

    REATT_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_render.py
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reatt.errors import SpecError
from reatt.executors.slurm.render import ScriptContext, array_spec, render_array_script, render_job_script
from reatt.executors.slurm.settings import SlurmSettings, check_settings, time_limit_seconds
from reatt.rundir import ATTEMPT_LINE
from reatt.study.spec import JobSpec
from reatt.train import TRAIN_ENV

GOLDEN = Path(__file__).parent / "golden"
BASH = shutil.which("bash")


def job(position: int = 0, name: str = "baseline", work_dir: str | None = None, **extra) -> JobSpec:
    wd = work_dir or f"/project/out/demo/{name}"
    overrides = {
        "model.model_type": "gpt-nano",
        "data.block_size": 32,
        "trainer.max_iters": 40,
        "trainer.learning_rate": 0.0005,
        **extra,
        "system.seed": 3407,
        "system.work_dir": wd,
    }
    return JobSpec("demo", name, name, 3407, position, tuple(k for k in extra), overrides, wd)


SETTINGS = SlurmSettings(
    partition="gpu",
    account="lab-4",
    qos="normal",
    time="02:00:00",
    cpus_per_task=4,
    mem="16G",
    gpus=1,
    modules=["python/3.11", "cuda/12.4"],
    venv="/project/.venv",
    hf_home="/scratch/hf home",
    extra_sbatch=["--constraint=a100", "--exclude=node07"],
    signal_seconds=300,
)
CTX = ScriptContext(
    project_dir="/project", python="python", log_dir="/project/out/slurm", env=dict(TRAIN_ENV)
)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("REATT_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"{path} is missing; create it with REATT_UPDATE_GOLDEN=1 pytest {__file__}")
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered")
        )
        pytest.fail(
            f"rendered script differs from {path}:\n{diff}\nIf the change is intended, regenerate with "
            f"REATT_UPDATE_GOLDEN=1 python -m pytest {Path(__file__).name} and review the diff",
            pytrace=False,
        )


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    if BASH is None:  # the golden comparison still ran
        return
    script = tmp_path / "syntax.sh"
    script.write_text(text)
    r = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_job_script_matches_golden(tmp_path):
    text = render_job_script(job(), SETTINGS, CTX)
    check_golden("job.sbatch", text)
    bash_syntax_ok(text, tmp_path)


def test_array_script_matches_golden(tmp_path):
    jobs = [job(0), job(1, "rope", **{"model.rope": True}), job(3, "all", **{"model.swiglu": True})]
    text = render_array_script(jobs, SETTINGS, CTX, throttle=2)
    check_golden("array.sbatch", text)
    bash_syntax_ok(text, tmp_path)


def test_script_essentials():
    text = render_job_script(job(), SlurmSettings(), CTX)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line for line in lines if line.startswith("#SBATCH")]
    assert "#SBATCH --job-name=demo-baseline" in sbatch
    assert "#SBATCH --output=/project/out/slurm/%x-%j.out" in sbatch
    assert "#SBATCH --error=/project/out/slurm/%x-%j.err" in sbatch
    assert {"#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@120"} <= set(sbatch)
    # all #SBATCH lines come before the first command (sbatch stops reading at it)
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_command
    # defaults ask for nothing the cluster would have to know
    assert not any(
        o in text for o in ("--partition", "--account", "--qos", "--gres", "module load", "HF_HOME=")
    )
    assert "export TRANSFORMERS_OFFLINE=1 HF_HUB_OFFLINE=1" in lines
    assert "set -uo pipefail" in lines
    assert "requeue_id=$SLURM_JOB_ID" in lines
    assert 'scontrol requeue "$requeue_id"' in text


def test_array_script_requeues_only_its_task():
    jobs = [job(2, "b"), job(0, "a")]
    text = render_array_script(jobs, SlurmSettings(), CTX, throttle=0)
    assert "#SBATCH --array=0,2" in text
    assert "#SBATCH --job-name=demo" in text
    assert "#SBATCH --output=/project/out/slurm/%x-%A_%a.out" in text
    assert "requeue_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" in text
    assert "$SLURM_JOB_ID" not in text.replace("${SLURM_ARRAY_JOB_ID}", "")
    assert text.index("  0)") < text.index("  2)")  # tasks in position order
    assert array_spec(jobs, 3) == "0,2%3"


def test_python_from_context_and_env():
    ctx = ScriptContext.for_study("/data/out", SlurmSettings(), project_dir="/code")
    assert ctx.python == sys.executable and ctx.log_dir == "/data/out/slurm" and ctx.project_dir == "/code"
    assert ctx.env == TRAIN_ENV
    venv_ctx = ScriptContext.for_study("/data/out", SlurmSettings(venv="/v"), project_dir="/code")
    assert venv_ctx.python == "python"


# ----------------------------------------------------------------------- running the script


def stub_python(tmp_path: Path) -> Path:
    """A stand-in for python: records its argv and environment, then behaves as $STUB_MODE says."""
    stub = tmp_path / "stub-python"
    stub.write_text(
        f"#!{sys.executable}\n"
        + """
import json, os, signal, sys, time
out = os.environ["STUB_OUT"]
got = []
def on_signal(signum, frame):
    got.append(signal.Signals(signum).name)
signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
with open(out + ".tmp", "w") as f:
    keys = ("HF_HOME", "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE", "GLIBC_TUNABLES", "PYTHONUNBUFFERED")
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}, f)
os.replace(out + ".tmp", out)
mode = os.environ.get("STUB_MODE", "exit0")
if mode == "exit0":
    sys.exit(0)
if mode == "fail":
    sys.exit(1)
deadline = time.time() + 20
while not got and time.time() < deadline:  # "wait": until a signal comes, like training
    time.sleep(0.05)
with open(out + ".signals", "w") as f:
    f.write(",".join(got))
sys.exit(75 if got else 0)
"""
    )
    stub.chmod(0o755)
    return stub


def fake_scontrol(bin_dir: Path) -> Path:
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "scontrol.log"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {json.dumps(str(log))}\n')
    script.chmod(0o755)
    return log


def run_script(text: str, tmp_path: Path, env: dict[str, str], *, wait: bool = True) -> subprocess.Popen:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    bin_dir = tmp_path / "bin"
    fake_scontrol(bin_dir)
    full_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "STUB_OUT": str(tmp_path / "stub.json"),
        **env,
    }
    proc = subprocess.Popen(
        [BASH or "bash", str(script)],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        proc.out, proc.err = proc.communicate(timeout=60)
    return proc


HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "'; touch {marker}; echo '",
    '"; touch {marker}; echo "',
    "a\nb; touch {marker}",
    "; echo foo",
    "tab\there $HOME ${HOME} \\ back * ? [x] ~ ! #",
]


@pytest.mark.skipif(BASH is None, reason="bash not found")
def test_hostile_values_reach_python_intact_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    weird = tmp_path / "we ird 'q\" ; echo foo $(touch MARK)"
    weird.mkdir()
    project = tmp_path / "proj ect; echo foo"
    project.mkdir()
    values = [h.replace("{marker}", str(marker)) for h in HOSTILE]
    spec = job(
        work_dir=str(weird / "run\nnew line"),
        **{"data.file_path": values[0], "trainer.sample_prompt": "|".join(values[1:])},
    )
    ctx = ScriptContext(
        project_dir=str(project),
        python=str(stub_python(tmp_path)),
        log_dir=str(tmp_path / "logs"),
        env=TRAIN_ENV,
    )
    settings = SlurmSettings(hf_home=str(weird / f"hf $(touch {marker})"))
    text = render_job_script(spec, settings, ctx)
    proc = run_script(text, tmp_path, {})
    assert proc.returncode == 0, proc.err
    got = json.loads((tmp_path / "stub.json").read_text())
    assert got["argv"] == ["-m", "reatt.train", *spec.argv()]
    assert got["cwd"] == str(project)
    assert got["env"]["HF_HOME"] == settings.hf_home
    assert got["env"]["TRANSFORMERS_OFFLINE"] == "1" and got["env"]["HF_HUB_OFFLINE"] == "1"
    assert got["env"]["GLIBC_TUNABLES"] == TRAIN_ENV["GLIBC_TUNABLES"]
    assert not marker.exists() and not (tmp_path / "MARK").exists()
    assert "foo" not in proc.out.replace("echo foo", "")


@pytest.mark.skipif(BASH is None, reason="bash not found")
def test_array_task_runs_its_own_argv(tmp_path):
    marker = tmp_path / "pwned"
    jobs = [job(0, "a"), job(5, "b", **{"data.file_path": f"$(touch {marker})"})]
    ctx = ScriptContext(str(tmp_path), str(stub_python(tmp_path)), str(tmp_path / "logs"))
    text = render_array_script(jobs, SlurmSettings(), ctx, throttle=1)
    proc = run_script(text, tmp_path, {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "5"})
    assert proc.returncode == 0, proc.err
    assert json.loads((tmp_path / "stub.json").read_text())["argv"] == ["-m", "reatt.train", *jobs[1].argv()]
    assert not marker.exists()
    proc = run_script(text, tmp_path, {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"})
    assert proc.returncode == 2 and "array task 3 is not a run of study demo" in proc.err


def _signal_when_ready(proc: subprocess.Popen, tmp_path: Path, sig: int) -> None:
    deadline = time.monotonic() + 30
    while not (tmp_path / "stub.json").exists():  # the stub has set its handlers
        assert time.monotonic() < deadline, "stub python never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.out, proc.err = proc.communicate(timeout=30)


@pytest.mark.skipif(BASH is None, reason="bash not found")
@pytest.mark.parametrize("array", [False, True])
def test_usr1_is_forwarded_and_the_job_requeues_itself(tmp_path, array):
    ctx = ScriptContext(str(tmp_path), str(stub_python(tmp_path)), str(tmp_path / "logs"))
    if array:
        text = render_array_script([job(0, "a"), job(3, "b")], SlurmSettings(), ctx, throttle=0)
        env = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "80"}
    else:
        text = render_job_script(job(), SlurmSettings(), ctx)
        env = {}
    proc = run_script(text, tmp_path, {**env, "STUB_MODE": "wait"}, wait=False)
    _signal_when_ready(proc, tmp_path, signal.SIGUSR1)  # what --signal=B:USR1@N sends to the batch shell
    out = proc.out
    assert proc.returncode == 75, out + proc.err
    assert (tmp_path / "stub.json.signals").read_text() == "SIGUSR1"
    expected = "77_3" if array else "4242"  # an array task requeues itself only, never the array
    assert (tmp_path / "bin" / "scontrol.log").read_text() == f"requeue {expected}\n"
    assert f"requeueing {expected}" in out


@pytest.mark.skipif(BASH is None, reason="bash not found")
def test_term_checkpoints_but_does_not_requeue(tmp_path):
    ctx = ScriptContext(str(tmp_path), str(stub_python(tmp_path)), str(tmp_path / "logs"))
    proc = run_script(
        render_job_script(job(), SlurmSettings(), ctx), tmp_path, {"STUB_MODE": "wait"}, wait=False
    )
    _signal_when_ready(proc, tmp_path, signal.SIGTERM)  # scancel / preemption: Slurm decides
    assert proc.returncode == 75
    assert (tmp_path / "stub.json.signals").read_text() == "SIGTERM"
    assert not (tmp_path / "bin" / "scontrol.log").exists()


@pytest.mark.skipif(BASH is None, reason="bash not found")
@pytest.mark.parametrize("array", [False, True])
def test_each_attempt_is_marked_in_the_err_file(tmp_path, array):
    """`reatt status` judges a job's .err file from its latest attempt line on (rundir.ATTEMPT_LINE),
    so the line must reach stderr before anything else can fail (module load, venv, cd)."""
    ctx = ScriptContext(str(tmp_path / "missing dir"), str(stub_python(tmp_path)), str(tmp_path / "logs"))
    settings = SlurmSettings(modules=["python/3.11"])  # `module` is not a command here: fails
    if array:
        text = render_array_script([job(0, "a"), job(3, "b")], settings, ctx, throttle=0)
        env = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "1"}
        expected = "reatt: run b, job 77_3, attempt 2, on "
    else:
        text = render_job_script(job(), settings, ctx)
        env = {}
        expected = "reatt: run baseline, job 4242, attempt 1, on "
    proc = run_script(text, tmp_path, env)
    assert proc.returncode == 1 and "module load failed" in proc.err
    marks = [m.group(0) for m in ATTEMPT_LINE.finditer(proc.err)]
    assert len(marks) == 1 and marks[0].startswith(expected)
    assert proc.err.index(marks[0]) < proc.err.index("module load failed")
    assert marks[0] in proc.out
    assert attempt_err_text(proc.err).strip().endswith("module load failed: python/3.11")


def attempt_err_text(err: str) -> str:
    starts = list(ATTEMPT_LINE.finditer(err))
    return err[starts[-1].end() :] if starts else err


@pytest.mark.skipif(BASH is None, reason="bash not found")
def test_failure_exit_code_is_the_jobs(tmp_path):
    ctx = ScriptContext(str(tmp_path), str(stub_python(tmp_path)), str(tmp_path / "logs"))
    proc = run_script(render_job_script(job(), SlurmSettings(), ctx), tmp_path, {"STUB_MODE": "fail"})
    assert proc.returncode == 1
    assert not (tmp_path / "bin" / "scontrol.log").exists()


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"partition": "gpu\n#SBATCH --wrap=x"}, "slurm.partition"),
        ({"partition": "$(touch /tmp/x)"}, "slurm.partition"),
        ({"partition": "gpu\n"}, "slurm.partition"),
        ({"time": "10\n"}, "slurm.time"),
        ({"account": "a b"}, "slurm.account"),
        ({"qos": "q;rm"}, "slurm.qos"),
        ({"time": "1 hour"}, "slurm.time"),
        ({"time": "$(touch /tmp/x)"}, "slurm.time"),
        ({"mem": "8 GB"}, "slurm.mem"),
        ({"mem": "8G\n#SBATCH -p x"}, "slurm.mem"),
        ({"cpus_per_task": 0}, "slurm.cpus_per_task"),
        ({"signal_seconds": 0}, "slurm.signal_seconds"),
        ({"time": "00:02:00", "signal_seconds": 120}, "leaves less than 60 s"),
        ({"time": "5", "signal_seconds": 250}, "leaves less than 60 s"),
        ({"signal_seconds": 70000, "time": "3-00:00:00"}, "at most 65535"),
        ({"extra_sbatch": ["--constraint=a100\n--wrap=x"]}, "slurm.extra_sbatch"),
        ({"extra_sbatch": ["constraint=a100"]}, "one sbatch option per entry"),
        ({"extra_sbatch": ["--output=/tmp/x"]}, "--output is set by reatt"),
        ({"extra_sbatch": ["-J other"]}, "--job-name is set by reatt"),
        ({"extra_sbatch": ["--no-requeue"]}, "--no-requeue is set by reatt"),
        # sbatch takes unambiguous prefixes of long options ("--job=evil" sets the job name)
        ({"extra_sbatch": ["--job=evil"]}, "--job-name is set by reatt (sbatch reads --job as --job-name)"),
        ({"extra_sbatch": ["--out=/tmp/x"]}, "--output is set by reatt"),
        ({"extra_sbatch": ["--sig=B:USR2@30"]}, "--signal is set by reatt"),
        ({"extra_sbatch": ["--arr=0-3"]}, "--array is set by reatt"),
        ({"extra_sbatch": ["--no-req"]}, "--no-requeue is set by reatt"),
        ({"extra_sbatch": ["--requ"]}, "--requeue is set by reatt"),
        ({"extra_sbatch": ["--open=truncate"]}, "--open-mode is set by reatt"),
        ({"extra_sbatch": ["--err /tmp/x"]}, "--error is set by reatt"),
        ({"extra_sbatch": ["--o=x"]}, "--output / --open-mode is set by reatt"),
        # several options on one #SBATCH line: sbatch reads them all, and the later line wins
        ({"extra_sbatch": ["--comment=x --output=/elsewhere --no-requeue"]}, "3 options in one entry"),
        ({"extra_sbatch": ["--constraint=a100 -o /tmp/x"]}, "2 options in one entry"),
        ({"extra_sbatch": ["--exclude node07 node08"]}, "one sbatch option per entry"),
        ({"extra_sbatch": ["--comment=a --comment=b"]}, "2 options in one entry"),
        # the job's environment: an exported BASH_ENV runs code in the job
        ({"extra_sbatch": ["--export=ALL,BASH_ENV=/tmp/evil.sh"]}, "--export is set by reatt"),
        ({"extra_sbatch": ["--exp=NONE"]}, "(sbatch reads --exp as --export or --export-file)"),
        ({"extra_sbatch": ["--export-file=/tmp/env"]}, "--export-file is set by reatt"),
        ({"extra_sbatch": ["--export-fi=/tmp/env"]}, "(sbatch reads --export-fi as --export-file)"),
        # [slurm] time is checked against signal_seconds: a later --time line would win over it
        ({"extra_sbatch": ["--time=5"]}, "--time is set by reatt from [slurm] time"),
        ({"extra_sbatch": ["-t 5"]}, "--time is set by reatt (sbatch reads -t as --time)"),
        ({"extra_sbatch": ['--comment="a --output=/x"']}, "without quotes, backslashes"),
        ({"modules": ["python\nrm -rf /"]}, "slurm.modules"),
        ({"hf_home": "/a\nb"}, "slurm.hf_home"),
    ],
)
def test_invalid_sbatch_values_are_refused(changes, message):
    settings = dataclasses.replace(SlurmSettings(), **changes)
    with pytest.raises(SpecError, match="invalid Slurm settings") as e:
        check_settings(settings)
    assert message in str(e.value)
    with pytest.raises(SpecError):
        render_job_script(job(), settings, CTX)


@pytest.mark.parametrize(
    "line",
    [
        "--constraint=a100",
        "--exclude=node07",
        "--gres=gpu:2",
        "--mail-type=END",
        "--no-kill",
        "--mem-per-cpu=2G",
        "-c8",  # a short option with its value attached
        "-C a100",
    ],
)
def test_unrelated_extra_sbatch_options_are_kept(line):
    settings = dataclasses.replace(SlurmSettings(), extra_sbatch=[line])
    check_settings(settings)
    assert f"#SBATCH {line}" in render_job_script(job(), settings, CTX).splitlines()


def test_every_problem_is_listed_at_once():
    with pytest.raises(SpecError) as e:
        check_settings(SlurmSettings(time="soon", mem="lots", partition="a b"))
    assert all(k in str(e.value) for k in ("slurm.time", "slurm.mem", "slurm.partition"))


@pytest.mark.parametrize(
    "time_text", ["30", "30:00", "1:00:00", "2-12", "2-12:30", "2-12:30:00", "UNLIMITED"]
)
def test_valid_time_formats(time_text):
    check_settings(SlurmSettings(time=time_text, signal_seconds=60))


def test_time_limit_seconds():
    assert time_limit_seconds("30") == 1800
    assert time_limit_seconds("1:30") == 90
    assert time_limit_seconds("01:00:00") == 3600
    assert time_limit_seconds("2-12") == 2 * 86400 + 12 * 3600
    assert time_limit_seconds("1-00:10:05") == 86400 + 605
    assert time_limit_seconds("infinite") is None


def test_unsafe_names_and_log_dirs_are_refused():
    with pytest.raises(SpecError, match="run name"):
        render_job_script(job(name="x;rm -rf ~"), SlurmSettings(), CTX)
    with pytest.raises(SpecError, match="run name"):
        render_job_script(job(name="a\nb"), SlurmSettings(), CTX)
    with pytest.raises(SpecError, match="run name"):
        render_job_script(job(name="trailing\n"), SlurmSettings(), CTX)
    for bad in ('/o"ut/slurm', "/o\\ut/slurm", "/o\nut"):
        ctx = ScriptContext("/project", "python", bad)
        with pytest.raises(SpecError, match="log directory"):
            render_job_script(job(), SlurmSettings(), ctx)


@pytest.mark.parametrize(
    ("log_dir", "expected"),
    [
        ("/data/100%/slurm", "/data/100%%/slurm/%x-%j.out"),  # %% is Slurm's literal %
        ("/out dir/slurm", '"/out dir/slurm/%x-%j.out"'),  # sbatch 22.05 honours double quotes
        ("/o#ut/it's/slurm", '"/o#ut/it\'s/slurm/%x-%j.out"'),  # unquoted, '#' would end the line
    ],
)
def test_log_dir_in_sbatch_lines(log_dir, expected):
    text = render_job_script(job(), SlurmSettings(), ScriptContext("/p", "python", log_dir))
    assert f"#SBATCH --output={expected}" in text.splitlines()


def test_strict_undefined(tmp_path):
    (tmp_path / "job.sbatch.j2").write_text("#!/bin/bash\necho {{ no_such_variable }}\n")
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render_job_script(job(), SlurmSettings(), CTX, templates=tmp_path)


# ----------------------------------------------------------------------- ranks: nodes x GPUs

DDP = SlurmSettings(nodes=2, gpus_per_node=4, signal="USR2", signal_seconds=300, time="02:00:00")


def test_ranks_render_nodes_tasks_and_gpus_consistently(tmp_path):
    text = render_job_script(job(), DDP, CTX)
    sbatch = {line for line in text.splitlines() if line.startswith("#SBATCH")}
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"} <= sbatch
    assert "#SBATCH --signal=USR2@300" in sbatch  # every rank's task, not the batch shell (B:)
    assert not any(line.startswith(("#SBATCH --ntasks=", "#SBATCH --gres")) for line in sbatch)
    assert "srun --ntasks=8 --ntasks-per-node=4 --cpus-per-task=2 bash -c \\" in text
    assert "export WORLD_SIZE=8" in text
    bash_syntax_ok(text, tmp_path)
    # one process on one GPU renders as before
    one = render_job_script(job(), SlurmSettings(gpus_per_node=1), CTX)
    assert "#SBATCH --ntasks=1" in one and "#SBATCH --gpus-per-node=1" in one and "srun" not in one
    assert "#SBATCH --signal=B:USR1@120" in one  # the default: to the batch shell, which forwards it
    ranks = render_job_script(job(), SlurmSettings(ntasks_per_node=2), CTX)
    assert "#SBATCH --signal=USR2@120" in ranks  # the default of ranks: USR2 to each (NCCL and USR1)
    assert '[ "$rc" = 140 ]' in ranks  # 128 + USR2: killed before its handler was set
    array = render_array_script([job(0, "a"), job(1, "b")], DDP, CTX, throttle=0)
    assert "srun --ntasks=8" in array and "requeue_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" in array
    bash_syntax_ok(array, tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus": 2}, "slurm.gpus = 2: one training process uses one GPU, the others would sit idle"),
        ({"gpus": 1, "gpus_per_node": 2}, "slurm.gpus and slurm.gpus_per_node are both set"),
        ({"gpus_per_node": 4, "ntasks_per_node": 2}, "slurm.ntasks_per_node = 2 but gpus_per_node = 4"),
        ({"signal": "HUP"}, "slurm.signal = 'HUP': expected one of USR1, USR2, TERM"),
        ({"signal": "TERM"}, "slurm.signal = 'TERM' in a one-process job"),
        ({"nodes": 0}, "slurm.nodes = 0: expected an integer >= 1"),
        ({"extra_sbatch": ["--nodes=4"]}, "--nodes is set by reatt from [slurm] nodes, gpus_per_node"),
        ({"extra_sbatch": ["-N 4"]}, "(sbatch reads -N as --nodes)"),
        ({"extra_sbatch": ["--gpus-per-node=8"]}, "--gpus-per-node is set by reatt"),
    ],
)
def test_rank_settings_that_do_not_fit_are_refused(changes, message):
    with pytest.raises(SpecError) as e:
        check_settings(dataclasses.replace(SlurmSettings(), **changes))
    assert message in str(e.value)


def _rank_stubs(tmp_path: Path) -> Path:
    """srun running its command once per rank (SLURM_PROCID, SLURM_LOCALID), and scontrol
    naming two hosts and logging everything else; python records its rank and exits $STUB_RC."""
    bin_dir = tmp_path / "bin"
    log = fake_scontrol(bin_dir)
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1 $2" = "show hostnames" ]; then printf "nodeA\\nnodeB\\n"; exit 0; fi\n'
        f'printf "%s\\n" "$*" >> {json.dumps(str(log))}\n'
    )
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        'for i in 0 1 2 3; do SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@" & done\n'
        "rc=0; for j in 1 2 3 4; do wait -n; r=$?; [ $r -gt $rc ] && rc=$r; done; exit $rc\n"
    )
    python = tmp_path / "rank-python"
    python.write_text(
        f"#!{sys.executable}\nimport json, os, sys, time\n"
        "keys = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')\n"
        "path = os.environ['STUB_OUT'] + '.' + os.environ['RANK']\n"
        "open(path, 'w').write(json.dumps({k: os.environ.get(k) for k in keys}))\n"
        "time.sleep(float(os.environ.get('STUB_SLEEP', '0')))\n"
        "sys.exit(int(os.environ['STUB_RC']))\n"
    )
    for path in (bin_dir / "scontrol", bin_dir / "srun", python):
        path.chmod(0o755)
    return python


@pytest.mark.skipif(BASH is None, reason="bash not found")
@pytest.mark.parametrize(("rc", "requeued"), [(75, True), (140, True), (1, False), (0, False)])
def test_ranks_get_their_rendezvous_and_an_interrupted_job_requeues_once(tmp_path, rc, requeued):
    python = _rank_stubs(tmp_path)
    ctx = ScriptContext(str(tmp_path), str(python), str(tmp_path / "logs"))
    settings = SlurmSettings(nodes=2, gpus_per_node=2, signal="USR2")
    text = render_job_script(job(), settings, ctx)
    proc = subprocess.run(
        [BASH or "bash", "-c", text],
        cwd=tmp_path,
        env={
            "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node[A-B]",
            "STUB_OUT": str(tmp_path / "rank"),
            "STUB_RC": str(rc),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == rc, proc.stdout + proc.stderr
    seen = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in range(4)]
    assert [(s["RANK"], s["LOCAL_RANK"]) for s in seen] == [("0", "0"), ("1", "1"), ("2", "0"), ("3", "1")]
    assert {(s["WORLD_SIZE"], s["MASTER_ADDR"], s["MASTER_PORT"]) for s in seen} == {("4", "nodeA", "24242")}
    log = tmp_path / "bin" / "scontrol.log"
    assert (log.read_text() if log.exists() else "") == ("requeue 4242\n" if requeued else "")


@pytest.mark.skipif(BASH is None, reason="bash not found")
def test_scancel_of_a_ranks_job_is_not_requeued(tmp_path):
    python = _rank_stubs(tmp_path)
    ctx = ScriptContext(str(tmp_path), str(python), str(tmp_path / "logs"))
    text = render_job_script(job(), SlurmSettings(nodes=2, gpus_per_node=2), ctx)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "STUB_OUT": str(tmp_path / "rank"),
        "SLURM_JOB_NODELIST": "node[A-B]",
        "STUB_RC": "75",
        "STUB_SLEEP": "2",
    }
    proc = subprocess.Popen(
        [BASH or "bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "rank.3").exists():  # every rank started
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)  # what scancel sends the batch shell (the tasks get theirs)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, out + err
    assert "not requeued" in out
    assert not (tmp_path / "bin" / "scontrol.log").exists()
