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

Collects of one study take turns (``store.lock_studies``: the second reads what the first
wrote, so it neither loses nor repeats a row); collects of different studies run at once on
PostgreSQL, one after the other on SQLite (docs/guarantees.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from reatt import rundir, states
from reatt.errors import ConfigError, StudyError
from reatt.executors.base import NAME_RE
from reatt.files import utc_now
from reatt.states import Collected, DirMissing, Files, one_line
from reatt.study import store
from reatt.study.metrics import MetricSink
from reatt.study.spec import COLLECTED_MATRIX
from reatt.training.config import get_default_config, parse_value
from reatt.training.schema import toggles_on

MISSING = "run directory missing"
MAX_WARNINGS_PER_RUN = 5


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
    with store.transaction(engine) as session:
        sink = MetricSink(session)
        if trees:
            store.lock_studies(session, [name for name, _, _ in trees])
            for name, root, found in trees:
                st = _collected_study(session, name, root, found, result)
                _collect_study(session, st, sink, result)
        else:
            if all_studies:
                names = list(session.scalars(select(store.Study.name).order_by(store.Study.id)))
                if not names:
                    raise StudyError("the database holds no study yet; run `reatt plan SPEC` first")
            else:
                names = [store.get_study(session, study).name]
            store.lock_studies(session, names)  # then read them: what the collect before left
            for name in names:
                _collect_study(session, store.get_study(session, name), sink, result)
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
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not rundir.ARCHIVED_DIR.search(d)
        )
        if any(m in filenames for m in rundir.RUN_MARKERS):
            found.append(Path(dirpath))
    return sorted(found)


def _run_name(root: Path, run_dir: Path) -> str:
    rel = run_dir.relative_to(root).as_posix()
    return root.name if rel == "." else rel


