"""The loss-curve figure: training loss (smoothed) and held-out NLL against training tokens."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from reatt.errors import StudyError
from reatt.report.build import COL_N, COL_VARIANT, Report
from reatt.report.figures import colors, gaps_caption

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


def _smoothing_window(curves: pd.DataFrame) -> tuple[int, int, float]:
    """The moving-average window in logged rows (odd, about a tenth of a run's rows, so a
    batch-1 run's noise does not hide 0.01-nat differences), the steps it spans, and the
    median logging interval in steps."""
    rows = curves.dropna(subset=["loss"]).groupby("run")["step"]
    if rows.ngroups == 0:
        return 1, 0, math.nan
    n_rows = int(rows.size().median())
    # the steps a row's loss averages: since the previous row (the step-0 row included)
    steps = curves.sort_values(["run", "step"]).groupby("run")["step"]
    step_gap = float(steps.apply(lambda s: s.diff().median()).median())
    window = max(1, round(n_rows / 10)) | 1
    return window, round(window * (step_gap if math.isfinite(step_gap) else 1)), step_gap


def _window_bounds(n: int, window: int) -> tuple[Any, Any]:
    """Row i's moving-average window, rows [lo[i], hi[i]): centered, with a half-width that
    grows from 0 at the first row to ``window // 2`` (about i/2 rows at row i), so the fast early
    drop of the loss is not flattened; cut short by the last row at the end."""
    import numpy as np

    idx = np.arange(n)
    half = np.minimum(window // 2, idx // 2)
    return idx - half, np.minimum(idx + half + 1, n)


def _smooth_run(run: pd.DataFrame, window: int) -> pd.DataFrame:
    """One run's training-loss line: each point the mean training loss over the steps of a
    window of logged rows, drawn at the middle of those steps (in the x unit of ``x_mid``).

    ``run`` holds the run's rows with a training loss, in step order, with ``width`` (the steps
    each row's loss averages: since the previous logged row) and ``x_mid`` (the middle of that
    interval). Rows are weighted by their width, so the mean is over steps, and the point's x is
    the middle of the steps averaged: a loss.csv row's mean loss is not drawn at the row's own
    step, where it would sit above a falling held-out NLL measured there. At the end of the run
    the window is cut short, and its middle moves back from the last row accordingly."""
    import numpy as np
    import pandas as pd

    w = run["width"].to_numpy(dtype=float)
    lo, hi = _window_bounds(len(run), window)

    def windowed(values: Any) -> Any:
        csum = np.concatenate([[0.0], np.cumsum(w * values)])
        return csum[hi] - csum[lo]

    total = windowed(np.ones(len(run)))
    return pd.DataFrame(
        {
            "x": windowed(run["x_mid"].to_numpy(dtype=float)) / total,
            "smooth": windowed(run["loss"].to_numpy(dtype=float)) / total,
        },
        index=run.index,
    )


def training_lines(c: pd.DataFrame, xcol: str, window: int) -> pd.DataFrame:
    """Per run and logged step with a training loss: ``x`` (where the point is drawn) and
    ``smooth`` (its value), with the run's variant. The interval a row's loss averages runs
    from the previous logged row (any row: the step-0 row has no loss but starts the first
    interval) to the row; a run's first row without a previous one starts at x = 0 (step 0)."""
    import numpy as np
    import pandas as pd

    rows = c.dropna(subset=[xcol]).sort_values(["run", "step"], kind="stable")
    by_run = rows.groupby("run", sort=False)
    prev_x = by_run[xcol].shift(1).fillna(0.0)
    prev_step = by_run["step"].shift(1).fillna(0.0)
    rows = rows.assign(x_mid=(rows[xcol] + prev_x) / 2, width=(rows["step"] - prev_step).clip(lower=1))
    rows = rows[np.isfinite(rows["loss"].to_numpy(dtype=float))]  # an inf would void the sums
    if rows.empty:
        return pd.DataFrame(columns=["run", "variant", "step", "x", "smooth"])
    parts = [_smooth_run(g, window) for _, g in rows.groupby("run", sort=False)]
    return rows[["run", "variant", "step"]].join(pd.concat(parts))


