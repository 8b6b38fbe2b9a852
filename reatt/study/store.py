"""The results database: studies, their runs, and every run's logged metrics.

One SQLite file by default (``results.db``); a lab's shared database is a PostgreSQL server
(``postgresql+psycopg://user:password@host/db``); other SQLAlchemy URLs are passed through
untested. The schema is the SQLAlchemy 2.0 typed ORM below, the same on every backend; its
version is stored in the ``meta`` table and checked on open: an older schema is upgraded in
place (``UPGRADES``), a newer one refused, so an old reatt never writes into a newer layout.

Concurrency (docs/guarantees.md): on SQLite every transaction begins with ``BEGIN IMMEDIATE``
(the write lock up front, waited for up to ``SQLITE_BUSY_TIMEOUT_S``), so writers queue instead
of failing when a reader turns writer; on PostgreSQL a command that rewrites a study's rows
(collect, plan) first takes that study's advisory lock (``lock_studies``), and opening a
database takes a schema lock, so two processes never create or upgrade the schema at once.

A run's state is decided in one place, ``reatt.transitions.next_state``, given what was learnt
of the run; ``advance`` records it. (The only other writes are a new row's first state, and a
submit's claim and release of a run, conditional UPDATEs whose values next_state gives too.)
Times are naive UTC (``reatt.files.utc_now``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, object_session, relationship

from reatt.errors import DatabaseError, StudyError
from reatt.files import utc_now
from reatt.rundir import FinalRecord
from reatt.states import PLANNED, Evidence, RunState
from reatt.study.dbtypes import BIG_INT, JSON_DOC, REAL
from reatt.study.dburl import DEFAULT_DB as DEFAULT_DB  # re-exported: where reatt's callers look
from reatt.study.dburl import db_url as db_url
from reatt.study.dburl import masked as masked
from reatt.study.dburl import shown_url, why
from reatt.transitions import next_state

SCHEMA_VERSION = 2
# what each older schema version lacks: the columns added since (table, column: their types
# are the models' own, as each backend names them), created in place on open. Not Alembic (yet):
# every change so far adds columns, which this does on both backends inside the opening
# transaction; Alembic earns its keep with the first change SQLite cannot ALTER (batch mode)
UPGRADES: dict[int, tuple[tuple[str, str], ...]] = {
    1: (("runs", "stage"), ("runs", "tuning")),  # [tune] (version 2)
}
SQLITE_BUSY_TIMEOUT_S = 120  # how long a command waits for another one's write transaction
PG_CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this, not a hang


# pg_advisory_xact_lock keys: the schema's (open_db), and a study's (study_lock_key)
def _advisory_key(label: bytes) -> int:
    """A pg_advisory_xact_lock key: the first 8 bytes of sha256(label), as a signed 64-bit int."""
    return int.from_bytes(hashlib.sha256(label).digest()[:8], "big", signed=True)


SCHEMA_LOCK_KEY = _advisory_key(b"reatt schema")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON_DOC, list[Any]: JSON_DOC, int: BIG_INT, float: REAL}


class Meta(Base):
    """Key/value facts about the database itself (the schema version)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Study(Base):
    """One ablation study: a spec expanded into runs. Hand-made runs collected from a
    directory tree belong to a study with ``matrix == "collected"`` and no spec."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec_path: Mapped[str | None]
    spec_hash: Mapped[str | None] = mapped_column(String(64))
    spec: Mapped[dict[str, Any] | None]  # the parsed spec, as planned
    matrix: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(200))  # the variant others are compared to
    out_dir: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    planned_at: Mapped[dt.datetime] = mapped_column(default=utc_now)  # the latest `reatt plan` of it
    runs: Mapped[list[Run]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Run.position"
    )


class Run(Base):
    """One job: a variant of the study at one seed, with its state and collected results."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))  # variant, plus -s<seed> when several seeds
    variant: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int]
    position: Mapped[int]  # order in the plan; the task id in a job array
    features: Mapped[list[Any]]
    overrides: Mapped[dict[str, Any]]  # flat "key": value, the run's full set (seed, work_dir too)
    work_dir: Mapped[str]
    # a tuned study's "tune" (stage 1) or "eval" (stage 2) run; None in a study without [tune]
    stage: Mapped[str | None] = mapped_column(String(16))
    # a tuning run: {"candidate": {...}}; an evaluation run once chosen: {"chosen": {...},
    # "why": "...", ...} (reatt.study.selection)
    tuning: Mapped[dict[str, Any] | None]
    # --- execution ---
    state: Mapped[str] = mapped_column(String(32), default=PLANNED)
    state_reason: Mapped[str | None] = mapped_column(Text)
    executor: Mapped[str | None] = mapped_column(String(16))  # "local" or "slurm"
    job_id: Mapped[str | None] = mapped_column(String(64))  # "123" or "123_4" (array task)
    sbatch_path: Mapped[str | None]
    submitted_at: Mapped[dt.datetime | None]
    # --- collected from the run directory ---
    final_nll: Mapped[float | None] = mapped_column(REAL)
    final_train_loss: Mapped[float | None] = mapped_column(REAL)
    steps: Mapped[int | None]
    tokens: Mapped[int | None]
    tokens_per_s: Mapped[float | None] = mapped_column(REAL)
    wall_time_s: Mapped[float | None] = mapped_column(REAL)
    mfu: Mapped[float | None] = mapped_column(REAL)
    n_params: Mapped[int | None]
    n_params_non_embedding: Mapped[int | None]
    config: Mapped[dict[str, Any] | None]  # the run's config.json
    files: Mapped[dict[str, Any] | None]  # fingerprints of the files last collected
    collect_error: Mapped[str | None] = mapped_column(Text)
    collected_at: Mapped[dt.datetime | None]
    study: Mapped[Study] = relationship(back_populates="runs")
    metrics: Mapped[list[Metric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Metric.step"
    )


class Metric(Base):
    """One loss.csv row of a run."""

    __tablename__ = "metrics"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(BIG_INT, primary_key=True)
    loss: Mapped[float | None] = mapped_column(REAL)
    val_loss: Mapped[float | None] = mapped_column(REAL)
    lr: Mapped[float | None] = mapped_column(REAL)
    tokens: Mapped[int | None]
    elapsed_s: Mapped[float | None] = mapped_column(REAL)
    run: Mapped[Run] = relationship(back_populates="metrics")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # pysqlite begins no transaction itself: _sqlite_begin does
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    """Every transaction takes SQLite's write lock up front (SQLAlchemy's documented recipe).
    A deferred transaction that reads, then writes while another one writes, fails at once
    with "database is locked" whatever the busy timeout; an immediate one waits its turn."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


URL_FORM = "expected a file path or a URL like postgresql+psycopg://user:password@host:5432/dbname"


def _engine(url: str, shown: str) -> Engine:
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError) as e:  # no scheme, a port that is not a number...
        raise DatabaseError(f"{shown}: not a database URL ({why(e, url)}); {URL_FORM}") from None
    try:
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        engine = create_engine(parsed, connect_args=connect_args)
    except (SQLAlchemyError, ImportError, ValueError, TypeError) as e:  # an unknown kind or driver
        raise DatabaseError(f"cannot open database {shown}: {why(e, url)}; {URL_FORM}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def open_db(db: str | os.PathLike[str] | None = None, *, create: bool = True) -> Engine:
    """Open the database (creating its schema if new, unless ``create`` is False) and check
    its schema version. Commands that only read a study pass ``create=False``: run in the
    wrong directory (or given the wrong server database), they say where they looked instead
    of leaving an empty results.db (or empty tables) behind."""
    url = db_url(db)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not create and not path.exists():
            raise DatabaseError(
                f"no results database at {path}: run `reatt plan SPEC` here first, "
                "or point --db (or $REATT_DB) at yours"
            )
        if not path.parent.is_dir():
            raise DatabaseError(f"cannot create the database {path}: {path.parent} is not a directory")
    shown = shown_url(url)
    engine = _engine(url, shown)
    try:
        with Session(engine) as session, session.begin():
            conn = session.connection()
            if engine.dialect.name == "postgresql":  # one opener at a time creates or upgrades
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            existing = set(engine.dialect.get_table_names(conn))
            if "meta" in existing:
                row = session.get(Meta, "schema_version")
                found = row.value if row else None
                if row is not None and found in {str(v) for v in UPGRADES}:
                    _upgrade(conn, row)
                    found = row.value
                if found != str(SCHEMA_VERSION):
                    raise DatabaseError(
                        f"{shown}: schema version {found}, but this reatt uses version {SCHEMA_VERSION}; "
                        "use another --db or a matching reatt version"
                    )
            elif existing & {"studies", "runs", "metrics"}:
                raise DatabaseError(f"{shown}: has reatt-like tables but no schema version; not touching it")
            elif not create and engine.dialect.name != "sqlite":
                raise DatabaseError(
                    f"{shown}: holds no reatt tables yet: run `reatt plan SPEC --db URL` first, "
                    "or check the database name"
                )
            else:
                Base.metadata.create_all(conn)
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
    except SQLAlchemyError as e:  # not a database, unreachable, wrong password, read-only...
        cause = getattr(e, "orig", None) or e
        raise DatabaseError(f"cannot open database {shown}: {why(cause, url)}") from None
    return engine


def study_lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key of study ``name`` (a signed 64-bit hash of it)."""
    return _advisory_key(b"reatt study\0" + name.encode())


def lock_studies(session: Session, names: Iterable[str]) -> None:
    """Hold the studies' locks until the session's transaction ends: the rule that makes two
    collects (or plans) of one study take turns, while different studies go on at once.

    PostgreSQL: ``pg_advisory_xact_lock`` per study, in one order (sorted keys) so that two
    commands locking several studies never deadlock. SQLite: nothing to do, the transaction
    already holds the database's write lock (``BEGIN IMMEDIATE``). The rows the caller reads
    after this are current (PostgreSQL's read committed: each statement sees what committed
    before it); ``expire_all`` drops any read before the lock."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted({study_lock_key(n) for n in names}):
        session.execute(select(func.pg_advisory_xact_lock(key)))
    session.expire_all()


def _upgrade(conn: Any, row: Meta) -> None:
    """Bring an older schema to this version in place (inside the opening transaction: all of
    it or nothing): its rows keep their values, the new columns start empty. A newer schema is
    refused by the caller, never downgraded."""
    from sqlalchemy import text

    version = int(row.value)
    while version < SCHEMA_VERSION:
        for table, column in UPGRADES[version]:
            kind = Base.metadata.tables[table].c[column].type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
        version += 1
    row.value = str(version)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed at the end, rolled back on any error.

    A database error (locked for longer than the busy timeout by another reatt command, a
    read-only file, a full disk) becomes a DatabaseError naming the database.
    """
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except SQLAlchemyDatabaseError as e:  # locked, read-only, full, not a database...
        hint = (
            "; another reatt command (a long collect?) holds it: try again" if "locked" in str(e.orig) else ""
        )
        url = engine.url.render_as_string(hide_password=False)
        raise DatabaseError(f"database {shown_url(url)}: {why(e.orig, url)}{hint}") from None


def get_study(session: Session, name: str | None) -> Study:
    """The study called ``name``; without a name, the planned study given most recently to
    `reatt plan` (studies made by `reatt collect PATH` are only chosen by name)."""
    if name:
        study = session.scalar(select(Study).where(Study.name == name))
        if study is None:
            known = session.scalars(select(Study.name).order_by(Study.name)).all()
            hint = f"; known studies: {', '.join(known)}" if known else "; run `reatt plan SPEC` first"
            raise StudyError(f"no study named {name!r} in the database{hint}")
        return study
    study = session.scalar(
        select(Study)
        .where(Study.spec_hash.is_not(None))
        .order_by(Study.planned_at.desc(), Study.id.desc())
        .limit(1)
    )
    if study is None:
        collected = session.scalars(select(Study.name).order_by(Study.name)).all()
        if collected:
            raise StudyError(
                f"no planned study in the database; name one with --study (collected: {', '.join(collected)})"
            )
        raise StudyError("the database holds no study yet; run `reatt plan SPEC` first")
    return study


# ----------------------------------------------------------------------------- a run's state


def advance(run: Run, evidence: Evidence) -> RunState:
    """Record what ``evidence`` makes of the run's state (``transitions.next_state``); returns
    the new state."""
    new = next_state(RunState(run.state, run.state_reason), evidence)
    if (run.state, run.state_reason) != (new.state, new.reason):
        run.state, run.state_reason = new.state, new.reason
    return new


# the final.json fields a Run row holds, and every Run column collect fills from a run
# directory (``clear_results`` empties them)
FINAL_COLUMNS = tuple(f.name for f in fields(FinalRecord) if f.name in Run.__table__.columns)
RESULT_COLUMNS = (*FINAL_COLUMNS, "config", "files", "collect_error", "collected_at")


def clear_results(run: Run) -> None:
    """Forget what collect read from a run's directory: its result columns and its metrics rows.
    For a run that starts over in a new directory (``--force``); the next collect reads the new
    directory whole."""
    for column in RESULT_COLUMNS:
        setattr(run, column, None)
    session = object_session(run)
    if session is not None and run.id is not None:
        session.execute(delete(Metric).where(Metric.run_id == run.id))
