"""reatt.report: the numbers (means, std, paired and Welch CIs, t quantiles), what is missing,
the files for each format, and the figures. Studies are fabricated through the ORM in a real
SQLite file, with known numbers."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reatt.errors import StudyError
from reatt.report.build import (
    COL_DELTA,
    COL_DIVERGED,
    COL_FEATURES,
    COL_HIGH,
    COL_LOW,
    COL_MEAN,
    COL_METHOD,
    COL_N,
    COL_PLANNED,
    COL_STD,
    COL_VARIANT,
    COLUMNS,
    build_report,
)
from reatt.report.fair import COL_CHOSEN, COL_DF, COL_SE, TUNED_COLUMNS
from reatt.report.stats import t_quantile
from reatt.report.tables import render_table, to_text
from reatt.report.write import write_report
from reatt.study import store as db

# ------------------------------------------------------------------------------ fabrication

TOKENS_PER_STEP = 256  # gpt-nano lab settings: batch 1 x block 256


def add_study(
    engine: Any,
    runs: list[dict[str, Any]],
    *,
    name: str = "demo",
    reference: str | None = "baseline",
    matrix: str = "standard",
) -> None:
    """A study with the given runs. Each run: variant, seed, and optionally state (default
    completed), final_nll, features, metrics (list of Metric kwargs), n_params, tokens_per_s."""
    with db.transaction(engine) as session:
        spec_hash = None if matrix == "collected" else f"hash-of-{name}"  # planned studies have a spec
        study = db.Study(
            name=name, matrix=matrix, reference=reference, out_dir="/tmp/out", spec_hash=spec_hash
        )
        session.add(study)
        seeds_of: dict[str, int] = {}
        for r in runs:
            seeds_of[r["variant"]] = seeds_of.get(r["variant"], 0) + 1
        for position, r in enumerate(runs):
            run_name = f"{r['variant']}-s{r['seed']}"
            feats = r.get("features", [] if r["variant"] == "baseline" else r["variant"].split("+"))
            run = db.Run(
                name=run_name,
                variant=r["variant"],
                seed=r["seed"],
                position=position,
                features=feats,
                overrides={"system.seed": r["seed"]},
                work_dir=f"/tmp/out/{name}/{run_name}",
                state=r.get("state", "completed"),
                state_reason=r.get("state_reason"),
                final_nll=r.get("final_nll"),
                final_train_loss=r.get(
                    "final_train_loss", None if r.get("final_nll") is None else r["final_nll"] - 0.05
                ),
                n_params=r.get("n_params", 2_500_000),
                n_params_non_embedding=r.get("n_params_non_embedding", 90_000),
                tokens_per_s=r.get("tokens_per_s", 2000.0),
                wall_time_s=100.0,
                config=r.get("config"),
            )
            run.metrics = [db.Metric(**m) for m in r.get("metrics", [])]
            study.runs.append(run)


def realistic_runs(
    seeds: tuple[int, ...] = (1, 2, 3), steps: int = 1000, log_interval: int = 10, eval_interval: int = 100
) -> list[dict[str, Any]]:
    """The lab's standard matrix (baseline, 5 single changes, all) with decaying noisy loss
    curves: a fast initial drop from ln(50257) ≈ 10.8, then a slow approach to each variant's
    final NLL. A seed shifts every variant alike (same init and data order), so pairing by
    seed removes most of the seed noise."""
    effects = {  # variant -> (Δ final NLL, speed of the early drop)
        "baseline": (0.0, 1.0),
        "swiglu": (-0.035, 1.05),
        "rmsnorm": (-0.004, 1.0),
        "rope": (-0.060, 1.15),
        "warmup": (+0.012, 0.7),
        "cosine": (-0.045, 1.0),
        "all": (-0.110, 1.1),
    }
    seed_shift = {s: random.Random(100 + s).gauss(0.0, 0.03) for s in seeds}
    out = []
    for variant, (delta, speed) in effects.items():
        feats = ["swiglu", "rmsnorm", "rope", "warmup", "cosine"] if variant == "all" else None
        for seed in seeds:
            rng = random.Random(f"{variant}-{seed}")
            final = 5.20 + delta + seed_shift[seed] + rng.gauss(0.0, 0.006)

            def expected(s: int, final: float = final, speed: float = speed) -> float:
                h = 0.62 * math.exp(-s * speed / 35) + 0.38 * (1 - s / steps) ** 2.2
                return final + (math.log(50257) - final) * h

            metrics = [{"step": 0, "val_loss": expected(0), "tokens": 0, "lr": 0.0, "elapsed_s": 0.0}]
            for s in range(log_interval, steps + 1, log_interval):
                # as in loss.csv: the mean over the steps since the previous row (at batch 1: noisy)
                interval = sum(expected(t) for t in range(s - log_interval + 1, s + 1)) / log_interval
                row = {
                    "step": s,
                    "loss": interval - 0.04 + rng.gauss(0.0, 0.22),
                    "tokens": s * TOKENS_PER_STEP,
                    "lr": 5e-4,
                    "elapsed_s": s * 0.12,
                }
                if s % eval_interval == 0 or s == steps:
                    row["val_loss"] = final if s == steps else expected(s) + rng.gauss(0.0, 0.01)
                metrics.append(row)
            run = {"variant": variant, "seed": seed, "final_nll": final, "metrics": metrics}
            run["tokens_per_s"] = 2100.0 - 150 * (variant in ("swiglu", "all")) + rng.gauss(0, 20)
            run["n_params"] = 2_500_000 + 12_000 * (variant in ("swiglu", "all"))
            if feats:
                run["features"] = feats
            out.append(run)
    return out


@pytest.fixture
def engine(db_url: str) -> Any:
    """A fresh database on each backend (conftest.py's db_url): every test here runs on both."""
    eng = db.open_db(db_url)
    yield eng
    eng.dispose()


def row_of(report: Any, variant: str) -> Any:
    t = report.table
    return t[t[COL_VARIANT] == variant].iloc[0]


# Three seeds of baseline and rope, hand-computed: per-seed differences -0.03, -0.04, -0.02,
# mean -0.03, sample std 0.01, t(0.975, df=2) = 4.302652729750247, half width 4.3027*0.01/sqrt(3).
HAND = [
    {"variant": "baseline", "seed": 1, "final_nll": 5.20},
    {"variant": "baseline", "seed": 2, "final_nll": 5.25},
    {"variant": "baseline", "seed": 3, "final_nll": 5.15},
    {"variant": "rope", "seed": 1, "final_nll": 5.17},
    {"variant": "rope", "seed": 2, "final_nll": 5.21},
    {"variant": "rope", "seed": 3, "final_nll": 5.13},
]
HALF = 4.302652729750247 * 0.01 / math.sqrt(3)  # 0.0248414...


# ------------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize(
    "df,expected",
    [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_precise_values_real_df_and_symmetry() -> None:
    # published values (10 digits): t_{0.975}(1) = tan(0.475 pi), t_{0.975}(3), t_{0.995}(1)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-9)
    assert t_quantile(0.975, 3) == pytest.approx(3.1824463053, abs=1e-9)
    assert t_quantile(0.995, 1) == pytest.approx(63.6567411629, abs=1e-7)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623390808, abs=1e-9)
    # continuous where the expansion takes over, and decreasing in df
    assert 0 < t_quantile(0.975, 1000) - t_quantile(0.975, 1000.001) < 3e-9  # slope -2.4e-6 per df
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959963985, abs=1e-8)  # -> the normal's
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, abs=1e-9)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