def log_ticks(ax: Any, lo: float, hi: float) -> None:
    """Labelled ticks on a log x axis that spans [lo, hi]: 1-9, 1-2-3-5 or 1-2-5 per decade on
    a short span, 1-3 on a middle one, one per decade on a long one, so that even a run shorter
    than a decade has several labels (matplotlib's default labels only the powers of 10)."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    if decades < 0.6:
        subs: tuple[float, ...] = tuple(float(i) for i in range(1, 10))
    elif decades < 1.3:
        subs = (1.0, 2.0, 3.0, 5.0)
    elif decades <= 2.5:
        subs = (1.0, 2.0, 5.0)
    elif decades <= 4.5:
        subs = (1.0, 3.0)
    else:
        subs = (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=40))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=40))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_loss_curves(report: Report) -> Figure:
    """Training loss and held-out NLL (dots, mean over seeds) vs training tokens: the whole run
    on a log axis, and the second half zoomed in, where the variants separate.

    A loss.csv row's training loss is the mean over the steps since the previous row; each
    line point is drawn at the middle of the steps it averages (``_smooth_run``: a moving
    average over logged rows, weighted by their steps), then averaged over seeds with a min–max
    band. A held-out dot is drawn at the step it was measured."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    c = report.curves
    if c.empty:
        raise StudyError(f"study {report.study!r}: the completed runs have no metrics; run `reatt collect`")
    use_tokens = bool(c["tokens"].notna().any())
    xcol = "tokens" if use_tokens else "step"
    xunit = "tokens" if use_tokens else "steps"
    xlabel = "training tokens" if use_tokens else "optimizer steps"
    window, window_steps, step_gap = _smoothing_window(c)
    train = training_lines(c, xcol, window)
    agg = (
        train.groupby(["variant", "step"])
        .agg(x=("x", "mean"), mean=("smooth", "mean"), lo=("smooth", "min"), hi=("smooth", "max"))
        .reset_index()
    )
    held = (
        c.dropna(subset=["val_loss", xcol])
        .groupby(["variant", "step"])
        .agg(x=(xcol, "mean"), val=("val_loss", "mean"))
        .reset_index()
    )
    palette = colors(report)
    present = set(agg["variant"]) | set(held["variant"])
    order = [v for v in report.table[COL_VARIANT] if v in present]
    seeds = report.table.set_index(COL_VARIANT)[COL_N]
    xmax = float(max(agg["x"].max() if not agg.empty else 0, held["x"].max() if not held.empty else 0))
    positive = [float(f["x"][f["x"] > 0].min()) for f in (agg, held) if (f["x"] > 0).any()]
    xmin = min(positive) if positive else xmax
    zoom_from = 0.5 * xmax
    zoom_lo = zoom_from - 0.02 * xmax  # a margin, so that the dots at zoom_from show whole
    fmt = EngFormatter(sep="")
    # the dots, over every line: small and a little transparent, the reference's first (under
    # the others), so that variants with near-equal held-out NLL do not hide each other's dots
    dot_order = sorted(order, key=lambda v: v != report.reference)
    dot = {"s": 22, "alpha": 0.8, "edgecolor": "white", "lw": 0.5}

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(13, 5.8), layout="constrained")
        ax_all, ax_zoom = fig.subplots(1, 2)
        for ax, zoom in ((ax_all, False), (ax_zoom, True)):
            ylo, yhi = math.inf, -math.inf
            for v in order:
                color, is_ref = palette[v], v == report.reference
                a = agg[(agg["variant"] == v) & (agg["x"] > 0)]  # x = 0 has no place on a log axis
                if zoom:
                    a = a[a["x"] >= zoom_lo]
                    if len(a):
                        ylo, yhi = min(ylo, a["lo"].min()), max(yhi, a["hi"].max())
                ax.plot(a["x"], a["mean"], color=color, lw=2.2 if is_ref else 1.6, ls="--" if is_ref else "-")
                if seeds.get(v, 0) > 1:
                    ax.fill_between(a["x"], a["lo"], a["hi"], color=color, alpha=0.10, lw=0)
            for i, v in enumerate(dot_order):
                h = held[(held["variant"] == v) & (held["x"] > 0)]
                if zoom:
                    h = h[h["x"] >= zoom_lo]
                    if len(h):
                        ylo, yhi = min(ylo, h["val"].min()), max(yhi, h["val"].max())
                ax.scatter(h["x"], h["val"], color=palette[v], zorder=4 + i / 100, **dot)
            if zoom and math.isfinite(ylo):
                pad = 0.06 * ((yhi - ylo) or 1.0)
                ax.set_ylim(ylo - pad, yhi + pad)
                ax.set_xlim(zoom_lo, xmax * 1.02)
            ax.set_ylabel("loss (nats/token)")
        ax_all.set_xscale("log")
        log_ticks(ax_all, xmin, xmax)
        ax_all.set_xlabel(f"{xlabel} (log scale)")
        ax_zoom.set_xlabel(xlabel)
        ax_zoom.xaxis.set_major_formatter(fmt)
        ax_all.set_title("whole run")
        ax_zoom.set_title(f"second half, zoomed in (from {fmt(zoom_from)} {xunit})")
        legend = _curves_legend(window, window_steps, step_gap, bool(seeds.max() > 1))
        fig.suptitle(f"Study {report.study}: loss curves\n{legend}", fontsize="medium")
        gaps_caption(fig, report)
        handles = [
            Line2D(
                [],
                [],
                color=palette[v],
                lw=2.2 if v == report.reference else 1.6,
                ls="--" if v == report.reference else "-",
                marker="o",
                markersize=5,
                markeredgecolor="white",
                markeredgewidth=0.5,
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


def _curves_legend(window: int, window_steps: int, step_gap: float, several_seeds: bool) -> str:
    """What the loss-curve figure's lines and dots are, for its title (two lines)."""
    gap = f"{step_gap:g} steps" if math.isfinite(step_gap) else ""
    if window > 1:
        line = (
            f"lines: training loss, each point the mean over ≤{window_steps} steps ({window} logging "
            f"intervals{' of ' + gap if gap else ''}; fewer at the start), drawn at the middle of those steps"
        )
    else:
        line = f"lines: training loss, the mean of each logging interval{f' ({gap})' if gap else ''}"
        line += " drawn at its midpoint"
        line += "; not smoothed"
    if several_seeds:
        seeds = "then averaged over seeds (band: min–max over seeds)"
        return f"{line},\n{seeds}; dots: held-out NLL at its step, mean over seeds"
    return f"{line};\ndots: held-out NLL at the step it was measured"
