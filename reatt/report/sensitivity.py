"""The learning-rate sensitivity figure of a tuned study: per variant, the final held-out NLL of
every tuning run against its candidate value (each seed a point, their mean a line), the chosen
value ringed, the shared value dotted, pruned runs as crosses at the NLL they stopped with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from reatt import states
from reatt.report.build import Report
from reatt.report.figures import colors

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def plot_sensitivity(report: Report) -> Figure:
    """One small panel per variant (plan order), sharing the y axis."""
    import seaborn as sns
    from matplotlib.figure import Figure

    frame = report.tuning
    if frame is None or frame.empty:
        raise ValueError(f"study {report.study} has no tuning runs")
    variants = [v for v in report.variants if v in set(frame["variant"])]
    palette = colors(report)
    keys = report.shared_value.split("=")[0] if report.shared_value else "candidate"
    numeric = bool(frame["x"].gt(0).all()) and frame["candidate"].nunique() == frame["x"].nunique()
    log = numeric and frame["x"].max() / frame["x"].min() >= 8
    cols = min(len(variants), 4)
    rows = math.ceil(len(variants) / cols)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(3.4 * cols + 0.6, 2.9 * rows + 0.9), layout="constrained")
        axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
        done = frame[frame["state"] == states.COMPLETED]["final_nll"].dropna()
        lo, hi = (float(done.min()), float(done.max())) if not done.empty else (0.0, 1.0)
        span = max(hi - lo, 0.05)
        bottom, top = lo - 0.15 * span, hi + 0.45 * span
        values = sorted(frame.drop_duplicates("x")["x"])
        for ax, v in zip(axes, variants, strict=False):
            g = frame[frame["variant"] == v]
            color = palette.get(v, "0.2")
            ok = g[g["state"] == states.COMPLETED]
            pruned = g[(g["state"] == states.PRUNED) & g["final_nll"].notna()]
            ax.scatter(ok["x"], ok["final_nll"], s=28, color=color, alpha=0.75, zorder=3, label="tuning seed")
            if not pruned.empty:  # at the NLL it stopped with; far above the others: on the top edge
                ys = [min(y, top) for y in pruned["final_nll"]]
                ax.scatter(
                    pruned["x"],
                    ys,
                    marker="x",
                    s=40,
                    color="0.35",
                    zorder=3,
                    label="pruned (NLL when stopped)",
                    clip_on=False,
                )
                for x, y in zip(pruned["x"], pruned["final_nll"], strict=True):
                    if y > top:
                        ax.annotate(
                            f"{y:.2f}",
                            (x, top),
                            xytext=(0, -12),
                            textcoords="offset points",
                            ha="center",
                            fontsize="x-small",
                            color="0.35",
                        )
            means = ok.groupby("x")["final_nll"].mean().sort_index()
            ax.plot(means.index, means.values, color=color, lw=1.5, zorder=2)
            shared = g[g["shared"]]
            if not shared.empty:
                ax.axvline(float(shared["x"].iloc[0]), color="0.4", ls=":", lw=1.2, label="shared value")
            chosen = g[g["chosen"] & (g["state"] == states.COMPLETED)]
            if not chosen.empty:
                x = float(chosen["x"].iloc[0])
                ax.scatter(
                    [x],
                    [float(means.get(x, math.nan))],
                    s=160,
                    facecolor="none",
                    edgecolor="black",
                    lw=1.6,
                    zorder=4,
                    label="chosen",
                )
            ax.set_title(v, fontsize="medium", color=color if v != report.reference else "black")
            ax.set_ylim(bottom, top)
            if log:
                ax.set_xscale("log")
                ax.minorticks_off()
            if numeric:
                ax.set_xticks(values, [f"{x:g}" for x in values], fontsize="x-small")
            if not numeric:
                labels = g.drop_duplicates("x").sort_values("x")
                ax.set_xticks(list(labels["x"]), list(labels["candidate"]), rotation=30, fontsize="x-small")
            ax.set_xlabel(keys if numeric else "candidate", fontsize="small")
        for ax in axes[len(variants) :]:
            ax.set_visible(False)
        axes[0].set_ylabel("final held-out NLL (nats/token)")
        handles, labels = axes[0].get_legend_handles_labels()
        seen = dict(zip(labels, handles, strict=True))
        for ax in axes[1 : len(variants)]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="outside lower center",
            ncols=len(seen),
            fontsize="small",
        )
        seeds = ", ".join(map(str, sorted(frame["seed"].unique())))
        fig.suptitle(
            f"Study {report.study}: sensitivity to {keys} (stage 1, tuning seed(s) {seeds}; lower is better)",
            fontsize="medium",
        )
    return fig
