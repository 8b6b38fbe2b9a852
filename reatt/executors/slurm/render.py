"""sbatch scripts rendered from ``slurm_templates/*.sbatch.j2`` (pure: no Slurm call).

Quoting: the scripts are bash. Every value placed in a shell line goes through ``shlex.quote``
(the ``q`` filter); ``#SBATCH`` values go through ``sbatch_value`` and ``sbatch_log``. Jinja's
``StrictUndefined`` makes a missing variable an error, never empty text.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reatt
from reatt import rundir
from reatt.errors import ReattError, SpecError
from reatt.executors.base import NAME_RE, Job
from reatt.executors.slurm.logs import job_name, log_dir
from reatt.executors.slurm.settings import ENV_NAME, SlurmSettings, check_settings, has_control
from reatt.train import TRAIN_ENV, TRAIN_MODULE

TEMPLATE_DIR = Path(reatt.__file__).resolve().parent.parent / "slurm_templates"
TEMPLATE_DIR_ENV = "REATT_SLURM_TEMPLATES"  # another directory holding job.sbatch.j2 / array.sbatch.j2
JOB_TEMPLATE = "job.sbatch.j2"
ARRAY_TEMPLATE = "array.sbatch.j2"


def sbatch_value(value: Any) -> str:
    """A value for an #SBATCH line: checked already; refuse anything a line could not hold."""
    text = str(value)
    if has_control(text) or not text:
        raise SpecError(f"#SBATCH value {text!r}: empty or holds control characters (newline, tab...)")
    return text


def sbatch_log(log_dir: Any, name: str) -> str:
    """``--output``/``--error`` value: ``<log_dir>/<name>``. sbatch splits #SBATCH lines on
    whitespace and cuts them at '#' unless quoted (double quotes work in 22.05, backslashes do
    not), and expands '%' patterns: such a path is double-quoted and its '%' doubled (``%%``
    is a literal '%'). A path with '"', a backslash or a control character is refused."""
    text = str(log_dir)
    bad = sorted({c for c in text if c in '"\\' or has_control(c)})
    if bad or not text:
        raise SpecError(
            f"Slurm log directory {text!r}: sbatch cannot take a path with {' '.join(map(repr, bad))} "
            "in an #SBATCH line; choose a [study] out_dir without double quotes, backslashes or newlines"
        )
    value = text.replace("%", "%%").rstrip("/") + "/" + name
    if any(c.isspace() or c in "'#" for c in value):
        value = f'"{value}"'
    return value


def _shell_quote(value: Any) -> str:
    text = str(value)
    if "\x00" in text:
        raise SpecError(f"{text!r}: a NUL character cannot be passed to a shell")
    return shlex.quote(text)


@dataclass(frozen=True)
class ScriptContext:
    """Where a script runs and logs: not part of the study's spec."""

    project_dir: str  # the job cds here first (the directory `reatt submit` ran in)
    python: str  # the interpreter that runs `-m reatt.train`
    log_dir: str  # Slurm's .out/.err files: <study out_dir>/slurm
    env: dict[str, str] = field(default_factory=lambda: dict(TRAIN_ENV))

    @classmethod
    def for_study(
        cls, out_dir: str | os.PathLike[str], settings: SlurmSettings, project_dir: str | None = None
    ) -> ScriptContext:
        """The defaults: this directory, this Python (or `python` of ``settings.venv``), <out_dir>/slurm."""
        return cls(
            project_dir=str(project_dir or Path.cwd()),
            python="python" if settings.venv else sys.executable,
            log_dir=str(log_dir(Path(out_dir))),
            env=dict(TRAIN_ENV),
        )


