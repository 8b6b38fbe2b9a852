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


def last_loss_row(path: Path, max_bytes: int = 64 * 1024) -> dict[str, Any] | None:
    """The last complete row of a loss.csv (reading only its tail), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
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


# slurmstepd's line in a job's stderr when Slurm ends it
_SLURM_END = re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+(?: DUE TO (?P<why>[A-Z ]+?))? \*\*\*")


def state_from_files(work_dir: Path, err_file: Path | None = None) -> tuple[str, str | None]:
    """A finished-or-stopped run's state from its files alone (no scheduler to ask).

    final.json decides when present. Otherwise the Slurm stderr file says whether Slurm
    cancelled it (time limit, preemption, scancel) or it ran out of memory; a checkpoint
    without final.json means it was interrupted and can resume.
    """
    try:
        final = read_json(work_dir / "final.json")
    except ValueError as e:
        return states.FAILED, f"final.json unreadable: {e}"
    if final is not None:
        if final.get("status") == "completed":
            return states.COMPLETED, None
        return states.FAILED, final.get("error") or f"final.json status {final.get('status')!r}"
    err = ""
    if err_file is not None:
        try:
            err = err_file.read_text(errors="replace")[-20000:]
        except OSError:
            err = ""
    ends = list(_SLURM_END.finditer(err))  # the last one counts: a requeued job's log holds every attempt
    if ends:
        match = ends[-1]
        why = (match.group("why") or "").strip()
        if why == "TIME LIMIT":
            return states.TIMEOUT, "Slurm: cancelled due to time limit"
        if why == "PREEMPTION":
            return states.PREEMPTED, "Slurm: preempted"
        return states.CANCELLED, "Slurm: cancelled" + (f" due to {why.lower()}" if why else "")
    if re.search(r"oom[-_ ]kill|Exceeded job memory limit|Out Of Memory", err, re.IGNORECASE):
        return states.FAILED, "out of memory"
    if (work_dir / "ckpt.pt").exists():
        return states.INTERRUPTED, "stopped with a checkpoint and no final.json; submit again to resume"
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
