"""The final-NLL figure: final held-out NLL per variant, and Δ vs the reference with its CI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reatt.report.build import (
    COL_DELTA,
    COL_HIGH,
    COL_LOW,
    COL_MEAN,
    COL_METHOD,
    COL_N,
    COL_STD,
    COL_VARIANT,
    Report,
)
from reatt.report.figures import colors, gaps_caption, ref_label
from reatt.report.format import excludes_zero, fmt_signed, isnan

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


def plot_final_nll(report: Report) -> Figure:
    """Left: final held-out NLL per variant (mean ± 1 std over seeds, each seed a hollow dot)
    with the reference's mean as a dashed line. Right: Δ vs the reference with its CI (Holm step-down level),
    filled where the interval excludes 0. Variants sorted by NLL, best on top."""
    import seaborn as sns
    from matplotlib.figure import Figure

    t = report.table[report.table[COL_N] > 0].reset_index(drop=True)
    palette = colors(report)
    runs = report.runs if report.runs is not None else report.curves.iloc[0:0].assign(final_nll=[])
    per_seed = {str(v): list(g["final_nll"]) for v, g in runs.groupby("variant")}
    ypos = {v: i for i, v in enumerate(t[COL_VARIANT])}
    labels = [f"{v}  (n={int(n)})" for v, n in zip(t[COL_VARIANT], t[COL_N], strict=True)]
    has_ref = report.reference is not None and report.reference in ypos
    several = bool((t[COL_N] > 1).any())
    methods = [m for m in ("paired", "Welch") if m in set(t[COL_METHOD])]
    ref, ref_name = report.reference or "reference", ref_label(report)
    bottom = len(t) - 0.5  # an empty band under the last row holds the dashed lines' labels

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(12.5, max(3.8, 2.0 + 0.45 * len(t))), layout="constrained")
        ax, ax_d = fig.subplots(1, 2, sharey=True)
        small: dict[str, Any] = {"textcoords": "offset points", "ha": "center", "fontsize": "x-small"}
        small["color"] = "0.2"
        small["bbox"] = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}
        for _, row in t.iterrows():
            v = row[COL_VARIANT]
            y, color = ypos[v], palette[v]
            if len(per_seed.get(v, [])) > 1:
                xs = per_seed[v]
                ax.scatter(xs, [y] * len(xs), s=30, facecolor="none", edgecolor=color, alpha=0.8, zorder=2)
            std = None if isnan(row[COL_STD]) else row[COL_STD]
            ax.errorbar(row[COL_MEAN], y, xerr=std, fmt="o", ms=8, color=color, capsize=4, lw=1.8, zorder=3)
            ax.annotate(f"{row[COL_MEAN]:.3f}", (row[COL_MEAN], y), xytext=(0, 9), **small)
            if isnan(row[COL_DELTA]):
                continue
            is_ref = row[COL_METHOD] == "reference"
            err = None
            if not isnan(row[COL_LOW]):
                err = [[row[COL_DELTA] - row[COL_LOW]], [row[COL_HIGH] - row[COL_DELTA]]]
            face = color if (excludes_zero(row) or is_ref) else "white"
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
            text = "reference" if is_ref else fmt_signed(row[COL_DELTA], 3)
            ax_d.annotate(text, (row[COL_DELTA], y), xytext=(0, 9), **small)
        line = {"color": "0.2", "ls": "--", "lw": 1.2, "zorder": 1}
        label = {"va": "center", "fontsize": "small", "color": "0.2"}
        if has_ref:
            ref_mean = float(t.loc[ypos[ref], COL_MEAN])
            ax.axvline(ref_mean, **line)
            ax.text(ref_mean, bottom + 0.3, f" {ref_name} mean ({ref_mean:.3f})", ha="left", **label)
        ax_d.axvline(0.0, **line)
        ax_d.text(0.0, bottom + 0.3, f"{ref_name} (Δ = 0) ", ha="right", **label)
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
            ax_d.set_title(
                f"Difference to {ref}: mean and CI\n({how}, Holm, family-wise 95%;"  # fits the axes
                " filled: the CI excludes 0)"
            )
        else:
            ax_d.set_title(f"Difference to {ref}\n(one seed per variant: no confidence interval)")
        _pad_delta(ax_d, t)
        fig.suptitle(f"Study {report.study}: final held-out NLL", fontsize="large")
        gaps_caption(fig, report, delta=True)
    return fig


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
