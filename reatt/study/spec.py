"""Ablation specs (TOML files under ``ablations/``) and their expansion into job specs.

A spec is data, never code: a study name, the base overrides applied to every run, each
feature as a named set of overrides, the matrix, the seeds and the Slurm settings::

    [study]
    name = "demo"
    matrix = "standard"        # standard | leave-one-out | factorial | list
    seeds = [1, 2]

    [base]
    model.model_type = "gpt-nano"
    trainer.max_iters = 300

    [features]
    swiglu = { "model.swiglu" = true }
    warmup = { "trainer.warmup_steps" = 30 }

    [slurm]
    time = "00:30:00"

Every override key and value type is checked against the training config (and each run's
full config against its cross-key rules) before anything is recorded, run or submitted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reatt.errors import ConfigError, SpecError
from reatt.executors.base import NAME_RE
from reatt.executors.slurm.settings import SlurmSettings, check_settings
from reatt.rundir import is_number
from reatt.study.jobs import JobSpec, expand_matrix, study_jobs
from reatt.study.tune import PRUNE_KEYS, TuneSpec, parse_tune
from reatt.training.config import (
    check_config,
    coerce,
    flatten,
    get_default_config,
    shown,
)
from reatt.training.schema import SCHEMA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MATRICES = ("standard", "leave-one-out", "factorial", "list")
COLLECTED_MATRIX = "collected"  # Study.matrix of runs collected from a directory tree: no spec
# set by the plan for each run; a spec may not set them
PLAN_KEYS = ("system.seed", "system.work_dir")
PATH_KEYS = ("data.file_path", "data.cache_dir")  # made absolute at plan time
# every run of a study has the same value of these: NLLs (and tokens/s) of runs trained in other
# precisions, or through another loss implementation, do not compare
SHARED_KEYS = ("trainer.precision", "model.fused_loss")
DEFAULT_SEED = SCHEMA["system.seed"].default  # one seed, the training default, unless [study] seeds


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated spec file."""

    name: str
    path: str
    description: str
    matrix: str
    seeds: tuple[int, ...]
    base: dict[str, Any]
    features: dict[str, dict[str, Any]]  # name -> flat overrides, in file order
    runs: dict[str, dict[str, Any]]  # matrix "list": name -> {"features": [...], "set": {...}}
    reference: str
    out_dir: str  # absolute
    slurm: SlurmSettings
    raw: dict[str, Any]  # the parsed TOML
    tune: TuneSpec | None = None  # [tune]: each variant tuned on its own before it is evaluated

    @property
    def spec_hash(self) -> str:
        """Hash of what the spec means (comments and layout do not count)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def variants(self) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
        """(variant name, features on, the variant's own extra overrides), in plan order."""
        return expand_matrix(self.matrix, list(self.features), self.runs)

    def jobs(self, name: str | None = None, out_dir: str | None = None) -> list[JobSpec]:
        """Every job of the plan (``reatt.study.jobs.study_jobs``); ``name``/``out_dir``
        override the study's (a new version of a study gets its own name and directory)."""
        return study_jobs(
            name or self.name,
            Path(out_dir or self.out_dir),
            self.variants(),
            self.seeds,
            self.base,
            self.features,
            self.tune,
        )


def _check_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate keys and value types against the training config; return them coerced, with
    relative paths made absolute (see ``_absolute_path``)."""
    out = {}
    for key, value in flatten(overrides).items():
        if key in PLAN_KEYS:
            raise SpecError(
                f"{where}: {key} is set by reatt plan (the seeds list and out/<study>/<run>); remove it"
            )
        if key in PRUNE_KEYS:
            raise SpecError(
                f"{where}: {key} is set by reatt plan for tuning runs ([tune] prune_margin, prune_after)"
            )
        try:
            out[key] = coerce(key, value)
        except ConfigError as e:
            raise SpecError(f"{where}: {e}") from None
        if key in PATH_KEYS and out[key]:
            out[key] = _absolute_path(key, out[key], where)
    return out


def _absolute_path(key: str, value: str, where: str) -> str:
    """A path of the spec, relative to the directory `reatt plan` runs in (as out_dir is), made
    absolute: jobs run elsewhere (a Slurm node, another cwd). The data file must exist now, not
    fail every job after it was queued."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    path = path.resolve()
    if key == "data.file_path" and not path.is_file():
        raise SpecError(f"{where}: {key} = {value!r}: no such file ({path})")
    return str(path)


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    return value


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file. Errors name the file, the run and the key."""
    path = Path(path)
    where = f"{path}"
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec ({e.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    unknown = set(raw) - {"study", "base", "features", "runs", "tune", "slurm"}
    if unknown:
        raise SpecError(
            f"{where}: unknown table(s) {', '.join(sorted(unknown))}; "
            "valid: [study], [base], [features], [runs], [tune], [slurm]"
        )
    st = _table(raw, "study", where)
    known_study = {"name", "description", "matrix", "seeds", "reference", "out_dir"}
    if set(st) - known_study:
        raise SpecError(
            f"{where}: [study] has unknown key(s) {', '.join(sorted(set(st) - known_study))}; "
            f"valid: {', '.join(sorted(known_study))}"
        )
    name = st.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpecError(
            f"{where}: [study] name = {name!r}: expected letters, digits, '_', '.', '+' or '-' "
            "(starting with a letter or digit)"
        )
    matrix = st.get("matrix", "standard")
    if matrix not in MATRICES:
        raise SpecError(f"{where}: [study] matrix = {matrix!r}: expected one of {', '.join(MATRICES)}")
    seeds = st.get("seeds", [DEFAULT_SEED])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(is_number(s, (int,)) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SpecError(
            f"{where}: [study] seeds = {shown(seeds)}: expected a list of distinct integers "
            "from 0 to 2**63 - 1"
        )
    description = st.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{where}: [study] description must be a string")
    out_dir = st.get("out_dir", "out")
    if not isinstance(out_dir, str) or not out_dir:
        raise SpecError(f"{where}: [study] out_dir = {out_dir!r}: expected a directory path")

    base = _check_overrides(_table(raw, "base", where), f"{where}: [base]")
    features: dict[str, dict[str, Any]] = {}
    for fname, fover in _table(raw, "features", where).items():
        if not NAME_RE.fullmatch(fname):
            raise SpecError(
                f"{where}: feature name {fname!r}: expected letters, digits, '_', '.', '+' or '-'"
            )
        if not isinstance(fover, dict) or not fover:
            raise SpecError(
                f'{where}: feature {fname!r}: expected a table of overrides, like {{ "model.rope" = true }}'
            )
        features[fname] = _check_overrides(fover, f"{where}: feature {fname!r}")

    runs: dict[str, dict[str, Any]] = {}
    runs_table = _table(raw, "runs", where)
    if matrix == "list":
        if not runs_table:
            raise SpecError(f'{where}: matrix = "list" needs [runs.<name>] tables')
        for rname, rdef in runs_table.items():
            rwhere = f"{where}: run {rname!r}"
            if not NAME_RE.fullmatch(rname):
                raise SpecError(f"{rwhere}: expected a name of letters, digits, '_', '.', '+' or '-'")
            if not isinstance(rdef, dict) or set(rdef) - {"features", "set"}:
                raise SpecError(
                    f"{rwhere}: expected a table with 'features' (a list) and optional 'set' (a table)"
                )
            rfeats = rdef.get("features", [])
            if not isinstance(rfeats, list) or not all(isinstance(f, str) for f in rfeats):
                raise SpecError(f"{rwhere}: features must be a list of feature names")
            missing = [f for f in rfeats if f not in features]
            if missing:
                defined = ", ".join(features) or "none"
                raise SpecError(f"{rwhere}: unknown feature(s) {', '.join(missing)}; defined: {defined}")
            rset = rdef.get("set", {})
            if not isinstance(rset, dict):
                raise SpecError(f"{rwhere}: 'set' must be a table of overrides")
            runs[rname] = {"features": rfeats, "set": _check_overrides(rset, rwhere)}
    elif runs_table:
        raise SpecError(
            f'{where}: [runs] is only used with matrix = "list" (this study has matrix = {matrix!r})'
        )
    elif not features and matrix != "standard":
        raise SpecError(f"{where}: matrix {matrix!r} needs at least one entry in [features]")

    variant_names = [v[0] for v in expand_matrix(matrix, list(features), runs)]
    repeated = sorted({n for n in variant_names if variant_names.count(n) > 1})
    if repeated:
        raise SpecError(
            f"{where}: matrix {matrix!r} gives several runs named {', '.join(map(repr, repeated))}; "
            "rename the feature(s) that collide (the standard matrix also names runs 'baseline' and "
            "'all', leave-one-out 'no-<feature>', factorial joins names with '+')"
        )
    default_reference = (
        "all"
        if matrix == "leave-one-out"
        else ("baseline" if "baseline" in variant_names else variant_names[0])
    )
    reference = st.get("reference", default_reference)
    if reference not in variant_names:
        raise SpecError(
            f"{where}: [study] reference = {reference!r} is not a run; runs: {', '.join(variant_names)}"
        )
    set_by: dict[str, set[str]] = {}
    for fname, fover in features.items():
        for key in fover:
            set_by.setdefault(key, set()).add(f"feature {fname!r}")
    for rname, rdef in runs.items():
        for key in rdef["set"]:
            set_by.setdefault(key, set()).add(f"run {rname!r}")
    tune = parse_tune(raw.get("tune"), base, set_by, tuple(seeds), where)
    slurm = SlurmSettings.from_table(_table(raw, "slurm", where), where + ": ")
    try:
        check_settings(slurm)
    except SpecError as e:
        raise SpecError(f"{where}: [slurm]: {e}") from None

    spec = StudySpec(
        name=name,
        path=str(path.resolve()),
        description=description,
        matrix=matrix,
        seeds=tuple(seeds),
        base=base,
        features=features,
        runs=runs,
        reference=reference,
        out_dir=str(Path(out_dir).expanduser().resolve()),
        slurm=slurm,
        raw=raw,
        tune=tune,
    )
    names = [j.name for j in spec.jobs()]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise SpecError(
            f"{where}: several jobs would be named {', '.join(map(repr, clash))}; rename the run(s)"
        )
    _check_full_configs(spec, where)
    return spec


def _check_full_configs(spec: StudySpec, where: str) -> None:
    """Each job's complete config must pass the training program's own checks, and all share
    the values of ``SHARED_KEYS``."""
    first: dict[str, tuple[Any, str]] = {}  # key -> (value, the first job's variant)
    for job in spec.jobs():
        cfg = get_default_config()
        cfg.merge_from_dict(job.overrides)
        try:
            check_config(cfg)
        except ConfigError as e:
            raise SpecError(f"{where}: run {job.name!r}: {e}") from None
        for key in SHARED_KEYS:
            value = cfg.get(key)
            value0, variant0 = first.setdefault(key, (value, job.variant))
            if value != value0:
                raise SpecError(
                    f"{where}: variant {job.variant!r} (run {job.name!r}) has {key} = {value!r}, "
                    f"variant {variant0!r} has {value0!r}: a study's runs share one {key} "
                    "(results of another precision or loss do not compare); set it in [base] only"
                )


def spec_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """The keys that differ between two parsed specs, as "key: old -> new; ..."."""
    a, b = flatten(old), flatten(new)
    missing = "<unset>"
    diffs = [
        f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    ]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more
