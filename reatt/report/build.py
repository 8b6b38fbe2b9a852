"""The study's answer: final held-out NLL per variant and its difference to the reference with
a 95% confidence interval (``build_report``), aggregated over seeds from the database.

Everything comes from the database (``reatt collect`` fills it); nothing reads run directories.
Runs that are not completed (or have no final NLL) are never averaged in: they are listed in
``Report.missing`` and the notes say which variants have fewer seeds than planned. The tables
(``reatt.report.tables``) and figures (``curves``, ``finals``) render a ``Report``.

pandas and sqlalchemy are imported inside the functions, so that importing this module (and
with it ``reatt --help``) stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reatt import states
from reatt.report.comparable import incomparable, incomparable_note
from reatt.report.fair import (
    COL_CHOSEN,
    COL_DF,
    COL_LEVEL,
    COL_P,
    COL_P_HOLM,
    COL_SE,
    COL_SHARED_DELTA,
    COL_SHARED_HIGH,
    COL_SHARED_LOW,
    COL_SHARED_N,
    COL_SHARED_VERDICT,
    COL_VERDICT,
    FAIR_COLUMNS,
    NOT_RESOLVED,
    REFERENCE,
    TUNED_COLUMNS,
    Compared,
    correct,
    noise_notes,
    unpaired_seeds,
)
from reatt.report.stats import Diff, compare, welch_diff
from reatt.report.usable import no_runs_error, usable
from reatt.states import one_line
from reatt.study.spec import COLLECTED_MATRIX

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

# The table's columns, in order (also the CSV header).
COL_VARIANT = "variant"
COL_FEATURES = "features"
COL_N = "n"  # completed seeds averaged
COL_PLANNED = "n planned"
COL_DIVERGED = "n diverged"  # seeds whose loss became non-finite: a result, not missing data
COL_MEAN = "final NLL mean"
COL_STD = "final NLL std"
COL_DELTA = "Δ vs reference"
COL_LOW = "CI low"
COL_HIGH = "CI high"
COL_METHOD = "CI method"
COL_TRAIN = "final train loss mean"
COL_PARAMS = "params"
COL_PARAMS_NE = "params non-embedding"
COL_TPS = "tokens/s mean"
COLUMNS = (
    COL_VARIANT,
    COL_FEATURES,
    COL_N,
    COL_PLANNED,
    COL_DIVERGED,
    COL_MEAN,
    COL_STD,
    COL_DELTA,
    COL_LOW,
    COL_HIGH,
    COL_METHOD,
    COL_TRAIN,
    COL_PARAMS,
    COL_PARAMS_NE,
    COL_TPS,
    *FAIR_COLUMNS,
    *TUNED_COLUMNS,
)
NO_FEATURES = "—"  # a variant without features; a Δ without an interval
CURVE_COLUMNS = ("run", "variant", "seed", "step", "tokens", "loss", "val_loss", "lr", "elapsed_s")
MISSING_COLUMNS = ("run", "variant", "seed", "state", "reason")
RUN_COLUMNS = (
    "run",
    "variant",
    "seed",
    "final_nll",
    "final_train_loss",
    "n_params",
    "n_params_non_embedding",
    "tokens_per_s",
    "wall_time_s",
)


# ----------------------------------------------------------------------------------- report


@dataclass
class Report:
    """A study's results, aggregated over seeds from the database."""

    study: str
    reference: str | None  # the variant the others are compared to (Δ = 0 there)
    table: pd.DataFrame  # one row per planned variant (COLUMNS), sorted by mean final NLL
    curves: pd.DataFrame  # the metrics rows (CURVE_COLUMNS) of the runs in the table
    missing: pd.DataFrame  # planned runs not in the table (MISSING_COLUMNS), with their state
    notes: list[str] = field(default_factory=list)  # what a reader must know: gaps, CI method
    matrix: str = ""
    runs: pd.DataFrame | None = None  # the runs in the table, one row each (RUN_COLUMNS)
    variants: list[str] = field(default_factory=list)  # plan order (fixes each variant's color)
    out_dir: str = "out"  # planned: the study's output root; collected: the collected directory
    # The evaluation keys whose values differ between the runs in the table, each as
    # "data.block_size differs (baseline: 64; rope: 32)"; empty when the final NLLs are comparable.
    incomparable: list[str] = field(default_factory=list)
    tuned: bool = False  # a [tune] study: the table is at each variant's chosen value
    tuning: pd.DataFrame | None = None  # its tuning runs (reatt.report.tuning.TUNING_COLUMNS)
    shared_value: str = ""  # what every variant has without tuning ("trainer.learning_rate=0.002")

    @property
    def best(self) -> str | None:
        """The variant with the lowest mean final NLL."""
        ok = self.table[self.table[COL_N] > 0]
        return None if ok.empty else str(ok.iloc[0][COL_VARIANT])

    @property
    def comparable(self) -> bool:
        """Whether every run in the table was evaluated on the same held-out windows."""
        return not self.incomparable

    @property
    def report_dir(self) -> Path:
        """Where the report's files go: ``<out_dir>/<study>/report`` for a planned study,
        ``<out_dir>/report`` for a collected one (its out_dir is the collected directory)."""
        if self.matrix == COLLECTED_MATRIX:
            return Path(self.out_dir) / "report"
        return Path(self.out_dir) / self.study / "report"


