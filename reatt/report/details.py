"""What the HTML report says beyond the table: the study's question and spec, each run's
details (state, speed, wall time, the reatt version and git commit it ran, its config against
the reference's) and the commands that reproduce it.

Read from the database only (``reatt collect`` stores each run's config.json, whose ``meta``
holds the reatt version and git commit), so it needs no run directory.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reatt.study.spec import COLLECTED_MATRIX
from reatt.training.config import flatten, format_value

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy import Engine

# keys that differ between any two runs by construction: not part of a run's "config diff"
NOT_COMPARED = ("system.work_dir", "system.seed")
UNKNOWN = "?"


@dataclass
class RunDetail:
    """One run of the study, as the database holds it."""

    name: str
    variant: str
    seed: int
    stage: str  # "tune", "eval", or "" in a study without [tune]
    state: str
    reason: str
    final_nll: float | None
    tokens_per_s: float | None
    wall_time_s: float | None
    steps: int | None
    reatt_version: str
    git_commit: str
    device: str
    # the commits and versions its resumes ran at, where they differ from its first start's
    resumed_at: list[str] = field(default_factory=list)
    # (key, the reference run's value, this run's value): where this run's config differs
    diff: list[tuple[str, str, str]] = field(default_factory=list)
    compared_to: str = ""  # the run its config is compared with ("" for none)
    command: str = ""  # python -m reatt.train ... (its overrides)


@dataclass
class StudyDetails:
    """The study's own record: its question, its spec as planned, and its runs."""

    name: str
    description: str
    matrix: str
    reference: str | None
    spec_path: str | None
    spec_toml: str  # the spec as planned, as TOML ("" for a collected study)
    planned_at: str
    runs: list[RunDetail]

    @property
    def commits(self) -> list[str]:
        """The git commits the runs ran at (known ones), in order of first use."""
        return list(dict.fromkeys(r.git_commit for r in self.runs if r.git_commit != UNKNOWN))

    @property
    def versions(self) -> list[str]:
        return list(dict.fromkeys(r.reatt_version for r in self.runs if r.reatt_version != UNKNOWN))

    def commands(self) -> list[str]:
        """The shell lines that reproduce the study from its spec (the spec below, saved where
        it was planned from), in a checkout of the commit its runs ran at."""
        lines = []
        if len(self.commits) == 1:
            lines.append(f"git checkout {shlex.quote(self.commits[0])} && pip install -e .")
        elif self.commits:
            lines.append(
                f"# the runs ran at {len(self.commits)} git commits (see Runs): check out a run's own "
                "commit to reproduce it exactly"
            )
        if self.matrix == COLLECTED_MATRIX:
            lines.append("# collected from hand-made runs: each run's own command is below")
            return lines
        if not self.spec_path:
            lines.append("# the spec's path was not recorded: save the spec below as a file and plan it")
            return lines
        spec = shlex.quote(self.spec_path)
        lines.append(f"reatt plan {spec} && reatt submit && reatt collect && reatt report --html")
        return lines


def _meta_text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return str(value) if isinstance(value, str) and value else UNKNOWN


def _flat_config(run: Any) -> dict[str, Any]:
    """The run's config without its meta, flat; its overrides where no config.json was read."""
    config = run.config if isinstance(run.config, dict) else None
    if config is None:
        return dict(run.overrides or {})
    return flatten({k: v for k, v in config.items() if k != "meta" and isinstance(v, dict)})


def _diff(mine: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, str, str]]:
    keys = sorted((set(mine) | set(theirs)) - set(NOT_COMPARED))
    absent = "(absent)"
    return [
        (k, absent if k not in theirs else repr(theirs[k]), absent if k not in mine else repr(mine[k]))
        for k in keys
        if mine.get(k, absent) != theirs.get(k, absent)
    ]


def _command(overrides: dict[str, Any]) -> str:
    args = [f"--{k}={format_value(k, v)}" for k, v in (overrides or {}).items()]
    return shlex.join(["python", "-m", "reatt.train", *args])


def study_details(engine: Engine, study: str | None) -> StudyDetails:
    """The details of ``study`` (default: the latest planned), from the database alone."""
    import tomli_w

    from reatt.study import store

    with store.transaction(engine) as session:
        st = store.get_study(session, study)
        spec = st.spec if isinstance(st.spec, dict) else {}
        description = str((spec.get("study") or {}).get("description") or "")
        try:
            spec_toml = tomli_w.dumps(spec) if spec else ""
        except (TypeError, ValueError):  # a value TOML cannot write (a null): shown as stored
            spec_toml = repr(spec)
        reference = st.reference or ("baseline" if any(r.variant == "baseline" for r in st.runs) else None)
        flat = {r.name: _flat_config(r) for r in st.runs}
        ref_runs = [r for r in st.runs if r.variant == reference]
        runs = []
        for r in st.runs:
            meta = (r.config or {}).get("meta") if isinstance(r.config, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            # the reference run of the same stage and seed, else of the same stage, else any
            candidates = [x for x in ref_runs if x.stage == r.stage] or ref_runs
            ref = next((x for x in candidates if x.seed == r.seed), candidates[0] if candidates else None)
            detail = RunDetail(
                name=r.name,
                variant=r.variant,
                seed=r.seed,
                stage=r.stage or "",
                state=r.state,
                reason=r.state_reason or r.collect_error or "",
                final_nll=r.final_nll,
                tokens_per_s=r.tokens_per_s,
                wall_time_s=r.wall_time_s,
                steps=r.steps,
                reatt_version=_meta_text(meta, "reatt_version"),
                git_commit=_meta_text(meta, "git_commit"),
                device=_meta_text(meta, "device"),
                command=_command(r.overrides),
            )
            resumes: list[Any] = meta.get("resumes") or []
            later = [
                f"{_meta_text(m, 'git_commit')[:10]} (reatt {_meta_text(m, 'reatt_version')})"
                for m in (resumes if isinstance(resumes, list) else [])
                if isinstance(m, dict)
                and (_meta_text(m, "git_commit"), _meta_text(m, "reatt_version"))
                != (detail.git_commit, detail.reatt_version)
            ]
            detail.resumed_at = list(dict.fromkeys(later))
            if ref is not None and ref is not r:
                detail.diff, detail.compared_to = _diff(flat[r.name], flat[ref.name]), ref.name
            runs.append(detail)
        return StudyDetails(
            name=st.name,
            description=description,
            matrix=st.matrix,
            reference=reference,
            spec_path=st.spec_path,
            spec_toml=spec_toml,
            planned_at=f"{st.planned_at:%Y-%m-%d %H:%M} UTC",
            runs=runs,
        )
