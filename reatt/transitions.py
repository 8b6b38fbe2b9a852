"""``next_state(current, evidence)``: the one place that decides a run's state.

The rules that hold throughout:

- a run is ``completed`` only when its own final.json says so (a scheduler's COMPLETED is not
  enough), and an earlier attempt's final.json says nothing of the attempt now queued;
- where the scheduler cannot tell (its accounting lags, it cannot be reached), the recorded
  state stays, and the reason says why; a guess from the files is given as the reason only;
- a run that is pending or running keeps that state until its own end is known.

A pure function of its arguments: the evidence (``reatt.states``) carries what was read.
"""

from __future__ import annotations

import signal

from reatt import rundir
from reatt.rundir import FinalFile
from reatt.states import (
    ACTIVE_STATES,
    BROKEN,
    CANCEL_REQUESTED,
    CANCELLED,
    CANCELLED_UNWATCHED,
    COMPLETED,
    DIVERGED,
    FAILED,
    INTERRUPTED,
    INTERRUPTED_REASON,
    PENDING,
    PLANNED,
    PRUNED,
    RUNNING,
    UNKNOWN,
    Active,
    Archived,
    CancelRequested,
    Claimed,
    Collected,
    DirMissing,
    Elsewhere,
    Ended,
    Evidence,
    Exited,
    Files,
    Gone,
    LaunchFailed,
    Released,
    RunState,
    Started,
    Submitted,
    Unchanged,
    Unreachable,
    Waiting,
)


def final_state(final: FinalFile) -> RunState:
    """What a final.json says: completed, diverged (where), pruned (where, behind which
    sibling), or failed with its error (also when it cannot be read)."""
    if final.record is None:
        return RunState(FAILED, final.problem)
    if final.record.completed:
        return RunState(COMPLETED)
    if final.record.status == rundir.FINAL_DIVERGED:
        return RunState(DIVERGED, str(final.record.error or "diverged"))
    if final.record.status == rundir.FINAL_PRUNED:
        return RunState(PRUNED, str(final.record.error or "pruned"))
    return RunState(FAILED, str(final.record.error or f"final.json status {final.record.status!r}"))


def from_files(files: Files) -> RunState:
    """A finished-or-stopped run's state from its files alone (no scheduler to ask).

    The current attempt's final.json decides when present. Otherwise the job's log says whether
    its scheduler ended it (time limit, preemption, node failure, scancel) or it ran out of
    memory; a checkpoint without final.json means it was interrupted and can resume.
    """
    final = files.current_final
    if final is not None:
        return final_state(final)
    if files.ended_by is not None:
        return files.ended_by
    if files.checkpoint:
        return RunState(INTERRUPTED, INTERRUPTED_REASON)
    if not files.exists:
        return RunState(UNKNOWN, "no run directory")
    return RunState(UNKNOWN, "no final.json")


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def next_state(current: RunState, evidence: Evidence) -> RunState:
    """The run's state after ``evidence``, given its ``current`` one."""
    match evidence:
        case Files():
            return from_files(evidence)
        case Active(state, reason):
            return RunState(state, reason)
        case Ended():
            return _ended(evidence)
        case Waiting(reason):
            return RunState(current.state, reason)
        case Unreachable():
            return _unreachable(current, evidence)
        case Gone(files, note):
            found = from_files(files)
            if found.state == UNKNOWN and note:
                return RunState(UNKNOWN, f"{note}; {found.reason}")
            return found
        case Elsewhere(reason, files):
            found = from_files(files)
            return (
                found
                if found.state in (COMPLETED, FAILED, DIVERGED, PRUNED)
                else RunState(current.state, reason)
            )
        case Unchanged():
            return current
        case Claimed(reason):
            return RunState(PENDING, reason)
        case Released(previous):
            return previous
        case Started():
            return RunState(RUNNING)
        case Submitted(no_id):
            if no_id is None:
                return RunState(PENDING)
            # queued (never "not submitted": the next submit would queue it again), and pending
            # (no submit starts it again): its own final.json will say how it ended
            return RunState(
                PENDING,
                f"submitted (sbatch exited 0), but no job id could be read from what it printed "
                f"({no_id}); its final.json will tell `reatt status` how it ended; `reatt cancel` "
                "cancels it by its job name",
            )
        case LaunchFailed(reason):
            return RunState(FAILED, reason)
        case Archived(moved_to, claimed):
            return (
                current if claimed else RunState(PLANNED, f"--force: old run directory moved to {moved_to}")
            )
        case CancelRequested(watched):
            return (
                RunState(current.state, CANCEL_REQUESTED)
                if watched
                else RunState(CANCELLED, CANCELLED_UNWATCHED)
            )
        case Exited():
            return _exited(evidence)
        case DirMissing():
            return _dir_missing(current, evidence)
        case Collected():
            return _collected(current, evidence)
    raise TypeError(f"next_state: not evidence: {evidence!r}")  # pragma: no cover


