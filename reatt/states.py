"""The states a run of a study can be in, and the evidence that moves it between them.

Whatever learns something about a run (``reatt status`` polling an executor, ``reatt collect``
reading the run directory, ``reatt submit`` starting or ending a job) describes what it saw as
*evidence*, one of the small records below; ``reatt.transitions.next_state`` decides what that
makes of the run's state, and ``reatt.study.store.advance`` records it. This module reads no
file and imports nothing heavy: evidence carries what was read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

from reatt.rundir import FinalFile

# A run is "active" while a scheduler (Slurm, or a local `reatt submit`) holds it.
PLANNED = "planned"
PENDING = "pending"
RUNNING = "running"
REQUEUED = "requeued"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TIMEOUT = "timeout"
PREEMPTED = "preempted"
INTERRUPTED = "interrupted"  # stopped by a signal with a checkpoint saved (exit 75), not requeued
DIVERGED = "diverged"  # its loss became non-finite: stopped there (final.json says at which step)
PRUNED = "pruned"  # a tuning run stopped behind a sibling candidate: a result of tuning, not a failure
BROKEN = "broken"  # collect found the run directory missing or unreadable
UNKNOWN = "unknown"
ALL_STATES = (
    PLANNED,
    PENDING,
    RUNNING,
    REQUEUED,
    COMPLETED,
    FAILED,
    CANCELLED,
    TIMEOUT,
    PREEMPTED,
    INTERRUPTED,
    DIVERGED,
    PRUNED,
    BROKEN,
    UNKNOWN,
)
ACTIVE_STATES = frozenset({PENDING, RUNNING, REQUEUED})
# not diverged or pruned: it would end the same way again (a run is deterministic); only --force
# starts it over
RESUBMITTABLE_STATES = frozenset({FAILED, CANCELLED, TIMEOUT, PREEMPTED, INTERRUPTED, BROKEN, UNKNOWN})
WATCHED_STATES = ACTIVE_STATES | {UNKNOWN, PREEMPTED}  # whose job may still change: polled by status

INTERRUPTED_REASON = (
    "stopped with a checkpoint and no final.json; `reatt submit --resubmit-failed` resumes it"
)
CANCEL_REQUESTED = "cancelled with `reatt cancel`; `reatt status` shows it once it has ended"
CANCELLED_UNWATCHED = "cancelled with `reatt cancel` (by its job name: no job id was known to watch it end)"


class RunState(NamedTuple):
    """A run's state and why it is in it (None where nothing needs saying)."""

    state: str
    reason: str | None = None


def one_line(text: object, width: int = 200) -> str:
    """``text`` on one line (whitespace runs made one space), cut to ``width`` characters: how
    reasons are shown."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "\u2026"


# ---------------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Files:
    """What a run's directory said when it was read."""

    exists: bool
    final: FinalFile | None  # its final.json, of whichever attempt wrote it
    checkpoint: bool
    since: dt.datetime | None = None  # when the current attempt was submitted (Run.submitted_at)
    ended_by: RunState | None = None  # how the job's log says its latest attempt ended (Slurm's .err)

    @property
    def current_final(self) -> FinalFile | None:
        """final.json, unless an earlier attempt wrote it (before ``since``)."""
        return None if self.final is None or self.final.written_before(self.since) else self.final


@dataclass(frozen=True)
class Active:
    """The scheduler holds the job: pending, running or requeued."""

    state: str
    reason: str | None = None


@dataclass(frozen=True)
class Ended:
    """The scheduler says the job ended: ``state`` is its verdict (completed, failed, cancelled,
    timeout, preempted, or unknown for a word it has no meaning for), ``reason`` its words."""

    state: str
    reason: str | None
    files: Files | None = None  # read where the verdict needs the run's own word (completed, failed)


@dataclass(frozen=True)
class Waiting:
    """The scheduler has no final word yet (its accounting lags): the state stays."""

    reason: str


@dataclass(frozen=True)
class Unreachable:
    """The scheduler could not be asked. ``files_only``: its commands are not here at all (a
    machine that shares the file system), so the run's files are all there is to go by."""

    problem: str
    files_only: bool
    files: Files | None = None  # read where ``files_only``


@dataclass(frozen=True)
class Gone:
    """The scheduler no longer knows the job (or its process is gone): the files tell."""

    files: Files
    note: str | None = None  # said before the reason when the files cannot tell either


@dataclass(frozen=True)
class Elsewhere:
    """The job runs where this machine cannot look (a local run of another host)."""

    reason: str
    files: Files


@dataclass(frozen=True)
class Unchanged:
    """Nothing new (a local run's submit is still starting it)."""


@dataclass(frozen=True)
class Claimed:
    """A submit took the run for itself, to start it (local)."""

    reason: str = "starting (reatt submit, local)"


@dataclass(frozen=True)
class Released:
    """A submit gave back a run it had claimed but did not start: it is as it was."""

    previous: RunState


@dataclass(frozen=True)
class Started:
    """The training process of the run started (local)."""


@dataclass(frozen=True)
class Submitted:
    """A scheduler queued the run's job (Slurm). ``no_id``: it said so (sbatch exited 0) but
    printed no job id that could be read: what it printed."""

    no_id: str | None = None


@dataclass(frozen=True)
class LaunchFailed:
    """The run's job could not be started at all."""

    reason: str


@dataclass(frozen=True)
class Archived:
    """``--force``: the run's old directory was moved aside; it starts over. A run the submit
    has claimed stays claimed; another is planned again until its new job is recorded."""

    moved_to: str
    claimed: bool = False


@dataclass(frozen=True)
class CancelRequested:
    """``reatt cancel`` asked the scheduler to stop the job; it ends once it has checkpointed.
    ``watched``: its end can be seen (it has a job id); else it is cancelled now."""

    watched: bool = True


@dataclass(frozen=True)
class Exited:
    """A local training process ended with exit code ``rc`` (negative: killed by a signal)."""

    rc: int
    final: FinalFile | None  # final.json as found after the exit
    stale: bool  # that final.json is an earlier attempt's: this one ended before replacing it
    signalled: bool  # we (Ctrl-C) asked it to stop
    log_tail: str = ""  # the last lines this attempt wrote to train.log


@dataclass(frozen=True)
class DirMissing:
    """Collect found no run directory (or something else in its place)."""

    reason: str
    live: bool  # a planned study's run (status owns its live states), not one made by hand
    collected_before: bool  # an earlier collect read its files


@dataclass(frozen=True)
class Collected:
    """Collect read the run directory (``files.since``: when the attempt now queued or running
    was submitted); ``problems`` are what could not be read."""

    live: bool
    problems: list[str]
    files: Files


Evidence = (
    Files
    | Active
    | Ended
    | Waiting
    | Unreachable
    | Gone
    | Elsewhere
    | Unchanged
    | Claimed
    | Released
    | Started
    | Submitted
    | LaunchFailed
    | Archived
    | CancelRequested
    | Exited
    | DirMissing
    | Collected
)
