"""The report's tables: rich (the terminal), Markdown with a legend and notes, CSV (the raw
numbers) and a compact LaTeX booktabs table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reatt.report import FORMATS
from reatt.report.build import (
    COL_DELTA,
    COL_DIVERGED,
    COL_FEATURES,
    COL_HIGH,
    COL_LOW,
    COL_MEAN,
    COL_METHOD,
    COL_N,
    COL_PARAMS,
    COL_PARAMS_NE,
    COL_PLANNED,
    COL_STD,
    COL_TPS,
    COL_TRAIN,
    COL_VARIANT,
    NO_FEATURES,
    Report,
)
from reatt.report.comparable import incomparable_note
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
    COL_SHARED_VERDICT,
    COL_VERDICT,
    TUNED_COLUMNS,
)
from reatt.report.format import (
    ci_text,
    excludes_zero,
    fmt_count,
    fmt_num,
    fmt_signed,
    incomparable_line,
    isnan,
    legend_line,
    params_text,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table


def display_frame(report: Report) -> pd.DataFrame:
    """The table with every number as text: 4 decimals for losses, empty for missing values,
    Δ with its sign and '*' where the 95% CI excludes 0."""
    t = report.table
    out = t.copy().astype(object)
    for col in (COL_MEAN, COL_STD, COL_LOW, COL_HIGH, COL_TRAIN, COL_SHARED_LOW, COL_SHARED_HIGH):
        out[col] = [fmt_num(x) for x in t[col]]
    out[COL_SHARED_DELTA] = [fmt_signed(x, minus="-") for x in t[COL_SHARED_DELTA]]
    for col in (COL_P, COL_P_HOLM, COL_LEVEL):
        out[col] = [fmt_num(x) for x in t[col]]
    out[COL_DELTA] = [
        (fmt_num(0.0) if row[COL_METHOD] == "reference" else fmt_signed(row[COL_DELTA], minus="-"))
        + ("*" if excludes_zero(row) else "")
        for _, row in t.iterrows()
    ]
    for col in (COL_PARAMS, COL_PARAMS_NE):
        out[col] = [fmt_count(x) for x in t[col]]
    out[COL_TPS] = [fmt_num(x, 0) for x in t[COL_TPS]]
    hidden = [COL_SE, COL_DF] + ([] if report.tuned else list(TUNED_COLUMNS))  # in the CSV
    return out.drop(columns=hidden)


def render_table(report: Report) -> Table:
    """The table for the terminal: best variant highlighted, Δ with sign and 95% CI, CIs that
    exclude 0 marked (green: better than the reference, red: worse). In a narrow terminal the
    secondary columns (tokens/s, params, train loss, CI method, features) are hidden, and the
    caption says so; the values are never cut."""
    from rich.text import Text

    from reatt.terminal import FittingTable

    ref = report.reference or "reference"
    title = Text(f"Study {report.study}: final held-out NLL (nats/token, lower is better)")
    caption = Text()
    if not report.comparable:
        title.append(" NOT COMPARABLE", style="bold red")
        caption.append(f"{incomparable_line(report)}; see the notes.\n", style="bold red")
    caption.append(
        f"★ lowest mean final NLL. Δ: difference in mean final NLL vs {ref}, with its CI at the "
        "Holm–Bonferroni step-down level (family-wise 95% over the study's comparisons); * CI "
        "excludes 0: resolved. ± : sample std over seeds; n/planned: seeds completed. "
        "tokens/s depends on the machine and its load at the time of each run."
    )
    table = FittingTable(
        title=title,
        caption=caption,
        caption_justify="left",
        droppable=(9, 8, 7, 6, 1),  # tokens/s, params, train loss, CI method, features
    )
    best = report.best
    rows = []
    for _, row in report.table.iterrows():
        n, planned = int(row[COL_N]), int(row[COL_PLANNED])
        n_text = Text(str(n) if n == planned else f"{n}/{planned}", style="" if n == planned else "yellow")
        if row[COL_DIVERGED]:  # a result: those seeds' loss became non-finite
            n_text.append(f" ({int(row[COL_DIVERGED])} diverged)", style="magenta")
        nll = fmt_num(row[COL_MEAN])
        if not isnan(row[COL_STD]):
            nll += f" ± {fmt_num(row[COL_STD])}"
        delta = Text(ci_text(row))
        if excludes_zero(row):
            delta.append(" *")
            delta.stylize("green" if row[COL_DELTA] < 0 else "red")
        elif row[COL_METHOD] == "reference":
            delta.stylize("dim")
        name = Text(str(row[COL_VARIANT]))
        if row[COL_VARIANT] == best:
            name = Text(f"★ {row[COL_VARIANT]}", style="bold green")
        verdict = str(row[COL_VERDICT])
        style = {"better": "green", "worse": "red", "reference": "dim"}.get(verdict, "yellow")
        cells = [
            name,
            Text(str(row[COL_FEATURES])),
            n_text,
            Text(nll) if nll else Text("no run", style="yellow"),
            delta,
            Text("" if verdict == "reference" else verdict, style=style),
            Text(str(row[COL_METHOD]) if row[COL_METHOD] != "reference" else ""),
            Text(fmt_num(row[COL_TRAIN])),
            Text(params_text(row[COL_PARAMS], row[COL_PARAMS_NE])),
            Text(fmt_num(row[COL_TPS], 0)),
        ]
        if report.tuned:
            cells.insert(1, Text(_short_keys(str(row[COL_CHOSEN]))))
            shared = Text(shared_text(row))
            if row[COL_SHARED_VERDICT] in ("better", "worse"):
                shared.stylize("green" if row[COL_SHARED_VERDICT] == "better" else "red")
            cells.insert(7, shared)
        rows.append((cells, "bold" if row[COL_VARIANT] == best else None))
    headers = ["variant", "features", "n", "final NLL ± std", f"Δ vs {ref} [CI]", "verdict", "CI method"]
    headers += ["train loss", "params (non-emb.)", "tokens/s"]
    dims, lefts = {1, 6}, {0, 1, 5, 6}
    if report.tuned:
        headers.insert(1, "chosen value")
        headers.insert(7, f"Δ at shared {_short_keys(report.shared_value) or 'value'} [CI]")
        dims, lefts = {2, 8}, {0, 1, 2, 6, 8}
        table.droppable = (11, 10, 9, 8, 2, 7, 1)  # ... CI method, features, Δ at shared, chosen
    for i, header in enumerate(headers):
        # values are never cut or folded: a narrow terminal hides whole columns instead
        width = max([len(cells[i].plain) for cells, _ in rows] + [1])
        dim = "dim" if i in dims else ""
        left = i in lefts
        table.add_column(
            header, justify="left" if left else "right", min_width=width, no_wrap=True, style=dim
        )
    for cells, row_style in rows:
        table.add_row(*cells, style=row_style)
    return table


def _short_keys(text: str) -> str:
    """ "learning_rate=0.002" for "trainer.learning_rate=0.002": the terminal's width is short."""
    return text.replace("trainer.", "").replace("model.", "")


