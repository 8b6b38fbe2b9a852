"""[tune]: the spec, the two stages of a plan, the choice of stage 2, and the fair report (paired
CIs checked, Holm–Bonferroni, the noise floor) against values computed here, independently."""

from __future__ import annotations

import math
import os
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from reatt.errors import DatabaseError, SpecError
from reatt.report.build import COL_DELTA, COL_HIGH, COL_LOW, COL_METHOD, COL_VARIANT, build_report
from reatt.report.fair import (
    COL_CHOSEN,
    COL_P_HOLM,
    COL_SHARED_DELTA,
    COL_SHARED_VERDICT,
    COL_VERDICT,
)
from reatt.study import store as db
from reatt.study.plan import jobs_of, plan_study
from reatt.study.selection import record_choices
from reatt.study.spec import load_spec

SPEC = """
[study]
name = "tuned"
seeds = [1, 2]
out_dir = "{out}"

[base]
model.model_type = "gpt-nano"
data.block_size = 32
trainer.max_iters = 20
trainer.learning_rate = 2e-3

[features]
rope = {{ "model.rope" = true }}

[tune]
seeds = [101]
"trainer.learning_rate" = [5e-4, 2e-3, 8e-3]
{extra}
"""


def write(tmp_path: Path, extra: str = "", text: str | None = None) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(
        textwrap.dedent(text if text is not None else SPEC.format(out=tmp_path / "out", extra=extra))
    )
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = db.open_db(tmp_path / "results.db")
    yield eng
    eng.dispose()


# ----------------------------------------------------------------------------------- spec


def test_a_tuned_plan_has_both_stages_named_and_ordered(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path))
    jobs = spec.jobs()
    tune = [j for j in jobs if j.stage == "tune"]
    evals = [j for j in jobs if j.stage == "eval"]
    assert [j.name for j in tune] == [  # the shared value (2e-3) first: the others prune against it
        "tune-baseline-lr0.002-s101",
        "tune-baseline-lr0.0005-s101",
        "tune-baseline-lr0.008-s101",
        "tune-rope-lr0.002-s101",
        "tune-rope-lr0.0005-s101",
        "tune-rope-lr0.008-s101",
    ]
    assert [j.name for j in evals] == ["baseline-s1", "baseline-s2", "rope-s1", "rope-s2"]
    assert jobs[: len(tune)] == tune  # stage 1 first, in plan order
    # the seeds are kept apart: tuning on 101 only, evaluation on 1 and 2 only
    assert {j.seed for j in tune} == {101} and {j.seed for j in evals} == {1, 2}
    first = tune[1]
    assert first.overrides["trainer.learning_rate"] == 5e-4
    assert first.tuning == {"candidate": {"trainer.learning_rate": 5e-4}, "shared": False}
    assert tune[0].tuning["shared"] is True  # 2e-3, [base]'s value
    siblings = first.overrides["trainer.prune_siblings"].split(os.pathsep)
    assert siblings == [tune[0].work_dir, tune[2].work_dir]  # the other candidates, same variant and seed
    assert first.overrides["trainer.prune_margin"] == 0.1 and first.overrides["trainer.prune_after"] == 10
    # an evaluation run cannot run before its value is chosen
    assert evals[0].waits_for_tuning
    with pytest.raises(Exception, match="waits for its variant's tuning"):
        evals[0].argv()


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ('seeds = [1, 2]\n"trainer.learning_rate" = [5e-4, 2e-3]', "share 1, 2"),
        (
            'seeds = [101]\n"trainer.learning_rate" = [5e-4, 1e-3]',
            r"the shared value 0.002 \(\[base\]\) is not",
        ),
        ('seeds = [101]\n"trainer.learning_rate" = [2e-3]', "at least two candidate values"),
        ('seeds = [101]\n"data.block_size" = [16, 32]', "only model and trainer keys"),
        ('seeds = [101]\n"trainer.learning_rte" = [1e-3, 2e-3]', "not a config key"),
        ('"trainer.learning_rate" = [1e-3, 2e-3]', "seeds = None: expected a list"),
        ('seeds = [101]\n"trainer.learning_rate" = [2e-3, 4e-3]\nprune_margin = -1', "prune_margin = -1"),
        (
            'seeds = [101]\n"trainer.learning_rate" = [2e-3, 4e-3]\nprune_after = 2',
            "prune_after = 2: expected a fraction",
        ),
        ("seeds = [101]", "names no key to tune"),
    ],
)
def test_bad_tune_tables_are_refused_naming_the_key(tmp_path: Path, tune: str, message: str) -> None:
    body = SPEC.format(out=tmp_path / "out", extra="").split("[tune]")[0] + "[tune]\n" + tune + "\n"
    with pytest.raises(SpecError, match=message) as err:
        load_spec(write(tmp_path, text=body))
    assert "[tune]" in str(err.value) and "spec.toml" in str(err.value)