def _collected_study(
    session: Session, name: str, root: Path, found: list[Path], result: CollectResult
) -> store.Study:
    """The collected study for ``root`` with a Run row for every run directory found."""
    st = session.scalar(select(store.Study).where(store.Study.name == name))
    if st is None:
        st = store.Study(name=name, matrix=COLLECTED_MATRIX, out_dir=str(root))
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
            run = store.Run(
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


def _parse_args(argv: list[str]) -> dict[str, Any]:
    """args.txt's ``--key=value`` arguments as overrides (a value that does not parse as its
    key's type is kept as text)."""
    out: dict[str, Any] = {}
    for line in argv:
        key, value = line[2:].split("=", 1)
        try:
            out[key] = parse_value(key, value)
        except ConfigError:
            out[key] = value
    return out


# --------------------------------------------------------------------------- reading one run


@dataclass
class RunFiles:
    """What one run directory holds, as far as it could be read."""

    config: dict[str, Any] | None = None
    final: rundir.FinalFile | None = None
    args: dict[str, Any] | None = None
    rows: list[rundir.LossRow] | None = None  # loss.csv rows; None: no (readable) loss.csv
    problems: list[str] = field(default_factory=list)  # why the run is broken
    warnings: list[str] = field(default_factory=list)


def read_run_files(work_dir: Path) -> RunFiles:
    """Read config.json, final.json, args.txt and loss.csv, collecting every problem."""
    out = RunFiles()
    try:
        out.config = rundir.read_json(work_dir / rundir.CONFIG)
    except (OSError, ValueError) as e:
        out.problems.append(f"{rundir.CONFIG} unreadable: {one_line(e)}")
    out.final = rundir.read_final(work_dir)
    if out.final is not None:
        if out.final.problem is not None:
            out.problems.append(one_line(out.final.problem))
        # what the database holds must be a number; the other fields are only kept in the file
        out.problems += [p for key, p in out.final.problems.items() if key in store.FINAL_COLUMNS]
    try:
        out.args = _parse_args(rundir.read_args(work_dir))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        out.warnings.append(f"{rundir.ARGS} unreadable: {one_line(e)}")
    try:
        loss = rundir.read_loss_csv(work_dir / rundir.LOSS)
    except FileNotFoundError:
        return out
    except (OSError, ValueError) as e:
        out.problems.append(f"{rundir.LOSS} unreadable: {one_line(e)}")
        return out
    if loss.truncated:
        out.warnings.append("loss.csv: truncated last line ignored (a run still writing, or killed)")
    problems = loss.problems
    if len(problems) > MAX_WARNINGS_PER_RUN:
        problems = problems[:MAX_WARNINGS_PER_RUN] + [
            f"loss.csv: {len(loss.problems) - MAX_WARNINGS_PER_RUN} more malformed line(s)"
        ]
    out.warnings += [f"{p} (line ignored)" if p.startswith("loss.csv:") else p for p in problems]
    by_step = {row.step: row for row in loss.rows}  # a step logged twice: the later row counts
    if len(by_step) != len(loss.rows):
        out.warnings.append(
            f"loss.csv: {len(loss.rows) - len(by_step)} row(s) repeat an earlier step; the last one kept"
        )
        out.rows = sorted(by_step.values(), key=lambda r: r.step)
    else:
        out.rows = loss.rows
    return out


def _collect_study(session: Session, st: store.Study, sink: MetricSink, result: CollectResult) -> None:
    result.studies.append(st.name)
    live = st.matrix != COLLECTED_MATRIX  # a planned study: status.py owns the live states
    for run in st.runs:
        _collect_run(st, run, live, sink, result)


def _collect_run(
    st: store.Study, run: store.Run, live: bool, sink: MetricSink, result: CollectResult
) -> None:
    work_dir = Path(run.work_dir)
    where = f"{st.name}/{run.name}"
    if not work_dir.is_dir():
        reason = MISSING if not work_dir.exists() else f"{work_dir} is not a directory"
        was = (run.state, run.collect_error)
        new = store.advance(run, DirMissing(reason, live, collected_before=bool(run.files)))
        if new.state != states.BROKEN:  # not started yet (or failed before it made its directory)
            result.runs_not_started += 1
            return
        if was != (states.BROKEN, reason):
            run.collect_error = reason
            run.files, run.collected_at = None, utc_now()  # read it again once it is back
        result.broken.append((st.name, run.name, reason))
        return

    try:
        files = rundir.fingerprint(work_dir)  # before reading: a run still writing is read again later
    except OSError as e:  # e.g. no permission to look inside it
        reason = f"cannot read {work_dir}: {e.strerror or e}"
        store.advance(run, Collected(live, [reason], Files(exists=True, final=None, checkpoint=False)))
        run.collect_error, run.files, run.collected_at = reason, None, utc_now()
        _note_broken(result, st, run)
        return
    if run.collected_at is not None and run.files == files:
        result.runs_unchanged += 1
        _note_broken(result, st, run)
        return

    got = read_run_files(work_dir)
    result.runs_read += 1
    active = live and run.state in states.ACTIVE_STATES
    # an active run's final.json from before its submission is the previous attempt's: nothing
    # of it describes the job now queued
    since = run.submitted_at if active else None
    checkpoint = (work_dir / rundir.CHECKPOINT).exists()
    here = Files(exists=True, final=got.final, checkpoint=checkpoint, since=since)
    final = here.current_final
    result.warnings += [f"{where}: {w}" for w in got.warnings]
    if active:  # the live state stays; what could not be read is said, and kept in collect_error
        result.warnings += [f"{where}: {p} ({run.state}: state left to `reatt status`)" for p in got.problems]
    if run.id is not None:
        sink.replace(run.id)
    if got.rows:
        result.metric_rows += sink.add(run.id, got.rows)

    record = final.record if final is not None else None
    last = got.rows[-1] if got.rows else None
    meta = (got.config or {}).get("meta") or {}
    for key in store.FINAL_COLUMNS:
        setattr(run, key, getattr(record, key) if record is not None else None)
    if record is None and last is not None:  # no result yet: how far it got
        run.steps, run.tokens, run.wall_time_s = last.step, last.tokens, last.elapsed_s
    for key in ("n_params", "n_params_non_embedding"):
        if getattr(run, key) is None and rundir.is_number(meta.get(key), (int,)):
            setattr(run, key, meta[key])
    run.config = got.config
    if not live:
        _describe_handmade(run, got)

    store.advance(run, Collected(live, got.problems, here))
    run.collect_error = "; ".join(got.problems) or None
    run.files, run.collected_at = files, utc_now()
    _note_broken(result, st, run)


def _note_broken(result: CollectResult, st: store.Study, run: store.Run) -> None:
    """A broken run is reported at every collect, with why, until it is mended."""
    if run.state == states.BROKEN:
        result.broken.append((st.name, run.name, run.collect_error or run.state_reason or "broken"))


def _describe_handmade(run: store.Run, got: RunFiles) -> None:
    """Seed, features and overrides of a run made by hand, from its own files."""
    config = got.config or {}
    found = [(config.get("system") or {}).get("seed"), (got.args or {}).get("system.seed")]
    seed = next((int(s) for s in found if rundir.is_number(s, (int,))), int(get_default_config().system.seed))
    features = toggles_on(config)
    overrides = got.args or {}
    if run.seed != seed:
        run.seed = seed
    if run.features != features:
        run.features = features
    if run.overrides != overrides:
        run.overrides = overrides
