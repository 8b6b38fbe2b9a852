"""Where a study's runs execute: the ``Executor`` protocol every kind of executor implements.

An executor starts jobs (``launch``), says what it sees of the jobs it started (``poll``), and
stops them (``cancel``); ``check`` and ``preview`` serve a submit before, or instead of, a
launch. It knows nothing of the database: the study layer hands it the jobs to start and the
runs to poll (``reatt.study.submit``, ``reatt.study.status``), records what it reports through
the ``Launch`` hooks, and turns what it sees into states with ``reatt.transitions.next_state``.
A new kind of executor (say, torchrun across nodes) is one new class with these methods and a
constructor that needs no argument (status and cancel make one to poll and stop its runs),
registered in ``reatt.executors.registry.EXECUTORS``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reatt import rundir
from reatt.states import Evidence, Files, RunState

# What a study, run or feature may be named: the names become Slurm job names, file and
# directory names and shell words. Use fullmatch: "$" lets a final "\n" in.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


class Job(Protocol):
    """One job to run: a variant of a study at one seed (``reatt.study.spec.JobSpec``)."""

    @property
    def study(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def position(self) -> int: ...  # order in the plan; the task id in a job array
    @property
    def work_dir(self) -> str: ...
    @property
    def overrides(self) -> dict[str, Any]: ...
    def argv(self) -> list[str]: ...  # the arguments of python -m reatt.train


@dataclass(frozen=True)
class Place:
    """A study, as an executor needs it: its name, its output root and its spec as planned."""

    study: str
    out_dir: Path
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tracked:
    """A run as the database records it, for an executor to poll or cancel."""

    key: int  # Run.id
    name: str
    job_id: str  # "": queued under an id that could not be read
    work_dir: str
    state: str
    state_reason: str | None
    submitted_at: dt.datetime | None
    script: str | None = None  # the sbatch script it was submitted with (Slurm)


def read_files(
    work_dir: str | Path, since: dt.datetime | None = None, ended_by: RunState | None = None
) -> Files:
    """What a run directory shows now, as evidence (``since``: when the current attempt was
    submitted; ``ended_by``: how the job's log says it ended, where an executor knows)."""
    path = Path(work_dir)
    return Files(
        exists=path.exists(),
        final=rundir.read_final(path),
        checkpoint=(path / rundir.CHECKPOINT).exists(),
        since=since,
        ended_by=ended_by,
    )


@dataclass(frozen=True)
class Preview:
    """What a dry run would start: a command line, or a script written (``path``) and its text."""

    text: str
    path: str | None = None


class Launch(Protocol):
    """What a launching executor reports back as it goes, to be recorded at once (so a later
    failure leaves what was started known). Implemented by ``reatt.study.submit``."""

    def claim(self, job: Job, job_id: str) -> str | None:
        """Take the run for this launch (one atomic update; ``job_id`` is the launcher's own until
        the job starts): None if it is ours, else why not ("taken by another command (running,
        job ...)"). Executors whose ``claims`` is True call it right before they start each job."""
        ...

    def release(self, job: Job) -> None:
        """Give back a claimed run that was not started."""
        ...

    def archive(self, job: Job) -> Path | None:
        """``--force``: move the run's old directory aside (and forget its results); the new
        path, or None. A no-op without ``--force``."""
        ...

    def launched(
        self, jobs: Sequence[Job], job_ids: Sequence[str], evidence: Evidence, script: str | None
    ) -> None:
        """The jobs started (``Started``) or were queued (``Submitted``) with these ids."""
        ...

    def ended(self, job: Job, evidence: Evidence) -> RunState:
        """A job this launch waited for ended (``Exited``), or could not start (``LaunchFailed``);
        returns the run's state as recorded."""
        ...


class Executor(Protocol):
    """Runs a study's jobs somewhere."""

    kind: str  # recorded as Run.executor: the executor that polls and cancels the run later
    claims: bool  # whether ``launch`` claims each run before it starts it
    waits: bool  # whether ``launch`` returns when the jobs have ended (else once they are queued)

    def check(self, place: Place) -> None:
        """Refuse (ReattError) options that cannot work for this study, before anything else."""
        ...

    def preview(self, place: Place, jobs: Sequence[Job]) -> list[Preview]:
        """What ``launch`` would start, without starting anything (scripts are written)."""
        ...

    def launch(self, place: Place, jobs: Sequence[Job], hooks: Launch) -> None:
        """Start the jobs, reporting each through ``hooks``."""
        ...

    def poll(self, place: Place, runs: Sequence[Tracked]) -> dict[int, Evidence]:
        """What can be seen of each run's job now, by ``Tracked.key`` (every run given)."""
        ...

    def cancel(self, place: Place, runs: Sequence[Tracked]) -> dict[int, str]:
        """Ask the runs' jobs to stop; what was asked (a job id, or how the job was named where
        its id is not known), by ``Tracked.key`` of each run asked."""
        ...
