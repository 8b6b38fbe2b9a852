"""The run directory (docs/run-directory.md): its every file format, written and read here.

The training program writes a run directory through this module (``LossLog``, ``FinalRecord``,
``write_args``, ``write_config``, ``sample_block``); status, collect and the executors read it
here too (``read_loss_csv``, ``last_loss_row``, ``read_final``, ``attempt_text``), so the two sides
cannot drift apart. The exit codes of ``python -m reatt.train`` and the attempt lines that launchers
write into a job's logs are part of the same contract, defined here. No torch, no database here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeGuard

from reatt.errors import RunDirError
from reatt.files import parse_utc, read_tail, utc_iso, utc_now, write_atomic

# ----------------------------------------------------------------------------------- names

ARGS, CONFIG, LOSS, FINAL = "args.txt", "config.json", "loss.csv", "final.json"
CHECKPOINT, SAMPLES, LOCK, TRAIN_LOG = "ckpt.pt", "samples.txt", ".lock", "train.log"
RUN_FILES = (CONFIG, FINAL, LOSS, ARGS)  # what collect fingerprints to skip unchanged runs
RUN_MARKERS = (CONFIG, LOSS, FINAL)  # a directory holding one of these is a run

# -------------------------------------------------------- exit codes of python -m reatt.train

EXIT_OK = 0  # completed (or already completed in this work dir)
EXIT_FAILED = 1  # the run failed; final.json says why
EXIT_USAGE = 2  # bad config or command line, or the work dir is locked; nothing was written
EXIT_DIVERGED = 3  # the loss became non-finite: stopped there; final.json says at which step
EXIT_PRUNED = 4  # a tuning run stopped behind a sibling candidate (trainer.prune_*); final.json says where
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a stop signal came, ckpt.pt is saved; start again to resume

# --------------------------------------------------------------------------------- loss.csv


class LossRow(NamedTuple):
    """One loss.csv row (its columns, in order); empty fields are None."""

    step: int
    loss: float | None
    val_loss: float | None
    lr: float | None
    tokens: int | None
    elapsed_s: float | None


LOSS_COLUMNS = LossRow._fields  # the header
_FORMATS = ("d", ".6f", ".6f", ".6e", "d", ".3f")  # how each column is written
_KINDS = (int, float, float, float, int, float)  # and read back


def format_loss_row(row: LossRow) -> list[str]:
    """The fields of a loss.csv row as written (empty for None)."""
    return ["" if v is None else format(v, f) for v, f in zip(row, _FORMATS, strict=True)]


def parse_loss_row(values: list[str]) -> LossRow:
    """A loss.csv row from its fields; ValueError if one is not a number of its column's type
    (ints within 64 bits, as the database holds them; the step is never empty)."""
    step, *rest = values
    row = LossRow(int(step), *(k(t) if t != "" else None for k, t in zip(_KINDS[1:], rest, strict=True)))
    for value in (row.step, row.tokens):
        if value is not None and not is_number(value, (int,)):
            raise ValueError(f"{value} does not fit in 64 bits")
    return row


@dataclass
class LossRows:
    """The complete rows of a loss.csv, and what was wrong with the rest."""

    rows: list[LossRow]
    truncated: bool  # the last line had no newline (a run still writing, or killed): ignored
    problems: list[str]  # malformed lines, each "loss.csv:LINE: reason"


def read_loss_csv(path: Path) -> LossRows:
    """Parse loss.csv. A truncated last line is ignored, a malformed one (a byte that is not
    UTF-8 included) reported in ``problems``; a bad header raises ValueError."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
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
            rows.append(parse_loss_row(row))
        except ValueError as e:
            problems.append(f"{path.name}:{lineno}: {e}")
    return LossRows(rows, truncated, problems)


def last_loss_row(path: Path, max_bytes: int = 64 * 1024) -> LossRow | None:
    """The last complete row of a loss.csv (reading only its tail), or None."""
    tail = read_tail(path, max_bytes)
    if tail is None:
        return None
    lines = tail.split("\n")[:-1]  # drop a partial last line (or the empty string after "\n")
    for line in reversed(lines):
        row = next(csv.reader([line]), [])
        if len(row) == len(LOSS_COLUMNS) and row[0].isdigit():
            try:
                return parse_loss_row(row)
            except ValueError:
                continue
    return None


