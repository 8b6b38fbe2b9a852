"""Recording a plan: a parsed spec's study and runs in the database (``reatt plan``), and the
jobs a recorded study runs (``jobs_of``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from reatt import rundir, states
from reatt.errors import SpecError
from reatt.files import utc_now
from reatt.study import store
from reatt.study.jobs import JobSpec
from reatt.study.spec import StudySpec, spec_changes
from reatt.study.tune import EVAL


@dataclass
class PlanResult:
    """What ``plan_study`` did: the study's name, its jobs, and the action taken."""

    study: str
    jobs: list[JobSpec]
    action: str  # "created", "unchanged", "replaced" or "new version"
    moved: list[tuple[str, str]] = field(default_factory=list)  # run dirs moved aside by --force
    dropped: list[str] = field(default_factory=list)  # runs no longer in the plan (--force)


def _plain(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides as they come back from the database's JSON (tuples become lists)."""
    return json.loads(json.dumps(overrides))


def plan_study(
    spec: StudySpec, engine: Engine, *, force: bool = False, new_version: bool = False
) -> PlanResult:
    """Record the spec's study and runs in the database.

    Planning the same spec twice changes nothing. A changed spec for an existing study is
    refused unless ``new_version`` (plan it as ``<name>-v2``, ``-v3``, ... in its own
    directory) or ``force`` (replace the plan: unchanged runs keep their state and results,
    changed runs start over with their old directory moved aside, dropped runs leave the
    database but keep their files).
    """
    if force and new_version:
        raise SpecError("choose one of --force and --new-version")
    with store.transaction(engine) as session:
        store.lock_studies(session, [spec.name])  # two plans of one study take turns
        existing = session.scalar(select(store.Study).where(store.Study.name == spec.name))
        if existing is None:
            jobs = spec.jobs()
            _add_study(session, spec, spec.name, spec.out_dir, jobs)
            return PlanResult(spec.name, jobs, "created")
        if new_version:
            names = [spec.name] + [f"{spec.name}-v{n}" for n in range(2, 1000)]
            for name in names:
                study = session.scalar(select(store.Study).where(store.Study.name == name))
                if study is None:
                    jobs = spec.jobs(name=name)
                    _add_study(session, spec, name, spec.out_dir, jobs)
                    return PlanResult(name, jobs, "new version")
                if study.spec_hash == spec.spec_hash:
                    study.planned_at = utc_now()
                    return PlanResult(name, spec.jobs(name=name), "unchanged")
            raise SpecError(f"{spec.path}: too many versions of study {spec.name!r}")
        jobs = spec.jobs()
        if existing.spec_hash == spec.spec_hash:
            existing.planned_at = utc_now()
            return PlanResult(spec.name, jobs, "unchanged")
        if existing.spec_hash is None:
            raise SpecError(
                f"study {spec.name!r} holds runs collected from {existing.out_dir} without a spec; "
                "choose another [study] name"
            )
        if not force:
            raise SpecError(
                f"{spec.path}: study {spec.name!r} was planned from a different spec "
                f"({existing.spec_path}, {existing.planned_at:%Y-%m-%d %H:%M} UTC; changed: "
                f"{spec_changes(existing.spec or {}, spec.raw)}). "
                f"Run `reatt plan {spec.path} --new-version` to plan it as a new version, "
                "or `--force` to replace the plan (runs already done are kept where unchanged)"
            )
        result = PlanResult(spec.name, jobs, "replaced")
        by_name = {r.name: r for r in existing.runs}
        wanted = {j.name: j for j in jobs}
        # an evaluation run's value was chosen under the old [tune]: a new one chooses again
        tune_changed = (existing.spec or {}).get("tune") != spec.raw.get("tune")

        def changed_run(run: store.Run) -> bool:
            job = wanted.get(run.name)
            if job is None or _plain(job.overrides) != run.overrides or job.stage != run.stage:
                return True
            return job.stage == EVAL and tune_changed

        for run in existing.runs:
            changed = changed_run(run)
            if changed and run.state in states.ACTIVE_STATES:
                raise SpecError(
                    f"run {run.name!r} of study {spec.name!r} is {run.state} (job {run.job_id}); "
                    "cancel it first (`reatt cancel`) or plan without --force"
                )
        to_move: list[Path] = []  # the changed runs' old directories, moved aside once committed
        for name, run in by_name.items():
            if name not in wanted:
                session.delete(run)
                result.dropped.append(name)
        for job in jobs:
            current = by_name.get(job.name)
            if current is None:
                session.add(_run_row(existing, job))
                continue
            if not changed_run(current):
                current.position = job.position
                continue
            to_move.append(Path(current.work_dir))
            session.delete(current)
            session.flush()
            session.add(_run_row(existing, job))
        existing.spec_path, existing.spec_hash, existing.spec = spec.path, spec.spec_hash, spec.raw
        existing.matrix, existing.reference = spec.matrix, spec.reference
        existing.planned_at = utc_now()
    # after the commit: a failed commit must not leave recorded runs pointing at moved directories
    for old in to_move:
        aside = rundir.archive(old)
        if aside is not None:
            result.moved.append((str(old), str(aside)))
    return result


def _add_study(session: Any, spec: StudySpec, name: str, out_dir: str, jobs: list[JobSpec]) -> None:
    study = store.Study(
        name=name,
        spec_path=spec.path,
        spec_hash=spec.spec_hash,
        spec=spec.raw,
        matrix=spec.matrix,
        reference=spec.reference,
        out_dir=out_dir,
    )
    session.add(study)
    for job in jobs:
        study.runs.append(_run_row(study, job))


def _run_row(study: store.Study, job: JobSpec) -> store.Run:
    return store.Run(
        study=study,
        name=job.name,
        variant=job.variant,
        seed=job.seed,
        position=job.position,
        features=list(job.features),
        overrides=_plain(job.overrides),
        work_dir=job.work_dir,
        stage=job.stage,
        tuning=_plain(job.tuning) if job.tuning is not None else None,
    )


def jobs_of(study: store.Study) -> list[JobSpec]:
    """The JobSpecs of a study as recorded in the database (what submit runs): an evaluation
    run of a tuned study runs at the values its variant's tuning chose (none yet: it waits)."""
    jobs = []
    for r in study.runs:
        overrides = dict(r.overrides)
        chosen = (r.tuning or {}).get("chosen") if r.stage == EVAL else None
        if chosen:
            seed, work_dir = overrides.pop("system.seed"), overrides.pop("system.work_dir")
            overrides.update(chosen)
            overrides["system.seed"], overrides["system.work_dir"] = seed, work_dir
        jobs.append(
            JobSpec(
                study=study.name,
                name=r.name,
                variant=r.variant,
                seed=r.seed,
                position=r.position,
                features=tuple(r.features),
                overrides=overrides,
                work_dir=r.work_dir,
                stage=r.stage,
                tuning=dict(r.tuning) if r.tuning is not None else None,
            )
        )
    return jobs
