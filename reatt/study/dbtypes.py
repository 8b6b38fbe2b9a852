"""Column types that store the same values the same way on SQLite and PostgreSQL.

Each is the plain SQLAlchemy type on SQLite (the schema of existing results.db files is
unchanged) with a PostgreSQL variant where the two servers would disagree:

- ``BIG_INT``: 64-bit integers (config values, steps and tokens are checked against 64 bits);
  PostgreSQL's INTEGER is 32-bit, SQLite's is 64 and must stay INTEGER for its primary keys to
  autoincrement.
- ``REAL``: a float; NaN is stored as NULL, as SQLite does on its own.
- ``JSON_DOC``: JSON kept as its text, as SQLite keeps it; PostgreSQL's json type refuses NaN
  and Infinity, which a hand-made config.json may hold and SQLite stores.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import JSON, BigInteger, Dialect, Float, Integer, Text
from sqlalchemy.types import TypeDecorator


class _NanAsNull(TypeDecorator[float]):
    impl = Float
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value


class _JsonText(TypeDecorator[Any]):
    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


BIG_INT = BigInteger().with_variant(Integer(), "sqlite")
REAL = Float().with_variant(_NanAsNull(), "postgresql")
JSON_DOC = JSON().with_variant(_JsonText(), "postgresql")
