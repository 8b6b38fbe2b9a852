"""Every Slurm call reatt makes: sbatch scripts rendered from ``slurm_templates/``, ``sbatch``,
``squeue``/``sacct`` (one call each for a whole study, never one per job) and ``scancel``.

Rendering is pure (``render_job_script``, ``render_array_script``). Every command runs as an
argv list without a shell (``_run``); a missing command or a non-zero exit becomes a
``SlurmError`` that quotes Slurm's stderr.

Quoting: the scripts are bash. Every value placed in a shell line goes through
``shlex.quote`` (the ``q`` filter). ``#SBATCH`` lines are read by sbatch, not by a shell: their
values are validated against simple patterns (``check_settings``) and never hold a newline.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import reatt
from reatt import rundir, states
from reatt.errors import ReattError, SlurmError, SpecError
from reatt.plan import NAME_RE, TRAIN_ENV, JobSpec, SlurmSettings, jobs_of, slurm_settings_of

if TYPE_CHECKING:
    from sqlalchemy import Engine

TEMPLATE_DIR = Path(reatt.__file__).resolve().parent.parent / "slurm_templates"
TEMPLATE_DIR_ENV = "REATT_SLURM_TEMPLATES"  # another directory holding job.sbatch.j2 / array.sbatch.j2
JOB_TEMPLATE = "job.sbatch.j2"
ARRAY_TEMPLATE = "array.sbatch.j2"
COMMAND_TIMEOUT = 120  # seconds for one Slurm client command (a busy controller can be slow)
MAX_SIGNAL_SECONDS = 65535  # the largest --signal=...@N Slurm takes
MIN_TRAIN_SECONDS = 60  # time limit - signal_seconds must leave at least this much

# --- validation of what goes into #SBATCH lines -------------------------------------------------

_NAME_LIST = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")
_SBATCH_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "partition": (_NAME_LIST, "a partition name (or a comma-separated list)"),
    "account": (re.compile(r"^[A-Za-z0-9_.+-]+$"), "an account name (letters, digits, '_', '.', '+', '-')"),
    "qos": (_NAME_LIST, "a QOS name"),
    "time": (
        re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$", re.I),
        "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS",
    ),
    "mem": (re.compile(r"^\d+[KMGT]?$", re.I), "a size like 8G, 16000M or 8000 (MB)"),
}
# options reatt sets itself: an extra_sbatch line may not change them (status and requeue rely on
# them). sbatch (getopt_long) also takes any unambiguous prefix of a long option: "--job=x" sets
# the job name, "--out", "--sig", "--arr", "--no-req" work too; such prefixes are refused as well.
_RESERVED_OPTIONS = {
    "--job-name": "-J",
    "--output": "-o",
    "--error": "-e",
    "--array": "-a",
    "--open-mode": None,
    "--requeue": None,
    "--no-requeue": None,
    "--signal": None,
}
_OPTION = re.compile(r"^(--[A-Za-z][A-Za-z0-9-]*|-[A-Za-z])(?:[= ].*)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _reserved_by(option: str) -> list[str]:
    """The options reatt sets that sbatch would take ``option`` (``--x`` or ``-x``) for: its short
    form, or for a long option itself or any prefix of it (getopt_long's abbreviations)."""
    if option.startswith("--"):
        return [long for long in _RESERVED_OPTIONS if long.startswith(option)]
    return [long for long, short in _RESERVED_OPTIONS.items() if short == option]


def time_limit_seconds(text: str) -> int | None:
    """Seconds in a Slurm time limit (``90``, ``1:30:00``, ``2-12``, ...); None for unlimited."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(p) for p in t.split(":")] + [0, 0]
        hours, minutes, seconds = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in t.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def check_settings(settings: SlurmSettings) -> None:
    """Refuse settings that would make a broken or unsafe script; every problem in one SpecError."""
    problems = []
    for key, (pattern, expected) in _SBATCH_PATTERNS.items():
        value = getattr(settings, key)
        if key in ("partition", "account", "qos") and value == "":
            continue  # not asked for: the cluster's default
        if not isinstance(value, str) or not pattern.fullmatch(value):
            problems.append(f"slurm.{key} = {value!r}: expected {expected}")
    for key in ("cpus_per_task", "gpus", "signal_seconds", "array_throttle"):
        value = getattr(settings, key)
        low = 1 if key in ("cpus_per_task", "signal_seconds") else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"slurm.{key} = {value!r}: expected an integer >= {low}")
    signal_s = settings.signal_seconds
    if isinstance(signal_s, int) and signal_s > MAX_SIGNAL_SECONDS:
        problems.append(f"slurm.signal_seconds = {signal_s}: Slurm takes at most {MAX_SIGNAL_SECONDS}")
    if isinstance(signal_s, int) and _SBATCH_PATTERNS["time"][0].fullmatch(str(settings.time)):
        limit = time_limit_seconds(settings.time)
        if limit is not None and limit - signal_s < MIN_TRAIN_SECONDS:
            problems.append(
                f"slurm.signal_seconds = {signal_s} leaves less than {MIN_TRAIN_SECONDS} s of "
                f"slurm.time = {settings.time!r} ({limit} s) before the checkpoint signal, which Slurm "
                "may send up to ~30 s early: each attempt would be requeued almost at once; "
                "lower signal_seconds or raise time"
            )
    for key in ("venv", "hf_home"):
        value = getattr(settings, key)
        if _has_control(value):
            problems.append(f"slurm.{key} = {value!r}: control characters (newline, tab...) not allowed")
    for module in settings.modules:
        if not module.strip() or _has_control(module):
            problems.append(f"slurm.modules: {module!r}: expected a module name like 'python/3.11'")
    for line in settings.extra_sbatch:
        m = _OPTION.fullmatch(line)
        if _has_control(line) or m is None:
            problems.append(
                f"slurm.extra_sbatch: {line!r}: expected one sbatch option per entry, like "
                "'--constraint=a100', with no newline"
            )
            continue
        reserved = _reserved_by(m.group(1))
        if reserved:
            read_as = (
                "" if m.group(1) in reserved else f" (sbatch reads {m.group(1)} as {' or '.join(reserved)})"
            )
            problems.append(
                f"slurm.extra_sbatch: {line!r}: {' / '.join(reserved)} is set by reatt{read_as}; logs, "
                "requeue and status depend on it: remove this line"
            )
    if problems:
        raise SpecError("invalid Slurm settings:\n  " + "\n  ".join(problems))


def sbatch_value(value: Any) -> str:
    """A value for an #SBATCH line: checked already; refuse anything a line could not hold."""
    text = str(value)
    if _has_control(text) or not text:
        raise SpecError(f"#SBATCH value {text!r}: empty or holds control characters (newline, tab...)")
    return text


def sbatch_log(log_dir: Any, name: str) -> str:
    """``--output``/``--error`` value: ``<log_dir>/<name>``. sbatch splits #SBATCH lines on
    whitespace and cuts them at '#' unless quoted (double quotes work in 22.05, backslashes do
    not), and expands '%' patterns: such a path is double-quoted and its '%' doubled (``%%``
    is a literal '%'). A path with '"', a backslash or a control character is refused."""
    text = str(log_dir)
    bad = sorted({c for c in text if c in '"\\' or _has_control(c)})
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


# --- rendering ----------------------------------------------------------------------------------


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
            log_dir=str(Path(out_dir) / "slurm"),
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
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir(directory))),
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