@pytest.mark.parametrize("df", [1.0, 2.5, 4.0, 7.3, 29.0])
def test_t_quantile_against_the_integrated_density(df: float) -> None:
    """An independent check for real df (Welch's): the t density integrated from 0 to the
    quantile (Simpson's rule) must hold 0.475 of the mass."""
    q = t_quantile(0.975, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 20_000
    h = q / n
    ys = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    mass = h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))
    assert mass == pytest.approx(0.475, abs=1e-10)


def test_means_std_n_and_the_paired_interval(engine: Any) -> None:
    add_study(engine, HAND)
    report = build_report(engine, "demo")
    assert list(report.table.columns) == list(COLUMNS)
    assert list(report.table[COL_VARIANT]) == ["rope", "baseline"]  # sorted by mean NLL
    base, rope = row_of(report, "baseline"), row_of(report, "rope")
    assert base[COL_N] == 3 and base[COL_PLANNED] == 3
    assert base[COL_MEAN] == pytest.approx(5.20)
    assert base[COL_STD] == pytest.approx(0.05)  # sample std (ddof=1)
    assert base[COL_DELTA] == 0.0 and base[COL_METHOD] == "reference"
    assert math.isnan(base[COL_LOW]) and math.isnan(base[COL_HIGH])
    assert rope[COL_MEAN] == pytest.approx(5.17)
    assert rope[COL_STD] == pytest.approx(0.04)
    assert rope[COL_DELTA] == pytest.approx(-0.03)
    assert rope[COL_METHOD] == "paired"
    assert rope[COL_LOW] == pytest.approx(-0.03 - HALF, abs=1e-9)
    assert rope[COL_HIGH] == pytest.approx(-0.03 + HALF, abs=1e-9)
    assert report.reference == "baseline" and report.study == "demo" and report.best == "rope"
    assert report.missing.empty
    assert any("paired by seed" in n for n in report.notes)
    # the curves frame carries the variant and seed of each metrics row (none here)
    assert {"variant", "seed", "step", "loss", "val_loss", "tokens"} <= set(report.curves.columns)


