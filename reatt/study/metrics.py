"""The metrics table: a run's loss.csv rows in the database, replaced whole at each collect."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Float, Table, delete, insert
from sqlalchemy.orm import Session

from reatt.rundir import LOSS_COLUMNS
from reatt.study import store

METRIC_COLUMNS = ("run_id", *LOSS_COLUMNS)  # the metrics table: a run's loss.csv rows
INSERT_BATCH = 50_000  # metric rows per executemany: bounds memory on a study of big runs
DELETE_BATCH = 500  # run ids per DELETE ... WHERE run_id IN (...)


class MetricSink:
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
        self.table = cast(Table, store.Metric.__table__)  # a Table, typed as its base FromClause
        self.sql = positional_insert_sql(self.conn.dialect, self.table)
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


def positional_insert_sql(dialect: Any, table: Any) -> str | None:
    """Core's INSERT of every metrics column as positional SQL, where tuples can be bound as is."""
    compiled = insert(table).compile(dialect=dialect)
    if not compiled.positional or tuple(compiled.positiontup or ()) != METRIC_COLUMNS:
        return None
    for col in table.columns:
        if col.type.bind_processor(dialect) is not None and not isinstance(col.type, Float):
            return None
    return str(compiled)
