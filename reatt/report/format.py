"""How the report writes numbers and verdicts in its tables and figures (one place for both)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from reatt.report.build import COL_DELTA, COL_HIGH, COL_LOW, COL_METHOD
from reatt.report.comparable import incomparable_how

if TYPE_CHECKING:  # pragma: no cover
    from reatt.report.build import Report

MINUS = "\u2212"  # typographic minus for the terminal and the figures


def isnan(x: Any) -> bool:
    try:
        return x is None or math.isnan(x)
    except TypeError:  # pandas.NA
        return True


def fmt_num(x: Any, digits: int = 4) -> str:
    return "" if isnan(x) else f"{x:.{digits}f}"


def fmt_signed(x: Any, digits: int = 4, minus: str = MINUS) -> str:
    return "" if isnan(x) else f"{x:+.{digits}f}".replace("-", minus)


def fmt_count(x: Any) -> str:
    return "" if isnan(x) else f"{int(x):,}"


def excludes_zero(row: Any) -> bool:
    return not isnan(row[COL_LOW]) and (row[COL_LOW] > 0 or row[COL_HIGH] < 0)


def ci_text(row: Any, digits: int = 3, minus: str = MINUS) -> str:
    """ "−0.031 [−0.045, −0.017]" (the interval only where there is one)."""
    text = fmt_signed(row[COL_DELTA], digits, minus)
    if row[COL_METHOD] == "reference":
        return f"{0:.{digits}f} (reference)"
    if not isnan(row[COL_LOW]):
        text += f" [{fmt_signed(row[COL_LOW], digits, minus)}, {fmt_signed(row[COL_HIGH], digits, minus)}]"
    return text


def params_text(total: Any, non_embedding: Any) -> str:
    """ "2.51M (90.0k)": the parameter count, and without the embeddings."""

    def short(x: Any) -> str:
        if isnan(x):
            return "?"
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.3g}{unit}"
        return str(int(x))

    if isnan(total) and isnan(non_embedding):
        return ""
    return f"{short(total)} ({short(non_embedding)})"


def legend_line(report: Report) -> str:
    ref = f"`{report.reference}`" if report.reference else "none"
    return (
        "Final held-out NLL in nats/token at the last step (lower is better), mean and sample std "
        f"over seeds; Δ = difference in mean vs the reference ({ref}), with its CI at the "
        "Holm–Bonferroni step-down level (family-wise 95% over the study's comparisons); * the CI "
        "excludes 0: resolved (verdict better or worse), else not resolved. tokens/s depends on "
        "the machine and its load at the time of each run."
    )


def incomparable_line(report: Report, *, details: bool = False) -> str:
    """For a caption: "NOT COMPARABLE: ... (data.block_size differs)", or with ``details``
    "NOT COMPARABLE: ...: data.block_size differs (baseline: 64; rope: 32)"."""
    head = f"NOT COMPARABLE: the runs' held-out NLLs were measured {incomparable_how(report.incomparable)}"
    if details:
        return f"{head}: {'; '.join(report.incomparable)}"
    keys = [d.split(" differs", 1)[0] for d in report.incomparable]
    return f"{head} ({', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'})"
