"""``reatt compare A B ...``: the same variants across studies, side by side (e.g. the demo on
two corpora): per study, each variant's final NLL, n, and its Δ to that study's reference with
the CI and verdict of that study's own report (``build_report``).

Final NLLs of studies measured on different held-out text do not compare with each other; their
Δs (each to its own study's reference) do. The notes say which case it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.errors import ReattError, StudyError
from reatt.files import write_atomic
from reatt.report.build import COL_DELTA, COL_HIGH, COL_LOW, COL_MEAN, COL_N, COL_PLANNED, COL_VARIANT, Report
from reatt.report.fair import COL_VERDICT
from reatt.report.format import fmt_num, fmt_signed, isnan

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table
    from sqlalchemy import Engine

# the columns each study contributes, as "<study>: <column>"
PER_STUDY = ("final NLL", "n", "Δ", "CI low", "CI high", "verdict")


@dataclass
class Comparison:
    studies: list[str]
    reports: list[Report]
    table: pd.DataFrame  # one row per variant (the union, in plan order), PER_STUDY per study
    notes: list[str] = field(default_factory=list)


def compare_studies(engine: Engine, names: Sequence[str]) -> Comparison:
    """Build each study's report and put their variants side by side."""
    import pandas as pd

    from reatt.report.build import build_report
    from reatt.report.comparable import incomparable
    from reatt.report.usable import usable
    from reatt.study import store

    if len(names) < 2 or len(set(names)) < len(names):
        raise StudyError(f"compare needs two or more different studies; got {', '.join(names) or 'none'}")
    reports = [build_report(engine, name) for name in names]
    with store.transaction(engine) as session:
        done = [r for n in names for r in store.get_study(session, n).runs if usable(r)[0]]
        across = incomparable(done)
    variants = list(dict.fromkeys(v for rep in reports for v in (rep.variants or rep.table[COL_VARIANT])))
    rows = []
    for v in variants:
        row: dict[str, object] = {COL_VARIANT: v}
        for rep in reports:
            hit = rep.table[rep.table[COL_VARIANT] == v]
            r = hit.iloc[0] if len(hit) else None
            s = rep.study
            row[f"{s}: final NLL"] = r[COL_MEAN] if r is not None else float("nan")
            row[f"{s}: n"] = f"{int(r[COL_N])}/{int(r[COL_PLANNED])}" if r is not None else ""
            row[f"{s}: Δ"] = r[COL_DELTA] if r is not None else float("nan")
            row[f"{s}: CI low"] = r[COL_LOW] if r is not None else float("nan")
            row[f"{s}: CI high"] = r[COL_HIGH] if r is not None else float("nan")
            row[f"{s}: verdict"] = str(r[COL_VERDICT]) if r is not None else "not in study"
        rows.append(row)
    notes = [
        f"{rep.study}: Δ vs {rep.reference or 'no reference'}; CIs and verdicts as its own report gives them "
        "(Holm-corrected within the study)."
        for rep in reports
    ]
    if across:
        notes.insert(
            0,
            "The studies' held-out NLLs were measured on different held-out text or windows "
            f"({'; '.join(d.split(' (', 1)[0] for d in across)}): compare each variant's Δ across "
            "studies, not its final NLL.",
        )
    notes += [f"{rep.study}: {n}" for rep in reports for n in rep.notes if n.startswith("NOT COMPARABLE")]
    return Comparison(list(names), reports, pd.DataFrame(rows), notes)


def _cell(row: Any, study: str) -> tuple[str, str]:
    """(final NLL with n, Δ [CI] verdict) of one variant in one study, as text."""
    verdict = str(row[f"{study}: verdict"])
    nll = fmt_num(row[f"{study}: final NLL"])
    if not nll:
        return "", verdict if verdict == "not in study" else "no run"
    nll += f" (n={row[f'{study}: n']})"
    if verdict == "reference":
        return nll, f"{0:.3f} (reference)"
    delta = fmt_signed(row[f"{study}: Δ"], 3)
    if not isnan(row[f"{study}: CI low"]):
        delta += f" [{fmt_signed(row[f'{study}: CI low'], 3)}, {fmt_signed(row[f'{study}: CI high'], 3)}]"
    return nll, f"{delta} {verdict}".strip()


def render_compare(c: Comparison) -> Table:
    from rich.table import Table

    table = Table(title="Final held-out NLL, study by study (Δ: to each study's own reference)")
    table.add_column("variant", no_wrap=True)
    for s in c.studies:
        table.add_column(f"{s}\nfinal NLL", justify="right", no_wrap=True)
        table.add_column(f"{s}\nΔ [CI]", justify="right")
    for _, row in c.table.iterrows():
        cells = [str(row[COL_VARIANT])]
        for s in c.studies:
            cells += list(_cell(row, s))
        table.add_row(*cells)
    return table


def compare_markdown(c: Comparison) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [
            [str(row[COL_VARIANT]), *(x for s in c.studies for x in _cell(row, s))]
            for _, row in c.table.iterrows()
        ],
        columns=["variant", *(f"{s}: {what}" for s in c.studies for what in ("final NLL", "Δ [CI]"))],
    )
    body = frame.to_markdown(index=False, disable_numparse=True)
    head = f"# Final held-out NLL across studies: {', '.join(f'`{s}`' for s in c.studies)}"
    return "\n".join([head, "", body, "", *(f"- {n}" for n in c.notes)]) + "\n"


def compare_html(c: Comparison) -> str:
    """The comparison as one self-contained HTML page (the report's CSS, no script)."""
    from reatt.report.html import environment

    rows = [(str(row[COL_VARIANT]), [_cell(row, s) for s in c.studies]) for _, row in c.table.iterrows()]
    return environment().get_template("compare.html.j2").render(studies=c.studies, rows=rows, notes=c.notes)


def write_compare(c: Comparison, out_dir: Path, *, html: bool = False) -> list[Path]:
    """compare.md and compare.csv (the raw numbers) into ``out_dir``; compare.html too with
    ``html``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReattError(f"{out_dir} is not a directory: give --out a directory for the comparison")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / "compare.md", out_dir / "compare.csv"
    write_atomic(md, compare_markdown(c))
    write_atomic(csv, str(c.table.to_csv(index=False)))
    if not html:
        return [md, csv]
    write_atomic(out_dir / "compare.html", compare_html(c))
    return [md, csv, out_dir / "compare.html"]
