"""Reading a run directory (docs/run-directory.md) without torch: for status, collect, submit.

The training program writes these files; everything else in reatt reads them through here.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reatt import states

LOSS_COLUMNS = ("step", "loss", "val_loss", "lr", "tokens", "elapsed_s")
RUN_FILES = ("config.json", "final.json", "loss.csv", "args.txt")


@dataclass
class LossRows:
    """The complete rows of a loss.csv, and what was wrong with the rest."""

    rows: list[tuple[int, float | None, float | None, float | None, int | None, float | None]]
    truncated: bool  # the last line had no newline (a run still writing, or killed): ignored
    problems: list[str]  # malformed lines, each "loss.csv:LINE: reason"


def _num(text: str, kind: type) -> Any:
    return kind(text) if text != "" else None


def read_loss_csv(path: Path) -> LossRows:
    """Parse loss.csv. A truncated last line is ignored; a bad header raises ValueError."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    truncated = bool(text) and not text.endswith("\n")
    if truncated or lines[-1] == "":
        lines = lines[:-1]  # the partial line, or the empty string after the final newline
    if not lines:
        raise ValueError(f"{path}: empty (no header)")
    header = tuple(next(csv.reader([lines[0]])))
    if header != LOSS_COLUMNS:
        raise ValueError(f"{path}:1: header {','.join(header)!r}, expected {','.join(LOSS_COLUMNS)!r}")
    rows, problems = [], []
    for lineno, row in enumerate(csv.reader(lines[1:]), start=2):
        if len(row) != len(LOSS_COLUMNS):
            problems.append(f"{path.name}:{lineno}: {len(row)} fields, expected {len(LOSS_COLUMNS)}")
            continue
        try:
            rows.append(
                (
                    int(row[0]),
                    _num(row[1], float),
                    _num(row[2], float),
                    _num(row[3], float),
                    _num(row[4], int),
                    _num(row[5], float),
                )
            )
        except ValueError as e:
            problems.append(f"{path.name}:{lineno}: {e}")
    return LossRows(rows, truncated, problems)