def test_welch_when_the_seeds_differ(engine: Any) -> None:
    runs = HAND[:3] + [
        {"variant": "swiglu", "seed": 4, "final_nll": 5.10},
        {"variant": "swiglu", "seed": 5, "final_nll": 5.14},
    ]
    add_study(engine, runs)
    row = row_of(build_report(engine, None), "swiglu")
    va, vb = 0.0008 / 2, 0.0025 / 3  # sample variances / n
    df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert df == pytest.approx(2.9990, abs=1e-3)
    assert row[COL_METHOD] == "Welch"
    assert row[COL_DELTA] == pytest.approx(5.12 - 5.20)
    assert row[COL_LOW] == pytest.approx(-0.08 - half, abs=1e-9)
    assert row[COL_HIGH] == pytest.approx(-0.08 + half, abs=1e-9)


def test_one_seed_gives_no_interval_and_says_so(engine: Any) -> None:
    add_study(
        engine,
        [
            {"variant": "baseline", "seed": 3407, "final_nll": 5.3},
            {"variant": "rope", "seed": 3407, "final_nll": 5.25},
            {"variant": "swiglu", "seed": 3407, "final_nll": 5.31},
        ],
    )
    report = build_report(engine, "demo")
    assert list(report.table[COL_VARIANT]) == ["rope", "baseline", "swiglu"]
    rope = row_of(report, "rope")
    assert rope[COL_DELTA] == pytest.approx(-0.05)
    assert math.isnan(rope[COL_STD]) and math.isnan(rope[COL_LOW]) and math.isnan(rope[COL_HIGH])
    assert rope[COL_METHOD] == "—"
    assert any("One seed per variant" in n for n in report.notes)


def test_leave_one_out_reference_is_all(engine: Any) -> None:
    add_study(
        engine,
        [
            {"variant": "all", "seed": 1, "final_nll": 5.0},
            {"variant": "all", "seed": 2, "final_nll": 5.1},
            {"variant": "no-rope", "seed": 1, "final_nll": 5.08},
            {"variant": "no-rope", "seed": 2, "final_nll": 5.16},
        ],
        reference="all",
        matrix="leave-one-out",
    )
    report = build_report(engine, "demo")
    assert report.reference == "all"
    assert row_of(report, "all")[COL_DELTA] == 0.0
    assert row_of(report, "no-rope")[COL_DELTA] == pytest.approx(0.07)


def test_missing_and_failed_runs_are_reported_not_averaged(engine: Any) -> None:
    runs = [dict(r) for r in HAND]
    runs[5] = {"variant": "rope", "seed": 3, "state": "failed", "state_reason": "CUDA out of memory"}
    runs += [
        {"variant": "swiglu", "seed": 1, "state": "running"},
        {"variant": "swiglu", "seed": 2, "state": "completed"},  # not collected: no final NLL
        {"variant": "swiglu", "seed": 3, "state": "planned"},
        {"variant": "cosine", "seed": 1, "final_nll": 5.1},
        {"variant": "cosine", "seed": 2, "final_nll": math.nan},  # diverged
    ]
    add_study(engine, runs)
    report = build_report(engine, "demo")
    m = report.missing.set_index("run")
    assert set(m.index) == {"rope-s3", "swiglu-s1", "swiglu-s2", "swiglu-s3", "cosine-s2"}
    assert m.loc["rope-s3", "state"] == "failed" and "out of memory" in m.loc["rope-s3", "reason"]
    assert "reatt collect" in m.loc["swiglu-s2", "reason"]
    rope = row_of(report, "rope")
    assert (rope[COL_N], rope[COL_PLANNED]) == (2, 3)
    assert rope[COL_MEAN] == pytest.approx((5.17 + 5.21) / 2)  # the failed seed is not in it
    # paired on the two seeds both completed: differences -0.03, -0.04
    half = t_quantile(0.975, 1) * statistics_stdev([-0.03, -0.04]) / math.sqrt(2)
    assert rope[COL_DELTA] == pytest.approx(-0.035)
    assert rope[COL_LOW] == pytest.approx(-0.035 - half) and rope[COL_METHOD] == "paired"
    swiglu = row_of(report, "swiglu")
    assert swiglu[COL_N] == 0 and math.isnan(swiglu[COL_MEAN])
    assert list(report.table[COL_VARIANT])[-1] == "swiglu"  # no result: last
    cosine = row_of(report, "cosine")
    assert cosine[COL_N] == 1 and cosine[COL_MEAN] == pytest.approx(5.1)
    notes = "\n".join(report.notes)
    assert "rope: only 2 of 3 planned seeds completed (rope-s3 failed: CUDA out of memory)" in notes
    assert "swiglu: no completed run" in notes
    assert (
        "Δ and its CI for rope use only the seeds completed by both the variant and baseline: 1, 2." in notes
    )
    # the files say it too
    assert "only 2 of 3" in to_text(report, "markdown")
    assert "2/3" in to_text(report, "table") and "2/3" in to_text(report, "latex")


