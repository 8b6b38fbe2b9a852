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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.errors import StudyError
from reatt.rundir import one_line
from reatt.stats import Diff, compare, mean, std, welch_diff

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table
    from sqlalchemy import Engine

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
COLLECTED_MATRIX = "collected"  # Study.matrix of runs collected from a directory tree (collect.py)
MINUS = "\u2212"  # typographic minus for the terminal and the figures


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


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _no_runs_error(name: str, runs: Sequence[Any]) -> StudyError:
    """Why a study has nothing to report, and what to do. The states are those the database
    holds (``reatt status`` and ``reatt collect`` set them); the results come from collect."""
    from reatt.states import ACTIVE_STATES, COMPLETED, PLANNED, RESUBMITTABLE_STATES

    if not runs:
        return StudyError(f"study {name!r} has no runs; run `reatt plan SPEC` first")
    completed = [r for r in runs if r.state == COMPLETED]
    others = [r for r in runs if r.state != COMPLETED]
    rest = f" ({_state_counts(others)})" if others else ""
    if completed:
        of = f"{len(completed)} of {len(runs)} runs" if others else _runs(len(completed))
        uncollected = [r for r in completed if r.final_nll is None and r.collected_at is None]
        if len(uncollected) == len(completed):
            none = "none collected yet" if len(completed) > 1 else "not collected yet"
            return StudyError(f"study {name!r}: {of} completed but {none}{rest}: run `reatt collect` first")
        problems = []
        if uncollected:
            problems.append(f"{len(uncollected)} not collected yet")
        diverged = [r for r in completed if r.final_nll is not None]  # not finite (else usable)
        if diverged:
            values = ", ".join(sorted({str(r.final_nll) for r in diverged}))
            problems.append(f"{len(diverged)} diverged (final NLL {values})")
        unread = [r for r in completed if r.final_nll is None and r.collected_at is not None]
        if unread:
            why = next((r.collect_error for r in unread if r.collect_error), None)
            problems.append(
                f"{len(unread)} collected without a final NLL" + (f" ({one_line(why, 80)})" if why else "")
            )
        hint = "run `reatt collect` first" if uncollected else "see `reatt status` and the runs' final.json"
        return StudyError(
            f"study {name!r}: {of} completed, but none has a usable final NLL: "
            f"{'; '.join(problems)}{rest}; {hint}"
        )
    if any(r.state in ACTIVE_STATES for r in runs):
        hint = "wait for them to finish (`reatt status`), then run `reatt collect`"
    elif any(r.state == PLANNED for r in runs):
        hint = "run `reatt submit`, then `reatt collect`"
        if any(r.state in RESUBMITTABLE_STATES for r in runs):
            hint += " (`reatt submit --resubmit-failed` also reruns the failed ones)"
    elif any(r.state in RESUBMITTABLE_STATES for r in runs):
        hint = "see `reatt status` for why, then `reatt submit --resubmit-failed` and `reatt collect`"
    else:
        hint = "see `reatt status`"
    return StudyError(f"study {name!r}: no run has completed yet{rest}; {hint}")


# The config keys that define what a run's final NLL was measured on: two final NLLs compare only
# where these are equal. The data file's content is compared by the token cache key recorded in
# the config's meta (it hashes the file's bytes, the tokenizer and skip_bad_lines), or by
# data.file_path where a run's config has no such key.
EVAL_KEYS = ("data.tokenizer", "data.test_size", "data.split_seed", "data.block_size", "trainer.eval_windows")
DATA_CONTENT = "data file content"
_ABSENT = object()


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _data_facts(config: dict[str, Any]) -> tuple[Any, Any, str]:
    """(cache key or _ABSENT, data.file_path or _ABSENT, a short description of the file)."""
    meta = _lookup(config, "meta.data")
    facts: Any = {}
    if isinstance(meta, dict):
        facts = meta.get("eval") or meta.get("train") or {}
    key = facts.get("cache_key", _ABSENT) if isinstance(facts, dict) else _ABSENT
    path = _lookup(config, "data.file_path")
    file = (facts.get("file") if isinstance(facts, dict) else None) or path
    if file is _ABSENT or file is None:
        shown = "?"
    elif file == "":
        shown = "embedded corpus"
    else:
        shown = Path(str(file)).name or str(file)
    if key is not _ABSENT:
        shown += f" [{str(key)[:8]}]"
    return key, path, shown


def _incomparable(done: Sequence[Any]) -> list[str]:
    """The evaluation keys that differ between the runs ``done`` (those with a config), each as
    "KEY differs (VARIANT: VALUE; ...)"; empty when all were evaluated alike."""
    runs = [r for r in done if isinstance(r.config, dict)]
    if len(runs) < 2:
        return []
    data = {r.name: _data_facts(r.config) for r in runs}
    by_content = all(key is not _ABSENT for key, _, _ in data.values())
    values: dict[str, list[tuple[Any, Any, str]]] = {}  # label -> (run, value, shown)
    label = DATA_CONTENT if by_content else "data.file_path"
    values[label] = [(r, data[r.name][0 if by_content else 1], data[r.name][2]) for r in runs]
    for key in EVAL_KEYS:
        values[key] = [(r, v, _shown(v)) for r in runs for v in [_lookup(r.config, key)]]
    out = []
    for label, triples in values.items():
        known = [(r, v, shown) for r, v, shown in triples if v is not _ABSENT]
        if len({_hashable(v) for _, v, _ in known}) <= 1:
            continue
        per_variant: dict[str, dict[str, list[str]]] = {}  # variant -> shown value -> run names
        for r, _, shown in known:
            per_variant.setdefault(r.variant, {}).setdefault(shown, []).append(r.name)
        parts = []
        for variant, shown_runs in per_variant.items():
            if len(shown_runs) == 1:
                parts.append(f"{variant}: {next(iter(shown_runs))}")
            else:
                parts.append(
                    f"{variant}: " + ", ".join(f"{v} ({', '.join(names)})" for v, names in shown_runs.items())
                )
        out.append(f"{label} differs ({'; '.join(parts)})")
    return out