def test_a_tuned_key_set_by_a_feature_is_refused(tmp_path: Path) -> None:
    body = SPEC.format(out=tmp_path / "out", extra="").replace(
        'rope = { "model.rope" = true }', 'rope = { "model.rope" = true, "trainer.learning_rate" = 1e-3 }'
    )
    with pytest.raises(SpecError, match="feature 'rope' set"):
        load_spec(write(tmp_path, text=body))


# ---------------------------------------------------------------------------- the choice


def _plan(tmp_path: Path, engine: Any, extra: str = "") -> None:
    plan_study(load_spec(write(tmp_path, extra)), engine)


def _set(engine: Any, results: dict[str, tuple[str, float | None]]) -> None:
    with db.transaction(engine) as session:
        for run in db.get_study(session, "tuned").runs:
            if run.name in results:
                run.state, run.final_nll = results[run.name]


def test_each_variant_gets_its_own_best_value_and_the_record_says_why(tmp_path: Path, engine: Any) -> None:
    _plan(tmp_path, engine)
    results = {
        "tune-baseline-lr0.0005-s101": ("completed", 6.0),
        "tune-baseline-lr0.002-s101": ("completed", 5.5),
        "tune-baseline-lr0.008-s101": ("pruned", 7.0),
        "tune-rope-lr0.0005-s101": ("completed", 5.9),
        "tune-rope-lr0.002-s101": ("completed", 5.6),
        "tune-rope-lr0.008-s101": ("planned", None),
    }
    _set(engine, results)
    waiting = record_choices(engine, "tuned")
    # rope's tuning is not over: its evaluation runs wait, and say for what
    assert set(waiting) == {"rope-s1", "rope-s2"}
    assert "tune-rope-lr0.008-s101 is planned" in waiting["rope-s1"]
    with db.transaction(engine) as session:
        st = db.get_study(session, "tuned")
        jobs = {j.name: j for j in jobs_of(st)}
        base = next(r for r in st.runs if r.name == "baseline-s1")
        assert base.tuning["chosen"] == {"trainer.learning_rate": 2e-3}
        assert "lowest mean final held-out NLL" in base.tuning["why"]
        assert "lr0.008: lost" in base.tuning["why"] and "pruned" in base.tuning["why"]
        assert base.tuning["scores"] == {"lr0.0005": 6.0, "lr0.002": 5.5, "lr0.008": None}
    assert jobs["baseline-s2"].overrides["trainer.learning_rate"] == 2e-3
    assert "--trainer.learning_rate=0.002" in jobs["baseline-s2"].argv()
    assert jobs["rope-s1"].waits_for_tuning
    # once rope's last candidate is in, it is chosen; baseline's choice is never changed again
    results["tune-rope-lr0.008-s101"] = ("completed", 5.2)
    results["tune-baseline-lr0.0005-s101"] = ("completed", 1.0)
    _set(engine, results)
    assert record_choices(engine, "tuned") == {}
    with db.transaction(engine) as session:
        st = db.get_study(session, "tuned")
        by_name = {r.name: r for r in st.runs}
        assert by_name["rope-s1"].tuning["chosen"] == {"trainer.learning_rate": 8e-3}
        assert by_name["rope-s1"].tuning["edge"] == ["trainer.learning_rate"]
        assert "edge of the grid" in by_name["rope-s1"].tuning["why"]
        assert by_name["baseline-s1"].tuning["chosen"] == {"trainer.learning_rate": 2e-3}


