"""Sharing results: the one-file HTML report (also in a real headless Chromium), `reatt export`
(CSV and Parquet, read back with pandas) and `reatt compare`. The study is planned from a real
spec, its run directories written as docs/run-directory.md describes them, collected, and then
deleted: everything below reads the database alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from chromium_helpers import Chromium, Tables
from test_collect import write_run
from test_report import add_study, realistic_runs, run_config
from test_tune import BASE, FINALS, _fabricate
from typer.testing import CliRunner

from reatt.cli import app
from reatt.report import ExportFormat
from reatt.report.build import build_report
from reatt.report.compare import compare_markdown, compare_studies
from reatt.report.details import study_details
from reatt.report.export import export, read_back
from reatt.report.html import render_html, write_html
from reatt.study import store as db
from reatt.study.collect import collect
from reatt.study.plan import plan_study
from reatt.study.spec import load_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUESTION = 'Does <script>alert("x")</script> RoPE & SwiGLU help?'
SPEC = """
[study]
name = "share"
description = '{question}'
seeds = [1, 2]
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.max_iters = 20

[features]
rope = {{ "model.rope" = true }}
swiglu = {{ "model.swiglu" = true }}
"""
VARIANTS = ["baseline", "rope", "swiglu", "all"]
runner = CliRunner()


@pytest.fixture
def collected(tmp_path: Path) -> dict[str, Any]:
    """A planned 8-run study (baseline, rope, swiglu, all x seeds 1, 2), collected from its run
    directories (one run failed), which are then deleted."""
    out = tmp_path / "out"
    spec = tmp_path / "share.toml"
    spec.write_text(SPEC.format(question=QUESTION, out=out))
    engine = db.open_db(tmp_path / "results.db")
    jobs = plan_study(load_spec(spec), engine).jobs
    for i, job in enumerate(jobs):
        work = Path(job.work_dir)
        failed = job.name == "swiglu-s2"
        write_run(
            work,
            seed=job.seed,
            final_nll=5.0 + i / 10,
            overrides=job.overrides,
            status="failed" if failed else "completed",
        )
        config = json.loads((work / "config.json").read_text())
        config["meta"].update(reatt_version="0.1.0", git_commit=COMMIT)
        if job.name == "rope-s2":  # resumed once at another commit
            config["meta"]["resumes"] = [{"from_step": 5, "reatt_version": "0.1.0", "git_commit": "f" * 40}]
        (work / "config.json").write_text(json.dumps(config))
    res = collect(engine)
    assert res.broken == [] and res.metric_rows == 8 * 11
    shutil.rmtree(out)  # the database holds everything from here on
    yield {"engine": engine, "db": tmp_path / "results.db", "jobs": jobs, "tmp": tmp_path}
    engine.dispose()


def html_of(engine: Any, study: str = "share") -> str:
    return render_html(build_report(engine, study), study_details(engine, study))


def test_html_report_needs_no_run_directory(collected: dict[str, Any]) -> None:
    r = runner.invoke(
        app, ["report", "--html", "--out", str(collected["tmp"] / "rep"), "--db", str(collected["db"])]
    )
    assert r.exit_code == 0, r.output
    page = (collected["tmp"] / "rep" / "report.html").read_text()
    assert "report.html" in r.output
    tables = Tables(page)
    final = tables.tables["final-nll"]
    assert final[0][:3] == ["variant", "features", "n"]
    assert sorted(row[0].lstrip("★ ") for row in final[1:]) == sorted(VARIANTS)
    assert [row[0] for row in tables.tables["run-details"][1:]] == [j.name for j in collected["jobs"]]
    runs = {row[0]: row for row in tables.tables["run-details"][1:]}
    assert runs["swiglu-s2"][3].startswith("failed") and runs["rope-s1"][3] == "completed"
    assert runs["rope-s1"][-2:] == ["0.1.0", COMMIT[:10]]
    assert runs["rope-s2"][-1] == f"{COMMIT[:10]}resumed at ffffffffff (reatt 0.1.0)"  # a line of its own
    assert "model.rope: False → True" in runs["rope-s1"][-3]  # config diff vs baseline-s1
    assert runs["baseline-s1"][-3] == "reference"
    # the question, escaped; the spec and the commands to reproduce it
    assert "<script" not in page and "alert(&#34;x&#34;)" in page and "RoPE &amp; SwiGLU" in page
    assert f"git checkout {COMMIT}" in page and "reatt plan " in page and "share.toml" in page
    assert "[features.rope]" in page or "rope = {" in page
    assert "python -m reatt.train --system.seed=1" in page or "--model.rope=True" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert 'name="viewport"' in page and "@media print" in page and "@media (max-width" in page
    assert len(tables.tags) > 100 and tables.tags.count("svg") == 2


def test_figure_ids_are_unique_in_the_page(collected: dict[str, Any]) -> None:
    page = html_of(collected["engine"])
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) > 50 and len(ids) == len(set(ids))
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert refs and refs <= set(ids)  # every reference inside the figures points into the page


def test_a_50_run_study_is_well_under_2_mb(tmp_path: Path) -> None:
    engine = db.open_db(tmp_path / "results.db")
    runs = realistic_runs(seeds=(1, 2, 3, 4, 5, 6, 7), steps=1000)  # 49 runs, 101 loss rows each
    add_study(engine, [dict(r, config=run_config(seed=r["seed"])) for r in runs], name="lab")
    path = write_html(build_report(engine, "lab"), study_details(engine, "lab"), tmp_path / "r")
    assert path.name == "report.html" and path.stat().st_size < 1_000_000
    engine.dispose()


def test_a_tuned_study_without_metrics_rows(tmp_path: Path) -> None:
    engine = db.open_db(tmp_path / "results.db")
    tune = {"baseline": {5e-4: 5.6, 2e-3: 5.4, 8e-3: 5.7}, "a": {5e-4: 5.5, 2e-3: 5.35, 8e-3: 5.2}}
    _fabricate(engine, {"baseline": BASE, "a": FINALS["a"]}, tune)
    page = html_of(engine, "fair")
    tables = Tables(page)
    final = tables.tables["final-nll"]
    assert final[0][1] == "chosen value" and "Δ at shared trainer.learning_rate=0.002 [CI]" in final[0]
    assert final[1][1] == "trainer.learning_rate=0.002" and len(final) == 3
    assert tables.tags.count("svg") == 2  # final NLL and LR sensitivity; no curves without rows:
    assert "Loss curves (band: min–max over seeds): not drawn: study &#39;fair&#39;" in page
    runs = tables.tables["run-details"]
    assert runs[0][3] == "stage" and {r[3] for r in runs[1:]} == {"eval", "tune"} and len(runs) == 1 + 14
    engine.dispose()


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_export_round_trips(collected: dict[str, Any], fmt: ExportFormat) -> None:
    engine = collected["engine"]
    paths = export(engine, ["share"], collected["tmp"] / "x", fmt)
    assert [p.name for p in paths] == [f"runs.{fmt.value}", f"metrics.{fmt.value}"]
    runs, metrics = (read_back(p) for p in paths)
    with db.transaction(engine) as s:
        stored = db.get_study(s, "share").runs
        expect = {r.name: (r.state, r.final_nll, r.steps, len(r.metrics)) for r in stored}
        loss = {(r.name, m.step): (m.loss, m.val_loss, m.tokens) for r in stored for m in r.metrics}
    assert list(runs["run"]) == list(expect) and len(metrics) == len(loss) == 88
    for row in runs.itertuples():
        state, nll, steps, _ = expect[row.run]
        assert row.state == state and row.steps == steps and row.git_commit == COMMIT
        assert (row.final_nll == nll) if nll is not None else row.final_nll != row.final_nll  # NaN
    assert runs.loc[runs["run"] == "baseline-s1", "features"].item() == ""
    assert runs.loc[runs["run"] == "all-s1", "features"].item() == "rope+swiglu"
    assert json.loads(runs.loc[0, "config"])["meta"]["git_commit"] == COMMIT
    assert str(runs["seed"].dtype) == "Int64" and str(runs["n_params"].dtype) == "Int64"
    assert str(runs["collected_at"].dtype).startswith("datetime64") and runs["collected_at"].notna().all()
    assert str(runs["run"].dtype) == "string" and str(runs["final_nll"].dtype) == "float64"
    assert str(metrics["step"].dtype) == "int64" and str(metrics["tokens"].dtype) == "Int64"
    for row in metrics.itertuples():
        want_loss, want_val, want_tokens = loss[(row.run, row.step)]
        assert row.tokens == want_tokens and (row.loss == want_loss or want_loss is None)
        assert row.val_loss == want_val if want_val is not None else row.val_loss != row.val_loss
    r = runner.invoke(
        app,
        [
            "export",
            "-s",
            "share",
            "-f",
            fmt.value,
            "--out",
            str(collected["tmp"] / "y"),
            "--db",
            str(collected["db"]),
        ],
    )
    assert r.exit_code == 0 and (collected["tmp"] / "y" / f"metrics.{fmt.value}").exists(), r.output


def test_compare_two_corpora_side_by_side(tmp_path: Path) -> None:
    engine = db.open_db(tmp_path / "results.db")
    runs = realistic_runs(seeds=(1, 2), steps=100, eval_interval=50)
    add_study(engine, [dict(r, config=run_config(seed=r["seed"])) for r in runs], name="python-docs")
    other = [r for r in runs if r["variant"] != "warmup"]  # one variant only in the first study
    debian = run_config(file="/data/debian-docs.jsonl", cache_key="d3b1a0")
    add_study(engine, [dict(r, config=debian, final_nll=r["final_nll"] + 0.4) for r in other], name="debian")
    cmp = compare_studies(engine, ["python-docs", "debian"])
    assert list(cmp.table["variant"])[:3] == ["baseline", "swiglu", "rmsnorm"] and len(cmp.table) == 7
    rope = cmp.table[cmp.table["variant"] == "rope"].iloc[0]
    assert rope["debian: final NLL"] == pytest.approx(rope["python-docs: final NLL"] + 0.4)
    assert rope["debian: Δ"] == pytest.approx(rope["python-docs: Δ"])  # the same shift for all
    warmup = cmp.table[cmp.table["variant"] == "warmup"].iloc[0]
    assert warmup["debian: verdict"] == "not in study"
    assert "different held-out text" in cmp.notes[0] and "data file content" in cmp.notes[0]
    md = compare_markdown(cmp)
    assert "| rope " in md and "python-docs: Δ [CI]" in md and "not in study" in md
    r = runner.invoke(
        app,
        [
            "compare",
            "python-docs",
            "debian",
            "--html",
            "--out",
            str(tmp_path / "c"),
            "--db",
            str(tmp_path / "results.db"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "compare.md").read_text() == md and "rope" in r.output
    page = Tables((tmp_path / "c" / "compare.html").read_text())
    rows = {row[0]: row for row in page.tables["compare"][2:]}
    assert list(rows) == list(cmp.table["variant"]) and "script" not in page.tags
    assert rows["warmup"][3:] == ["", "not in study"] and rows["baseline"][2] == "0.000 (reference)"
    r = runner.invoke(app, ["compare", "debian", "--db", str(tmp_path / "results.db")])
    assert r.exit_code == 1 and r.output.startswith("Error: compare needs two or more different studies")
    r = runner.invoke(app, ["compare", "debian", "nope", "--db", str(tmp_path / "results.db")])
    assert r.exit_code == 1 and "no study named 'nope'" in r.output
    engine.dispose()


# ------------------------------------------------------------------------- in a real browser


@pytest.mark.slow
def test_the_report_renders_in_chromium_offline(collected: dict[str, Any], chromium: Chromium) -> None:
    import matplotlib.image

    path = write_html(
        build_report(collected["engine"], "share"),
        study_details(collected["engine"], "share"),
        collected["tmp"] / "r",
    )
    page = chromium.load(path)
    assert page.console == [], page.console  # no blocked request, no error
    tables = Tables(page.dom)
    assert "script" not in tables.tags and tables.tags.count("svg") == 2
    final = tables.tables["final-nll"]
    assert sorted(row[0].lstrip("★ ") for row in final[1:]) == sorted(VARIANTS)
    assert len(tables.tables["run-details"]) == 1 + 8
    png = chromium.screenshot(path, collected["tmp"] / "shot.png", width=1000, height=1600)
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (1600, 1000) and img[..., :3].std() > 0.05  # drawn, not blank


@pytest.mark.slow
def test_the_console_check_sees_a_page_that_fetches_or_scripts(tmp_path: Path, chromium: Chromium) -> None:
    # the check above is only worth something if it sees what it looks for: the report's own
    # Content-Security-Policy, on a page that tries to fetch a script and an image and run one
    page = re.sub(
        r"<body>.*</body>",
        '<body><script src="https://example.invalid/x.js"></script><img src="http://example.invalid/a.png">'
        "<script>console.error('boom')</script></body>",
        html_of_empty(tmp_path),
        flags=re.S,
    )
    bad = tmp_path / "bad.html"
    bad.write_text(page)
    console = " ".join(chromium.load(bad).console)
    assert "example.invalid/x.js" in console and "example.invalid/a.png" in console
    assert "Executing inline script violates" in console and "boom" not in console


def html_of_empty(tmp_path: Path) -> str:
    """The report of a one-run study: its head (the Content-Security-Policy) is what counts."""
    engine = db.open_db(tmp_path / "one.db")
    add_study(engine, [{"variant": "baseline", "seed": 1, "final_nll": 5.0}], name="one")
    page = html_of(engine, "one")
    engine.dispose()
    return page
