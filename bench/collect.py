"""Benchmark `reatt collect` (and `reatt report`) on a synthetic study.

Plans a study of --runs runs (a "list" matrix of --runs/--seeds variants x --seeds seeds) with
the real `plan_study`, writes each run directory as the training program would
(args.txt, config.json, a loss.csv of --steps logged steps, final.json), then, --reps times on a
fresh copy of the planned database:

1. the first collect (every run read: metric rows per second),
2. a second collect (every run unchanged),
3. `reatt report` (the CLI in a subprocess, as a user runs it, imports included), unless
   reatt.report.build is missing or --no-report.

It also times the CLI's start: `reatt --help` and `reatt plan` (which must not pay for
importing torch), beside `python -c "import torch"` for scale.

Prints a Markdown table of medians (min-max). Run from the repository root:

    python bench/collect.py                          # 1,000 runs x 2,000 steps (a few minutes)
    python bench/collect.py --runs 100 --steps 500   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reatt.study import store as db  # noqa: E402
from reatt.study.collect import collect  # noqa: E402
from reatt.study.plan import plan_study  # noqa: E402
from reatt.study.spec import JobSpec, load_spec  # noqa: E402
from reatt.training.config import get_default_config  # noqa: E402


def write_spec(path: Path, out_dir: Path, variants: int, seeds: int) -> None:
    lines = [
        "[study]",
        'name = "bench"',
        'matrix = "list"',
        f"seeds = {list(range(1, seeds + 1))}",
        f'out_dir = "{out_dir}"',
        "[base]",
        'model.model_type = "gpt-nano"',
        "data.block_size = 64",
        "trainer.max_iters = 2000",
        "[features]",
        'rope = { "model.rope" = true }',
    ]
    for v in range(variants):
        feats = '["rope"]' if v % 2 else "[]"
        lr = 1e-4 * (1 + v % 50)
        lines += [f"[runs.v{v:04d}]", f"features = {feats}", f'set = {{ "trainer.learning_rate" = {lr!r} }}']
    path.write_text("\n".join(lines) + "\n")


def write_run(job: JobSpec, steps: int, base_config: dict) -> int:
    """The files of one completed run; returns the bytes of its loss.csv."""
    work = Path(job.work_dir)
    work.mkdir(parents=True)
    (work / "args.txt").write_text("".join(a + "\n" for a in job.argv()))
    config = json.loads(json.dumps(base_config))
    for key, value in job.overrides.items():
        node, leaf = key.split(".")
        config[node][leaf] = value
    config["meta"] = {"n_params": 4911120, "n_params_non_embedding": 2497248, "device": "cpu"}
    (work / "config.json").write_text(json.dumps(config, indent=2))
    seed = job.seed
    rows = ["step,loss,val_loss,lr,tokens,elapsed_s", f"0,,{10.8 + seed * 1e-3:.6f},5.000000e-04,0,0.500"]
    for s in range(1, steps + 1):
        loss = 10.8 - 5.0 * s / steps + (seed % 7) * 1e-3
        val = f"{loss + 0.05:.6f}" if s % 100 == 0 or s == steps else ""
        rows.append(f"{s},{loss:.6f},{val},5.000000e-04,{s * 512},{0.5 + s * 0.01:.3f}")
    text = "\n".join(rows) + "\n"
    (work / "loss.csv").write_text(text)
    final_nll = 5.85 - (0.05 if "rope" in job.features else 0) + (seed % 5) * 0.01
    final = {
        "status": "completed",
        "final_nll": final_nll,
        "final_train_loss": final_nll - 0.05,
        "steps": steps,
        "tokens": steps * 512,
        "wall_time_s": 0.5 + steps * 0.01,
        "train_time_s": steps * 0.009,
        "tokens_per_s": 56888.9,
        "mfu": None,
        "n_params": 4911120,
        "n_params_non_embedding": 2497248,
        "error": None,
        "finished_at": "2026-11-30T13:00:00+00:00",
    }
    (work / "final.json").write_text(json.dumps(final, indent=2))
    return len(text)


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cli_startup(spec_path: Path, tmp: Path, n_runs: int, reps: int = 5) -> list[tuple[str, list[float]]]:
    """Wall seconds of `reatt --help`, `reatt plan SPEC` and `import torch`, each a new process."""
    commands = [
        ("`reatt --help`", [sys.executable, "-m", "reatt", "--help"]),
        (
            f"`reatt plan` ({n_runs:,} jobs, unchanged)",
            [sys.executable, "-m", "reatt", "plan", str(spec_path)],
        ),
        ('`python -c "import torch"` (for scale)', [sys.executable, "-c", "import torch"]),
    ]
    out = []
    for label, cmd in commands:
        if "plan" in cmd:
            cmd = [*cmd, "--db", str(tmp / "startup.db")]
            subprocess.run(cmd, capture_output=True, check=True)  # first plan records the study
        times = []
        for _ in range(reps):
            t, proc = timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True))
            assert proc.returncode == 0, proc.stderr
            times.append(t)
        out.append((label, times))
    return out


def fmt_range(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="runs in the study (default 1000)")
    ap.add_argument("--steps", type=int, default=2000, help="logged steps per run (default 2000)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per variant (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default 3)")
    ap.add_argument("--no-report", action="store_true", help="skip timing `reatt report`")
    ap.add_argument("--plot", action="store_true", help="time `reatt report --plot` too")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = ap.parse_args()
    seeds = max(1, min(args.seeds, args.runs))
    variants = max(1, args.runs // seeds)
    n_runs = variants * seeds

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="reatt-bench-collect-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        spec_path = tmp / "bench.toml"
        write_spec(spec_path, tmp / "out", variants, seeds)
        planned_db = tmp / "planned.db"
        planned_db.unlink(missing_ok=True)
        shutil.rmtree(tmp / "out", ignore_errors=True)
        t_plan, spec = timed(lambda: load_spec(spec_path))
        engine = db.open_db(planned_db)
        t_plan2, res = timed(lambda: plan_study(spec, engine))
        engine.dispose()
        base_config = get_default_config().to_dict()
        t_write, sizes = timed(lambda: [write_run(j, args.steps, base_config) for j in res.jobs])
        metric_rows = n_runs * (args.steps + 1)
        print(
            f"setup: {n_runs} runs ({variants} variants x {seeds} seeds) x {args.steps + 1} rows "
            f"= {metric_rows:,} metric rows, {sum(sizes) / 1e6:.0f} MB of loss.csv; "
            f"plan {t_plan + t_plan2:.1f} s, files written in {t_write:.1f} s",
            flush=True,
        )

        startup = cli_startup(spec_path, tmp, n_runs)

        have_report = not args.no_report
        if have_report:
            try:
                import reatt.report.build  # noqa: F401
            except ImportError as e:
                print(f"reatt.report.build not importable ({e}): skipping the report timing")
                have_report = False

        first, second, report, report_plot, db_sizes = [], [], [], [], []
        for rep in range(args.reps):
            dbfile = tmp / "results.db"
            dbfile.unlink(missing_ok=True)
            shutil.copy(planned_db, dbfile)
            engine = db.open_db(dbfile)
            t1, r1 = timed(lambda engine=engine: collect(engine, "bench"))
            assert r1.runs_read == n_runs and r1.metric_rows == metric_rows, r1
            t2, r2 = timed(lambda engine=engine: collect(engine, "bench"))
            assert r2.runs_unchanged == n_runs and r2.runs_read == 0 and r2.metric_rows == 0, r2
            engine.dispose()
            first.append(t1)
            second.append(t2)
            db_sizes.append(dbfile.stat().st_size)
            line = (
                f"rep {rep + 1}: first collect {t1:.2f} s ({metric_rows / t1:,.0f} rows/s), second {t2:.2f} s"
            )
            if have_report:
                cmd = [sys.executable, "-m", "reatt", "report", "--db", str(dbfile), "--study", "bench"]
                cmd += ["--out", str(tmp / "report"), "--format", "markdown"]
                t3, proc = timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True))
                if proc.returncode != 0:
                    print(f"`{shlex.join(cmd)}` failed:\n{proc.stdout}\n{proc.stderr}")
                    have_report = False
                else:
                    report.append(t3)
                    line += f", report {t3:.2f} s"
                    if args.plot:
                        t4, proc = timed(
                            lambda cmd=cmd: subprocess.run(cmd + ["--plot"], capture_output=True, text=True)
                        )
                        report_plot.append(t4)
                        line += f", report --plot {t4:.2f} s"
            print(line, flush=True)

        cmd_line = "python " + shlex.join([os.path.relpath(__file__), *sys.argv[1:]])
        print()
        print(f"`{cmd_line}`: {n_runs:,} runs x {args.steps + 1:,} rows = {metric_rows:,} metric rows,")
        print(
            f"median of {args.reps} (min-max), {platform.python_version()}, "
            f"{len(os.sched_getaffinity(0))} CPUs, SQLite file {statistics.median(db_sizes) / 1e6:.0f} MB"
        )
        print()
        print("| step | seconds | metric rows/s |")
        print("| --- | --- | --- |")
        rows_s = [metric_rows / t for t in first]
        rate = statistics.median(rows_s)
        print(f"| first collect (all {n_runs:,} runs read) | {fmt_range(first)} | {rate:,.0f} |")
        print(f"| second collect (all unchanged) | {fmt_range(second)} | - |")
        if report:
            print(f"| `reatt report` (CLI, imports included) | {fmt_range(report)} | - |")
        if report_plot:
            print(f"| `reatt report --plot` | {fmt_range(report_plot)} | - |")
        if not report:
            print("\n(`reatt report` not timed)")
        print()
        print("| CLI start (new process) | seconds |")
        print("| --- | --- |")
        for label, times in startup:
            print(f"| {label} | {fmt_range(times)} |")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
