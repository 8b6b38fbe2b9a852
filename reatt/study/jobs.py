"""A plan's jobs: the variants of a matrix (``expand_matrix``) and every job of a study
(``study_jobs``): the evaluation jobs (each variant at each seed) and, for a tuned study, the
tuning jobs before them (each variant at each candidate and tuning seed). No database."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reatt.errors import StudyError
from reatt.study.tune import EVAL, TUNE, TuneSpec, run_name, tuning_overrides
from reatt.training.config import format_value


@dataclass(frozen=True)
class JobSpec:
    """One job: a variant at one seed, with everything needed to run it."""

    study: str
    name: str  # unique in the study: the variant, plus -s<seed> when the study has several seeds
    variant: str
    seed: int
    position: int  # order in the plan, and the task id in a job array
    features: tuple[str, ...]
    overrides: dict[str, Any]  # flat; base, then features, then the run's own, then seed and work_dir
    work_dir: str  # absolute
    stage: str | None = None  # tuned studies: "tune" (stage 1) or "eval" (stage 2); else None
    # a tuning run: {"candidate": {key: value}}; an evaluation run once its variant's tuning
    # chose: {"chosen": {key: value}, "why": "...", ...} (``reatt.study.selection``)
    tuning: dict[str, Any] | None = None

    @property
    def waits_for_tuning(self) -> bool:
        """An evaluation run whose value is not chosen yet: it cannot run."""
        return self.stage == EVAL and not (self.tuning or {}).get("chosen")

    def argv(self) -> list[str]:
        """Arguments of ``python -m reatt.train`` for this job."""
        if self.waits_for_tuning:
            raise StudyError(
                f"run {self.name!r} waits for its variant's tuning (stage 1) to choose its value"
            )
        return [f"--{k}={format_value(k, v)}" for k, v in self.overrides.items()]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        d["argv"] = self.argv()
        return d


def expand_matrix(
    matrix: str, features: Sequence[str], runs: dict[str, dict[str, Any]] | None = None
) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """The variants of a matrix as (name, features on, extra overrides).

    - standard: baseline, one run per feature, and all features on ("all"; left out when
      there is a single feature, where it would repeat that feature's run);
    - leave-one-out: all on, then all on minus each feature ("no-<feature>");
    - factorial: every combination, "baseline" for none, else the features joined by "+";
    - list: the spec's ``[runs.<name>]`` tables, each with ``features`` and optional ``set``.
    """
    feats = tuple(features)
    out: list[tuple[str, tuple[str, ...]]]
    if matrix == "standard":
        out = [("baseline", ())] + [(f, (f,)) for f in feats]
        if len(feats) > 1:
            out.append(("all", feats))
    elif matrix == "leave-one-out":
        out = [("all", feats)] + [(f"no-{f}", tuple(g for g in feats if g != f)) for f in feats]
    elif matrix == "factorial":
        out = []
        for r in range(len(feats) + 1):
            for combo in itertools.combinations(feats, r):
                out.append(("+".join(combo) or "baseline", combo))
    elif matrix == "list":
        return [(name, tuple(r["features"]), dict(r["set"])) for name, r in (runs or {}).items()]
    else:
        raise ValueError(f"unknown matrix {matrix!r}")
    return [(name, combo, {}) for name, combo in out]


def study_jobs(
    study: str,
    root: Path,
    variants: Sequence[tuple[str, tuple[str, ...], dict[str, Any]]],
    seeds: Sequence[int],
    base: dict[str, Any],
    features: dict[str, dict[str, Any]],
    tune: TuneSpec | None = None,
) -> list[JobSpec]:
    """Every job of a study, in plan order (the task ids of a job array).

    A job's overrides are applied in order: ``base``, its features (in ``features`` order), the
    variant's own, a tuning job's candidate, then the seed and work dir. Evaluation runs are
    named ``<variant>`` (``-s<seed>`` with several seeds); a tuned study's tuning runs come
    first, ``tune-<variant>-<candidate>-s<seed>``, the candidates of a variant and seed together
    (each may be pruned against the others, `reatt.study.tune`)."""
    jobs: list[JobSpec] = []

    def own(feats: tuple[str, ...], extra: dict[str, Any]) -> dict[str, Any]:
        overrides: dict[str, Any] = dict(base)
        for f in feats:
            overrides.update(features[f])
        overrides.update(extra)
        return overrides

    def add(
        name: str, variant: str, seed: int, feats: tuple[str, ...], overrides: dict[str, Any], **kw: Any
    ) -> None:
        overrides = dict(overrides)
        overrides.pop("system.seed", None)
        overrides["system.seed"] = seed
        overrides["system.work_dir"] = str(root / study / name)
        job = JobSpec(
            study, name, variant, seed, len(jobs), feats, overrides, overrides["system.work_dir"], **kw
        )
        jobs.append(job)

    def shared(candidate: dict[str, Any]) -> bool:  # the value every variant has without tuning
        return tune is not None and all(repr(candidate[k]) == repr(v) for k, v in tune.shared.items())

    if tune is not None:
        for (vname, feats, extra), seed in itertools.product(variants, tune.seeds):
            # the shared value first: usually a fair one, so that the others can be pruned against it
            candidates = sorted(tune.candidates(), key=lambda c: not shared(c))
            names = [run_name(vname, tune.label(c), seed) for c in candidates]
            for candidate, name in zip(candidates, names, strict=True):
                siblings = [str(root / study / other) for other in names if other != name]
                overrides = tuning_overrides(tune, own(feats, extra), candidate, siblings)
                add(
                    name,
                    vname,
                    seed,
                    feats,
                    overrides,
                    stage=TUNE,
                    tuning={"candidate": candidate, "shared": shared(candidate)},
                )
    several = len(seeds) > 1
    for (vname, feats, extra), seed in itertools.product(variants, seeds):
        name = f"{vname}-s{seed}" if several else vname
        add(name, vname, seed, feats, own(feats, extra), stage=EVAL if tune is not None else None)
    return jobs