def template_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The templates' directory: ``override``, else $REATT_SLURM_TEMPLATES, else the checkout's."""
    path = Path(override or os.environ.get(TEMPLATE_DIR_ENV) or TEMPLATE_DIR)
    if not (path / JOB_TEMPLATE).is_file():
        raise ReattError(
            f"no {JOB_TEMPLATE} in {path}: the Slurm templates ship in the reatt checkout's "
            f"slurm_templates/; point ${TEMPLATE_DIR_ENV} at that directory"
        )
    return path


def _environment(directory: str | os.PathLike[str] | None) -> Any:
    """The Jinja environment of the templates' directory: one per directory and process, so that
    each template is compiled once however many scripts a submit renders (it is compiled again
    when its file changes)."""
    return _environment_of(str(template_dir(directory)))


@functools.lru_cache(maxsize=8)
def _environment_of(directory: str) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,  # a missing variable is an error, never empty text
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["q"] = _shell_quote
    env.filters["sbatch_value"] = sbatch_value
    env.filters["sbatch_log"] = sbatch_log
    return env


def _check_job(job: Job) -> None:
    for what, name in (("study", job.study), ("run", job.name)):
        if not NAME_RE.fullmatch(name):  # fullmatch: "$" alone lets a trailing newline through
            raise SpecError(
                f"{what} name {name!r}: expected letters, digits, '_', '.', '+' or '-' "
                "(starting with a letter or digit)"
            )
    if not isinstance(job.position, int) or isinstance(job.position, bool) or job.position < 0:
        raise SpecError(f"run {job.name!r}: position {job.position!r} is not a non-negative integer")


def _check_context(ctx: ScriptContext) -> None:
    for key in ctx.env:
        if not ENV_NAME.fullmatch(key):
            raise SpecError(f"environment variable name {key!r}: expected letters, digits and '_'")
    sbatch_log(ctx.log_dir, "x")


def _render(name: str, variables: dict[str, Any], directory: str | os.PathLike[str] | None) -> str:
    return str(_environment(directory).get_template(name).render(**variables))


def _variables(
    study: str, job_name: str, log_id: str, jobs: list[Job], settings: SlurmSettings, ctx: ScriptContext
) -> dict[str, Any]:
    return {
        "study": study,
        "job_name": job_name,
        "jobs": jobs,
        "settings": settings,
        "venv": settings.venv,
        "python": ctx.python,
        "project_dir": ctx.project_dir,
        "log_dir": ctx.log_dir,
        "log_id": log_id,
        "env": ctx.env,
        # the run-directory contract (reatt.rundir, reatt.train), written into the script
        "train_module": TRAIN_MODULE,
        "attempt_line": rundir.SLURM_ATTEMPT_SH,
        "exit_interrupted": rundir.EXIT_INTERRUPTED,
        "exit_killed_by_signal": 128 + int(getattr(signal, "SIG" + settings.time_signal)),
        "world_size": settings.world_size,
    }


def render_job_script(
    job: Job,
    settings: SlurmSettings,
    ctx: ScriptContext,
    *,
    templates: str | os.PathLike[str] | None = None,
) -> str:
    """The sbatch script of one run (job name ``<study>-<run>``)."""
    _check_job(job)
    check_settings(settings)
    _check_context(ctx)
    variables = _variables(job.study, job_name(job.study, job.name), "%j", [job], settings, ctx)
    return _render(JOB_TEMPLATE, variables, templates)


def array_spec(jobs: Sequence[Job], throttle: int) -> str:
    """``--array`` value: the runs' positions, ``%throttle`` when throttled (0: no limit)."""
    spec = ",".join(str(j.position) for j in sorted(jobs, key=lambda j: j.position))
    return f"{spec}%{throttle}" if throttle else spec


def render_array_script(
    jobs: list[Job],
    settings: SlurmSettings,
    ctx: ScriptContext,
    throttle: int,
    *,
    templates: str | os.PathLike[str] | None = None,
) -> str:
    """One sbatch script running ``jobs`` as a job array (job name ``<study>``, task = position)."""
    if not jobs:
        raise ValueError("render_array_script: no jobs")
    studies = {j.study for j in jobs}
    if len(studies) != 1:
        raise ValueError(f"render_array_script: jobs of several studies: {sorted(studies)}")
    positions = [j.position for j in jobs]
    if len(set(positions)) != len(positions):
        raise ValueError(f"render_array_script: repeated positions {positions}")
    if not isinstance(throttle, int) or throttle < 0:
        raise SpecError(f"array throttle {throttle!r}: expected an integer >= 0 (0: no limit)")
    for job in jobs:
        _check_job(job)
    check_settings(settings)
    _check_context(ctx)
    ordered = sorted(jobs, key=lambda j: j.position)
    study = ordered[0].study
    variables = _variables(study, job_name(study, None), "%A_%a", ordered, settings, ctx)  # array id_task
    variables["array_spec"] = array_spec(ordered, throttle)
    return _render(ARRAY_TEMPLATE, variables, templates)