def statistics_stdev(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def test_reference_without_a_result(engine: Any) -> None:
    add_study(
        engine,
        [
            {"variant": "baseline", "seed": 1, "state": "failed"},
            {"variant": "rope", "seed": 1, "final_nll": 5.1},
        ],
    )
    report = build_report(engine, "demo")
    assert math.isnan(row_of(report, "rope")[COL_DELTA])
    assert any("'baseline' has no completed run" in n for n in report.notes)


@pytest.mark.parametrize(
    "states,message",
    [
        (
            ["running", "running", "failed"],
            "study 'demo': no run has completed yet (2 running, 1 failed); wait for them to finish",
        ),
        (
            ["completed", "planned", "planned"],
            "study 'demo': 1 of 3 runs completed but not collected yet (2 planned): "
            "run `reatt collect` first",
        ),
        # `reatt submit` (local) records the states, `reatt collect` the results: "completed" is
        # not "no completed runs"
        (
            ["completed"] * 6,
            "study 'demo': 6 runs completed but none collected yet: run `reatt collect` first",
        ),
        (
            ["planned", "failed", "planned"],
            "study 'demo': no run has completed yet (2 planned, 1 failed); run ",
        ),
        (
            ["failed", "timeout"],
            "no run has completed yet (1 failed, 1 timeout); see `reatt status` for why, then",
        ),
    ],
)
def test_no_completed_run_is_a_clear_error(engine: Any, states: list[str], message: str) -> None:
    add_study(engine, [{"variant": "baseline", "seed": i, "state": s} for i, s in enumerate(states)])
    with pytest.raises(StudyError) as e:
        build_report(engine, "demo")
    assert message in str(e.value)
    if "planned" in states and "failed" in states:
        assert "run `reatt submit`, then `reatt collect`" in str(e.value)
    if "timeout" in states:
        assert "`reatt submit --resubmit-failed`" in str(e.value)


def test_completed_runs_without_a_usable_result_say_why(engine: Any) -> None:
    import datetime as dt

    add_study(
        engine,
        [
            {"variant": "baseline", "seed": 1, "final_nll": math.inf},  # diverged
            {"variant": "baseline", "seed": 2},  # completed, not collected
            {"variant": "baseline", "seed": 3, "final_nll": math.nan},  # SQLite stores NaN as NULL
            {"variant": "rope", "seed": 1, "state": "running"},
        ],
    )
    with db.transaction(engine) as session:  # collected, all but seed 2
        collected = [session.get(db.Run, run_id) for run_id in (1, 3)]
        for run in collected:
            assert run is not None
            run.collected_at = dt.datetime(2026, 1, 1)
            run.collect_error = "final.json: final_nll is NaN" if run.id == 3 else None
    with pytest.raises(StudyError) as e:
        build_report(engine, "demo")
    assert str(e.value) == (
        "study 'demo': 3 of 4 runs completed, but none has a usable final NLL: 1 not collected yet; "
        "1 diverged (final NLL inf); 1 collected without a final NLL (final.json: final_nll is NaN) "
        "(1 running); run `reatt collect` first"
    )


def run_config(
    *,
    file: str = "",
    cache_key: str | None = "8c75aa521e0adc63dae7761d",
    block_size: int = 64,
    eval_windows: int = 64,
    seed: int = 1,
    **data: Any,
) -> dict[str, Any]:
    """A run's config.json as `python -m reatt.train` writes it (the keys the report reads, and a
    few it must ignore). ``cache_key=None``: an old config without the data facts in meta."""
    facts = {
        "file": file or "/root/.cache/reatt/corpus/python-docs-3.11.7-v1.jsonl",
        "embedded_corpus": not file,
        "cache_key": cache_key,
        "split": "test",
        "block_size": block_size,
    }
    meta: dict[str, Any] = {"reatt_version": "0.1.0", "device": "cpu", "started_at": f"2026-11-3{seed}"}
    if cache_key is not None:
        meta["data"] = {"train": {**facts, "split": "train"}, "eval": facts}
    return {
        "system": {"seed": seed, "work_dir": f"/tmp/runs/{seed}", "num_threads": 0},
        "data": {
            "file_path": file,
            "split": "train",
            "test_size": 0.1,
            "split_seed": 1234,
            "block_size": block_size,
            "tokenizer": "gpt2",
            "cache_dir": "",
            "skip_bad_lines": False,
            **data,
        },
        "model": {"model_type": "gpt-nano", "rope": False},
        "trainer": {"max_iters": 1000, "eval_windows": eval_windows, "learning_rate": 5e-4},
        "meta": meta,
    }


def with_configs(runs: list[dict[str, Any]], **by_variant: dict[str, Any]) -> list[dict[str, Any]]:
    """``runs`` with a config each: run_config(**by_variant[variant], seed=seed)."""
    return [dict(r, config=run_config(seed=r["seed"], **by_variant.get(r["variant"], {}))) for r in runs]


def test_runs_evaluated_alike_are_comparable(engine: Any) -> None:
    # what may differ: the seed, the work dir, the model, the training file's path (same content)
    runs = with_configs(HAND, rope={"file": "/elsewhere/python-docs.jsonl"})
    runs[4]["config"]["model"]["rope"] = True
    runs[5]["config"] = None  # no config.json (a run collected without one): not checked
    add_study(engine, runs)
    report = build_report(engine, "demo")
    assert report.comparable and report.incomparable == []
    assert not any("NOT COMPARABLE" in n for n in report.notes)
    assert "NOT COMPARABLE" not in to_text(report, "markdown") + to_text(report, "table")


def test_runs_evaluated_on_different_windows_are_flagged_not_refused(engine: Any, tmp_path: Path) -> None:
    """The new user's study: baseline on the embedded corpus at block 64, rope on another
    JSONL at block 32; rope looked 2.8 nats better, "best", with no warning."""
    runs = [
        {"variant": "baseline", "seed": 1, "final_nll": 5.2},
        {"variant": "rope", "seed": 1, "final_nll": 2.4},
    ]
    runs = with_configs(
        runs, rope={"file": "/data/mine.jsonl", "cache_key": "1f2e3d4c5b6a79880716", "block_size": 32}
    )
    add_study(engine, runs, name="mix", matrix="collected")
    report = build_report(engine, "mix")
    assert len(report.table) == 2 and report.best == "rope"  # still reported
    assert not report.comparable
    assert report.incomparable == [
        "data file content differs (baseline: python-docs-3.11.7-v1.jsonl [8c75aa52]; "
        "rope: mine.jsonl [1f2e3d4c])",
        "data.block_size differs (baseline: 64; rope: 32)",
    ]
    note = report.notes[0]  # first: it voids the others
    assert note.startswith("NOT COMPARABLE: the held-out NLLs were measured on different held-out windows")
    assert "data.block_size differs (baseline: 64; rope: 32)" in note

    table = " ".join(to_text(report, "table").split())
    assert "final held-out NLL (nats/token, lower is better) NOT COMPARABLE" in table
    assert (
        "NOT COMPARABLE: the runs' held-out NLLs were measured on different held-out windows "
        "(data file content, data.block_size differ); see the notes." in table
    )
    md = to_text(report, "markdown")
    top = md.split("| variant")[0]  # above the table
    assert f"> **{note}**" in top
    assert md.count("NOT COMPARABLE: the held-out") == 1  # not repeated among the notes
    assert r"\textbf{NOT COMPARABLE" in to_text(report, "latex")

    from rich.console import Console

    narrow = Console(width=70, record=True, file=io.StringIO())
    narrow.print(render_table(report))  # the caption keeps the warning when columns are hidden
    narrow_text = " ".join(narrow.export_text().split())
    assert "NOT COMPARABLE: the runs'" in narrow_text and "Hidden, for lack of width" in narrow_text

    from reatt.report.finals import plot_final_nll

    caption = " ".join(t.get_text() for t in plot_final_nll(report).texts)  # supxlabel is one
    assert "NOT COMPARABLE" in caption and "data.block_size differs (baseline: 64; rope: 32)" in caption


def test_comparability_keys_and_values_per_variant(engine: Any) -> None:
    runs = with_configs(
        HAND + [{"variant": "swiglu", "seed": 1, "final_nll": 5.1}],
        rope={"tokenizer": "gpt2-medium", "test_size": 0.2},
        swiglu={"cache_key": None, "eval_windows": 16, "split_seed": 7},
    )
    runs[2]["config"]["trainer"]["eval_windows"] = 32  # baseline seed 3 differs from its seeds 1, 2
    add_study(engine, runs)
    report = build_report(engine, "demo")
    # a config without the cache key in meta: the data files are compared by data.file_path
    assert report.incomparable == [
        "data.tokenizer differs (baseline: gpt2; rope: gpt2-medium; swiglu: gpt2)",
        "data.test_size differs (baseline: 0.1; rope: 0.2; swiglu: 0.1)",
        "data.split_seed differs (baseline: 1234; rope: 1234; swiglu: 7)",
        "trainer.eval_windows differs (baseline: 64 (baseline-s1, baseline-s2), 32 (baseline-s3); "
        "rope: 64; swiglu: 16)",
    ]


def test_comparability_by_file_path_without_the_cache_key(engine: Any) -> None:
    runs = with_configs(
        HAND, baseline={"cache_key": None}, rope={"cache_key": None, "file": "/d/other.jsonl"}
    )
    add_study(engine, runs)
    report = build_report(engine, "demo")
    assert report.incomparable == ["data.file_path differs (baseline: embedded corpus; rope: other.jsonl)"]


def test_report_dir_planned_and_collected(engine: Any) -> None:
    from reatt.study.spec import COLLECTED_MATRIX

    add_study(engine, HAND)  # out_dir /tmp/out
    add_study(engine, HAND, name="mix", matrix=COLLECTED_MATRIX, reference=None)
    assert build_report(engine, "demo").report_dir == Path("/tmp/out/demo/report")
    assert build_report(engine, "mix").report_dir == Path("/tmp/out/report")  # not /tmp/out/mix/report


def test_unknown_study(engine: Any) -> None:
    add_study(engine, HAND)
    with pytest.raises(StudyError, match="no study named 'nope'.*known studies: demo"):
        build_report(engine, "nope")


# ------------------------------------------------------------------------------------ output


def test_rich_table_highlights_best_and_marks_ci(engine: Any) -> None:
    add_study(engine, HAND)
    report = build_report(engine, "demo")
    assert render_table(report).row_count == 2
    text = to_text(report, "table")
    assert "★ rope" in text
    assert f"−0.030 [−{0.03 + HALF:.3f}, −{0.03 - HALF:.3f}] *" in text  # excludes 0
    assert "0.000 (reference)" in text
    caption = " ".join(text.split())
    assert "★ lowest mean final NLL." in caption
    assert "tokens/s depends on the machine and its load at the time of each run." in caption


def test_narrow_terminal_hides_secondary_columns_never_cuts_numbers(engine: Any) -> None:
    from rich.console import Console

    add_study(engine, realistic_runs(seeds=(1,), steps=20, eval_interval=10))
    report = build_report(engine, "demo")
    table = render_table(report)
    best = report.table.iloc[0]

    def printed(width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table)
        return console.export_text()

    wide, narrow = printed(200), printed(80)
    assert "swiglu+rmsnorm+rope+warmup+cosine" in wide and "tokens/s" in wide and "Hidden" not in wide
    assert "…" not in narrow
    assert f"{best[COL_MEAN]:.4f}" in narrow and f"{best[COL_DELTA]:+.3f}".replace("-", "−") in narrow
    assert "Hidden, for lack of width: tokens/s, params (non-emb.), train loss, CI method" in " ".join(
        narrow.split()
    )


def test_files_for_each_format(engine: Any, tmp_path: Path) -> None:
    import pandas as pd

    add_study(engine, HAND + [{"variant": "swiglu", "seed": 1, "state": "failed"}])
    report = build_report(engine, "demo")
    out = tmp_path / "report"
    paths = write_report(report, out)
    assert [p.name for p in paths] == ["final_nll.md", "final_nll.csv"]
    assert not (out / "final_nll.tex").exists()  # LaTeX only on request

    back = pd.read_csv(out / "final_nll.csv")
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, report.table, check_dtype=False)

    md = (out / "final_nll.md").read_text()
    # every column but the standard error and df of Δ (CSV only) and, untuned, the tuned ones
    shown = [c for c in COLUMNS if c not in (COL_SE, COL_DF, *TUNED_COLUMNS)]
    assert all(c in md.splitlines()[4] for c in shown)
    assert COL_SE not in md.splitlines()[4] and COL_CHOSEN not in md
    assert "| rope " in md and "-0.0300*" in md  # Δ with sign, * where the CI excludes 0
    assert "swiglu: no completed run (swiglu-s1 failed)" in md

    paths = write_report(report, out, formats=("latex", "csv", "table"))
    assert [p.name for p in paths] == ["final_nll.csv", "final_nll.tex"]
    tex = (out / "final_nll.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"$\Delta$ vs baseline" in tex
    assert "$-$0.030$^{*}$" in tex and "—" not in tex  # no raw Unicode for pdflatex
    assert to_text(report, "csv") == (out / "final_nll.csv").read_text()
    with pytest.raises(ValueError, match="unknown format"):
        write_report(report, out, formats=("html",))


def test_plots_are_written_and_decode(engine: Any, tmp_path: Path) -> None:
    import matplotlib.image

    add_study(engine, realistic_runs(seeds=(1, 2), steps=200, eval_interval=50), name="lab4")
    report = build_report(engine, "lab4")
    assert len(report.curves) == 7 * 2 * 21
    paths = write_report(report, tmp_path, formats=(), plot=True)
    assert sorted(p.name for p in paths) == [
        "final_nll.png",
        "final_nll.svg",
        "loss_curves.png",
        "loss_curves.svg",
    ]
    for name in ("loss_curves.png", "final_nll.png"):
        img = matplotlib.image.imread(tmp_path / name)
        h, w = img.shape[:2]
        assert 1200 <= w <= 2400 and 500 <= h <= 1400, (name, img.shape)
        assert img[..., :3].std() > 0.05  # not blank
    svg = (tmp_path / "final_nll.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_plots_with_one_seed_steps_only_and_a_failed_variant(engine: Any, tmp_path: Path) -> None:
    runs = realistic_runs(seeds=(1,), steps=100, eval_interval=50)
    for r in runs:
        for m in r["metrics"]:
            m["tokens"] = None  # an old loss.csv without tokens: x is the step
        if r["variant"] == "rope":
            r.update(state="failed", final_nll=None, metrics=[])
    add_study(engine, runs)
    report = build_report(engine, "demo")
    assert row_of(report, "rope")[COL_N] == 0
    assert "no run" in to_text(report, "table")
    paths = write_report(report, tmp_path / "new" / "dir", formats=(), plot=True)  # creates the dir
    assert len(paths) == 4 and all(p.stat().st_size > 1000 for p in paths)


def descent(s: float, speed: float = 1.0) -> float:
    """A noiseless fast descent, as at the start of a run: from 10.8 to 5 within ~100 steps."""
    return 5.0 + 5.8 * math.exp(-s * speed / 35)


def descent_runs(rows: list[int], speed: dict[str, float]) -> list[dict[str, Any]]:
    """One seed per variant, a loss.csv row at each step of ``rows`` (0 first): ``loss`` the
    mean over the steps since the previous row, ``val_loss`` measured at the row's step."""
    out = []
    for variant, k in speed.items():
        metrics = [{"step": 0, "val_loss": descent(0, k), "tokens": 0}]
        for prev, step in zip(rows, rows[1:], strict=False):
            loss = sum(descent(t, k) for t in range(prev + 1, step + 1)) / (step - prev)
            metrics.append(
                {"step": step, "loss": loss, "val_loss": descent(step, k), "tokens": step * TOKENS_PER_STEP}
            )
        out.append({"variant": variant, "seed": 1, "final_nll": descent(rows[-1], k), "metrics": metrics})
    return out


def test_training_loss_is_drawn_at_the_middle_of_the_steps_it_averages(engine: Any) -> None:
    """loss.csv's loss is the mean since the previous row: drawn at the row's own step, a fast
    descent put it far above the held-out dots measured there (it looked like leakage)."""
    import numpy as np
    from matplotlib.collections import PathCollection

    from reatt.report.curves import plot_loss_curves

    add_study(engine, descent_runs(list(range(0, 121, 10)), {"baseline": 1.0}))
    report = build_report(engine, "demo")
    fig = plot_loss_curves(report)
    ax = fig.axes[0]  # whole run, log x
    (line,) = ax.get_lines()
    xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert xs[0] == 5 * TOKENS_PER_STEP  # the middle of steps 1..10, not step 10
    np.testing.assert_allclose(np.diff(xs), 10 * TOKENS_PER_STEP)
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    dx, dy = np.asarray(dots.get_offsets()).T
    inside = (dx >= xs[0]) & (dx <= xs[-1])
    assert inside.sum() >= 10
    gap = np.abs(np.interp(dx[inside], xs, ys) - dy[inside])
    assert gap.max() < 0.06, gap  # on the line, within the curvature of a 10-step mean
    # drawn at the rows' own steps, the line sat far above the dots during the descent
    old = np.abs(np.interp(dx[inside], xs + 5 * TOKENS_PER_STEP, ys) - dy[inside])
    assert old.max() > 0.5
    title = " ".join(t.get_text() for t in fig.texts)  # the suptitle is one
    assert "mean of each logging interval (10 steps) drawn at its midpoint; not smoothed" in title
    assert "dots: held-out NLL at the step it was measured" in title


def test_training_lines_average_over_steps_and_sit_at_their_middle() -> None:
    import pandas as pd

    from reatt.report.curves import training_lines

    # rows at steps 0, 10, 20, 25 (an evaluation between two log rows), 30; tokens = 2 x step
    c = pd.DataFrame(
        {
            "run": "r",
            "variant": "v",
            "step": [0, 10, 20, 25, 30],
            "tokens": [0, 20, 40, 50, 60],
            "loss": [math.nan, 8.0, 6.0, 5.0, 4.0],
        }
    )
    one = training_lines(c, "tokens", 1)
    assert list(one["step"]) == [10, 20, 25, 30]
    assert list(one["x"]) == [10.0, 30.0, 45.0, 55.0]  # middle of (prev row, row], in tokens
    assert list(one["smooth"]) == [8.0, 6.0, 5.0, 4.0]
    three = training_lines(c, "step", 3)  # half-width 0 at row 0, 1 from row 2 on, cut at the end
    # row 2 (step 25): rows 1..3 = steps 11..30 (widths 10, 5, 5): the mean over those 20 steps
    assert three["smooth"].iloc[2] == pytest.approx((6.0 * 10 + 5.0 * 5 + 4.0 * 5) / 20)
    assert three["x"].iloc[2] == pytest.approx(20.0)  # the middle of (10, 30]
    assert three["x"].iloc[0] == 5.0 and three["smooth"].iloc[0] == 8.0
    # the last row: its window cut to rows 2..3 (steps 21..30), drawn at their middle, not at 27.5
    assert (three["x"].iloc[3], three["smooth"].iloc[3]) == (25.0, 4.5)


def test_loss_curve_title_ticks_and_dots(engine: Any) -> None:
    import numpy as np
    from matplotlib.collections import PathCollection

    from reatt.report.curves import log_ticks, plot_loss_curves

    add_study(engine, realistic_runs(seeds=(1, 2), steps=200, eval_interval=50))
    report = build_report(engine, "demo")
    fig = plot_loss_curves(report)
    title = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    # 20 rows a run: a window of 3 rows of 10 steps
    assert (
        "each point the mean over ≤30 steps (3 logging intervals of 10 steps; fewer at the start), "
        "drawn at the middle of those steps" in title
    )
    assert "averaged over seeds (band: min–max over seeds)" in title

    # the log-x panel of a run shorter than two decades: several labels, not one "10k"
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.xaxis.get_major_locator()() if lo <= t <= hi]
    labels = ax.xaxis.get_major_formatter().format_ticks(ticks)
    assert labels == ["2k", "5k", "10k", "20k", "50k"]

    # the held-out dots: small, a little transparent, the reference's under the others
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    alphas = [d.get_alpha() for d in dots]
    assert len(dots) == 7 and all(a is not None and a < 1 for a in alphas)
    ref = [d for d in dots if tuple(np.asarray(d.get_facecolor())[0, :3]) == pytest.approx((0.1, 0.1, 0.1))]
    assert len(ref) == 1 and ref[0].get_zorder() == min(d.get_zorder() for d in dots)

    # a long run: one label per decade, not a crowd
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.set_xscale("log")
    ax.set_xlim(300, 3e8)
    log_ticks(ax, 300, 3e8)
    ticks = [t for t in ax.xaxis.get_major_locator()() if 300 <= t <= 3e8]
    assert ax.xaxis.get_major_formatter().format_ticks(ticks) == ["1k", "10k", "100k", "1M", "10M", "100M"]


def test_realistic_study_numbers(engine: Any) -> None:
    add_study(engine, realistic_runs(), name="lab4")
    report = build_report(engine, "lab4")
    t = report.table
    assert list(t[COL_VARIANT])[:2] == ["all", "rope"] and list(t[COL_VARIANT])[-1] == "warmup"
    assert (t[COL_N] == 3).all() and report.missing.empty
    rope = row_of(report, "rope")
    assert rope[COL_METHOD] == "paired" and rope[COL_HIGH] < 0  # pairing resolves a 0.06 effect
    assert row_of(report, "all")[COL_FEATURES] == "swiglu+rmsnorm+rope+warmup+cosine"
    assert row_of(report, "baseline")[COL_FEATURES] == "—"


def test_import_does_not_load_heavy_modules() -> None:
    code = (
        "import sys, reatt.report.build, reatt.report.tables, reatt.report.write; "
        "heavy = ('pandas', 'seaborn', 'matplotlib', 'sqlalchemy', 'rich'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_diverged_runs_are_shown_as_diverged_never_as_missing_data(engine: Any) -> None:
    reason = "diverged at step 12: the training loss is nan"
    runs = [
        {"variant": "baseline", "seed": 1, "final_nll": 5.20},
        {"variant": "baseline", "seed": 2, "final_nll": 5.25},
        {"variant": "rope", "seed": 1, "final_nll": 5.10},
        {"variant": "rope", "seed": 2, "state": "diverged", "state_reason": reason},
    ]
    add_study(engine, runs)
    report = build_report(engine, "demo")
    rope = row_of(report, "rope")
    assert rope[COL_N] == 1 and rope[COL_DIVERGED] == 1 and row_of(report, "baseline")[COL_DIVERGED] == 0
    assert any(f"rope-s2 diverged: {reason}" in note for note in report.notes)
    assert "1/2 (1 diverged)" in to_text(report, "table")
    assert "n diverged" in to_text(report, "csv").splitlines()[0]
    add_study(
        engine,
        [{"variant": "baseline", "seed": 1, "state": "diverged", "state_reason": reason}],
        name="all-nan",
    )
    with pytest.raises(StudyError, match="a run diverged when its loss became non-finite"):
        build_report(engine, "all-nan")
