"""``reatt collect``: run directories -> the results database, incrementally, in one transaction.

Two sources of runs:

- a planned study (``reatt plan``): each run's ``work_dir`` as recorded at plan time;
- directory trees of runs made by hand with ``python -m reatt.train`` (``paths``): every
  directory holding ``config.json``, ``loss.csv`` or ``final.json`` is a run, recorded under a
  study with ``matrix == "collected"`` (no spec) named after the tree (or ``as_study``).

Each run's files are fingerprinted (size and mtime of each, ``rundir.fingerprint``); a run
whose fingerprint equals the one stored at its last collect is not read again, so collecting
twice adds nothing and a collect after one run finished reads that run only. A changed run is
read whole: its results from ``final.json``, its ``config.json``, and its ``loss.csv`` rows,
which replace the run's ``metrics`` rows.

A run of a planned study that is pending or running keeps the state ``reatt status`` gave it
(status.py owns the live states): only a final.json written since the job was submitted, the
attempt's own record of its end, changes it. A resubmitted run's work dir keeps the failed
attempt's final.json until the new attempt starts; that record is ignored.

Everything happens in one transaction: an interrupted or failed collect leaves the database as
the previous collect left it. A truncated last line of a ``loss.csv`` (a run still writing, or
killed) is ignored with a warning; a run whose directory is gone or whose files cannot be read
is recorded as ``broken`` with the reason, and reported by every collect until it is fixed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Float, Table, delete, insert, select
from sqlalchemy.orm import Session, object_session

from reatt import db, rundir, states
from reatt.config import get_default_config, parse_value
from reatt.errors import ConfigError, StudyError
from reatt.plan import NAME_RE

COLLECTED_MATRIX = "collected"  # Study.matrix of runs collected from a directory tree
RUN_MARKERS = ("config.json", "loss.csv", "final.json")  # a directory holding one is a run
# directories moved aside by `--force` (rundir.archive, plan_study): superseded runs, not collected
ARCHIVED_DIR = re.compile(r"\.(prev|replaced)-\d{8}T\d{6}\d*Z$")
MISSING = "run directory missing"
METRIC_COLUMNS = ("run_id", *rundir.LOSS_COLUMNS)  # the metrics table: a run's loss.csv rows
INSERT_BATCH = 50_000  # metric rows per executemany: bounds memory on a study of big runs
DELETE_BATCH = 500  # run ids per DELETE ... WHERE run_id IN (...)
MAX_WARNINGS_PER_RUN = 5
# feature names of a hand-made run, from its config (as in ablations/reatt.toml)
FEATURE_FLAGS = (
    ("swiglu", lambda c: bool(c.get("model", {}).get("swiglu"))),
    ("rmsnorm", lambda c: bool(c.get("model", {}).get("rmsnorm"))),
    ("rope", lambda c: bool(c.get("model", {}).get("rope"))),
    ("warmup", lambda c: (c.get("trainer", {}).get("warmup_steps") or 0) > 0),
    ("cosine", lambda c: bool(c.get("trainer", {}).get("use_cosine"))),
)
# final.json fields copied into Run columns, with the JSON types each may have
FINAL_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("final_nll", (int, float)),
    ("final_train_loss", (int, float)),
    ("steps", int),
    ("tokens", int),
    ("tokens_per_s", (int, float)),
    ("wall_time_s", (int, float)),
    ("mfu", (int, float)),
    ("n_params", int),
    ("n_params_non_embedding", int),
)
# every Run column collect fills from a run directory (``clear_results`` empties them)
RESULT_COLUMNS = (*(key for key, _ in FINAL_FIELDS), "config", "files", "collect_error", "collected_at")


@dataclass
class CollectResult:
    """What one collect did."""

    studies: list[str] = field(default_factory=list)
    runs_read: int = 0  # runs whose files changed since the last collect, read now
    runs_unchanged: int = 0  # fingerprint equal to the stored one: not read
    runs_not_started: int = 0  # no run directory yet, as expected for the run's state
    runs_added: int = 0  # hand-made runs seen for the first time
    metric_rows: int = 0  # metrics rows written
    broken: list[tuple[str, str, str]] = field(default_factory=list)  # (study, run, reason)
    warnings: list[str] = field(default_factory=list)


def collect(
    engine: Engine,
    study: str | None = None,
    paths: Sequence[Path] = (),
    *,
    as_study: str | None = None,
    all_studies: bool = False,
) -> CollectResult:
    """Read run directories into the database (one transaction); see the module docstring.

    Without ``paths``: the study named ``study`` (default: the latest planned), or every study
    with ``all_studies``. With ``paths``: the runs found under each, each path its own study
    named ``as_study`` (one path only) or after the directory.
    """
    paths = [Path(p) for p in paths]
    if paths and (study or all_studies):
        raise StudyError("give either PATHS (runs made by hand) or --study/--all (planned studies), not both")
    if study and all_studies:
        raise StudyError(f"give --study {study} or --all, not both")
    if as_study is not None and not paths:
        raise StudyError("--as names the study of runs collected from PATHS; give a PATH")
    if as_study is not None and len(paths) > 1:
        raise StudyError(f"--as {as_study} names one study; give one PATH (got {len(paths)})")
    trees = [_tree(p, as_study) for p in paths]

    result = CollectResult()
    with db.transaction(engine) as session:
        sink = _MetricSink(session)
        if trees:
            for name, root, found in trees:
                st = _collected_study(session, name, root, found, result)
                _collect_study(session, st, sink, result)
        else:
            if all_studies:
                chosen = list(session.scalars(select(db.Study).order_by(db.Study.id)))
                if not chosen:
                    raise StudyError("the database holds no study yet; run `reatt plan SPEC` first")
            else:
                chosen = [db.get_study(session, study)]
            for st in chosen:
                _collect_study(session, st, sink, result)
        sink.flush()
    return result


# ------------------------------------------------------------------- hand-made directory trees


def _tree(path: Path, as_study: str | None) -> tuple[str, Path, list[Path]]:
    """(study name, resolved root, run directories under it in sorted order)."""
    root = path.expanduser().resolve()
    if not root.is_dir():
        raise StudyError(f"{path}: not a directory")
    name = as_study if as_study is not None else root.name
    if not NAME_RE.fullmatch(name):  # fullmatch: match lets a trailing newline through
        raise StudyError(
            f"study name {name!r} (from {path}): expected letters, digits, '_', '.', '+' or '-'; "
            "choose one with --as NAME"
        )
    return name, root, find_run_dirs(root)


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a run file, sorted.

    Hidden directories and run directories moved aside by ``--force`` (``*.prev-<time>``,
    ``*.replaced-<time>``) are not searched: they hold superseded runs."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not ARCHIVED_DIR.search(d))
        if any(m in filenames for m in RUN_MARKERS):
            found.append(Path(dirpath))
    return sorted(found)


def _run_name(root: Path, run_dir: Path) -> str:
    rel = run_dir.relative_to(root).as_posix()
    return root.name if rel == "." else rel


def _collected_study(
    session: Session, name: str, root: Path, found: list[Path], result: CollectResult
) -> db.Study:
    """The collected study for ``root`` with a Run row for every run directory found."""
    st = session.scalar(select(db.Study).where(db.Study.name == name))
    if st is None:
        st = db.Study(name=name, matrix=COLLECTED_MATRIX, out_dir=str(root))
        session.add(st)
    elif st.matrix != COLLECTED_MATRIX:
        raise StudyError(
            f"study {name!r} was planned from {st.spec_path}; collect {root} under another name "
            "with --as NAME"
        )
    elif Path(st.out_dir) != root:
        raise StudyError(
            f"study {name!r} holds runs collected from {st.out_dir}; collect {root} under another "
            "name with --as NAME"
        )
    existing = {r.name: r for r in st.runs}
    for run_dir in found:
        rname = _run_name(root, run_dir)
        if rname not in existing:
            run = db.Run(
                name=rname,
                variant=rname,
                seed=0,  # replaced from config.json when the run is read
                position=0,
                features=[],
                overrides={},
                work_dir=str(run_dir),
                state=states.UNKNOWN,
            )
            st.runs.append(run)
            existing[rname] = run
            result.runs_added += 1
    for position, rname in enumerate(sorted(existing)):
        if existing[rname].position != position:
            existing[rname].position = position
    if st.reference is None and "baseline" in existing:
        st.reference = "baseline"
    session.flush()  # new runs get their ids (the metrics rows need them)
    return st


def _parse_args(text: str) -> dict[str, Any]:
    """args.txt (one ``--key=value`` per line) as overrides; unparseable lines are left out."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.startswith("--") or "=" not in line:
            continue
        key, value = line[2:].split("=", 1)
        try:
            out[key] = parse_value(key, value)
        except ConfigError:
            out[key] = value
    return out