class LossLog:
    """The writer of loss.csv: a header, then one row per log step, flushed as it goes.

    On resume the complete rows up to the checkpoint's step are kept (parsed by
    ``read_loss_csv``, written back in the same format), the rest dropped: rows after the
    checkpoint, a torn last line, and malformed lines (reported in ``problems``).
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.rows: list[LossRow] = []  # the rows kept on resume
        self.problems: list[str] = []  # malformed lines dropped on resume
        if resume_step is not None:
            self._keep_rows_up_to(resume_step)
        buf = io.StringIO()  # the header and the kept rows, replacing the file atomically
        writer = csv.writer(buf)
        writer.writerow(LOSS_COLUMNS)
        writer.writerows(format_loss_row(row) for row in self.rows)
        write_atomic(self.path, buf.getvalue())
        self.file: TextIO = open(path, "a", newline="")
        self.writer = csv.writer(self.file)

    def _keep_rows_up_to(self, step: int) -> None:
        try:
            if self.path.stat().st_size == 0:  # created, then killed before the header: no rows
                return
            parsed = read_loss_csv(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise RunDirError(
                f"cannot resume: {e}; move {self.path} aside to resume without its rows, "
                f"or remove {self.path.parent} to start over"
            ) from None
        self.rows = [r for r in parsed.rows if r.step <= step]
        self.problems = parsed.problems

    def loss_at(self, step: int) -> float | None:
        """The ``loss`` of the kept row at ``step``, if any."""
        return next((row.loss for row in reversed(self.rows) if row.step == step), None)

    def write(self, row: LossRow) -> None:
        self.writer.writerow(format_loss_row(row))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------- final.json

# final.json statuses; pruned: a tuning run stopped early, behind a sibling candidate by a margin
FINAL_COMPLETED, FINAL_FAILED, FINAL_DIVERGED, FINAL_PRUNED = "completed", "failed", "diverged", "pruned"
FINAL_STATUSES = (FINAL_COMPLETED, FINAL_FAILED, FINAL_DIVERGED, FINAL_PRUNED)
FINAL_ENDED_EARLY = (FINAL_FAILED, FINAL_DIVERGED, FINAL_PRUNED)  # the run's own word on an early end


@dataclass(frozen=True)
class FinalRecord:
    """final.json: how a run ended, written once (atomically) when it ends."""

    status: Any  # one of FINAL_STATUSES (anything, as read from a file)
    final_nll: float | None = None  # held-out NLL at the last step: the run's answer
    final_train_loss: float | None = None
    steps: int | None = None
    tokens: int | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None  # training tokens per second of training-step time
    mfu: float | None = None  # only where the device's peak FLOP/s is known, else null
    flops_per_token: float | None = None
    peak_flops: float | None = None
    device: str | None = None
    world_size: int | None = None  # ranks (one device each) that trained it; mfu is per device
    precision: str | None = None  # trainer.precision resolved: "bf16" or "fp32" (older reatt: absent)
    n_params: int | None = None
    n_params_non_embedding: int | None = None
    skipped_lines: int | None = None
    error: str | None = None  # why it failed or diverged
    finished_at: str | None = None  # ISO 8601, UTC
    diverged_at: int | None = None  # the step whose loss was not finite
    pruned_at: int | None = None  # the step at which a tuning run was pruned (final_nll: its NLL there)

    def write(self, work_dir: Path) -> None:
        """Atomically, as valid JSON: a non-finite number is written as null."""
        data = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()
        }
        write_atomic(work_dir / FINAL, json.dumps(data, indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> tuple[FinalRecord, dict[str, str]]:
        """The record in ``data`` (unknown keys ignored), and by field a problem for each numeric
        field that holds something else (that field is then None)."""
        values: dict[str, Any] = {}
        problems = {}
        for f in fields(cls):
            value = data.get(f.name, None if f.default is MISSING else f.default)
            kinds = _NUMBER_KINDS.get(str(f.type))
            if value is not None and kinds is not None and not is_number(value, kinds):
                shown = f"{value!r}" if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
                fits = " within 64 bits" if isinstance(value, int) and not isinstance(value, bool) else ""
                problems[f.name] = f"{FINAL}: {f.name} = {shown}, expected a number{fits}"
                value = None
            values[f.name] = value
        return cls(**values), problems

    @property
    def completed(self) -> bool:
        return self.status == FINAL_COMPLETED


_NUMBER_KINDS: dict[str, tuple[type, ...]] = {"int | None": (int,), "float | None": (int, float)}


def is_number(value: Any, kinds: tuple[type, ...] = (int, float)) -> TypeGuard[int | float]:
    """Whether ``value`` is a number of ``kinds`` that a database column holds: not a bool, an
    int within 64 bits."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@dataclass(frozen=True)
