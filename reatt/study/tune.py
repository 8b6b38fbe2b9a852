"""A spec's ``[tune]`` table: every variant tuned on its own, on seeds kept apart from the
evaluation seeds (``parse_tune``), and the tuning runs it adds to a plan (``tuning_jobs``).

    [tune]
    seeds = [101]                                    # tuning seeds: none of [study] seeds
    "trainer.learning_rate" = [1e-3, 2e-3, 4e-3]     # candidates (several keys: their grid)
    prune_margin = 0.1                               # nats; 0: no pruning
    prune_after = 0.5                                # fraction of trainer.max_iters

Stage 1 runs every variant at every candidate and tuning seed; stage 2 runs the evaluation
seeds of each variant at the candidate with the lowest mean final held-out NLL over the tuning
seeds (``reatt.study.selection`` chooses and records why). The shared value of each tuned key
(``[base]``'s, else the training default) must be a candidate: the report also compares every
variant there, at no extra cost.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

from reatt.errors import ConfigError, SpecError
from reatt.rundir import is_number
from reatt.training.config import coerce, flatten, format_value, shown
from reatt.training.schema import SCHEMA

TUNE = "tune"  # Run.stage of a tuning run
EVAL = "eval"  # Run.stage of an evaluation run of a tuned study
OPTIONS = ("seeds", "prune_margin", "prune_after")
DEFAULT_PRUNE_MARGIN = 0.1  # nats above the best sibling at the same step
DEFAULT_PRUNE_AFTER = 0.5  # only evaluations in the second half of the budget prune
PRUNE_KEYS = ("trainer.prune_margin", "trainer.prune_after", "trainer.prune_siblings")


@dataclass(frozen=True)
class TuneSpec:
    """A parsed ``[tune]`` table."""

    keys: dict[str, tuple[Any, ...]]  # tuned key -> its candidate values, in file order
    seeds: tuple[int, ...]
    prune_margin: float
    prune_after: float  # fraction of the run's trainer.max_iters
    shared: dict[str, Any]  # each key's value without tuning ([base], else the default)

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the keys' values, the first key's varying slowest."""
        return [dict(zip(self.keys, combo, strict=True)) for combo in itertools.product(*self.keys.values())]

    def label(self, candidate: dict[str, Any]) -> str:
        return candidate_label(candidate)


def candidate_label(candidate: dict[str, Any]) -> str:
    """ "lr0.001" (several keys: "lr0.001-ws10"): a candidate in run names and figures."""
    return "-".join(f"{short_key(k, candidate)}{_value_text(k, v)}" for k, v in candidate.items())


def candidate_text(candidate: dict[str, Any]) -> str:
    """ "trainer.learning_rate=0.001": a candidate as the report and the plan print it."""
    return ", ".join(f"{k}={format_value(k, v)}" for k, v in candidate.items())


def short_key(key: str, keys: Any = ()) -> str:
    """A key's initials ("trainer.learning_rate" -> "lr"), or its last part where two tuned
    keys would share initials."""
    leaf = key.rsplit(".", 1)[-1]
    initials = "".join(part[0] for part in leaf.split("_") if part)
    clash = [
        k
        for k in keys
        if k != key and "".join(p[0] for p in k.rsplit(".", 1)[-1].split("_") if p) == initials
    ]
    return leaf if clash else initials


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return format_value(key, value).replace(" ", "")