def test_a_failed_tuning_run_holds_stage_2_and_a_tie_takes_the_first(tmp_path: Path, engine: Any) -> None:
    _plan(tmp_path, engine)
    _set(
        engine,
        {
            "tune-baseline-lr0.0005-s101": ("completed", 5.5),
            "tune-baseline-lr0.002-s101": ("completed", 5.5),
            "tune-baseline-lr0.008-s101": ("diverged", None),
            "tune-rope-lr0.0005-s101": ("completed", 5.5),
            "tune-rope-lr0.002-s101": ("failed", None),
            "tune-rope-lr0.008-s101": ("completed", 5.0),
        },
    )
    waiting = record_choices(engine, "tuned")
    assert "tune-rope-lr0.002-s101 is failed" in waiting["rope-s1"]
    with db.transaction(engine) as session:
        base = next(r for r in db.get_study(session, "tuned").runs if r.name == "baseline-s1")
        assert base.tuning["chosen"] == {"trainer.learning_rate": 2e-3}  # a tie: the shared value first


def test_plan_force_with_a_changed_tune_table_chooses_again(tmp_path: Path, engine: Any) -> None:
    _plan(tmp_path, engine)
    with db.transaction(engine) as session:
        for run in db.get_study(session, "tuned").runs:
            if run.stage == "eval":
                run.tuning = {"chosen": {"trainer.learning_rate": 2e-3}, "why": "test"}
    plan_study(load_spec(write(tmp_path, "prune_margin = 0.2")), engine, force=True)
    with db.transaction(engine) as session:
        runs = db.get_study(session, "tuned").runs
        assert all(r.tuning is None for r in runs if r.stage == "eval")


# ----------------------------------------------------------------------------- schema


def test_a_version_1_database_is_upgraded_in_place_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    eng = db.open_db(path)
    eng.dispose()
    con = sqlite3.connect(path)  # make it what reatt 1 left: no stage or tuning column
    con.execute("ALTER TABLE runs DROP COLUMN stage")
    con.execute("ALTER TABLE runs DROP COLUMN tuning")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.execute(
        "INSERT INTO studies (name, matrix, out_dir, created_at, planned_at)"
        " VALUES ('old', 'standard', '/o', '2026-01-01', '2026-01-01')"
    )
    con.execute(
        "INSERT INTO runs (study_id, name, variant, seed, position, features, overrides, work_dir,"
        " state, final_nll)"
        " VALUES (1, 'baseline', 'baseline', 1, 0, '[]', '{}', '/o/old/baseline', 'completed', 5.25)"
    )
    con.commit()
    con.close()
    eng = db.open_db(path)
    with db.transaction(eng) as session:
        run = session.scalars(select(db.Run)).one()
        assert (run.name, run.final_nll, run.stage, run.tuning) == ("baseline", 5.25, None, None)
        assert session.get(db.Meta, "schema_version").value == str(db.SCHEMA_VERSION)
    eng.dispose()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="schema version 99"):
        db.open_db(path)


# -------------------------------------------------------------------- the fair report


def _t_cdf_by_integration(x: float, df: int) -> float:
    """Student's t CDF by Simpson's rule on the density: written here, apart from reatt.report.stats."""

    def density(u: float) -> float:
        c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        return c * (1 + u * u / df) ** (-(df + 1) / 2)

    n = 4000
    h = x / n
    s = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