# --------------------------------------------------------------------------- reading one run


@dataclass
class _RunFiles:
    """What one run directory holds, as far as it could be read."""

    config: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    rows: list[tuple[Any, ...]] | None = None  # loss.csv rows; None: no (readable) loss.csv
    problems: list[str] = field(default_factory=list)  # why the run is broken
    warnings: list[str] = field(default_factory=list)


def read_run_files(work_dir: Path) -> _RunFiles:
    """Read config.json, final.json, args.txt and loss.csv, collecting every problem."""
    out = _RunFiles()
    for attr, fname in (("config", "config.json"), ("final", "final.json")):
        try:
            setattr(out, attr, rundir.read_json(work_dir / fname))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            out.problems.append(f"{fname} unreadable: {rundir.one_line(e)}")
    if out.final is not None:
        for key, kinds in FINAL_FIELDS:
            value = out.final.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                out.problems.append(f"final.json: {key} = {value!r}, expected a number")
                out.final[key] = None
    try:
        out.args = _parse_args((work_dir / "args.txt").read_text())
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        out.warnings.append(f"args.txt unreadable: {rundir.one_line(e)}")
    try:
        loss = rundir.read_loss_csv(work_dir / "loss.csv")
    except FileNotFoundError:
        return out
    except (OSError, ValueError, UnicodeDecodeError) as e:
        out.problems.append(f"loss.csv unreadable: {rundir.one_line(e)}")
        return out
    if loss.truncated:
        out.warnings.append("loss.csv: truncated last line ignored (a run still writing, or killed)")
    problems = loss.problems
    if len(problems) > MAX_WARNINGS_PER_RUN:
        problems = problems[:MAX_WARNINGS_PER_RUN] + [
            f"loss.csv: {len(loss.problems) - MAX_WARNINGS_PER_RUN} more malformed line(s)"
        ]
    out.warnings += [f"{p} (line ignored)" if p.startswith("loss.csv:") else p for p in problems]
    by_step = {row[0]: row for row in loss.rows}  # a step logged twice: the later row counts
    if len(by_step) != len(loss.rows):
        out.warnings.append(
            f"loss.csv: {len(loss.rows) - len(by_step)} row(s) repeat an earlier step; the last one kept"
        )
        out.rows = sorted(by_step.values(), key=lambda r: r[0])
    else:
        out.rows = loss.rows
    return out