class FinalFile:
    """A final.json as found: its record, or why it cannot be read; and when it was written."""

    record: FinalRecord | None  # None: unreadable
    problem: str | None  # "final.json unreadable: ..." when it is
    problems: dict[str, str]  # by field: those of the wrong type (set to None in ``record``)
    written_at: dt.datetime | None  # finished_at, else the file's mtime (naive UTC)

    def written_before(self, since: dt.datetime | None) -> bool:
        """Whether it was written before ``since`` (``Run.submitted_at``): then it is an earlier
        attempt's, which the new attempt removes once it starts, and says nothing of the job now
        queued or running. In whole seconds, as finished_at; False without a time."""
        if since is None or self.written_at is None:
            return False
        return self.written_at < since.replace(microsecond=0)


def read_final(work_dir: Path) -> FinalFile | None:
    """The run's final.json, or None without one. An unreadable one is a FinalFile saying why."""
    path = work_dir / FINAL
    record: FinalRecord | None = None
    problems: dict[str, str] = {}
    problem: str | None = None
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:  # JSON and UnicodeDecodeError are ValueErrors
        problem = f"{FINAL} unreadable: {e}"
    else:
        if data is None:
            return None
        record, problems = FinalRecord.from_json(data)
    when = parse_utc(record.finished_at) if record is not None else None
    if when is None:
        try:
            when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None)
        except OSError:
            when = None
    return FinalFile(record, problem, problems, when)


def write_args(work_dir: Path, argv: list[str]) -> None:
    """args.txt: the exact argv, one argument per line."""
    write_atomic(work_dir / ARGS, "".join(a + "\n" for a in argv))


def read_args(work_dir: Path) -> list[str]:
    """The ``--key=value`` arguments of args.txt (other lines left out); OSError if unreadable."""
    lines = (work_dir / ARGS).read_text().splitlines()
    return [line for line in lines if line.startswith("--") and "=" in line]


def write_config(work_dir: Path, tree: dict[str, Any], meta: dict[str, Any]) -> None:
    """config.json: the resolved config tree (system, data, model, trainer) and ``meta``."""
    write_atomic(work_dir / CONFIG, json.dumps({**tree, "meta": meta}, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None if absent. Unreadable or not an object: ValueError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# ------------------------------------------------------------------------------ samples.txt

_SAMPLE_HEAD = re.compile(rb"^--- step (\d+) ---$", re.MULTILINE)


def sample_block(step: int, text: str) -> str:
    """One block of samples.txt: a head line ``--- step N ---``, then the sample."""
    return f"--- step {step} ---\n{text}\n"


def trim_samples(path: Path, step: int) -> None:
    """Drop the blocks of samples.txt from steps after ``step``: a resumed run writes them again."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    cut = next((m.start() for m in _SAMPLE_HEAD.finditer(text) if int(m.group(1)) > step), None)
    if cut is not None:
        write_atomic(path, text[:cut])


# ---------------------------------------------------------------- logs and their attempts

# Each attempt of a job first writes a line to its logs: train.log for a local run (Python
# writes it, ``local_attempt_line``), a Slurm job's .out and .err (the sbatch template writes it,
# from ``SLURM_ATTEMPT_SH``; a requeued job appends every attempt to the same files).
SLURM_ATTEMPT_SH = (
    "reatt: run $run, job $requeue_id, attempt $((${SLURM_RESTART_COUNT:-0} + 1)), "
    "on $(hostname) at $(date -Is)"
)
ATTEMPT_LINE = re.compile(r"^reatt: run \S+, job \S+, attempt \d+\b.*$", re.MULTILINE)


def local_attempt_line(command: str) -> str:
    """The line a local launch appends to train.log before it starts ``command``."""
    return f"=== reatt submit (local) {utc_iso()}: {command}\n"


def attempt_text(log: Path | None, max_bytes: int = 64 * 1024) -> str:
    """What the latest attempt wrote to a Slurm log: the text after the last attempt line
    (``ATTEMPT_LINE``); the whole tail where there is none (a script from an older template).
    Empty when there is no such file."""
    text = read_tail(log, max_bytes) if log is not None else None
    if not text:
        return ""
    starts = list(ATTEMPT_LINE.finditer(text))
    return text[starts[-1].end() :] if starts else text


# --------------------------------------------------------------------- the directory itself

# run directories moved aside by ``archive`` (``--force``): superseded runs, never collected
ARCHIVED_DIR = re.compile(r"\.(prev|replaced)-\d{8}T\d{6}\d*Z$")


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


def archive(work_dir: Path) -> Path | None:
    """Move a run directory aside (``<dir>.prev-<UTC time>``) so a run can start over; nothing
    is deleted. Returns the new path, or None if there was nothing to move."""
    if not work_dir.exists():
        return None
    stamp = utc_now().strftime("%Y%m%dT%H%M%S%fZ")
    target = work_dir.with_name(f"{work_dir.name}.prev-{stamp}")
    work_dir.rename(target)
    return target