def _check_job(job: JobSpec) -> None:
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
        if not _ENV_NAME.fullmatch(key):
            raise SpecError(f"environment variable name {key!r}: expected letters, digits and '_'")
    sbatch_log(ctx.log_dir, "x")


def _render(name: str, variables: dict[str, Any], directory: str | os.PathLike[str] | None) -> str:
    return str(_environment(directory).get_template(name).render(**variables))


def _variables(
    study: str, job_name: str, log_id: str, jobs: list[JobSpec], settings: SlurmSettings, ctx: ScriptContext
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
    }


def render_job_script(
    job: JobSpec,
    settings: SlurmSettings,
    ctx: ScriptContext,
    *,
    templates: str | os.PathLike[str] | None = None,
) -> str:
    """The sbatch script of one run (job name ``<study>-<run>``)."""
    _check_job(job)
    check_settings(settings)
    _check_context(ctx)
    variables = _variables(job.study, f"{job.study}-{job.name}", "%j", [job], settings, ctx)
    return _render(JOB_TEMPLATE, variables, templates)


def array_spec(jobs: Sequence[JobSpec], throttle: int) -> str:
    """``--array`` value: the runs' positions, ``%throttle`` when throttled (0: no limit)."""
    spec = ",".join(str(j.position) for j in sorted(jobs, key=lambda j: j.position))
    return f"{spec}%{throttle}" if throttle else spec