def _collect_study(session: Session, st: db.Study, sink: _MetricSink, result: CollectResult) -> None:
    result.studies.append(st.name)
    live = st.matrix != COLLECTED_MATRIX  # a planned study: status.py owns the live states
    for run in st.runs:
        _collect_run(st, run, live, sink, result)


def _collect_run(st: db.Study, run: db.Run, live: bool, sink: _MetricSink, result: CollectResult) -> None:
    work_dir = Path(run.work_dir)
    where = f"{st.name}/{run.name}"
    if not work_dir.is_dir():
        expected = live and (run.state == states.PLANNED or run.state in states.ACTIVE_STATES)
        gone = run.files or run.state == states.COMPLETED or run.state == states.BROKEN
        if expected or not gone:  # not started yet (or failed before it made its directory)
            result.runs_not_started += 1
            return
        reason = MISSING if not work_dir.exists() else f"{work_dir} is not a directory"
        if run.state != states.BROKEN or run.collect_error != reason:
            run.state, run.state_reason, run.collect_error = states.BROKEN, reason, reason
            run.files, run.collected_at = None, db.utc_now()  # read it again once it is back
        result.broken.append((st.name, run.name, reason))
        return

    files = rundir.fingerprint(work_dir)  # before reading: a run still writing is read again later
    if run.collected_at is not None and run.files == files:
        result.runs_unchanged += 1
        if run.state == states.BROKEN:
            result.broken.append((st.name, run.name, run.collect_error or run.state_reason or "broken"))
        return

    got = read_run_files(work_dir)
    result.runs_read += 1
    active = live and run.state in states.ACTIVE_STATES
    if active and rundir.written_before(work_dir / "final.json", got.final, run.submitted_at):
        got.final = None  # the previous attempt's record: nothing of it describes the job now queued
    result.warnings += [f"{where}: {w}" for w in got.warnings]
    if active:  # the live state stays; what could not be read is said, and kept in collect_error
        result.warnings += [f"{where}: {p} ({run.state}: state left to `reatt status`)" for p in got.problems]
    if run.id is not None:
        sink.replace(run.id)
    if got.rows:
        result.metric_rows += sink.add(run.id, got.rows)

    final = got.final or {}
    last = got.rows[-1] if got.rows else None
    meta = (got.config or {}).get("meta") or {}
    for key, _ in FINAL_FIELDS:
        setattr(run, key, final.get(key))
    if got.final is None and last is not None:  # no result yet: how far it got
        run.steps, run.tokens, run.wall_time_s = last[0], last[4], last[5]
    for key in ("n_params", "n_params_non_embedding"):
        if getattr(run, key) is None and isinstance(meta.get(key), int):
            setattr(run, key, meta[key])
    run.config = got.config
    if not live:
        _describe_handmade(run, got)

    run.state, run.state_reason = _state(run, live, got, work_dir)
    run.collect_error = "; ".join(got.problems) or None
    run.files, run.collected_at = files, db.utc_now()
    if run.state == states.BROKEN:
        result.broken.append((st.name, run.name, run.collect_error or run.state_reason or "broken"))