def parse_tune(
    raw: Any, base: dict[str, Any], set_by: dict[str, set[str]], eval_seeds: tuple[int, ...], where: str
) -> TuneSpec | None:
    """Validate ``[tune]`` (None when the spec has none). ``set_by``: key -> the features and
    runs that set it (a tuned key may be set by none of them: tuning would overwrite it)."""
    if raw is None:
        return None
    where = f"{where}: [tune]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a table")
    seeds = raw.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(is_number(s, (int,)) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SpecError(
            f"{where} seeds = {shown(seeds)}: expected a list of distinct integers from 0 to 2**63 - 1 "
            "(the tuning seeds, kept apart from [study] seeds)"
        )
    both = sorted(set(seeds) & set(eval_seeds))
    if both:
        raise SpecError(
            f"{where} seeds and [study] seeds share {', '.join(map(str, both))}: a value chosen on a "
            "seed's runs would be evaluated on the same seed's runs (the winner's curse); use other seeds"
        )
    margin = raw.get("prune_margin", DEFAULT_PRUNE_MARGIN)
    if not is_number(margin) or not math.isfinite(margin) or margin < 0:
        raise SpecError(
            f"{where} prune_margin = {shown(margin)}: expected a number of nats >= 0 (0: no pruning)"
        )
    after = raw.get("prune_after", DEFAULT_PRUNE_AFTER)
    if not is_number(after) or not 0 <= after <= 1:
        raise SpecError(
            f"{where} prune_after = {shown(after)}: expected a fraction of trainer.max_iters, 0 to 1"
        )
    keys: dict[str, tuple[Any, ...]] = {}
    for key, values in flatten({k: v for k, v in raw.items() if k not in OPTIONS}).items():
        if key not in SCHEMA:
            known = ", ".join(OPTIONS)
            raise SpecError(
                f"{where} {key}: not a config key (`python -m reatt.train --help`) nor one of {known}"
            )
        if key.startswith("system.") or key.startswith("data.") or key in PRUNE_KEYS:
            raise SpecError(
                f"{where} {key}: only model and trainer keys can be tuned (the data and the seed define "
                "what a comparison is made on)"
            )
        if not isinstance(values, list) or len(values) < 2:
            raise SpecError(
                f"{where} {key} = {shown(values)}: expected a list of at least two candidate values"
            )
        try:
            coerced = tuple(coerce(key, v) for v in values)
        except ConfigError as e:
            raise SpecError(f"{where}: {e}") from None
        if len(set(map(repr, coerced))) != len(coerced):
            raise SpecError(f"{where} {key} = {shown(values)}: a candidate is listed twice")
        if set_by.get(key):
            raise SpecError(
                f"{where} {key} is tuned, but {', '.join(sorted(set_by[key]))} set(s) it too: tuning would "
                "overwrite it; tune it, or set it, not both"
            )
        keys[key] = coerced
    if not keys:
        raise SpecError(f'{where} names no key to tune, e.g. "trainer.learning_rate" = [1e-3, 2e-3, 4e-3]')
    shared = {k: base.get(k, SCHEMA[k].default) for k in keys}
    for k, value in shared.items():
        if not any(repr(c) == repr(value) for c in keys[k]):
            origin = "[base]" if k in base else "the training default"
            raise SpecError(
                f"{where} {k}: the shared value {format_value(k, value)} ({origin}) is not a "
                "candidate: add it to the list (the report also compares every variant at the shared "
                "value), or set another in [base]"
            )
    return TuneSpec(keys, tuple(seeds), float(margin), float(after), shared)


def run_name(variant: str, label: str, seed: int) -> str:
    return f"tune-{variant}-{label}-s{seed}"


def tuning_overrides(
    tune: TuneSpec,
    variant_overrides: dict[str, Any],
    candidate: dict[str, Any],
    sibling_dirs: list[str],
) -> dict[str, Any]:
    """A tuning run's overrides: the variant's, its candidate's values, and what pruning needs
    (the sibling candidates of its variant and seed, and the step from which it may prune)."""
    overrides = dict(variant_overrides)
    overrides.update(candidate)
    if tune.prune_margin > 0 and sibling_dirs:
        max_iters = overrides.get("trainer.max_iters", SCHEMA["trainer.max_iters"].default)
        overrides["trainer.prune_margin"] = tune.prune_margin
        overrides["trainer.prune_after"] = int(math.ceil(tune.prune_after * max_iters))
        overrides["trainer.prune_siblings"] = os.pathsep.join(sibling_dirs)
    return overrides
