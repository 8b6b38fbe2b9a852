"""What makes the report's comparisons fair: pairs checked, verdicts corrected for the number of
comparisons, the noise floor and the power it leaves, and a tuned study's comparison at the
shared value.

- **Pairing**: a seed pairs two runs only where both trained on the same data order and started
  from the same initialization wherever their architectures agree (the fingerprints in
  config.json's meta); a seed that fails the check is left out of the pairs, and a note says so.
- **Holm–Bonferroni** over the variants of a study: each Δ's p-value, its Holm-adjusted p, and
  its CI at the step-down level that makes "the CI excludes 0" and "resolved" the same thing.
  A Δ not resolved is never called better or worse.
- **Noise floor**: the reference's run-to-run std, the spread of the per-seed differences, the
  smallest Δ the study resolves with 80% power, and the seeds a Δ would need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reatt.report.stats import Diff, holm, interval, min_detectable, p_value, seeds_needed

ALPHA = 0.05  # family-wise error rate of a study's verdicts
POWER = 0.8
BETTER, WORSE, NOT_RESOLVED, REFERENCE = "better", "worse", "not resolved", "reference"

COL_VERDICT = "verdict"
COL_P = "p"
COL_P_HOLM = "p Holm"
COL_LEVEL = "CI level"
COL_SE = "Δ se"
COL_DF = "Δ df"
COL_CHOSEN = "chosen value"
COL_SHARED_N = "n at shared"
COL_SHARED_DELTA = "Δ at shared value"
COL_SHARED_LOW = "shared CI low"
COL_SHARED_HIGH = "shared CI high"
COL_SHARED_VERDICT = "verdict at shared value"
FAIR_COLUMNS = (COL_VERDICT, COL_P, COL_P_HOLM, COL_LEVEL, COL_SE, COL_DF)
TUNED_COLUMNS = (
    COL_CHOSEN,
    COL_SHARED_N,
    COL_SHARED_DELTA,
    COL_SHARED_LOW,
    COL_SHARED_HIGH,
    COL_SHARED_VERDICT,
)


# ----------------------------------------------------------------------------------- pairing


def _fingerprints(config: Any) -> tuple[Any, dict[str, str]]:
    """(data-order fingerprint or None, {parameter: "shape:hash"}) from a run's config.json."""
    meta = config.get("meta", {}) if isinstance(config, dict) else {}
    data = meta.get("data", {}) if isinstance(meta, dict) else {}
    train = data.get("train", data) if isinstance(data, dict) else {}
    order = train.get("order") if isinstance(train, dict) else None
    model = meta.get("model", {}) if isinstance(meta, dict) else {}
    init = model.get("init", {}) if isinstance(model, dict) else {}
    return order, init if isinstance(init, dict) else {}


def pair_problem(config: Any, ref_config: Any) -> str | None:
    """Why two runs of one seed are not a pair (None: they are, or nothing says otherwise)."""
    order, init = _fingerprints(config)
    ref_order, ref_init = _fingerprints(ref_config)
    if order is not None and ref_order is not None and order != ref_order:
        return "their training batches differ"
    differ = [
        name
        for name, value in init.items()
        if name in ref_init
        and str(value).split(":")[0] == str(ref_init[name]).split(":")[0]  # same shape
        and value != ref_init[name]
    ]
    if differ:
        return f"their initializations differ where the architectures agree ({', '.join(differ[:3])})"
    return None


def unpaired_seeds(runs: Sequence[Any], ref_runs: Sequence[Any]) -> dict[int, str]:
    """{seed: why} for the seeds whose run of a variant and of the reference are not a pair."""
    ref_by_seed = {r.seed: r for r in ref_runs}
    out = {}
    for r in runs:
        ref = ref_by_seed.get(r.seed)
        if ref is not None and r is not ref:
            why = pair_problem(r.config, ref.config)
            if why is not None:
                out[r.seed] = why
    return out


# ------------------------------------------------------------------------------- verdicts