def _state(run: db.Run, live: bool, got: _RunFiles, work_dir: Path) -> tuple[str, str | None]:
    """The run's state after reading its files (final.json decides when there is one).

    A pending or running run of a planned study keeps its state (status.py asks Slurm, or the
    local process table, for it) unless a final.json of its current attempt says how it ended
    (an earlier attempt's was set aside by the caller). Were it to become failed or broken
    from a stale or half-read file, status.py would not watch its job any more, and
    `submit --resubmit-failed` would start a second job on the same work dir.
    """
    if live and run.state in states.ACTIVE_STATES:
        status = (got.final or {}).get("status")
        if got.problems or status not in (states.COMPLETED, states.FAILED):
            return run.state, run.state_reason
    if got.problems:
        return states.BROKEN, "; ".join(got.problems)
    if got.final is not None:
        status = got.final.get("status")
        if status == states.COMPLETED:
            return states.COMPLETED, None
        if status == states.FAILED:
            return states.FAILED, str(got.final.get("error") or "final.json: failed")
        return states.BROKEN, f"final.json: status {status!r}, expected 'completed' or 'failed'"
    if live and run.state == states.COMPLETED:
        return states.BROKEN, "final.json missing, but the run was recorded as completed"
    if live and run.state != states.BROKEN:
        return run.state, run.state_reason  # no result yet: status.py owns the live state
    return rundir.state_from_files(work_dir)