def _t_quantile_by_integration(p: float, df: int) -> float:
    lo, hi = 0.0, 50.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_by_integration(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _fabricate(
    engine: Any, finals: dict[str, list[float]], tune: dict[str, dict[float, float]] | None = None
) -> None:
    with db.transaction(engine) as session:
        study = db.Study(
            name="fair", matrix="standard", reference="baseline", out_dir="/tmp/o", spec_hash="h"
        )
        session.add(study)
        pos = 0
        for variant, values in finals.items():
            for seed, value in enumerate(values, start=1):
                study.runs.append(
                    db.Run(
                        name=f"{variant}-s{seed}",
                        variant=variant,
                        seed=seed,
                        position=pos,
                        features=[],
                        overrides={},
                        work_dir=f"/tmp/o/{variant}-s{seed}",
                        state="completed",
                        final_nll=value,
                        stage="eval" if tune else None,
                        tuning={"chosen": {"trainer.learning_rate": 2e-3}} if tune else None,
                    )
                )
                pos += 1
        for variant, by_lr in (tune or {}).items():
            for lr, value in by_lr.items():
                study.runs.append(
                    db.Run(
                        name=f"tune-{variant}-{lr}",
                        variant=variant,
                        seed=101,
                        position=pos,
                        features=[],
                        overrides={},
                        work_dir=f"/tmp/o/tune-{variant}-{lr}",
                        state="completed",
                        final_nll=value,
                        stage="tune",
                        tuning={"candidate": {"trainer.learning_rate": lr}, "shared": lr == 2e-3},
                    )
                )
                pos += 1


# four seeds; per-seed differences to baseline chosen so that the Holm correction matters
BASE = [5.20, 5.30, 5.10, 5.25]
FINALS = {
    "baseline": BASE,
    "a": [b + d for b, d in zip(BASE, [-0.030, -0.032, -0.028, -0.031], strict=True)],  # clear
    "b": [b + d for b, d in zip(BASE, [-0.010, -0.030, 0.000, -0.025], strict=True)],  # borderline
    "c": [b + d for b, d in zip(BASE, [0.004, -0.006, 0.003, -0.002], strict=True)],  # nothing
}


def _paired(diffs: list[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, sd / math.sqrt(n)


def test_paired_cis_at_holm_levels_and_verdicts_match_an_independent_computation(engine: Any) -> None:
    _fabricate(engine, FINALS)
    report = build_report(engine, "fair")
    t = report.table.set_index(COL_VARIANT)
    stats = {v: _paired([x - b for x, b in zip(FINALS[v], BASE, strict=True)]) for v in "abc"}

    # p-values by the integrated t density (df 3), then Holm by hand
    p = {v: 2 * (1 - _t_cdf_by_integration(abs(m / se), 3)) for v, (m, se) in stats.items()}
    order = sorted(p, key=p.get)
    m = 3
    adjusted, running = {}, 0.0
    for rank, v in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p[v]))
        adjusted[v] = running
    for v in "abc":
        assert t.loc[v, COL_P_HOLM] == pytest.approx(adjusted[v], rel=1e-3)
        assert t.loc[v, COL_METHOD] == "paired"
        assert t.loc[v, COL_DELTA] == pytest.approx(stats[v][0], abs=1e-12)
    # step-down levels: ranks before the first non-rejection at alpha/(m-rank+1), the rest at that one's
    rejected = [v for v in order if adjusted[v] <= 0.05]
    k = len(rejected) + 1
    for rank, v in enumerate(order, start=1):
        level = 1 - 0.05 / (m - min(rank, k) + 1)
        half = _t_quantile_by_integration(1 - (1 - level) / 2, 3) * stats[v][1]
        assert t.loc[v, COL_LOW] == pytest.approx(stats[v][0] - half, abs=1e-6)
        assert t.loc[v, COL_HIGH] == pytest.approx(stats[v][0] + half, abs=1e-6)
        expected = ("better" if stats[v][0] < 0 else "worse") if v in rejected else "not resolved"
        assert t.loc[v, COL_VERDICT] == expected
        assert (t.loc[v, COL_HIGH] < 0 or t.loc[v, COL_LOW] > 0) == (v in rejected)
    assert t.loc["a", COL_VERDICT] == "better" and t.loc["c", COL_VERDICT] == "not resolved"
    assert t.loc["baseline", COL_VERDICT] == "reference"
    notes = " ".join(report.notes)
    assert "Holm–Bonferroni" in notes and "3 comparison(s)" in notes
    # the noise floor: baseline's run-to-run std, as computed here
    mean_b = sum(BASE) / 4
    sigma = math.sqrt(sum((x - mean_b) ** 2 for x in BASE) / 3)
    assert f"std of the final NLL is {sigma:.4f} nats over 4 seeds" in notes
    assert "c: Δ" in notes and "seeds would resolve a Δ this size" in notes


def test_a_seed_whose_runs_are_not_a_pair_is_left_out(engine: Any) -> None:
    _fabricate(engine, {"baseline": BASE, "a": FINALS["a"]})
    with db.transaction(engine) as session:
        for run in db.get_study(session, "fair").runs:
            order = "other" if run.name == "a-s2" else "same"
            run.config = {
                "meta": {"data": {"train": {"order": order}}, "model": {"init": {"wte.weight": "8x4:aa"}}}
            }
    report = build_report(engine, "fair")
    assert "seed(s) not paired with baseline: 2 (their training batches differ)" in " ".join(report.notes)
    a = report.table.set_index(COL_VARIANT).loc["a"]
    m, _ = _paired([x - b for i, (x, b) in enumerate(zip(FINALS["a"], BASE, strict=True)) if i != 1])
    assert a[COL_DELTA] == pytest.approx(m)


def test_a_tuned_report_has_both_comparisons_side_by_side(engine: Any, tmp_path: Path) -> None:
    tune = {"baseline": {5e-4: 5.6, 2e-3: 5.4, 8e-3: 5.7}, "a": {5e-4: 5.5, 2e-3: 5.35, 8e-3: 5.2}}
    _fabricate(engine, {"baseline": BASE, "a": FINALS["a"]}, tune)
    report = build_report(engine, "fair")
    assert report.tuned and report.shared_value == "trainer.learning_rate=0.002"
    t = report.table.set_index(COL_VARIANT)
    assert t.loc["a", COL_CHOSEN] == "trainer.learning_rate=0.002"
    assert t.loc["a", COL_SHARED_DELTA] == pytest.approx(5.35 - 5.4)
    assert t.loc["a", COL_SHARED_VERDICT] == "not resolved"  # one tuning seed: no CI
    assert len(report.tuning) == 6 and set(report.tuning["state"]) == {"completed"}
    from reatt.report.figures import save_figure
    from reatt.report.sensitivity import plot_sensitivity
    from reatt.report.tables import to_text

    md = to_text(report, "markdown")
    assert "Δ at shared value" in md and "verdict" in md
    png, svg = save_figure(plot_sensitivity(report), tmp_path / "lr_sensitivity")
    assert png.stat().st_size > 10_000 and b"<svg" in svg.read_bytes()[:500]


# ------------------------------------------------------------------ Holm and power, by hand


def test_holm_adjusted_p_levels_and_nan_against_a_hand_computation() -> None:
    from reatt.report.stats import holm

    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 -> max 0.06)
    out = holm([0.01, 0.04, 0.03, 0.005, math.nan], 0.05)
    assert [round(h.p_adjusted, 12) for h in out[:4]] == [0.03, 0.06, 0.06, 0.02]
    assert [h.rejected for h in out] == [True, False, False, True, False]
    # levels: ranks 1, 2 rejected at 1 - .05/4 and 1 - .05/3; rank 3 (first kept) and 4 at 1 - .05/2
    assert out[3].level == pytest.approx(1 - 0.05 / 4) and out[0].level == pytest.approx(1 - 0.05 / 3)
    assert out[2].level == pytest.approx(1 - 0.05 / 2) and out[1].level == pytest.approx(1 - 0.05 / 2)
    assert math.isnan(out[4].p_adjusted) and math.isnan(out[4].level)
    # a small p after a failed step is not rejected: Holm stops at the first failure
    stopped = holm([0.02, 0.026, 0.024], 0.05)  # 0.02*3 = 0.06 > 0.05: nothing rejected
    assert not any(h.rejected for h in stopped)
    assert holm([0.04], 0.05)[0].level == pytest.approx(0.95) and holm([0.04], 0.05)[0].rejected