def read_tail(path: Path, max_bytes: int = 64 * 1024) -> str | None:
    """The last ``max_bytes`` of a text file, from its first whole line on; None if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError:
        return None
    if start > 0:  # began mid-line: drop that partial line
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return data.decode("utf-8", errors="replace")


def last_loss_row(path: Path, max_bytes: int = 64 * 1024) -> dict[str, Any] | None:
    """The last complete row of a loss.csv (reading only its tail), or None."""
    tail = read_tail(path, max_bytes)
    if tail is None:
        return None
    lines = tail.split("\n")[:-1]  # drop a partial last line (or the empty string after "\n")
    for line in reversed(lines):
        row = next(csv.reader([line]), [])
        if len(row) == len(LOSS_COLUMNS) and row[0].isdigit():
            return {
                "step": int(row[0]),
                "loss": _num(row[1], float),
                "val_loss": _num(row[2], float),
                "elapsed_s": _num(row[5], float),
            }
    return None


def one_line(text: object, width: int = 200) -> str:
    """``text`` on one line (whitespace runs made one space), cut to ``width`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "\u2026"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None if absent. Unreadable or not an object: ValueError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def fingerprint(work_dir: Path) -> dict[str, list[int]]:
    """(size, mtime_ns) of each run file present: what collect compares to skip unchanged runs."""
    out = {}
    for name in RUN_FILES:
        try:
            st = (work_dir / name).stat()
        except FileNotFoundError:
            continue
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _utc(text: Any) -> dt.datetime | None:
    """An ISO 8601 time (``finished_at``) as a naive UTC datetime; None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when  # without an offset: taken as UTC, as reatt writes every time


def written_before(path: Path, final: dict[str, Any] | None, since: dt.datetime | None) -> bool:
    """Whether the final.json at ``path`` (contents ``final``) was written before ``since``.

    ``since`` is when the run's current attempt was submitted (``Run.submitted_at``, naive UTC).
    A resubmitted run's work dir keeps the failed attempt's final.json until the new attempt
    starts and removes it: such a record says nothing about the job now queued or running.
    The time is final.json's ``finished_at`` (ISO, whole seconds), else the file's mtime.
    ``since`` is cut to whole seconds too, so an attempt's own record is never taken as older.
    False when ``since`` is None (no submission known) or no time can be read.
    """
    if since is None:
        return False
    when = _utc(final.get("finished_at")) if final else None
    if when is None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return False
        when = dt.datetime.fromtimestamp(mtime, dt.timezone.utc).replace(tzinfo=None)
    return when < since.replace(microsecond=0)


@dataclass(frozen=True)
class Final:
    """What a run's final.json says about its end."""

    state: str  # completed, or failed (also when final.json is unreadable)
    reason: str | None  # why it failed: its error, or why final.json cannot be read
    final_nll: float | None = None  # the run's answer, once completed


def read_final(work_dir: Path, since: dt.datetime | None = None) -> Final | None:
    """The run's end as its final.json records it; None without one.

    With ``since`` (``Run.submitted_at``), a final.json written before it is an earlier
    attempt's (``written_before``) and counts as none.
    """
    path = work_dir / "final.json"
    try:
        data = read_json(path)
        problem = None
    except (OSError, ValueError) as e:  # JSON and UnicodeDecodeError are ValueErrors
        data, problem = {}, f"final.json unreadable: {e}"
    if data is None or written_before(path, data, since):
        return None
    if problem is not None:
        return Final(states.FAILED, problem)
    status = data.get("status")
    if status == states.COMPLETED:
        nll = data.get("final_nll")
        if isinstance(nll, (int, float)) and not isinstance(nll, bool):
            return Final(states.COMPLETED, None, float(nll))
        return Final(states.COMPLETED, None, None)
    return Final(states.FAILED, str(data.get("error") or f"final.json status {status!r}"))


# The line slurm_templates/job.sbatch.j2 writes to a job's .out and .err files as each attempt
# starts; a requeued job appends every attempt to the same files (--open-mode=append).
ATTEMPT_LINE = re.compile(r"^reatt: run \S+, job \S+, attempt \d+\b.*$", re.MULTILINE)
# slurmstepd's line in a job's .err file when Slurm ends the job, e.g.
# "slurmstepd: error: *** JOB 12 ON node7 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***";
# the reason may hold a comma ("NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS"), and an scancel has none
_SLURM_END = re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+(?: DUE TO (?P<why>[^*\n]*?))? \*\*\*")
_OOM = re.compile(r"oom[-_ ]kill|Exceeded job memory limit|Out Of Memory", re.IGNORECASE)
ERR_TAIL_BYTES = 64 * 1024


def attempt_err(err_file: Path | None) -> str:
    """What the job's latest attempt wrote to its Slurm .err file: the text after the last
    attempt line (``ATTEMPT_LINE``); the whole tail where there is none (a script from an older
    template). Empty when there is no such file."""
    text = read_tail(err_file, ERR_TAIL_BYTES) if err_file is not None else None
    if not text:
        return ""
    starts = list(ATTEMPT_LINE.finditer(text))
    return text[starts[-1].end() :] if starts else text


def last_err_line(err_file: Path | None, width: int = 300) -> str | None:
    """The last non-empty line the job's latest attempt wrote to its .err file, for a reason."""
    lines = [line for line in attempt_err(err_file).splitlines() if line.strip()]
    return one_line(lines[-1], width) if lines else None


def state_from_err(err: str) -> tuple[str, str] | None:
    """How Slurm ended an attempt, from what it wrote to the .err file (``attempt_err``), or None.

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
    return state, reason


def state_from_files(
    work_dir: Path, err_file: Path | None = None, since: dt.datetime | None = None
) -> tuple[str, str | None]:
    """A finished-or-stopped run's state from its files alone (no scheduler to ask).

    final.json decides when present (and, given ``since``, written by the current attempt:
    ``read_final``). Otherwise the latest attempt's part of the Slurm .err file says whether
    Slurm ended it (time limit, preemption, node failure, scancel) or it ran out of memory
    (``state_from_err``); a checkpoint without final.json means it was interrupted and can resume.
    """
    final = read_final(work_dir, since)
    if final is not None:
        return final.state, final.reason
    ended = state_from_err(attempt_err(err_file))
    if ended is not None:
        return ended
    if (work_dir / "ckpt.pt").exists():
        return (
            states.INTERRUPTED,
            "stopped with a checkpoint and no final.json; `reatt submit --resubmit-failed` resumes it",
        )
    if not work_dir.exists():
        return states.UNKNOWN, "no run directory"
    return states.UNKNOWN, "no final.json"


def archive(work_dir: Path) -> Path | None:
    """Move a run directory aside (``<dir>.prev-<UTC time>``) so a run can start over; nothing
    is deleted. Returns the new path, or None if there was nothing to move."""
    if not work_dir.exists():
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = work_dir.with_name(f"{work_dir.name}.prev-{stamp}")
    work_dir.rename(target)
    return target


def this_host() -> str:
    """This machine's short host name (at most 40 characters): local job ids and a work dir's
    ``.lock`` record it beside a pid, since a pid means nothing on another host."""
    import socket

    return socket.gethostname().split(".")[0][:40] or "localhost"