def metrics_frame(session: Session, run_ids: Iterable[int]) -> pd.DataFrame:
    """The metrics rows of these runs (run_id, step, tokens, loss, val_loss, lr, elapsed_s), by
    run and step. read_sql builds the columns straight from the cursor: ~3x faster than
    DataFrame(Rows)."""
    import pandas as pd
    from sqlalchemy import select

    from reatt.study import store

    m = store.Metric
    query = select(m.run_id, m.step, m.tokens, m.loss, m.val_loss, m.lr, m.elapsed_s)
    return pd.read_sql(
        query.where(m.run_id.in_(list(run_ids))).order_by(m.run_id, m.step), session.connection()
    )


def build_report(engine: Engine, study: str | None) -> Report:
    """Aggregate the completed runs of ``study`` (default: the latest planned) over seeds.

    Reads only the database. Raises StudyError when the study is unknown or has no completed
    run with a final NLL. Where the runs in the table were evaluated differently (the keys of
    ``EVAL_KEYS`` or the data file's content differ), ``Report.incomparable`` says how and the
    first note says that the final NLLs are not comparable; the report is still built."""
    import pandas as pd

    from reatt.report.tuning import chosen_of, shared_diffs, tuned_columns, tuning_frame
    from reatt.study import store
    from reatt.study.tune import TUNE

    with store.transaction(engine) as session:
        st = store.get_study(session, study)
        name, matrix, reference, out_dir = st.name, st.matrix, st.reference, st.out_dir
        tune_runs = [r for r in st.runs if r.stage == TUNE]
        runs = [r for r in st.runs if r.stage != TUNE]  # plan order; a tuned study's stage 2
        done = [r for r in runs if usable(r)[0]]
        if not done:
            raise no_runs_error(name, runs)
        differ = incomparable(done + [r for r in tune_runs if usable(r)[0]])
        ref_done = [r for r in done if r.variant == reference]
        unpaired = {
            v: unpaired_seeds([r for r in done if r.variant == v], ref_done)
            for v in {r.variant for r in done}
        }
        tuning = tuning_frame(tune_runs, runs) if tune_runs else None
        chosen = chosen_of(runs)
        shared = shared_diffs(tune_runs, reference) if tune_runs else None
        planned: dict[str, int] = {}
        features: dict[str, str] = {}
        for r in runs:
            planned[r.variant] = planned.get(r.variant, 0) + 1
            features.setdefault(r.variant, "+".join(r.features or []) or NO_FEATURES)
        finals = pd.DataFrame([[getattr(r, "name" if c == "run" else c) for c in RUN_COLUMNS] for r in done])
        finals.columns = list(RUN_COLUMNS)
        missing = pd.DataFrame(
            [(r.name, r.variant, r.seed, r.state, usable(r)[1]) for r in runs if not usable(r)[0]],
            columns=list(MISSING_COLUMNS),
        )
        run_ids = {r.id: r.name for r in done}
        metrics = metrics_frame(session, run_ids)

    if reference is None and "baseline" in planned:  # collected studies have no planned reference
        reference = "baseline"
    table, notes = _aggregate(finals, missing, planned, features, reference, unpaired)
    if shared is not None:
        tuned_columns(table, chosen, shared, notes)
    n_cmp = int(table[COL_P].notna().sum())  # the comparisons with a p-value: the Holm family
    if n_cmp:
        notes.append(
            f"Verdicts and CIs are corrected for the {n_cmp} comparison(s) of the study (Holm–Bonferroni, "
            "family-wise 95%): each CI is at its Holm step-down level, so a Δ is resolved exactly where "
            "its CI excludes 0; a Δ not resolved is neither better nor worse."
        )
    compared = [
        Compared(r[COL_VARIANT], r[COL_DELTA], r[COL_VERDICT], r[COL_METHOD], int(r[COL_N]), r[COL_SE])
        for _, r in table.iterrows()
    ]
    ref_finals = list(finals[finals["variant"] == reference]["final_nll"]) if reference in planned else []
    notes += noise_notes(compared, ref_finals, reference if reference in planned else None, n_cmp)
    if differ:  # first: it voids every comparison below it
        notes.insert(0, incomparable_note(differ))
    if reference is not None and reference not in planned:
        reference = None

    curves = metrics.set_axis(["run_id", *CURVE_COLUMNS[3:]], axis=1)
    curves.insert(0, "run", curves.pop("run_id").map(run_ids))
    curves = curves.merge(finals[["run", "variant", "seed"]], on="run")[list(CURVE_COLUMNS)]
    return Report(
        study=name,
        reference=reference,
        table=table,
        curves=curves.sort_values(["variant", "seed", "step"], kind="stable").reset_index(drop=True),
        missing=missing,
        notes=notes,
        matrix=matrix,
        runs=finals,
        variants=list(planned),
        out_dir=out_dir,
        incomparable=differ,
        tuned=bool(tune_runs),
        tuning=tuning,
        shared_value=shared[2] if shared is not None else "",
    )


