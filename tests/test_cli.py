"""The `reatt` CLI through Typer's runner: help, errors, and the README's flow end to end."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reatt.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["plan", "submit", "status", "cancel", "collect", "report", "compare", "export", "train"]
runner = CliRunner()

TINY_SPEC = """
[study]
name = "tiny"
seeds = [1]
out_dir = "{out}"

[base]
data.block_size = 32
trainer.batch_size = 4
trainer.max_iters = 10
trainer.eval_interval = 5
trainer.eval_windows = 8
trainer.log_interval = 5

[features]
rope = {{ "model.rope" = true }}
"""


def invoke(*args, db=None):
    argv = [*args, "--db", str(db)] if db is not None else list(args)
    return runner.invoke(app, argv, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    r = invoke(command, "--help") if command != "train" else None
    if command == "train":  # passes --help through to the training program
        out = subprocess.run(
            [sys.executable, "-m", "reatt", "train", "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "trainer.warmup_steps" in out.stdout
        return
    assert r.exit_code == 0
    assert "Example:" in r.output
    doc = app.registered_commands[COMMANDS.index(command)].callback.__doc__
    assert doc and doc.strip()


def test_top_level_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for command in COMMANDS:
        assert command in r.output


def heavy_modules_after(code):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys; print(sorted(m for m in ('torch', 'pandas', 'seaborn', "
            "'matplotlib', 'transformers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_cli_import_and_plan_pay_for_no_heavy_library(tmp_path):
    assert heavy_modules_after("import reatt.cli") == "[]"
    spec = tmp_path / "s.toml"
    spec.write_text(TINY_SPEC.format(out=tmp_path / "out"))
    code = (
        "import sys\nfrom reatt.cli import app\n"
        f"sys.argv = ['reatt', 'plan', {str(spec)!r}, '--db', {str(tmp_path / 'r.db')!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code"
    )
    assert heavy_modules_after(code) == "[]"


def test_plan_prints_the_table_and_json(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(TINY_SPEC.format(out=tmp_path / "out"))
    db = tmp_path / "r.db"
    r = invoke("plan", str(spec), db=db)
    assert r.exit_code == 0
    assert "study tiny: 2 jobs (created)" in r.output and "model.rope=True" in r.output
    r = invoke("plan", str(spec), "--json", db=db)
    jobs = json.loads(r.output)
    assert [j["name"] for j in jobs] == ["baseline", "rope"]
    assert jobs[1]["argv"][-1] == f"--system.work_dir={tmp_path / 'out' / 'tiny' / 'rope'}"


def test_errors_are_one_line_exit_1_and_keep_brackets(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('[study]\nname = "x"\n[base]\ntrainer.warmup = 3\n')
    r = runner.invoke(app, ["plan", str(spec), "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {spec}: [base]: unknown config key 'trainer.warmup'; did you mean 'trainer.warmup_steps'?\n"
    )
    r = runner.invoke(app, ["status", "--db", str(tmp_path / "empty.db")])
    assert r.exit_code == 1
    empty = tmp_path / "empty.db"
    assert r.output == (
        f"Error: no results database at {empty}: run `reatt plan SPEC` here first, "
        "or point --db (or $REATT_DB) at yours\n"
    )
    assert not empty.exists()  # a read-only command leaves no empty database behind
    # a usage error is Typer's: exit 2, naming the option
    r = runner.invoke(app, ["submit", "--partition", "gpu", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 2 and "Invalid value for --partition: only applies with --cluster" in r.output
    r = runner.invoke(app, ["submit", "--cluster", "--jobs", "2", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 2 and "Invalid value for --jobs: only applies without --cluster" in r.output
    r = runner.invoke(app, ["report", "--format", "xml", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 2 and "'xml' is not one of" in r.output


def test_readme_flow_end_to_end(tmp_path, monkeypatch):
    """plan -> submit (here) -> status -> collect -> report --plot, as the README runs the demo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(TINY_SPEC.format(out=tmp_path / "out"))
    assert invoke("plan", "s.toml").exit_code == 0
    assert (tmp_path / "results.db").exists()  # the default database, in the current directory
    r = invoke("submit", "--dry-run")
    assert r.exit_code == 0 and "-m reatt.train" in r.output
    r = invoke("submit")
    assert r.exit_code == 0, r.output
    assert "completed: baseline, rope" in r.output
    r = invoke("status", "--json")
    states = {s["name"]: s["state"] for s in json.loads(r.output)}
    assert states == {"baseline": "completed", "rope": "completed"}
    narrow = subprocess.run(
        [sys.executable, "-m", "reatt", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert narrow.returncode == 0 and "hidden for lack of width: job" in narrow.stdout
    assert "baseline   completed" in narrow.stdout  # whole columns hidden, none cut
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
    r = invoke("collect")
    assert r.exit_code == 0 and "collected tiny: 2 run(s) read" in r.output
    r = invoke("report", "--plot", "--format", "csv")
    assert r.exit_code == 0, r.output
    report_dir = tmp_path / "out" / "tiny" / "report"
    for name in ("final_nll.md", "final_nll.csv", "loss_curves.png", "loss_curves.svg", "final_nll.png"):
        assert (report_dir / name).stat().st_size > 0
    assert r.output.startswith("variant,")
    r = invoke("submit")
    assert "skipped baseline: completed" in r.output and "nothing to run" in r.output


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_readme_commands_are_what_ci_runs():
    install, tests = readme_commands()
    assert "\n" not in install and "\n" not in tests  # each on one line a new user copies
    assert "pip install torch==2.13.0" in install  # never a bare `pip install torch` (CUDA, GBs)
    assert "reatt plan ablations/demo.toml && reatt submit && reatt collect && reatt report --plot" in install
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_CMD="(.*)"$', ci, re.M)
    assert match and match.group(1) == tests
    assert shlex.split(tests)  # parses as a shell line


def test_bad_environments_are_one_line_errors_never_tracebacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.db").write_text("these bytes are not a SQLite database\n" * 100)
    r = runner.invoke(app, ["status"])
    assert r.exit_code == 1 and r.output.startswith("Error: cannot open database sqlite:///")
    assert "file is not a database" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["status", "--db", "postgresql+nosuchdriver://ann:hunter2@db.example/lab"])
    assert r.exit_code == 1 and "hunter2" not in r.output and "ann:***@db.example" in r.output
    spec = tmp_path / "big-seed.toml"
    spec.write_text(TINY_SPEC.format(out=tmp_path / "out").replace("seeds = [1]", f"seeds = [{2**64}]"))
    r = runner.invoke(app, ["plan", str(spec), "--db", str(tmp_path / "ok.db")])
    assert r.exit_code == 1 and "expected a list of distinct integers from 0 to 2**63 - 1" in r.output


def test_report_out_onto_a_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(TINY_SPEC.format(out=tmp_path / "out"))
    assert invoke("plan", "s.toml").exit_code == 0
    assert invoke("submit").exit_code == 0 and invoke("collect").exit_code == 0
    (tmp_path / "a-file").write_text("x")
    r = runner.invoke(app, ["report", "--out", "a-file"])
    assert (
        r.exit_code == 1
        and r.output == "Error: a-file is not a directory: give --out a directory for the report's files\n"
    )
