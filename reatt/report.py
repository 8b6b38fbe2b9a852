"""The study's answer: final held-out NLL per variant, its difference to the reference with a
95% confidence interval, as tables (rich, Markdown, CSV, LaTeX) and seaborn figures.

Everything comes from the database (``reatt collect`` fills it); nothing reads run directories.
Runs that are not completed (or have no final NLL) are never averaged in: they are listed in
``Report.missing`` and the notes say which variants have fewer seeds than planned.

pandas, seaborn, matplotlib, rich and sqlalchemy are imported inside the functions, so that
``import reatt.report`` (and with it ``reatt --help``) stays fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.errors import StudyError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from rich.table import Table
    from sqlalchemy import Engine

CI_LEVEL = 0.95
FORMATS = ("table", "markdown", "csv", "latex")  # "table": the rich table, printed only

# The table's columns, in order (also the CSV header).
COL_VARIANT = "variant"
COL_FEATURES = "features"
COL_N = "n"  # completed seeds averaged
COL_PLANNED = "n planned"
COL_MEAN = "final NLL mean"
COL_STD = "final NLL std"
COL_DELTA = "Δ vs reference"
COL_LOW = "CI95 low"
COL_HIGH = "CI95 high"
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
)
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
NO_FEATURES = "—"
MINUS = "\u2212"  # typographic minus for the terminal and the figures


# ------------------------------------------------------------------------------- statistics
# Student-t quantiles without scipy: scipy is a large compiled dependency that reatt would pull
# in for one function. The t distribution's CDF is a regularized incomplete beta function,
# I_x(df/2, 1/2) with x = df / (df + t^2), which the continued fraction below (Lentz's method,
# as in Numerical Recipes' betacf) evaluates to ~1e-14 for any real df > 0 (Welch's df is not
# an integer); the quantile is found by bisection on that CDF. Above df = 1000 the normal
# quantile's Cornish-Fisher expansion takes over (exact to ~1e-12 there). Tests check both
# against the printed t tables and against a direct integration of the t density.


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny = 1e-300

    def clamp(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        for coef in (even, odd):
            d = 1.0 / clamp(1.0 + coef * d)
            c = clamp(1.0 + coef / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, real) degrees of freedom."""
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (t_quantile(0.975, 10)
    = 2.228...), accurate to ~1e-10."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > 1000:  # lgamma cancels badly in betainc for huge df; the expansion is exact to ~1e-12
        return _cornish_fisher(p, df)
    lo, hi = 0.0, max(2.0, 2.0 * statistics.NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:  # the t tails are heavier than the normal's: widen the bracket
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _cornish_fisher(p: float, df: float) -> float:
    """The t quantile as the normal one plus its expansion in 1/df (Abramowitz & Stegun 26.7.5)."""
    z = statistics.NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN below two values."""
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


@dataclass(frozen=True)
class Diff:
    """The difference of a variant to the reference, with its confidence interval."""

    delta: float
    low: float = math.nan
    high: float = math.nan
    method: str = ""  # "paired", "Welch", "reference" or "" (no interval)
    df: float = math.nan


def paired_diff(variant: dict[int, float], reference: dict[int, float], level: float = CI_LEVEL) -> Diff:
    """Mean difference over the seeds both have, with a paired-t interval (needs >= 2 pairs).

    The same seed gives the same initialization and data order to every variant, so the
    per-seed differences do not carry that seed-to-seed noise; the interval is much tighter
    than one comparing two independent means would be."""
    seeds = sorted(set(variant) & set(reference))
    diffs = [variant[s] - reference[s] for s in seeds]
    delta = _mean(diffs)
    if len(diffs) < 2:
        return Diff(delta)
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * _std(diffs) / math.sqrt(len(diffs))
    return Diff(delta, delta - half, delta + half, "paired", len(diffs) - 1)


def welch_diff(variant: Sequence[float], reference: Sequence[float], level: float = CI_LEVEL) -> Diff:
    """Difference of two independent means, with Welch's interval (needs >= 2 values each)."""
    delta = _mean(variant) - _mean(reference)
    if len(variant) < 2 or len(reference) < 2:
        return Diff(delta)
    va, vb = _std(variant) ** 2 / len(variant), _std(reference) ** 2 / len(reference)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Diff(delta, delta, delta, "Welch", math.inf)
    df = (va + vb) ** 2 / (va**2 / (len(variant) - 1) + vb**2 / (len(reference) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Diff(delta, delta - half, delta + half, "Welch", df)


def compare(variant: dict[int, float], reference: dict[int, float], level: float = CI_LEVEL) -> Diff:
    """Paired by seed when at least two seeds are shared, else Welch (values keyed by seed)."""
    if len(set(variant) & set(reference)) >= 2:
        return paired_diff(variant, reference, level)
    return welch_diff(list(variant.values()), list(reference.values()), level)


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
    out_dir: str = "out"  # the study's output root: reports go to <out_dir>/<study>/report

    @property
    def best(self) -> str | None:
        """The variant with the lowest mean final NLL."""
        ok = self.table[self.table[COL_N] > 0]
        return None if ok.empty else str(ok.iloc[0][COL_VARIANT])


def _usable(run: Any) -> tuple[bool, str]:
    """Whether a run's result enters the table; else why not."""
    from reatt.states import COMPLETED

    if run.state != COMPLETED:
        return False, run.state_reason or run.collect_error or ""
    if run.final_nll is None:
        return False, "completed but no final NLL in the database: run `reatt collect`"
    if not math.isfinite(run.final_nll):
        return False, f"final NLL is {run.final_nll} (diverged?)"
    return True, ""


def _state_counts(runs: Sequence[Any]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _no_runs_error(name: str, runs: Sequence[Any]) -> StudyError:
    from reatt.states import ACTIVE_STATES, COMPLETED

    if not runs:
        return StudyError(f"study {name!r} has no runs; run `reatt plan SPEC` first")
    if any(r.state == COMPLETED for r in runs):
        hint = "run `reatt collect` first"
    elif any(r.state in ACTIVE_STATES for r in runs):
        hint = "wait for them to finish, then run `reatt collect`"
    else:
        hint = "run `reatt submit`, then `reatt collect`"
    return StudyError(
        f"study {name!r}: no completed runs yet: {len(runs)} planned ({_state_counts(runs)}); {hint}"
    )


def build_report(engine: Engine, study: str | None) -> Report:
    """Aggregate the completed runs of ``study`` (default: the latest planned) over seeds.

    Reads only the database. Raises StudyError when the study is unknown or has no completed
    run with a final NLL."""
    import pandas as pd
    from sqlalchemy import select

    from reatt import db

    with db.transaction(engine) as session:
        st = db.get_study(session, study)
        name, matrix, reference, out_dir = st.name, st.matrix, st.reference, st.out_dir
        runs = list(st.runs)  # plan order
        done = [r for r in runs if _usable(r)[0]]
        if not done:
            raise _no_runs_error(name, runs)
        planned: dict[str, int] = {}
        features: dict[str, str] = {}
        for r in runs:
            planned[r.variant] = planned.get(r.variant, 0) + 1
            features.setdefault(r.variant, "+".join(r.features or []) or NO_FEATURES)
        finals = pd.DataFrame([[getattr(r, "name" if c == "run" else c) for c in RUN_COLUMNS] for r in done])
        finals.columns = list(RUN_COLUMNS)
        missing = pd.DataFrame(
            [(r.name, r.variant, r.seed, r.state, _usable(r)[1]) for r in runs if not _usable(r)[0]],
            columns=list(MISSING_COLUMNS),
        )
        run_ids = {r.id: r.name for r in done}
        m = db.Metric
        rows = session.execute(
            select(m.run_id, m.step, m.tokens, m.loss, m.val_loss, m.lr, m.elapsed_s)
            .where(m.run_id.in_(list(run_ids)))
            .order_by(m.run_id, m.step)
        ).all()

    if reference is None and "baseline" in planned:  # collected studies have no planned reference
        reference = "baseline"
    table, notes = _aggregate(finals, missing, planned, features, reference)
    if reference is not None and reference not in planned:
        reference = None

    curves = pd.DataFrame(rows, columns=["run_id", *CURVE_COLUMNS[3:]])
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
    )


def _aggregate(
    finals: pd.DataFrame,
    missing: pd.DataFrame,
    planned: dict[str, int],
    features: dict[str, str],
    reference: str | None,
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

    records = []
    partial: dict[tuple[int, ...], list[str]] = {}  # shared seeds -> variants paired on them only
    for v, g in groups.items():
        nll = list(g["final_nll"])
        diff = Diff(math.nan)
        if v == reference and nll:
            diff = Diff(0.0, method="reference")
        elif ref_runs is not None and not ref_runs.empty and nll:
            diff, shared = _diff(g, ref_runs)
            if shared is not None:
                partial.setdefault(shared, []).append(v)
        records.append(
            {
                COL_VARIANT: v,
                COL_FEATURES: features[v],
                COL_N: len(nll),
                COL_PLANNED: planned[v],
                COL_MEAN: _mean(nll),
                COL_STD: _std(nll),
                COL_DELTA: diff.delta,
                COL_LOW: diff.low,
                COL_HIGH: diff.high,
                COL_METHOD: diff.method or NO_FEATURES,  # "—": no interval
                COL_TRAIN: _mean(list(g["final_train_loss"].dropna())),
                COL_PARAMS: _first(list(g["n_params"].dropna())),
                COL_PARAMS_NE: _first(list(g["n_params_non_embedding"].dropna())),
                COL_TPS: _mean(list(g["tokens_per_s"].dropna())),
            }
        )
        if len(nll) < planned[v]:
            gone = "; ".join(
                f"{row.run} {row.state}" + (f": {_short(row.reason)}" if row.reason else "")
                for row in missing[missing["variant"] == v].itertuples()
            )
            if nll:
                notes.append(f"{v}: only {len(nll)} of {planned[v]} planned seeds completed ({gone}).")
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

    if (table[COL_N] <= 1).all():
        notes.append(
            "One seed per variant: the differences have no confidence interval, and seed-to-seed "
            "noise can be as large as the effects; plan several seeds ([study] seeds) to measure it."
        )
    methods = set(table[COL_METHOD])
    if "paired" in methods:
        notes.append(
            f"95% CIs of Δ are paired by seed (Student t over the per-seed differences to {reference}): "
            "the same seed gives every variant the same initialization and data order."
        )
    if "Welch" in methods:
        notes.append(
            f"Where a variant shares fewer than two seeds with {reference}, its 95% CI is Welch's "
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


def _first(values: Sequence[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _short(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------- formatting


def _isnan(x: Any) -> bool:
    try:
        return x is None or math.isnan(x)
    except TypeError:  # pandas.NA
        return True


def _num(x: Any, digits: int = 4) -> str:
    return "" if _isnan(x) else f"{x:.{digits}f}"


def _signed(x: Any, digits: int = 4, minus: str = MINUS) -> str:
    return "" if _isnan(x) else f"{x:+.{digits}f}".replace("-", minus)


def _count(x: Any) -> str:
    return "" if _isnan(x) else f"{int(x):,}"


def _excludes_zero(row: Any) -> bool:
    return not _isnan(row[COL_LOW]) and (row[COL_LOW] > 0 or row[COL_HIGH] < 0)


def _ci_text(row: Any, digits: int = 3, minus: str = MINUS) -> str:
    """ "−0.031 [−0.045, −0.017]" (the interval only where there is one)."""
    text = _signed(row[COL_DELTA], digits, minus)
    if row[COL_METHOD] == "reference":
        return f"{0:.{digits}f} (reference)"
    if not _isnan(row[COL_LOW]):
        text += f" [{_signed(row[COL_LOW], digits, minus)}, {_signed(row[COL_HIGH], digits, minus)}]"
    return text


def _display_frame(report: Report) -> pd.DataFrame:
    """The table with every number as text: 4 decimals for losses, empty for missing values,
    Δ with its sign and '*' where the 95% CI excludes 0."""
    t = report.table
    out = t.copy().astype(object)
    for col in (COL_MEAN, COL_STD, COL_LOW, COL_HIGH, COL_TRAIN):
        out[col] = [_num(x) for x in t[col]]
    out[COL_DELTA] = [
        (_num(0.0) if row[COL_METHOD] == "reference" else _signed(row[COL_DELTA], minus="-"))
        + ("*" if _excludes_zero(row) else "")
        for _, row in t.iterrows()
    ]
    for col in (COL_PARAMS, COL_PARAMS_NE):
        out[col] = [_count(x) for x in t[col]]
    out[COL_TPS] = [_num(x, 0) for x in t[COL_TPS]]
    return out


def _legend_line(report: Report) -> str:
    ref = f"`{report.reference}`" if report.reference else "none"
    return (
        "Final held-out NLL in nats/token at the last step (lower is better), mean and sample std "
        f"over seeds; Δ = difference in mean vs the reference ({ref}), with its 95% CI; "
        "* the CI excludes 0."
    )


def _fitting_table_class() -> type:
    """A rich Table that, printed into a console too narrow for it, hides its secondary columns
    (last first) rather than cutting numbers to "5.0…" or folding them over lines."""
    import copy

    from rich.table import Table

    class FittingTable(Table):
        def __init__(self, *args: Any, droppable: Sequence[int] = (), **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.droppable = tuple(droppable)  # column indices, hidden in this order

        def __rich_console__(self, console: Any, options: Any) -> Any:
            table, hidden = self, []
            wide = options.update_width(100_000)  # the natural width, not clamped to the console's
            for index in self.droppable:
                if Table.__rich_measure__(table, console, wide).maximum <= options.max_width:
                    break
                hidden.append(str(self.columns[index].header))
                table = copy.copy(table)
                table.columns = [c for c in table.columns if c is not self.columns[index]]
            if hidden:
                table.caption = f"{self.caption} Hidden, for lack of width: {', '.join(hidden)}."
            yield from Table.__rich_console__(table, console, options)

    return FittingTable


def _FittingTable(**kwargs: Any) -> Any:  # noqa: N802 (a class, made on first use)
    return _fitting_table_class()(**kwargs)


def render_table(report: Report) -> Table:
    """The table for the terminal: best variant highlighted, Δ with sign and 95% CI, CIs that
    exclude 0 marked (green: better than the reference, red: worse). In a narrow terminal the
    secondary columns (tokens/s, params, train loss, CI method, features) are hidden, and the
    caption says so; the values are never cut."""
    from rich.text import Text

    ref = report.reference or "reference"
    table: Table = _FittingTable(
        title=f"Study {report.study}: final held-out NLL (nats/token, lower is better)",
        caption=(
            f"Δ: difference in mean final NLL vs {ref} with its 95% CI; * CI excludes 0. "
            "± : sample std over seeds; n/planned: seeds completed."
        ),
        caption_justify="left",
        droppable=(8, 7, 6, 5, 1),  # tokens/s, params, train loss, CI method, features
    )
    best = report.best
    rows = []
    for _, row in report.table.iterrows():
        n, planned = int(row[COL_N]), int(row[COL_PLANNED])
        n_text = Text(str(n) if n == planned else f"{n}/{planned}", style="" if n == planned else "yellow")
        nll = _num(row[COL_MEAN])
        if not _isnan(row[COL_STD]):
            nll += f" ± {_num(row[COL_STD])}"
        delta = Text(_ci_text(row))
        if _excludes_zero(row):
            delta.append(" *")
            delta.stylize("green" if row[COL_DELTA] < 0 else "red")
        elif row[COL_METHOD] == "reference":
            delta.stylize("dim")
        name = Text(str(row[COL_VARIANT]))
        if row[COL_VARIANT] == best:
            name = Text(f"★ {row[COL_VARIANT]}", style="bold green")
        cells = [
            name,
            Text(str(row[COL_FEATURES])),
            n_text,
            Text(nll) if nll else Text("no run", style="yellow"),
            delta,
            Text(str(row[COL_METHOD]) if row[COL_METHOD] != "reference" else ""),
            Text(_num(row[COL_TRAIN])),
            Text(_params(row[COL_PARAMS], row[COL_PARAMS_NE])),
            Text(_num(row[COL_TPS], 0)),
        ]
        rows.append((cells, "bold" if row[COL_VARIANT] == best else None))
    headers = ["variant", "features", "n", "final NLL ± std", f"Δ vs {ref} [95% CI]", "CI method"]
    headers += ["train loss", "params (non-emb.)", "tokens/s"]
    for i, header in enumerate(headers):
        # values are never cut or folded: a narrow terminal hides whole columns instead
        width = max([len(cells[i].plain) for cells, _ in rows] + [1])
        dim = "dim" if i in (1, 5) else ""
        left = i in (0, 1, 5)
        table.add_column(
            header, justify="left" if left else "right", min_width=width, no_wrap=True, style=dim
        )
    for cells, row_style in rows:
        table.add_row(*cells, style=row_style)
    return table


def _params(total: Any, non_embedding: Any) -> str:
    """ "2.51M (90.0k)": the parameter count, and without the embeddings."""

    def short(x: Any) -> str:
        if _isnan(x):
            return "?"
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.3g}{unit}"
        return str(int(x))

    if _isnan(total) and _isnan(non_embedding):
        return ""
    return f"{short(total)} ({short(non_embedding)})"


def _latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
    repl.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})
    text = "".join(repl.get(ch, ch) for ch in text)
    return text.replace(NO_FEATURES, "---")


def _latex_num(x: Any, digits: int = 3, signed: bool = False) -> str:
    if _isnan(x):
        return ""
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return text.replace("-", "$-$")


def _latex(report: Report) -> str:
    """A compact, paper-ready table (booktabs): the 14 columns of the CSV do not fit a page."""
    t = report.table
    ref = _latex_escape(report.reference or "reference")
    rows = []
    for _, row in t.iterrows():
        nll = _latex_num(row[COL_MEAN])
        if not _isnan(row[COL_STD]):
            nll += r" $\pm$ " + _latex_num(row[COL_STD])
        delta = _latex_num(row[COL_DELTA], signed=row[COL_METHOD] != "reference")
        if _excludes_zero(row):
            delta += "$^{*}$"
        ci = ""
        if not _isnan(row[COL_LOW]):
            ci = f"[{_latex_num(row[COL_LOW], signed=True)}, {_latex_num(row[COL_HIGH], signed=True)}]"
        n = str(int(row[COL_N]))
        if row[COL_N] != row[COL_PLANNED]:
            n += f"/{int(row[COL_PLANNED])}"
        rows.append(
            {
                "Variant": _latex_escape(str(row[COL_VARIANT])),
                "Features": _latex_escape(str(row[COL_FEATURES])),
                "$n$": n,
                "Final NLL": nll,
                rf"$\Delta$ vs {ref}": delta,
                r"95\% CI": ci,
                "Params": _count(row[COL_PARAMS]).replace(",", r"\,"),
                "Tokens/s": _num(row[COL_TPS], 0),
            }
        )
    import pandas as pd

    frame = pd.DataFrame(rows)
    caption = (
        f"Study {_latex_escape(report.study)}: final held-out NLL (nats/token, lower is better), "
        rf"mean $\pm$ sample std over $n$ seeds; $\Delta$: difference in mean vs {ref} with its 95\% "
        r"confidence interval; $^{*}$: the interval excludes 0."
    )
    head = f"% reatt report, study {report.study}: needs \\usepackage{{booktabs}}\n"
    return head + str(
        frame.to_latex(
            index=False,
            escape=False,
            column_format="ll" + "r" * (len(frame.columns) - 2),
            caption=caption,
            label=f"tab:final-nll-{report.study}",
        )
    )


def to_text(report: Report, fmt: str) -> str:
    """The table as text: "markdown" (with a legend and the notes), "csv" (the raw numbers),
    "latex" (a compact booktabs table) or "table" (the rich table, without colors)."""
    if fmt == "markdown":
        frame = _display_frame(report)
        align = ["left" if c in (COL_VARIANT, COL_FEATURES, COL_METHOD) else "right" for c in frame.columns]
        body = frame.to_markdown(index=False, disable_numparse=True, colalign=align)
        parts = [f"# Final held-out NLL: study `{report.study}`", "", _legend_line(report), "", body]
        if report.notes:
            parts += ["", *(f"- {note}" for note in report.notes)]
        return "\n".join(parts) + "\n"
    if fmt == "csv":
        return str(report.table.to_csv(index=False))
    if fmt == "latex":
        return _latex(report)
    if fmt == "table":
        import io

        from rich.console import Console

        console = Console(record=True, width=160, file=io.StringIO())
        console.print(render_table(report))
        return console.export_text()
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------- figures

PNG_DPI = 150


def _colors(report: Report) -> dict[str, Any]:
    """One color per variant, in plan order (so a variant keeps its color from study to study
    of the same matrix); the reference in near-black."""
    import seaborn as sns

    names = [str(v) for v in (report.variants or report.table[COL_VARIANT]) if v != report.reference]
    if len(names) <= 10:  # seaborn's colorblind palette, reordered so the first six differ most
        base = sns.color_palette("colorblind", 10)
        palette = [base[i] for i in (0, 1, 2, 4, 9, 3, 5, 8, 6, 7)][: len(names)]
    else:
        palette = sns.color_palette("husl", len(names))
    colors: dict[str, Any] = dict(zip(names, palette, strict=True))
    if report.reference is not None:
        colors[report.reference] = (0.1, 0.1, 0.1)
    return colors


def _ref_label(report: Report) -> str:
    """How the figures name the reference: "baseline", or "baseline (all)" for leave-one-out."""
    ref = report.reference or "reference"
    return "baseline" if ref == "baseline" else f"baseline ({ref})"


def _smoothing_window(curves: pd.DataFrame) -> tuple[int, int]:
    """The moving-average window in logged rows (odd, about a tenth of a run's rows, so a
    batch-1 run's noise does not hide 0.01-nat differences) and the steps it spans."""
    rows = curves.dropna(subset=["loss"]).groupby("run")["step"]
    if rows.ngroups == 0:
        return 1, 0
    n_rows = int(rows.size().median())
    step_gap = float(rows.apply(lambda s: s.diff().median()).median())
    window = max(1, round(n_rows / 10)) | 1
    return window, round(window * (step_gap if math.isfinite(step_gap) else 1))


def _smooth(values: pd.Series, window: int) -> pd.Series:
    """Centered moving average whose half-width grows from 0 at the first row to
    ``window // 2`` (about i/2 rows at row i): a fixed window would flatten the fast early drop
    of the loss and bend it on a log axis; later rows get the full window (truncated at the end)."""
    import numpy as np
    import pandas as pd

    x = values.to_numpy(dtype=float)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(len(x))
    half = np.minimum(window // 2, idx // 2)
    lo, hi = idx - half, np.minimum(idx + half + 1, len(x))
    return pd.Series((csum[hi] - csum[lo]) / (hi - lo), index=values.index)


def plot_loss_curves(report: Report) -> Figure:
    """Training loss (centered moving average per run, then mean over seeds with a min–max
    band) and held-out NLL (dots, mean over seeds) vs training tokens: the whole run on a log
    axis, and the second half zoomed in, where the variants separate."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, NullFormatter

    c = report.curves
    if c.empty:
        raise StudyError(f"study {report.study!r}: the completed runs have no metrics; run `reatt collect`")
    use_tokens = bool(c["tokens"].notna().any())
    xcol = "tokens" if use_tokens else "step"
    xunit = "tokens" if use_tokens else "steps"
    xlabel = "training tokens" if use_tokens else "optimizer steps"
    window, window_steps = _smoothing_window(c)
    train = c.dropna(subset=["loss", xcol]).copy()
    train["smooth"] = train.groupby("run")["loss"].transform(lambda s: _smooth(s, window))
    agg = (
        train.groupby(["variant", "step"])
        .agg(x=(xcol, "mean"), mean=("smooth", "mean"), lo=("smooth", "min"), hi=("smooth", "max"))
        .reset_index()
    )
    held = (
        c.dropna(subset=["val_loss", xcol])
        .groupby(["variant", "step"])
        .agg(x=(xcol, "mean"), val=("val_loss", "mean"))
        .reset_index()
    )
    colors = _colors(report)
    present = set(agg["variant"]) | set(held["variant"])
    order = [v for v in report.table[COL_VARIANT] if v in present]
    seeds = report.table.set_index(COL_VARIANT)[COL_N]
    xmax = float(max(agg["x"].max() if not agg.empty else 0, held["x"].max() if not held.empty else 0))
    zoom_from = 0.5 * xmax
    fmt = EngFormatter(sep="")

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(13, 5.4), layout="constrained")
        ax_all, ax_zoom = fig.subplots(1, 2)
        for ax, zoom in ((ax_all, False), (ax_zoom, True)):
            ylo, yhi = math.inf, -math.inf
            for v in order:
                color, is_ref = colors[v], v == report.reference
                a = agg[(agg["variant"] == v) & (agg["x"] > 0)]  # x = 0 has no place on a log axis
                h = held[(held["variant"] == v) & (held["x"] > 0)]
                if zoom:
                    a, h = a[a["x"] >= zoom_from], h[h["x"] >= zoom_from]
                    for lo, hi in ((a["lo"], a["hi"]), (h["val"], h["val"])):
                        if len(lo):
                            ylo, yhi = min(ylo, lo.min()), max(yhi, hi.max())
                ax.plot(a["x"], a["mean"], color=color, lw=2.2 if is_ref else 1.6, ls="--" if is_ref else "-")
                if seeds.get(v, 0) > 1:
                    ax.fill_between(a["x"], a["lo"], a["hi"], color=color, alpha=0.10, lw=0)
                ax.scatter(h["x"], h["val"], color=color, s=30, edgecolor="white", lw=0.7, zorder=4)
            if zoom and math.isfinite(ylo):
                pad = 0.06 * ((yhi - ylo) or 1.0)
                ax.set_ylim(ylo - pad, yhi + pad)
                ax.set_xlim(zoom_from, xmax * 1.02)
            ax.set_ylabel("loss (nats/token)")
        ax_all.set_xscale("log")
        ax_all.xaxis.set_minor_formatter(NullFormatter())
        ax_all.set_xlabel(f"{xlabel} (log scale)")
        ax_zoom.set_xlabel(xlabel)
        for ax in (ax_all, ax_zoom):
            ax.xaxis.set_major_formatter(fmt)
        ax_all.set_title("whole run")
        ax_zoom.set_title(f"second half, zoomed in (from {fmt(zoom_from)} {xunit})")
        smoothing = f"centered moving average over ≤{window_steps} steps" if window > 1 else "not smoothed"
        if seeds.max() > 1:
            what = (
                f"lines: training loss ({smoothing}), mean over seeds, band = min–max over seeds; "
                "dots: held-out NLL, mean over seeds"
            )
        else:
            what = f"lines: training loss ({smoothing}); dots: held-out NLL"
        fig.suptitle(f"Study {report.study}: loss curves\n{what}", fontsize="medium")
        _gaps_caption(fig, report)
        handles = [
            Line2D(
                [],
                [],
                color=colors[v],
                lw=2.2 if v == report.reference else 1.6,
                ls="--" if v == report.reference else "-",
                marker="o",
                markeredgecolor="white",
                label=f"{v}, reference" if v == report.reference else v,
            )
            for v in order
        ]
        n_text = sorted({int(seeds.get(v, 0)) for v in order})
        fig.legend(
            handles=handles,
            loc="outside right center",
            title=f"variant\n(best first; n = {', '.join(map(str, n_text))} seeds)"
            if len(n_text) > 1
            else f"variant (best first)\n{n_text[0]} seed{'s' if n_text[0] != 1 else ''} each",
            frameon=False,
            fontsize="small",
            title_fontsize="small",
        )
    return fig


def plot_final_nll(report: Report) -> Figure:
    """Left: final held-out NLL per variant (mean ± 1 std over seeds, each seed a hollow dot)
    with the reference's mean as a dashed line. Right: Δ vs the reference with its 95% CI,
    filled where the interval excludes 0. Variants sorted by NLL, best on top."""
    import seaborn as sns
    from matplotlib.figure import Figure

    t = report.table[report.table[COL_N] > 0].reset_index(drop=True)
    colors = _colors(report)
    runs = report.runs if report.runs is not None else report.curves.iloc[0:0].assign(final_nll=[])
    per_seed = {str(v): list(g["final_nll"]) for v, g in runs.groupby("variant")}
    ypos = {v: i for i, v in enumerate(t[COL_VARIANT])}
    labels = [f"{v}  (n={int(n)})" for v, n in zip(t[COL_VARIANT], t[COL_N], strict=True)]
    has_ref = report.reference is not None and report.reference in ypos
    several = bool((t[COL_N] > 1).any())
    methods = [m for m in ("paired", "Welch") if m in set(t[COL_METHOD])]
    ref, ref_label = report.reference or "reference", _ref_label(report)
    bottom = len(t) - 0.5  # an empty band under the last row holds the dashed lines' labels

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(12.5, max(3.8, 2.0 + 0.45 * len(t))), layout="constrained")
        ax, ax_d = fig.subplots(1, 2, sharey=True)
        small: dict[str, Any] = {"textcoords": "offset points", "ha": "center", "fontsize": "x-small"}
        small["color"] = "0.2"
        small["bbox"] = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}
        for _, row in t.iterrows():
            v = row[COL_VARIANT]
            y, color = ypos[v], colors[v]
            if len(per_seed.get(v, [])) > 1:
                xs = per_seed[v]
                ax.scatter(xs, [y] * len(xs), s=30, facecolor="none", edgecolor=color, alpha=0.8, zorder=2)
            std = None if _isnan(row[COL_STD]) else row[COL_STD]
            ax.errorbar(row[COL_MEAN], y, xerr=std, fmt="o", ms=8, color=color, capsize=4, lw=1.8, zorder=3)
            ax.annotate(f"{row[COL_MEAN]:.3f}", (row[COL_MEAN], y), xytext=(0, 9), **small)
            if _isnan(row[COL_DELTA]):
                continue
            is_ref = row[COL_METHOD] == "reference"
            err = None
            if not _isnan(row[COL_LOW]):
                err = [[row[COL_DELTA] - row[COL_LOW]], [row[COL_HIGH] - row[COL_DELTA]]]
            face = color if (_excludes_zero(row) or is_ref) else "white"
            ax_d.errorbar(
                row[COL_DELTA],
                y,
                xerr=err,
                fmt="D" if is_ref else "o",
                ms=7,
                capsize=4,
                lw=1.8,
                color=color,
                markerfacecolor=face,
                zorder=3,
            )
            text = "reference" if is_ref else _signed(row[COL_DELTA], 3)
            ax_d.annotate(text, (row[COL_DELTA], y), xytext=(0, 9), **small)
        line = {"color": "0.2", "ls": "--", "lw": 1.2, "zorder": 1}
        label = {"va": "center", "fontsize": "small", "color": "0.2"}
        if has_ref:
            ref_mean = float(t.loc[ypos[ref], COL_MEAN])
            ax.axvline(ref_mean, **line)
            ax.text(ref_mean, bottom + 0.3, f" {ref_label} mean ({ref_mean:.3f})", ha="left", **label)
        ax_d.axvline(0.0, **line)
        ax_d.text(0.0, bottom + 0.3, f"{ref_label} (Δ = 0) ", ha="right", **label)
        ax.set_yticks(range(len(t)), labels)
        ax.set_ylim(bottom + 0.6, -0.6)  # best at the top
        ax.grid(axis="y", visible=False)
        ax_d.grid(axis="y", visible=False)
        ax.set_xlabel("final held-out NLL (nats/token), lower is better")
        if several:
            ax.set_title(
                "Final NLL per variant: mean ± 1 std over seeds\n(hollow dots: the individual seeds)"
            )
        else:
            ax.set_title("Final NLL per variant\n(one seed each: no spread to show)")
        _pad_x(ax, per_seed, t)
        ax_d.set_xlabel(f"Δ final NLL vs {ref} (nats/token), < 0 = better")
        if methods:
            how = " / ".join("paired by seed" if m == "paired" else "Welch" for m in methods)
            ax_d.set_title(f"Difference to {ref}: mean and 95% CI ({how})\nfilled: the CI excludes 0")
        else:
            ax_d.set_title(f"Difference to {ref}\n(one seed per variant: no confidence interval)")
        _pad_delta(ax_d, t)
        fig.suptitle(f"Study {report.study}: final held-out NLL", fontsize="large")
        _gaps_caption(fig, report, delta=True)
    return fig


def _gaps_caption(fig: Figure, report: Report, *, delta: bool = False) -> None:
    """Under the figure, in red, the variants with fewer completed seeds than planned."""
    t = report.table
    short = t[t[COL_N] < t[COL_PLANNED]]
    if short.empty:
        return
    parts = [f"{r[COL_VARIANT]} {int(r[COL_N])}/{int(r[COL_PLANNED])}" for _, r in short.iterrows()]
    text = f"Incomplete (seeds completed/planned): {', '.join(parts)}."
    if delta and (t[COL_METHOD] == "paired").any() and report.reference in set(short[COL_VARIANT]):
        text += f" Δ uses only the seeds {report.reference} completed."
    fig.supxlabel(text + " See final_nll.md.", fontsize="small", color="#b00020")


def _pad_x(ax: Any, per_seed: dict[str, list[float]], t: pd.DataFrame) -> None:
    lo = (t[COL_MEAN] - t[COL_STD].fillna(0)).min()
    hi = (t[COL_MEAN] + t[COL_STD].fillna(0)).max()
    for vals in per_seed.values():
        lo, hi = min(lo, *vals), max(hi, *vals)
    pad = 0.08 * ((hi - lo) or 0.01)
    ax.set_xlim(lo - pad, hi + pad)


def _pad_delta(ax: Any, t: pd.DataFrame) -> None:
    vals = [0.0, *t[COL_DELTA].dropna(), *t[COL_LOW].dropna(), *t[COL_HIGH].dropna()]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * ((hi - lo) or 0.01)
    ax.set_xlim(lo - pad, hi + pad)


def _save(fig: Figure, base: Path) -> list[Path]:
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    fig.savefig(png, dpi=PNG_DPI)
    fig.savefig(svg, metadata={"Date": None})  # no timestamp: the same data gives the same file
    return [png, svg]


def write_report(
    report: Report,
    out_dir: Path,
    *,
    formats: Sequence[str] = ("markdown", "csv"),
    plot: bool = False,
) -> list[Path]:
    """Write final_nll.md / .csv / .tex (as ``formats`` ask; "table" writes nothing) and, with
    ``plot``, loss_curves.png/.svg and final_nll.png/.svg into ``out_dir``; return the paths."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; expected {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, name in (("markdown", "final_nll.md"), ("csv", "final_nll.csv"), ("latex", "final_nll.tex")):
        if fmt in formats:
            path = out_dir / name
            path.write_text(to_text(report, fmt), encoding="utf-8")
            written.append(path)
    if plot:
        written += _save(plot_loss_curves(report), out_dir / "loss_curves")
        written += _save(plot_final_nll(report), out_dir / "final_nll")
    return written