def shared_text(row: Any) -> str:
    """Δ at the shared value with its CI and verdict: "+0.012 [−0.004, +0.028] not resolved"."""
    if row[COL_SHARED_VERDICT] == "reference":
        return "0.000 (reference)"
    if isnan(row[COL_SHARED_DELTA]):
        return "no run at it"
    text = fmt_signed(row[COL_SHARED_DELTA], 3)
    if not isnan(row[COL_SHARED_LOW]):
        text += f" [{fmt_signed(row[COL_SHARED_LOW], 3)}, {fmt_signed(row[COL_SHARED_HIGH], 3)}]"
    return f"{text} {row[COL_SHARED_VERDICT]}"


def _latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
    repl.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})
    text = "".join(repl.get(ch, ch) for ch in text)
    return text.replace(NO_FEATURES, "---")


def _latex_num(x: Any, digits: int = 3, signed: bool = False) -> str:
    if isnan(x):
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
        if not isnan(row[COL_STD]):
            nll += r" $\pm$ " + _latex_num(row[COL_STD])
        delta = _latex_num(row[COL_DELTA], signed=row[COL_METHOD] != "reference")
        if excludes_zero(row):
            delta += "$^{*}$"
        ci = ""
        if not isnan(row[COL_LOW]):
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
                "CI": ci,
                "Verdict": _latex_escape(str(row[COL_VERDICT])),
                "Params": fmt_count(row[COL_PARAMS]).replace(",", r"\,"),
                "Tokens/s": fmt_num(row[COL_TPS], 0),
            }
        )
    import pandas as pd

    frame = pd.DataFrame(rows)
    caption = (
        f"Study {_latex_escape(report.study)}: final held-out NLL (nats/token, lower is better), "
        rf"mean $\pm$ sample std over $n$ seeds; $\Delta$: difference in mean vs {ref} with its "
        r"confidence interval at the Holm--Bonferroni step-down level (family-wise 95\%); $^{*}$: "
        r"the interval excludes 0 (resolved)."
    )
    if not report.comparable:
        caption += r" \textbf{" + _latex_escape(incomparable_note(report.incomparable)) + "}"
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
        frame = display_frame(report)
        align = ["left" if c in (COL_VARIANT, COL_FEATURES, COL_METHOD) else "right" for c in frame.columns]
        body = frame.to_markdown(index=False, disable_numparse=True, colalign=align)
        parts = [f"# Final held-out NLL: study `{report.study}`", ""]
        notes = list(report.notes)
        if not report.comparable:  # above the table, not among the notes under it
            warning = incomparable_note(report.incomparable)
            parts += [f"> **{warning}**", ""]
            notes = [n for n in notes if n != warning]
        parts += [legend_line(report), "", body]
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