def _ended(ev: Ended) -> RunState:
    """A job its scheduler says has ended: its own final.json (of any attempt: the job is over)
    confirms a completion; a failure keeps the run's own reason where it wrote one."""
    final = final_state(ev.files.final) if ev.files is not None and ev.files.final is not None else None
    if ev.state == COMPLETED:
        if final is not None:
            return final
        return RunState(FAILED, f"{ev.reason} but the run wrote no final.json")
    if ev.state == FAILED and final is not None and final.state in (FAILED, DIVERGED, PRUNED):
        return final  # the run's own word on how it ended
    return RunState(ev.state, ev.reason)


def _unreachable(current: RunState, ev: Unreachable) -> RunState:
    """Where the scheduler cannot be asked, only a final.json written since the job was
    submitted, the run's own word on its end, is recorded. Anything else in the files is only a
    guess, given as the reason: a job log is appended by every attempt, and a job that requeued
    itself is queued again although its log ends with the scheduler's "CANCELLED"; a checkpoint
    says nothing of whether the job still runs. Recorded, such a guess would end the run for
    good: a cancelled or failed run is not watched any more, and `submit --resubmit-failed`
    would start a second job on the same work dir."""
    if ev.files_only and ev.files is not None:
        final = ev.files.current_final
        if final is not None:
            return final_state(final)
        guess = from_files(ev.files)
        if guess.state != UNKNOWN:
            return RunState(
                current.state,
                f"{ev.problem}; its files suggest {guess.state} ({guess.reason}); state as last seen",
            )
    return RunState(current.state, f"{ev.problem}; state as last seen")


def _exited(ev: Exited) -> RunState:
    final = ev.final if not ev.stale else None
    record = final.record if final is not None else None
    if ev.rc == rundir.EXIT_OK and record is not None and record.completed:
        return RunState(COMPLETED)
    if ev.rc == rundir.EXIT_INTERRUPTED:
        return RunState(
            INTERRUPTED,
            f"stopped with a checkpoint (exit {rundir.EXIT_INTERRUPTED}); "
            "`reatt submit --resubmit-failed` resumes it",
        )
    # a completion counts with exit 0 only
    if final is not None and record is not None and record.status in rundir.FINAL_ENDED_EARLY:
        return final_state(final)  # the run's own word on how it ended
    if ev.signalled:  # stopped by our Ctrl-C before it could checkpoint (e.g. still starting up)
        return RunState(INTERRUPTED, f"stopped by Ctrl-C ({exit_text(ev.rc)})")
    if ev.rc == rundir.EXIT_OK:
        if ev.final is None:
            problem = "no final.json"
        elif ev.stale:
            problem = "no new final.json"
        elif ev.final.record is None:
            problem = str(ev.final.problem)
        else:
            problem = f"final.json status {ev.final.record.status!r}"
        return RunState(FAILED, f"exit 0 but {problem}")
    return RunState(FAILED, exit_text(ev.rc) + (f": {ev.log_tail}" if ev.log_tail else ""))


def _dir_missing(current: RunState, ev: DirMissing) -> RunState:
    """No directory is expected of a run not started yet (or one that failed before it made
    its directory); one that had files, or completed, is broken without it."""
    expected = ev.live and (current.state == PLANNED or current.state in ACTIVE_STATES)
    gone = ev.collected_before or current.state in (COMPLETED, DIVERGED, PRUNED, BROKEN)
    if expected or not gone:
        return current
    return RunState(BROKEN, ev.reason)


def _collected(current: RunState, ev: Collected) -> RunState:
    """A run's state after collect read its files (final.json decides when there is one).

    A pending or running run of a planned study keeps its state (status asks its executor for
    it) unless a final.json of its current attempt says how it ended. Were it to become failed
    or broken from a stale or half-read file, status would not watch its job any more, and
    `submit --resubmit-failed` would start a second job on the same work dir.
    """
    final = ev.files.current_final
    record = final.record if final is not None else None
    status = record.status if record is not None else None
    if ev.live and current.state in ACTIVE_STATES and (ev.problems or status not in rundir.FINAL_STATUSES):
        return current
    if ev.problems:
        return RunState(BROKEN, "; ".join(ev.problems))
    if final is not None and record is not None:
        if status in rundir.FINAL_STATUSES:
            return final_state(final)
        return RunState(
            BROKEN,
            f"final.json: status {status!r}, expected one of {', '.join(map(repr, rundir.FINAL_STATUSES))}",
        )
    if ev.live and current.state == COMPLETED:
        return RunState(BROKEN, "final.json missing, but the run was recorded as completed")
    if ev.live and current.state != BROKEN:
        return current  # no result yet: status owns the live state
    return from_files(ev.files)
