"""Shared pytest fixtures. Each section is self-contained; add new ones as their own section."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import postgres_helpers as pg
import pytest
from chromium_helpers import Chromium, chromium_binary, chromium_required
from slurm_helpers import (
    START_SCRIPT,
    STOP_SCRIPT,
    SlurmCluster,
    accounting_enabled,
    cluster_answers,
    slurm_installed,
    slurm_required,
)

# ---------------------------------------------------------------------------------------------
# Real local Slurm: `slurm_cluster` (session) and `slurm_accounting` (sacct works).
# Helpers (sbatch, wait_for_job, wait_for_sacct, ...) live in tests/slurm_helpers.py.
#
# - No `sbatch` on PATH: the tests skip, or fail under REATT_REQUIRE_SLURM=1 (as in CI).
# - A cluster that answers `scontrol ping` is reused as it is, and left running.
# - Otherwise, as root with slurmctld installed, the session starts a cold one with
#   scripts/slurm/start-local-slurm.sh (after stop-local-slurm.sh --purge, so no stale
#   job is recovered and requeued) and stops it at the end (without --purge: the logs in
#   /var/tmp/reatt-slurm/log stay for a look). Install the packages first with
#   scripts/slurm/install-slurm.sh.
# Under pytest-xdist each worker has its own session: start the cluster beforehand.
# ---------------------------------------------------------------------------------------------


def _slurm_unavailable(why: str) -> None:
    if slurm_required():
        pytest.fail(f"Slurm is required (REATT_REQUIRE_SLURM=1) but unavailable: {why}", pytrace=False)
    pytest.skip(why)


def _run_script(*cmd: str | os.PathLike[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real single-node Slurm (partition `debug`, node = this machine, 2 CPUs here)."""
    if not slurm_installed():  # not `sbatch --version`: that fails without a slurm.conf
        _slurm_unavailable("sbatch not found (install with scripts/slurm/install-slurm.sh)")
    started = False
    if not cluster_answers():
        if os.geteuid() != 0 or not shutil.which("slurmctld"):
            _slurm_unavailable(
                "no local Slurm answers `scontrol ping` and this session cannot start one "
                f"(needs root and slurmctld); start it with {START_SCRIPT}"
            )
        _run_script(STOP_SCRIPT, "--purge", timeout=120)
        r = _run_script(START_SCRIPT, timeout=240)
        if r.returncode != 0:
            pytest.fail(f"{START_SCRIPT} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
        started = True
    try:
        yield SlurmCluster(started_here=started, accounting=accounting_enabled())
    finally:
        if started:
            _run_script(STOP_SCRIPT, timeout=120)


@pytest.fixture
def slurm_accounting(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The cluster, with slurmdbd accounting on (`sacct` works)."""
    if not slurm_cluster.accounting:
        _slurm_unavailable(
            "the running Slurm has no accounting (sacct); restart it with "
            "REATT_SLURM_ACCOUNTING=1 (the default of scripts/slurm/start-local-slurm.sh)"
        )
    return slurm_cluster


# ------------------------------------------------------------------------- end of local Slurm


# ---------------------------------------------------------------------------------------------
# One token cache and embedded corpus for the whole session, never the user's ~/.cache/reatt.
# Set through the environment so that training subprocesses (local runs, Slurm jobs on this
# node) share it too. A cache dir given explicitly (data.cache_dir) still wins.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def reatt_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("reatt-cache"))
    before = os.environ.get("REATT_CACHE_DIR")
    os.environ["REATT_CACHE_DIR"] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("REATT_CACHE_DIR", None)
        else:
            os.environ["REATT_CACHE_DIR"] = before


# ------------------------------------------------------------------ end of the session cache


# ---------------------------------------------------------------------------------------------
# A real headless Chromium (Debian's `chromium`): `chromium`. Helpers in tests/chromium_helpers.py.
#
# - No chromium on PATH: the tests skip, or fail under REATT_REQUIRE_CHROMIUM=1 (as in CI).
# - Install it with `apt-get install -y chromium`.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Chromium:
    binary = chromium_binary()
    if binary is None:
        why = "chromium not found (install with apt-get install -y chromium)"
        if chromium_required():
            pytest.fail(
                f"Chromium is required (REATT_REQUIRE_CHROMIUM=1) but unavailable: {why}", pytrace=False
            )
        pytest.skip(why)
    return Chromium(binary, tmp_path_factory.mktemp("chromium"))


# ------------------------------------------------------------------------- end of Chromium


# ---------------------------------------------------------------------------------------------
# Databases: `db_url` gives each test a fresh database on each backend, "sqlite" (a file in
# tmp_path) and "postgresql" (a schema of its own on a real server, dropped after the test).
# Tests that use it run once per backend; the postgresql ones carry the `postgres` marker.
#
# - The server: $REATT_TEST_POSTGRES_URL, else the one scripts/postgres/start-local-postgres.sh
#   makes (role reatt, database reatt_test, password over TCP on 127.0.0.1:5432).
# - A server that answers is reused and left running. Otherwise, as root with pg_ctlcluster,
#   the session starts it with that script and stops it at the end. Else the postgresql tests
#   skip with the reason, or fail under REATT_REQUIRE_POSTGRES=1 (as in CI).
# ---------------------------------------------------------------------------------------------


def _postgres_unavailable(why: str) -> None:
    if pg.postgres_required():
        pytest.fail(f"PostgreSQL is required ({pg.REQUIRE_ENV}=1) but unavailable: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (with its password) of the tests' database on a real PostgreSQL server."""
    url = pg.server_url()
    why = pg.reachable(url)
    started = False
    if why is not None:
        if os.environ.get(pg.URL_ENV):
            _postgres_unavailable(f"the server of ${pg.URL_ENV} does not answer: {why}")
        if os.geteuid() != 0 or not shutil.which("pg_ctlcluster"):
            _postgres_unavailable(
                f"no PostgreSQL server answers ({why}) and this session cannot start one "
                f"(needs root and pg_ctlcluster); start it with {pg.START_SCRIPT}"
            )
        r = _run_script(pg.START_SCRIPT, timeout=120)
        if r.returncode != 0:
            _postgres_unavailable(f"{pg.START_SCRIPT} failed (rc {r.returncode}): {r.stderr.strip()}")
        started = True
        why = pg.reachable(url)
        if why is not None:
            pytest.fail(f"{pg.START_SCRIPT} ran, but the server does not answer: {why}", pytrace=False)
    try:
        yield url
    finally:
        if started:
            _run_script(pg.STOP_SCRIPT, timeout=120)


@pytest.fixture
def postgres_schema_url(postgres_server: str) -> Iterator[str]:
    """A URL whose connections see only a new, empty schema; dropped after the test."""
    from sqlalchemy import create_engine, text

    schema = pg.new_schema_name()
    admin = create_engine(postgres_server)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield pg.schema_url(postgres_server, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))  # an engine left in a transaction
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty results database: a SQLite file, or a schema on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("db") / "results.db")
    return str(request.getfixturevalue("postgres_schema_url"))


# -------------------------------------------------------------------------- end of databases