def _aggregate(
    finals: pd.DataFrame,
    missing: pd.DataFrame,
    planned: dict[str, int],
    features: dict[str, str],
    reference: str | None,
    unpaired: dict[str, dict[int, str]],
) -> tuple[pd.DataFrame, list[str]]:
    """The table (one row per planned variant, sorted by mean final NLL) and the notes."""
    import pandas as pd

    notes: list[str] = []
    groups = {v: finals[finals["variant"] == v] for v in planned}
    ref_runs = groups.get(reference) if reference is not None else None
    if reference is None:
        notes.append("No reference variant: Δ is not computed.")
    elif ref_runs is None:
        notes.append(f"The reference variant {reference!r} is not in the study: Δ is not computed.")
    elif ref_runs.empty:
        notes.append(f"The reference variant {reference!r} has no completed run: Δ is not computed.")

    # per variant: n, mean and sample std of the final NLL, and the other columns' summaries
    agg = finals.groupby("variant").agg(
        n=("final_nll", "size"),
        mean=("final_nll", "mean"),
        std=("final_nll", "std"),  # sample std (ddof=1); NaN for one seed
        train=("final_train_loss", "mean"),
        params=("n_params", "first"),
        params_ne=("n_params_non_embedding", "first"),
        tps=("tokens_per_s", "mean"),
    )
    records = []
    diffs: dict[str, Diff] = {}  # the non-reference variants' Δ: one Holm family
    partial: dict[tuple[int, ...], list[str]] = {}  # shared seeds -> variants paired on them only
    for v, g in groups.items():
        n = len(g)
        diff = Diff(math.nan)
        if v == reference and n:
            diff = Diff(0.0, method="reference")
        elif ref_runs is not None and not ref_runs.empty and n:
            bad = unpaired.get(v, {})
            if bad:
                seeds = ", ".join(f"{seed} ({why})" for seed, why in sorted(bad.items()))
                notes.append(f"{v}: seed(s) not paired with {reference}: {seeds}; left out of the pairs.")
            diff, shared = _diff(g[~g["seed"].isin(list(bad))], ref_runs[~ref_runs["seed"].isin(list(bad))])
            if shared is not None:
                partial.setdefault(shared, []).append(v)
            diffs[v] = diff
        row = agg.loc[v] if n else None
        records.append(
            {
                COL_VARIANT: v,
                COL_FEATURES: features[v],
                COL_N: n,
                COL_PLANNED: planned[v],
                COL_DIVERGED: int(((missing["variant"] == v) & (missing["state"] == states.DIVERGED)).sum()),
                COL_MEAN: row["mean"] if row is not None else math.nan,
                COL_STD: row["std"] if row is not None else math.nan,
                COL_DELTA: diff.delta,
                COL_LOW: diff.low,
                COL_HIGH: diff.high,
                COL_METHOD: diff.method or NO_FEATURES,  # "—": no interval
                COL_TRAIN: row["train"] if row is not None else math.nan,
                COL_PARAMS: row["params"] if row is not None else None,
                COL_PARAMS_NE: row["params_ne"] if row is not None else None,
                COL_TPS: row["tps"] if row is not None else math.nan,
                COL_VERDICT: REFERENCE if diff.method == "reference" else NOT_RESOLVED,
                COL_SE: diff.se,
                COL_DF: diff.df,
                **{c: math.nan for c in (COL_P, COL_P_HOLM, COL_LEVEL, COL_SHARED_DELTA, COL_SHARED_LOW)},
                **{
                    COL_SHARED_HIGH: math.nan,
                    COL_SHARED_N: 0,
                    COL_CHOSEN: math.nan,
                    COL_SHARED_VERDICT: math.nan,
                },
            }
        )
        if n < planned[v]:
            gone = "; ".join(
                f"{r.run} {r.state}" + (f": {one_line(r.reason, 80)}" if r.reason else "")
                for r in missing[missing["variant"] == v].itertuples()
            )
            if n:
                notes.append(f"{v}: only {n} of {planned[v]} planned seeds completed ({gone}).")
            else:
                notes.append(f"{v}: no completed run ({gone}).")

    for shared, names in partial.items():
        notes.append(
            f"Δ and its CI for {', '.join(names)} use only the seeds completed by both the variant "
            f"and {reference}: {', '.join(map(str, shared))}."
        )
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for col in (COL_PARAMS, COL_PARAMS_NE):
        table[col] = table[col].astype("Int64")
    table = table.sort_values(COL_MEAN, na_position="last", kind="stable").reset_index(drop=True)
    judged = correct(diffs)
    for i, row in table.iterrows():
        j = judged.get(row[COL_VARIANT])
        if j is not None:
            table.loc[i, [COL_LOW, COL_HIGH, COL_P, COL_P_HOLM, COL_LEVEL]] = [
                j.diff.low,
                j.diff.high,
                j.p,
                j.p_holm,
                j.level,
            ]
            table.at[i, COL_VERDICT] = j.verdict

    if (table[COL_N] <= 1).all():
        notes.append(
            "One seed per variant: the differences have no confidence interval, and seed-to-seed "
            "noise can be as large as the effects; plan several seeds ([study] seeds) to measure it."
        )
    methods = set(table[COL_METHOD])
    if "paired" in methods:
        notes.append(
            f"CIs of Δ are paired by seed (Student t over the per-seed differences to {reference}): "
            "the same seed gives every variant the same initialization and data order."
        )
    if "Welch" in methods:
        notes.append(
            f"Where a variant shares fewer than two seeds with {reference}, its CI is Welch's "
            "(unpaired, unequal variances)."
        )
    return table, notes


def _diff(runs: pd.DataFrame, ref_runs: pd.DataFrame) -> tuple[Diff, tuple[int, ...] | None]:
    """Δ of one variant to the reference: paired by seed where they share >= 2 seeds. Also
    the shared seeds when the pairing had to leave some of either side's seeds out."""
    values = dict(zip(runs["seed"], runs["final_nll"], strict=True))
    ref_values = dict(zip(ref_runs["seed"], ref_runs["final_nll"], strict=True))
    if len(values) < len(runs) or len(ref_values) < len(ref_runs):  # a seed twice: cannot pair
        return welch_diff(list(runs["final_nll"]), list(ref_runs["final_nll"])), None
    diff = compare(values, ref_values)
    shared = tuple(sorted(set(values) & set(ref_values)))
    if diff.method == "paired" and (len(shared) < len(values) or len(shared) < len(ref_values)):
        return diff, shared
    return diff, None