def verdict(delta: float, low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return NOT_RESOLVED
    if high < 0:
        return BETTER
    if low > 0:
        return WORSE
    return NOT_RESOLVED


@dataclass(frozen=True)
class Judged:
    """A Δ after the correction: its CI at the Holm step-down level, p-values and verdict."""

    diff: Diff
    p: float
    p_holm: float
    level: float
    verdict: str


def correct(diffs: dict[Any, Diff]) -> dict[Any, Judged]:
    """Holm–Bonferroni over one family of comparisons (a study's non-reference variants): each
    CI recomputed at its step-down level, so that it excludes 0 exactly where Holm rejects."""
    ps = [p_value(d) for d in diffs.values()]
    out = {}
    for (key, d), p, h in zip(diffs.items(), ps, holm(ps, ALPHA), strict=True):
        if not math.isnan(h.level):
            d = interval(d, h.level)
        out[key] = Judged(d, p, h.p_adjusted, h.level, verdict(d.delta, d.low, d.high))
    return out


# ---------------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class Compared:
    """What the noise floor needs of one variant's row of the table."""

    variant: str
    delta: float
    verdict: str
    method: str  # "paired", "Welch", "reference" or ""
    n: int
    se: float


def noise_notes(
    rows: Sequence[Compared], reference_finals: Sequence[float], reference: str | None, m: int
) -> list[str]:
    """The noise floor of the study and what it can resolve, as notes."""
    if reference is None:
        return []
    if len(reference_finals) < 2:
        return [
            "Noise floor: unknown with one seed of the reference; plan at least 3 seeds to measure "
            "the run-to-run spread and what this study can resolve."
        ]
    n_seeds = len(reference_finals)
    mean = math.fsum(reference_finals) / n_seeds
    sigma_ref = math.sqrt(math.fsum((x - mean) ** 2 for x in reference_finals) / (n_seeds - 1))
    # the spread of the per-seed differences, pooled over the paired variants: what a paired
    # comparison's power depends on (pairing removes the noise both runs of a seed share)
    num = den = 0.0
    for row in rows:
        if row.method == "paired" and row.n >= 2 and not math.isnan(row.se):
            num += (row.n - 1) * (row.se * math.sqrt(row.n)) ** 2
            den += row.n - 1
    if den:
        sigma_d = math.sqrt(num / den)
        spread = f"the per-seed differences to it vary by {sigma_d:.4f} (pooled std)"
    else:
        sigma_d = sigma_ref * math.sqrt(2)
        spread = f"no variant is paired with it, so a difference varies by about √2 × that ({sigma_d:.4f})"
    alpha = ALPHA / max(m, 1)  # the first step of Holm: the strictest level of the family
    mde = min_detectable(sigma_d, n_seeds, alpha, POWER)
    notes = [
        f"Noise floor: {reference}'s run-to-run std of the final NLL is {sigma_ref:.4f} nats over "
        f"{n_seeds} seeds; {spread}. With {n_seeds} seeds and {m} comparison(s) (Holm, α = {ALPHA} "
        f"family-wise), the smallest Δ this study resolves with {POWER:.0%} power is {mde:.4f} nats."
    ]
    for row in rows:
        if row.verdict != NOT_RESOLVED or math.isnan(row.delta) or row.delta == 0:
            continue
        need = seeds_needed(row.delta, sigma_d, alpha, POWER)
        more = (
            f"about {need} seeds would resolve a Δ this size" if need else "no feasible number of seeds would"
        )
        notes.append(f"{row.variant}: Δ {row.delta:+.4f} is not resolved; {more} ({POWER:.0%} power).")
    return notes


def seeds_for(delta: float, sigma_d: float, m: int) -> int | None:
    """Seeds a study of ``m`` comparisons needs to resolve ``delta`` (``reatt plan --target-delta``)."""
    return seeds_needed(delta, sigma_d, ALPHA / max(m, 1), POWER)
