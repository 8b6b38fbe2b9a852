"""Where a study's Slurm jobs leave their scripts and logs, what they are named, and what a job's
.err file says of how its latest attempt ended.

slurmstepd writes a line there when Slurm ends a job, e.g.
"slurmstepd: error: *** JOB 12 ON node7 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***";
the reason may hold a comma ("NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS"), and an scancel has
none. Only the latest attempt's part of the file counts (``rundir.attempt_text``): a requeued job
appends every attempt to the same file.
"""

from __future__ import annotations

import re
from pathlib import Path

from reatt import states
from reatt.rundir import attempt_text
from reatt.states import RunState, one_line

_SLURM_END = re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+(?: DUE TO (?P<why>[^*\n]*?))? \*\*\*")
_OOM = re.compile(r"oom[-_ ]kill|Exceeded job memory limit|Out Of Memory", re.IGNORECASE)


def ended_by(err: str) -> RunState | None:
    """How Slurm ended an attempt, from what it wrote to the .err file (``attempt_text``), or None.

    The later of slurmstepd's end line and an out-of-memory message decides. An end line "DUE
    TO JOB REQUEUE" is no end: Slurm writes it whenever a job is requeued (ours requeue
    themselves before their time limit) and the job runs again.
    """
    events: list[tuple[int, str, str]] = []
    for m in _SLURM_END.finditer(err):
        why = " ".join((m.group("why") or "").split())
        if why == "JOB REQUEUE":
            continue
        if why == "TIME LIMIT":
            events.append((m.start(), states.TIMEOUT, "Slurm: cancelled due to time limit"))
        elif why == "PREEMPTION":
            events.append((m.start(), states.PREEMPTED, "Slurm: preempted"))
        elif why.startswith("NODE FAILURE"):
            events.append((m.start(), states.FAILED, "Slurm: node failure"))
        else:
            events.append(
                (m.start(), states.CANCELLED, "Slurm: cancelled" + (f" due to {why.lower()}" if why else ""))
            )
    oom = list(_OOM.finditer(err))
    if oom:
        events.append((oom[-1].start(), states.FAILED, "out of memory"))
    if not events:
        return None
    _, state, reason = max(events)
    return RunState(state, reason)


def last_err_line(err_file: Path | None, width: int = 300) -> str | None:
    """The last non-empty line the job's latest attempt wrote to its .err file, for a reason."""
    lines = [line for line in attempt_text(err_file).splitlines() if line.strip()]
    return one_line(lines[-1], width) if lines else None


def log_dir(out_dir: str | Path) -> Path:
    """Where the .out/.err files of a study's jobs go: ``<out_dir>/slurm``."""
    return Path(out_dir) / "slurm"


def script_dir(out_dir: str | Path, study: str) -> Path:
    """Where a study's sbatch scripts are written: ``<out_dir>/<study>/sbatch``."""
    return Path(out_dir) / study / "sbatch"


def job_script(out_dir: str | Path, study: str, run: str) -> Path:
    """The sbatch script of a run submitted on its own (an array's is ``<study>-array-<n>.sbatch``)."""
    return script_dir(out_dir, study) / f"{run}.sbatch"


def job_name(study: str, run: str | None) -> str:
    """The Slurm job name of a run's job (``<study>-<run>``), or of a study's job array (``<study>``)."""
    return study if run is None else f"{study}-{run}"


def log_files(log_dir: str | Path, study: str, run: str, job_id: str) -> tuple[Path, Path]:
    """Slurm's (.out, .err) of a job as the templates name them: ``<job-name>-<jobid>``, where an
    array task's job id is ``<arrayid>_<task>`` and its job name is the study's."""
    name = job_name(study, None if "_" in job_id else run)
    base = Path(log_dir) / f"{name}-{job_id}"
    return base.with_name(base.name + ".out"), base.with_name(base.name + ".err")