def test_the_paired_p_value_and_interval_against_the_printed_t_table() -> None:
    from reatt.report.stats import interval, p_value, paired_diff

    # differences 0.01, 0.03, 0.02, 0.04, 0.00: mean 0.02, sd 0.0158114, se 0.0070711, t 2.8284
    ref = {s: 5.0 for s in range(5)}
    var = {s: 5.0 + d for s, d in enumerate([0.01, 0.03, 0.02, 0.04, 0.00])}
    d = paired_diff(var, ref)
    se = 0.015811388300841896 / math.sqrt(5)
    assert d.se == pytest.approx(se)
    assert d.low == pytest.approx(0.02 - 2.776445105 * se, abs=1e-8)  # t(0.975, 4) from the table
    p = p_value(d)
    assert 2 * (1 - _t_cdf_by_integration(0.02 / se, 4)) == pytest.approx(p, abs=1e-6)
    assert 0.04 < p < 0.05  # t = 2.83 with df 4: just under the 5% two-sided critical value 2.776
    wide = interval(d, 0.99)
    assert wide.low < 0 < wide.high  # t(0.995, 4) = 4.604: the 99% interval includes 0
    assert wide.low == pytest.approx(0.02 - 4.604094871 * se, abs=1e-8)


def test_power_formula_at_known_corners() -> None:
    from reatt.report.stats import min_detectable, seeds_needed

    # n = 2: (t(.975, 1) + t(.8, 1)) sigma / sqrt 2, with the table's 12.7062 and 1.37638
    assert min_detectable(1.0, 2) == pytest.approx((12.706204736 + 1.376381920) / math.sqrt(2), rel=1e-8)
    assert math.isnan(min_detectable(1.0, 1))
    assert seeds_needed(0.01, 0.0) == 2 and seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1e-9, 1.0, max_n=1000) is None
    # many seeds: close to the normal approximation ((z_.975 + z_.8) sigma / delta)^2, and above it
    normal = ((1.959964 + 0.841621) * 10) ** 2  # sigma/delta = 10: 784.9
    n = seeds_needed(0.1, 1.0)
    assert n is not None and normal <= n <= normal + 5
    for k in (3, 7, 20):
        assert seeds_needed(min_detectable(0.02, k), 0.02) == k
    assert all(min_detectable(1.0, k) > min_detectable(1.0, k + 1) for k in range(2, 50))


def test_plan_previews_both_stages_and_suggests_seeds(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = write(tmp_path)
    cmd = [sys.executable, "-m", "reatt", "plan", str(spec), "--db", str(tmp_path / "r.db")]
    out = subprocess.run(
        [*cmd, "--target-delta", "0.02", "--noise-std", "0.01"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert "stage 1: 6 tuning runs (2 variants × 3 candidates × 1 tuning seed(s) 101)" in text
    assert "stage 2: 4 evaluation runs" in text and "pruned" in text
    from reatt.report.stats import seeds_needed

    need = seeds_needed(0.02, 0.01 * math.sqrt(2), 0.05, 0.8)  # m = 1 comparison (rope)
    assert f"about {need} seeds (this spec has 2)" in text
    bad = subprocess.run([*cmd, "--target-delta", "0.02"], capture_output=True, text=True)
    assert bad.returncode == 2 and "give both" in bad.stderr
