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

from reatt import db
from reatt.errors import StudyError
from reatt.report import (
    COL_DELTA,
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
    render_table,
    to_text,
    write_report,
)
from reatt.stats import t_quantile

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
                row = {
                    "step": s,
                    "loss": expected(s) - 0.04 + rng.gauss(0.0, 0.22),  # 10-step mean at batch 1: noisy
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
def engine(tmp_path: Path) -> Any:
    eng = db.open_db(tmp_path / "results.db")
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
        (["running", "running", "failed"], "no completed runs yet: 3 planned (2 running, 1 failed); wait"),
        (["completed", "planned", "planned"], "run `reatt collect` first"),
        (["planned", "failed", "planned"], "run `reatt submit`, then `reatt collect`"),
    ],
)
def test_no_completed_run_is_a_clear_error(engine: Any, states: list[str], message: str) -> None:
    add_study(engine, [{"variant": "baseline", "seed": i, "state": s} for i, s in enumerate(states)])
    with pytest.raises(StudyError, match="study 'demo': no completed runs yet") as e:
        build_report(engine, "demo")
    assert message in str(e.value)


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
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in md.replace("  ", " ") or all(c in md.splitlines()[4] for c in COLUMNS)
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
        "import sys, reatt.report; "
        "heavy = ('pandas', 'seaborn', 'matplotlib', 'sqlalchemy', 'rich'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