def render_array_script(
    jobs: list[JobSpec],
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
    variables = _variables(study, study, "%A_%a", ordered, settings, ctx)  # array id_task
    variables["array_spec"] = array_spec(ordered, throttle)
    return _render(ARRAY_TEMPLATE, variables, templates)


def log_files(log_dir: str | os.PathLike[str], study: str, run: str, job_id: str) -> tuple[Path, Path]:
    """Slurm's (.out, .err) of a job as the templates name them: ``<job-name>-<jobid>``, where an
    array task's job id is ``<arrayid>_<task>`` and its job name is the study's."""
    name = study if "_" in job_id else f"{study}-{run}"
    base = Path(log_dir) / f"{name}-{job_id}"
    return base.with_name(base.name + ".out"), base.with_name(base.name + ".err")


# --- running Slurm's commands -------------------------------------------------------------------


def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command (no shell). Missing or hung: SlurmError."""
    try:
        return subprocess.run(argv, shell=False, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SlurmError(
            f"{argv[0]} not found: Slurm's client commands were not found on PATH "
            "(are you on the cluster's login node?)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"{shlex.join(argv[:4])} ...: no answer after {timeout:.0f} s (is the Slurm controller up?)"
        ) from None
    except OSError as e:
        raise SlurmError(f"cannot run {argv[0]}: {e}") from None


def _output(r: subprocess.CompletedProcess[str]) -> str:
    text = (r.stderr or "").strip() or (r.stdout or "").strip()
    return text[-2000:] if text else "no output"


_PARSABLE = re.compile(r"(\d+)(?:;\S+)?")  # `sbatch --parsable`: "123" or "123;cluster"
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


def sbatch(script: str | os.PathLike[str]) -> str:
    """Submit a script with ``sbatch --parsable``; return its job id (``"123"``)."""
    argv = ["sbatch", "--parsable", str(script)]
    try:
        r = _run(argv)
    except SlurmError as e:
        if "no answer" in str(e):
            raise SlurmError(
                f"{e}; the job may or may not be queued: check `squeue --me` before submitting again"
            ) from None
        raise
    if r.returncode != 0:
        raise SlurmError(f"sbatch {script} failed (exit {r.returncode}): {_output(r)}")
    lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    m = _PARSABLE.fullmatch(lines[-1]) if lines else None
    m = m or _SUBMITTED.search(r.stdout)
    if m is None:
        raise SlurmError(
            f"sbatch {script}: expected a job id from --parsable, got {r.stdout.strip()[:500]!r}"
            + (f" (stderr: {r.stderr.strip()[:500]})" if r.stderr.strip() else "")
        )
    return m.group(1)


_IGNORABLE_SCANCEL = re.compile(r"already completing or completed|Invalid job id", re.I)


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs with one ``scancel`` call. Jobs that already ended are not an error."""
    if not job_ids:
        return
    r = _run(["scancel", *job_ids])
    if r.returncode != 0:
        errors = [
            line for line in r.stderr.splitlines() if line.strip() and not _IGNORABLE_SCANCEL.search(line)
        ]
        if errors:
            raise SlurmError(f"scancel {' '.join(job_ids)} failed (exit {r.returncode}): {_output(r)}")


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job, by the id reatt records (``123`` or ``123_4``)."""

    job_id: str
    state: str  # Slurm's state, first word: PENDING, RUNNING, COMPLETED, CANCELLED ...
    source: str  # "squeue" (the controller: queued, or ended minutes ago) or "sacct"
    reason: str | None = None  # squeue's reason ("Resources", "NonZeroExitCode"); None for "None"
    exit_code: str | None = None  # "1:0" (exit code:signal), from sacct
    elapsed: str | None = None
    detail: str | None = None  # sacct's state text when longer than the word ("CANCELLED by 0")


@dataclass
class JobQuery:
    """The answer of ``query_jobs``: each job Slurm knows, and how far Slurm could be asked."""

    jobs: dict[str, JobInfo] = field(default_factory=dict)
    answered: bool = True  # squeue answered: a job missing from ``jobs`` has left the controller
    commands_found: bool = True  # Slurm's client commands are on PATH
    accounting: bool | None = None  # sacct worked (None: not asked)
    problems: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # the commands run, in order


def _reason(text: str | None) -> str | None:
    text = (text or "").strip()
    return None if text in ("", "None", "(null)") else text


def _parse_squeue(out: str, wanted: set[str]) -> dict[str, JobInfo]:
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or parts[0] not in wanted:
            continue
        job_id, state, reason = parts
        word = state.split()[0] if state.split() else "UNKNOWN"
        jobs[job_id] = JobInfo(job_id, word, "squeue", _reason(reason))
    return jobs


def _task_ids(spec: str) -> list[str]:
    """Task ids of an array range as sacct prints them: ``1-3%1``, ``2,5-6``, ``0-9:2``."""
    out: list[str] = []
    for part in spec.split("%", 1)[0].split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if m is None:
            continue
        first = int(m.group(1))
        last = int(m.group(2) or first)
        step = int(m.group(3) or 1)
        if last - first > 100_000 or step < 1:
            continue
        out.extend(str(i) for i in range(first, last + 1, step))
    return out


def _job_ids(job_id: str) -> list[str]:
    """The ids a row stands for: itself, or each task of an unstarted range (``12_[1-3%1]``)."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    return [f"{m.group(1)}_{t}" for t in _task_ids(m.group(2))] if m else [job_id]


def _parse_sacct(out: str, wanted: set[str]) -> dict[str, JobInfo]:
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        row_id, state_text, exit_code, elapsed = parts[:4]
        words = state_text.split()
        state = words[0].rstrip("+") if words else "UNKNOWN"
        detail = state_text.strip() if len(words) > 1 else None
        for job_id in _job_ids(row_id):  # steps ("123.batch") match nothing wanted
            if job_id in wanted:
                jobs[job_id] = JobInfo(
                    job_id, state, "sacct", None, exit_code or None, elapsed or None, detail
                )
    return jobs


def query_jobs(job_ids: Iterable[str]) -> JobQuery:
    """What Slurm knows about these jobs, in at most two calls whatever their number:
    ``squeue -t all`` (the controller: queued and running jobs, and the ones that ended within
    its MinJobAge, 300 s by default), then ``sacct`` for the jobs it no longer holds.

    No ``scontrol show job``: without job ids it prints every job on the cluster, and with one
    it answers for that job only (one call per job). ``squeue -t all`` gives what it gave here:
    the final state of a job that ended minutes ago, before sacct has it or with accounting off.

    Never raises for an unreachable Slurm: ``answered``/``problems`` say what is missing.
    """
    ids = sorted({j for j in job_ids if j})
    query = JobQuery()
    if not ids:
        return query
    wanted = set(ids)

    def call(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
        query.calls.append(argv)
        try:
            return _run(argv)
        except SlurmError as e:
            if "not found on PATH" in str(e):
                query.commands_found = False
            query.problems.append(str(e))
            return None

    r = call(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"])
    if r is None:
        query.answered = False
        return query
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        query.answered = False
        query.problems.append(f"squeue failed (exit {r.returncode}): {_output(r)}")
        return query
    query.jobs.update(_parse_squeue(r.stdout if r.returncode == 0 else "", wanted))

    gone = [j for j in ids if j not in query.jobs]
    if gone:
        # an array task that never started has no row of its own (sacct -j 12_3 prints nothing):
        # ask for the array (12), whose rows include the range "12_[1-3%1]"
        asked = sorted({j.split("_", 1)[0] for j in gone}, key=lambda j: (len(j), j))
        r = call(["sacct", "-n", "-X", "-P", "-j", ",".join(asked), "-o", "JobID,State,ExitCode,Elapsed"])
        if r is not None and r.returncode == 0:
            query.accounting = True
            query.jobs.update(_parse_sacct(r.stdout, set(gone)))
        else:
            query.accounting = False
            if r is not None and "accounting storage is disabled" not in r.stderr.lower():
                query.problems.append(f"sacct failed (exit {r.returncode}): {_output(r)}")
    return query


# --- submit and cancel a study ------------------------------------------------------------------


@dataclass
class SubmitResult:
    """What ``submit_cluster`` did."""

    study: str
    dry_run: bool
    array: bool = False
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (run, job id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run, state)
    scripts: list[str] = field(default_factory=list)  # the sbatch files written
    archived: list[tuple[str, str]] = field(default_factory=list)  # --force: (run dir, moved to)


def _next_array_path(sbatch_dir: Path, study: str) -> Path:
    taken = [
        int(m.group(1))
        for p in sbatch_dir.glob(f"{study}-array-*.sbatch")
        if (m := re.fullmatch(re.escape(study) + r"-array-(\d+)\.sbatch", p.name))
    ]
    return sbatch_dir / f"{study}-array-{max(taken, default=0) + 1}.sbatch"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _record_submitted(engine: Engine, run_ids: dict[int, str], script: Path) -> None:
    """Record job ids at once, in one transaction (so a later failure leaves them known)."""
    from reatt import db

    with db.transaction(engine) as session:
        now = db.utc_now()
        for run_id, job_id in run_ids.items():
            run = session.get(db.Run, run_id)
            if run is None:  # replanned meanwhile: nothing to record it on
                continue
            run.job_id, run.executor, run.sbatch_path, run.submitted_at = job_id, "slurm", str(script), now
            run.state, run.state_reason = states.PENDING, None


def _record_archived(engine: Engine, run_id: int, moved: Path) -> None:
    """The run starts over in a new directory: planned again, and nothing collected from the
    old one (results, metrics rows, files fingerprint) is kept on it."""
    from reatt import collect, db

    with db.transaction(engine) as session:
        run = session.get(db.Run, run_id)
        if run is not None:
            run.state, run.state_reason = states.PLANNED, f"--force: old run directory moved to {moved}"
            run.job_id = None
            collect.clear_results(run)


def _submit_one(engine: Engine, script: Path, runs: list[tuple[int, JobSpec]], array: bool) -> list[str]:
    """sbatch one script and record its runs' job ids at once (an array task's id is
    ``<arrayid>_<position>``); if recording fails (or is interrupted), cancel the job again, and
    if that fails too, say which job now runs untracked. Returns the ids."""
    job_id = sbatch(script)
    ids = [f"{job_id}_{job.position}" if array else job_id for _, job in runs]
    try:
        _record_submitted(engine, {rid: i for (rid, _), i in zip(runs, ids, strict=True)}, script)
    except BaseException as e:
        try:
            scancel([job_id])
        except SlurmError as cancel_error:
            # not a SlurmError: submit_cluster would report the runs as "not submitted"
            raise ReattError(
                f"Slurm job {job_id} ({script}) was submitted, but recording it in the database failed "
                f"({type(e).__name__}: {e}) and cancelling it failed too ({cancel_error}). The job may "
                f"run without reatt knowing it: cancel it yourself with `scancel {job_id}`, then submit again"
            ) from e
        raise
    return ids


def submit_cluster(
    engine: Engine,
    study: str | None,
    *,
    dry_run: bool = False,
    array: bool = False,
    resubmit_failed: bool = False,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    throttle: int | None = None,
    project_dir: str | None = None,
    templates: str | os.PathLike[str] | None = None,
) -> SubmitResult:
    """Render and submit a study's runs to Slurm, one sbatch per run (or one job array).

    States are refreshed first; ``status.select_runs`` picks the runs. Scripts go to
    ``<out_dir>/<study>/sbatch/``, Slurm's logs to ``<out_dir>/slurm/``. Each submitted run's
    job id is recorded as soon as sbatch returns it, so a failing sbatch leaves the runs
    before it recorded and its own run untouched. Returns without waiting for any job.
    """
    from reatt import db, status

    name, _ = status.refresh(engine, study)
    with db.transaction(engine) as session:
        st = db.get_study(session, name)
        settings = slurm_settings_of(st).with_overrides(**(overrides or {}))
        if settings.venv:
            settings = settings.with_overrides(venv=os.path.expanduser(settings.venv))
        if settings.hf_home:
            settings = settings.with_overrides(hf_home=os.path.expanduser(settings.hf_home))
        check_settings(settings)
        to_submit, skipped = status.select_runs(list(st.runs), resubmit_failed=resubmit_failed, force=force)
        by_name = {j.name: j for j in jobs_of(st)}
        selected = [(r.id, by_name[r.name]) for r in to_submit]
        out_dir = Path(st.out_dir)
    result = SubmitResult(study=name, dry_run=dry_run, array=array, skipped=list(skipped))
    if not selected:
        return result

    ctx = ScriptContext.for_study(out_dir, settings, project_dir)
    sbatch_dir = out_dir / name / "sbatch"
    # render everything before writing or submitting anything: a bad value stops it all
    if array:
        n_throttle = settings.array_throttle if throttle is None else throttle
        text = render_array_script([j for _, j in selected], settings, ctx, n_throttle, templates=templates)
        sbatch_dir.mkdir(parents=True, exist_ok=True)
        scripts = [(_next_array_path(sbatch_dir, name), text, selected)]
    else:
        scripts = []
        for rid, job in selected:
            text = render_job_script(job, settings, ctx, templates=templates)
            scripts.append((sbatch_dir / f"{job.name}.sbatch", text, [(rid, job)]))
        sbatch_dir.mkdir(parents=True, exist_ok=True)
    for path, text, _ in scripts:
        _write(path, text)
        result.scripts.append(str(path))
    if dry_run:
        return result

    Path(ctx.log_dir).mkdir(parents=True, exist_ok=True)
    for path, _, runs in scripts:
        if force:
            for rid, job in runs:
                moved = rundir.archive(Path(job.work_dir))
                if moved is not None:
                    _record_archived(engine, rid, moved)
                    result.archived.append((job.work_dir, str(moved)))
        try:
            ids = _submit_one(engine, path, runs, array)
        except SlurmError as e:
            done = ", ".join(f"{r} (job {j})" for r, j in result.submitted)
            names = ", ".join(job.name for _, job in runs)
            raise SlurmError(
                f"{e}\nnot submitted: {names} (state unchanged)"
                + (f"; submitted before it, job ids recorded: {done}" if done else "")
                + ". Fix the problem, then `reatt submit --cluster` submits the rest."
            ) from None
        result.submitted.extend((job.name, i) for (_, job), i in zip(runs, ids, strict=True))
    return result


def cancel(engine: Engine, study: str | None) -> list[str]:
    """Cancel the study's pending and running Slurm jobs with one ``scancel``; returns their ids.

    One refresh (squeue, sacct only for jobs that left the controller) picks the jobs, one
    scancel cancels them; Slurm is not asked again. A cancelled job ends only once its script
    has checkpointed (TERM), so its run keeps its active state, noted as cancelled, until
    `reatt status` sees the end: meanwhile no submit starts a second job on its work dir.
    """
    from reatt import db, status

    name, current = status.refresh(engine, study)
    ids = [
        s.job_id for s in current if s.executor == "slurm" and s.job_id and s.state in states.ACTIVE_STATES
    ]
    if not ids:
        return []
    scancel(ids)
    with db.transaction(engine) as session:
        for run in db.get_study(session, name).runs:
            if run.executor == "slurm" and run.job_id in ids and run.state in states.ACTIVE_STATES:
                run.state_reason = "cancelled with `reatt cancel`; `reatt status` shows it once it has ended"
    return ids
