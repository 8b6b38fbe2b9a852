"""A tuned study's stage 1 in the report: every tuning run as a row (for the learning-rate
sensitivity figure), each variant's chosen value, and Δ at the shared value (every variant at
the value it would have had without tuning, from the tuning runs: no extra compute)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reatt import states
from reatt.report.fair import (
    COL_CHOSEN,
    COL_SHARED_DELTA,
    COL_SHARED_HIGH,
    COL_SHARED_LOW,
    COL_SHARED_N,
    COL_SHARED_VERDICT,
    REFERENCE,
    correct,
)
from reatt.report.stats import Diff, compare
from reatt.study.tune import candidate_label, candidate_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TUNING_COLUMNS = ("run", "variant", "seed", "candidate", "x", "final_nll", "state", "shared", "chosen")


def chosen_of(eval_runs: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """variant -> (its chosen value as text, "trainer.learning_rate=0.002", and why), where chosen."""
    out: dict[str, tuple[str, str]] = {}
    for r in eval_runs:
        tuning = r.tuning or {}
        if tuning.get("chosen"):
            out.setdefault(r.variant, (candidate_text(tuning["chosen"]), str(tuning.get("why", ""))))
    return out


def tuning_frame(tune_runs: Sequence[Any], eval_runs: Sequence[Any]) -> pd.DataFrame:
    """One row per tuning run (TUNING_COLUMNS); ``x`` is the candidate's value where a single
    numeric key is tuned (else its position), ``final_nll`` the NLL it ended with (a pruned run's
    at the step it stopped; NaN for one that diverged or has no result)."""
    import pandas as pd

    chosen = {r.variant: (r.tuning or {}).get("chosen") for r in eval_runs if (r.tuning or {}).get("chosen")}
    labels: list[str] = []
    rows = []
    for r in tune_runs:
        candidate = (r.tuning or {}).get("candidate", {})
        label = candidate_label(candidate)
        if label not in labels:
            labels.append(label)
        values = list(candidate.values())
        x = float(values[0]) if len(values) == 1 and isinstance(values[0], int | float) else math.nan
        nll = r.final_nll if r.final_nll is not None and math.isfinite(r.final_nll) else math.nan
        if r.state not in (states.COMPLETED, states.PRUNED):
            nll = math.nan
        rows.append(
            (
                r.name,
                r.variant,
                r.seed,
                label,
                x,
                nll,
                r.state,
                bool((r.tuning or {}).get("shared")),
                candidate == chosen.get(r.variant),
            )
        )
    frame = pd.DataFrame(rows, columns=list(TUNING_COLUMNS))
    if frame["x"].isna().any():  # several keys, or not numbers: candidates in spec order
        frame["x"] = frame["candidate"].map({label: float(i) for i, label in enumerate(labels)})
    return frame


def shared_diffs(
    tune_runs: Sequence[Any], reference: str | None
) -> tuple[dict[str, Diff], dict[str, int], str]:
    """Δ of every variant to the reference at the shared value, paired over the tuning seeds
    (runs completed with a finite NLL only); {variant: n}; and the shared value as text."""
    at_shared = [r for r in tune_runs if (r.tuning or {}).get("shared")]
    shown = candidate_text(at_shared[0].tuning["candidate"]) if at_shared else ""
    values: dict[str, dict[int, float]] = {}
    for r in at_shared:
        if r.state == states.COMPLETED and r.final_nll is not None and math.isfinite(r.final_nll):
            values.setdefault(r.variant, {})[r.seed] = float(r.final_nll)
    counts = {v: len(x) for v, x in values.items()}
    if reference is None or reference not in values:
        return {}, counts, shown
    diffs = {v: compare(x, values[reference]) for v, x in values.items() if v != reference}
    return diffs, counts, shown


def tuned_columns(
    table: pd.DataFrame,
    chosen: dict[str, tuple[str, str]],
    shared: tuple[dict[str, Diff], dict[str, int], str],
    notes: list[str],
) -> None:
    """A tuned study's columns, in place: the chosen value, and Δ at the shared value (its own
    Holm family: the tuning seeds' runs at the value every variant has without tuning)."""
    diffs, counts, shown = shared
    judged = correct(diffs)
    for col in (COL_CHOSEN, COL_SHARED_VERDICT):  # text (all NaN until now: float)
        table[col] = table[col].astype(object)
    for i, row in table.iterrows():
        v = row["variant"]
        table.at[i, COL_CHOSEN] = chosen[v][0] if v in chosen else "not chosen yet"
        table.at[i, COL_SHARED_N] = counts.get(v, 0)
        if v in judged:
            j = judged[v]
            table.at[i, COL_SHARED_DELTA], table.at[i, COL_SHARED_LOW] = j.diff.delta, j.diff.low
            table.at[i, COL_SHARED_HIGH], table.at[i, COL_SHARED_VERDICT] = j.diff.high, j.verdict
        elif row["CI method"] == "reference":
            table.at[i, COL_SHARED_DELTA], table.at[i, COL_SHARED_VERDICT] = 0.0, REFERENCE
    notes.append(
        f"Tuned study: Δ compares every variant at its own chosen value (stage 2, the evaluation "
        f"seeds); 'Δ at shared value' compares them at {shown or 'the shared value'} (stage 1's "
        "tuning runs, other seeds), Holm-corrected on its own."
    )
    for v, (_, why) in chosen.items():
        notes.append(f"{v}: chose {why}.")