def _shown(value: Any) -> str:
    return repr(value) if value == "" or value is None else str(value)


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def _incomparable_note(diffs: Sequence[str]) -> str:
    return (
        "NOT COMPARABLE: the held-out NLLs were measured on different held-out windows, so the "
        f"differences and the ranking mean nothing: {'; '.join(diffs)}."
    )


def build_report(engine: Engine, study: str | None) -> Report:
    """Aggregate the completed runs of ``study`` (default: the latest planned) over seeds.

    Reads only the database. Raises StudyError when the study is unknown or has no completed
    run with a final NLL. Where the runs in the table were evaluated differently (the keys of
    ``EVAL_KEYS`` or the data file's content differ), ``Report.incomparable`` says how and the
    first note says that the final NLLs are not comparable; the report is still built."""
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
        incomparable = _incomparable(done)
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
        # read_sql builds the columns straight from the cursor: ~3x faster than DataFrame(Rows)
        metrics = pd.read_sql(
            select(m.run_id, m.step, m.tokens, m.loss, m.val_loss, m.lr, m.elapsed_s)
            .where(m.run_id.in_(list(run_ids)))
            .order_by(m.run_id, m.step),
            session.connection(),
        )

    if reference is None and "baseline" in planned:  # collected studies have no planned reference
        reference = "baseline"
    table, notes = _aggregate(finals, missing, planned, features, reference)
    if incomparable:  # first: it voids every comparison below it
        notes.insert(0, _incomparable_note(incomparable))
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
        incomparable=incomparable,
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
                COL_MEAN: mean(nll),
                COL_STD: std(nll),
                COL_DELTA: diff.delta,
                COL_LOW: diff.low,
                COL_HIGH: diff.high,
                COL_METHOD: diff.method or NO_FEATURES,  # "—": no interval
                COL_TRAIN: mean(list(g["final_train_loss"].dropna())),
                COL_PARAMS: _first(list(g["n_params"].dropna())),
                COL_PARAMS_NE: _first(list(g["n_params_non_embedding"].dropna())),
                COL_TPS: mean(list(g["tokens_per_s"].dropna())),
            }
        )
        if len(nll) < planned[v]:
            gone = "; ".join(
                f"{row.run} {row.state}" + (f": {one_line(row.reason, 80)}" if row.reason else "")
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
        "* the CI excludes 0. tokens/s depends on the machine and its load at the time of each run."
    )


def _incomparable_line(report: Report, *, details: bool = False) -> str:
    """For a caption: "NOT COMPARABLE: ... (data.block_size differs)", or with ``details``
    "NOT COMPARABLE: ...: data.block_size differs (baseline: 64; rope: 32)"."""
    head = "NOT COMPARABLE: the runs' held-out NLLs were measured on different held-out windows"
    if details:
        return f"{head}: {'; '.join(report.incomparable)}"
    keys = [d.split(" differs", 1)[0] for d in report.incomparable]
    return f"{head} ({', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'})"


def _fitting_table_class() -> type:
    """A rich Table that, printed into a console too narrow for it, hides its secondary columns
    (last first) rather than cutting numbers to "5.0…" or folding them over lines."""
    import copy

    from rich.table import Table
    from rich.text import Text

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
                caption = Text.assemble(self.caption or "")  # a str or a Text, styles kept
                caption.append(f" Hidden, for lack of width: {', '.join(hidden)}.")
                table.caption = caption
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
    title = Text(f"Study {report.study}: final held-out NLL (nats/token, lower is better)")
    caption = Text()
    if not report.comparable:
        title.append(" NOT COMPARABLE", style="bold red")
        caption.append(f"{_incomparable_line(report)}; see the notes.\n", style="bold red")
    caption.append(
        f"★ lowest mean final NLL. Δ: difference in mean final NLL vs {ref} with its 95% CI; "
        "* CI excludes 0. ± : sample std over seeds; n/planned: seeds completed. "
        "tokens/s depends on the machine and its load at the time of each run."
    )
    table: Table = _FittingTable(
        title=title,
        caption=caption,
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
    if not report.comparable:
        caption += r" \textbf{" + _latex_escape(_incomparable_note(report.incomparable)) + "}"
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
        parts = [f"# Final held-out NLL: study `{report.study}`", ""]
        notes = list(report.notes)
        if not report.comparable:  # above the table, not among the notes under it
            warning = _incomparable_note(report.incomparable)
            parts += [f"> **{warning}**", ""]
            notes = [n for n in notes if n != warning]
        parts += [_legend_line(report), "", body]
        if notes:
            parts += ["", *(f"- {note}" for note in notes)]
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
        from reatt.plots import plot_final_nll, plot_loss_curves, save_figure

        written += save_figure(plot_loss_curves(report), out_dir / "loss_curves")
        written += save_figure(plot_final_nll(report), out_dir / "final_nll")
    return written
