"""Helpers for tests against a real PostgreSQL server (the ``db_url`` fixture in conftest.py).

The server is Debian's cluster started by ``scripts/postgres/start-local-postgres.sh``, which
makes a role and a database that the tests log in to with a password over TCP. Each test gets
a schema of its own in that database (the URL's ``options=-csearch_path=<schema>``), dropped
after it: as fresh as a new database, and a few milliseconds instead of a CREATE DATABASE.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = REPO_ROOT / "scripts" / "postgres" / "start-local-postgres.sh"
STOP_SCRIPT = REPO_ROOT / "scripts" / "postgres" / "stop-local-postgres.sh"

#: With ``REATT_REQUIRE_POSTGRES=1`` (CI) a missing server fails the tests instead of skipping them.
REQUIRE_ENV = "REATT_REQUIRE_POSTGRES"
#: A server of your own instead: ``postgresql+psycopg://user:password@host:port/db`` (the role
#: must be allowed to create schemas in it).
URL_ENV = "REATT_TEST_POSTGRES_URL"


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def server_url() -> str:
    """The tests' database: $REATT_TEST_POSTGRES_URL, else the start script's (same knobs)."""
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    user = os.environ.get("REATT_PG_USER", "reatt")
    password = quote(os.environ.get("REATT_PG_PASSWORD", "reatt-test"), safe="")
    database = os.environ.get("REATT_PG_DATABASE", "reatt_test")
    return f"postgresql+psycopg://{user}:{password}@127.0.0.1:5432/{database}"


def new_schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def schema_url(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema`` (and only it)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def reachable(url: str) -> str | None:
    """None when ``url`` answers ``SELECT 1``; else why not (password hidden)."""
    from sqlalchemy import create_engine, text

    from reatt.study.dburl import why

    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:  # any failure to connect is a reason to start (or skip)
        return why(getattr(e, "orig", None) or e, url)
    finally:
        engine.dispose()