def clear_results(run: db.Run) -> None:
    """Forget what collect read from a run's directory: its result columns (``RESULT_COLUMNS``)
    and its metrics rows. For a run that starts over in a new directory (``--force``), under
    either executor; the next collect reads the new directory whole."""
    for column in RESULT_COLUMNS:
        setattr(run, column, None)
    session = object_session(run)
    if session is not None and run.id is not None:
        session.execute(delete(db.Metric).where(db.Metric.run_id == run.id))


def _describe_handmade(run: db.Run, got: _RunFiles) -> None:
    """Seed, features and overrides of a run made by hand, from its own files."""
    config = got.config or {}
    seed = (config.get("system") or {}).get("seed")
    if not isinstance(seed, int) and got.args is not None:
        seed = got.args.get("system.seed")
    if not isinstance(seed, int):
        seed = get_default_config().system.seed
    features = [name for name, on in FEATURE_FLAGS if _flag(on, config)]
    overrides = got.args or {}
    if run.seed != seed:
        run.seed = seed
    if run.features != features:
        run.features = features
    if run.overrides != overrides:
        run.overrides = overrides


def _flag(test: Any, config: dict[str, Any]) -> bool:
    try:
        return bool(test(config))
    except (AttributeError, TypeError):  # a config.json of another layout
        return False


# ------------------------------------------------------------------------------- metric rows


class _MetricSink:
    """Replaces runs' metrics rows: one DELETE per batch of runs, then executemany INSERTs.

    The INSERT is Core's ``insert(Metric)``. Where the dialect takes positional parameters and
    no column needs a bind processor beyond float coercion (SQLite), its compiled SQL is
    executed with plain tuples: SQLAlchemy's per-row parameter dicts cost more than SQLite's
    own insert (about 2.5x the time on 2M rows). The rows from ``rundir.read_loss_csv`` are
    already int/float/None, which is all the Float columns' processor would make of them.
    Elsewhere the usual executemany of dicts is used.
    """

    def __init__(self, session: Session) -> None:
        self.conn = session.connection()
        self.table = cast(Table, db.Metric.__table__)  # a Table, typed as its base FromClause
        self.sql = _positional_insert_sql(self.conn.dialect, self.table)
        self.deletes: list[int] = []
        self.rows: list[tuple[Any, ...]] = []

    def replace(self, run_id: int) -> None:
        self.deletes.append(run_id)
        if len(self.deletes) >= DELETE_BATCH:
            self._delete()

    def add(self, run_id: int | None, rows: Iterable[tuple[Any, ...]]) -> int:
        assert run_id is not None
        before = len(self.rows)
        head = (run_id,)
        self.rows.extend(head + row for row in rows)
        n = len(self.rows) - before
        if len(self.rows) >= INSERT_BATCH:
            self.flush()
        return n

    def _delete(self) -> None:
        if self.deletes:
            self.conn.execute(delete(self.table).where(self.table.c.run_id.in_(self.deletes)))
            self.deletes = []

    def flush(self) -> None:
        self._delete()  # before the inserts: a run's new rows replace its old ones
        if not self.rows:
            return
        if self.sql is not None:
            self.conn.exec_driver_sql(self.sql, self.rows)
        else:
            self.conn.execute(
                insert(self.table), [dict(zip(METRIC_COLUMNS, r, strict=True)) for r in self.rows]
            )
        self.rows = []


def _positional_insert_sql(dialect: Any, table: Any) -> str | None:
    """Core's INSERT of every metrics column as positional SQL, where tuples can be bound as is."""
    compiled = insert(table).compile(dialect=dialect)
    if not compiled.positional or tuple(compiled.positiontup or ()) != METRIC_COLUMNS:
        return None
    for col in table.columns:
        if col.type.bind_processor(dialect) is not None and not isinstance(col.type, Float):
            return None
    return str(compiled)
