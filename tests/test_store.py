"""The results database (reatt.study.store): schema version, URLs and paths, study lookup; the
schema and values on both backends (SQLite and a real PostgreSQL server), errors without passwords."""

import math
import sqlite3

import pytest
import sqlalchemy
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from reatt.errors import DatabaseError, StudyError
from reatt.files import utc_now
from reatt.study import store as db
from reatt.study.dburl import masked, shown_url


def test_new_database_records_schema_version(tmp_path):
    path = tmp_path / "results.db"
    db.open_db(path)
    with sqlite3.connect(path) as con:
        assert con.execute("select value from meta where key='schema_version'").fetchone() == (
            str(db.SCHEMA_VERSION),
        )
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    assert {"meta", "studies", "runs", "metrics"} <= tables
    db.open_db(path)  # opening again is fine


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "results.db"
    db.open_db(path)
    with sqlite3.connect(path) as con:
        con.execute("update meta set value='999' where key='schema_version'")
    expected = f"schema version 999, but this reatt uses version {db.SCHEMA_VERSION}"
    with pytest.raises(DatabaseError, match=expected):
        db.open_db(path)


def test_foreign_tables_without_version_are_not_touched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("create table runs (x int)")
    with pytest.raises(DatabaseError, match="no schema version; not touching it"):
        db.open_db(path)


def test_url_path_and_environment(tmp_path, monkeypatch):
    assert db.db_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert db.db_url("sqlite:///:memory:") == "sqlite:///:memory:"
    monkeypatch.setenv("REATT_DB", str(tmp_path / "env.db"))
    assert db.db_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv("REATT_DB")
    monkeypatch.chdir(tmp_path)
    assert db.db_url(None) == f"sqlite:///{tmp_path / 'results.db'}"
    engine = db.open_db(f"sqlite:///{tmp_path / 'by-url.db'}")
    assert (tmp_path / "by-url.db").exists() and engine.dialect.name == "sqlite"
    with pytest.raises(DatabaseError, match="is not a directory"):
        db.open_db(tmp_path / "missing-dir" / "x.db")


def test_get_study_by_name_and_latest(tmp_path):
    engine = db.open_db(tmp_path / "r.db")
    with (
        db.transaction(engine) as s,
        pytest.raises(StudyError, match="holds no study yet; run `reatt plan SPEC` first"),
    ):
        db.get_study(s, None)
    with db.transaction(engine) as s:
        s.add(db.Study(name="hand", matrix="collected", out_dir="/o"))  # from `reatt collect PATH`
    with (
        db.transaction(engine) as s,
        pytest.raises(StudyError, match=r"no planned study.*\(collected: hand\)"),
    ):
        db.get_study(s, None)
    with db.transaction(engine) as s:
        old = utc_now().replace(year=2020)
        s.add(db.Study(name="old", matrix="standard", out_dir="/o", spec_hash="1", planned_at=old))
        s.add(db.Study(name="new", matrix="standard", out_dir="/o", spec_hash="2"))
        s.add(db.Study(name="later-hand", matrix="collected", out_dir="/o"))  # newer, but not planned
    with db.transaction(engine) as s:
        assert db.get_study(s, None).name == "new"
        assert db.get_study(s, "old").name == "old"
        assert db.get_study(s, "later-hand").name == "later-hand"
        known = "known studies: hand, later-hand, new, old"
        with pytest.raises(StudyError, match=f"no study named 'nope' in the database; {known}"):
            db.get_study(s, "nope")


def test_transaction_rolls_back_on_error(tmp_path):
    engine = db.open_db(tmp_path / "r.db")
    with pytest.raises(RuntimeError), db.transaction(engine) as s:
        s.add(db.Study(name="half", matrix="standard", out_dir="/o"))
        s.flush()
        raise RuntimeError("interrupted")
    with db.transaction(engine) as s, pytest.raises(StudyError):
        db.get_study(s, "half")


def test_a_locked_database_is_a_clear_error(tmp_path):
    from sqlalchemy import event

    path = tmp_path / "r.db"
    engine = db.open_db(path)
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=100"))  # test speed
    engine.dispose()  # new connections from here on
    holder = sqlite3.connect(path)
    holder.execute("begin exclusive")  # another command (a long collect) holds the write lock
    try:
        with pytest.raises(DatabaseError, match=r"r\.db: database is locked; another reatt command"):
            with db.transaction(engine) as s:
                s.add(db.Study(name="x", matrix="standard", out_dir="/o"))
    finally:
        holder.rollback()
        holder.close()
    with db.transaction(engine) as s, pytest.raises(StudyError):  # nothing was half-written
        db.get_study(s, "x")


# ------------------------------------------------------------- on both backends (db_url fixture)


def _execute(engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


def test_schema_is_created_versioned_and_a_newer_one_refused(db_url):
    engine = db.open_db(db_url)
    with db.transaction(engine) as s:
        assert s.get(db.Meta, "schema_version").value == str(db.SCHEMA_VERSION)
    with engine.connect() as conn:
        tables = set(engine.dialect.get_table_names(conn))
    assert {"meta", "studies", "runs", "metrics"} <= tables
    db.open_db(db_url).dispose()  # opening again is fine
    _execute(engine, "UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    engine.dispose()
    with pytest.raises(
        DatabaseError, match=f"schema version 999, but this reatt uses version {db.SCHEMA_VERSION}"
    ):
        db.open_db(db_url)


def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(db_url):
    engine = db.open_db(db_url)
    with db.transaction(engine) as s:
        study = db.Study(name="old", matrix="standard", out_dir="/o")
        study.runs.append(
            db.Run(name="b", variant="b", seed=1, position=0, features=[], overrides={}, work_dir="/o/b")
        )
        s.add(study)
    # what reatt with schema version 1 left: no stage or tuning column
    _execute(engine, "ALTER TABLE runs DROP COLUMN stage")
    _execute(engine, "ALTER TABLE runs DROP COLUMN tuning")
    _execute(engine, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    engine.dispose()
    engine = db.open_db(db_url)
    with db.transaction(engine) as s:
        run = s.scalars(select(db.Run)).one()
        assert (run.name, run.seed, run.stage, run.tuning) == ("b", 1, None, None)
        run.stage, run.tuning = "eval", {"chosen": {"lr": 1e-3}}
        assert s.get(db.Meta, "schema_version").value == str(db.SCHEMA_VERSION)
    with db.transaction(engine) as s:
        assert s.scalars(select(db.Run.tuning)).one() == {"chosen": {"lr": 1e-3}}
    engine.dispose()


def test_values_come_back_the_same_on_both_backends(db_url):
    """64-bit integers, NaN (stored as NULL, as SQLite does), infinities, JSON with NaN in it."""
    engine = db.open_db(db_url)
    big = 2**62
    with db.transaction(engine) as s:
        study = db.Study(name="v", matrix="standard", out_dir="/o", spec={"x": [1, 2.5, None]})
        study.runs.append(
            db.Run(
                name="r",
                variant="r",
                seed=big,
                position=0,
                features=["rope"],
                overrides={"trainer.max_iters": big},
                work_dir="/o/r",
                tokens=big,
                final_nll=float("nan"),
                mfu=float("inf"),
                config={"optimizer": {"lr": float("nan"), "clip": float("inf")}},
            )
        )
        s.add(study)
        s.flush()
        s.add(db.Metric(run_id=study.runs[0].id, step=big, loss=float("nan"), val_loss=-float("inf")))
    with db.transaction(engine) as s:
        run = s.scalars(select(db.Run)).one()
        assert (run.seed, run.tokens, run.overrides, run.features) == (
            big,
            big,
            {"trainer.max_iters": big},
            ["rope"],
        )
        assert run.final_nll is None and run.mfu == float("inf")
        assert math.isnan(run.config["optimizer"]["lr"]) and run.config["optimizer"]["clip"] == float("inf")
        metric = s.scalars(select(db.Metric)).one()
        assert (metric.step, metric.loss, metric.val_loss) == (big, None, -float("inf"))
        assert run.study.spec == {"x": [1, 2.5, None]}
    engine.dispose()


def test_read_only_commands_do_not_create_a_schema(db_url):
    if "://" in db_url:  # a server database that is there but empty
        with pytest.raises(
            DatabaseError, match=r"holds no reatt tables yet: run `reatt plan SPEC --db URL` first"
        ):
            db.open_db(db_url, create=False)
        engine = sqlalchemy.create_engine(db_url)
        with engine.connect() as conn:
            assert not engine.dialect.get_table_names(conn)
        engine.dispose()
    else:
        with pytest.raises(
            DatabaseError, match=r"no results database at .*results\.db: run `reatt plan SPEC`"
        ):
            db.open_db(db_url, create=False)
    db.open_db(db_url).dispose()
    db.open_db(db_url, create=False).dispose()


# ------------------------------------------------------------ URLs and errors: no password shown


def test_postgresql_url_means_psycopg_3_and_passwords_are_masked():
    assert db.db_url("postgresql://u:pw@h/d") == "postgresql+psycopg://u:pw@h/d"
    assert db.db_url("postgresql+psycopg://u:pw@h/d") == "postgresql+psycopg://u:pw@h/d"
    url = "postgresql+psycopg://ann:s%40cr%2Fet@db.lab:5432/reatt"
    assert shown_url(url) == "postgresql+psycopg://ann:***@db.lab:5432/reatt"
    said = f"failed for {url}: password 's@cr/et' (typed s%40cr%2Fet) rejected"
    assert (
        masked(said, url)
        == "failed for postgresql+psycopg://ann:***@db.lab:5432/reatt: password '***' (typed ***) rejected"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+psycopg://ann:hunter2@127.0.0.1:notaport/reatt",
            r"^postgresql\+psycopg://ann:\*\*\*@127\.0\.0\.1:notaport/reatt: not a database URL \(.*\); "
            r"expected a file path or a URL like postgresql\+psycopg://user:password@host:5432/dbname$",
        ),
        (
            "nosuchdb://ann:hunter2@host/reatt",
            r"^cannot open database nosuchdb://ann:\*\*\*@host/reatt: "
            r"Can't load plugin: sqlalchemy\.dialects:nosuchdb; expected a file path",
        ),
        (
            # nothing listens on port 1: refused at once
            "postgresql+psycopg://ann:hunter2@127.0.0.1:1/reatt",
            r"^cannot open database postgresql\+psycopg://ann:\*\*\*@127\.0\.0\.1:1/reatt: "
            r"connection failed: .*port 1 failed: Connection refused",
        ),
    ],
)
def test_bad_url_and_unreachable_server_are_clear_errors_without_the_password(url, message):
    with pytest.raises(DatabaseError, match=message) as e:
        db.open_db(url)
    assert "hunter2" not in str(e.value)


@pytest.mark.postgres
def test_wrong_password_and_missing_database_are_clear_errors_without_the_password(postgres_server):
    url = make_url(postgres_server)
    wrong = url.set(password="not-the-password-42").render_as_string(hide_password=False)
    with pytest.raises(DatabaseError) as e:
        db.open_db(wrong)
    assert str(e.value) == (
        f"cannot open database {url.render_as_string(hide_password=True)}: connection failed: connection to "
        f'server at "{url.host}", port {url.port} failed: '
        f'FATAL: password authentication failed for user "{url.username}"'
    )
    assert "not-the-password-42" not in str(e.value)
    missing = url.set(database="reatt_no_such_db").render_as_string(hide_password=False)
    with pytest.raises(DatabaseError, match=r'FATAL: database "reatt_no_such_db" does not exist') as e:
        db.open_db(missing)
    assert url.password not in str(e.value) and ":***@" in str(e.value)


def test_cli_errors_never_print_the_password(tmp_path):
    from typer.testing import CliRunner

    from reatt.cli import app

    url = "postgresql+psycopg://ann:hunter2@127.0.0.1:1/reatt"
    for args in (["status", "--db", url], ["report", "--db", url], ["collect", "--db", url]):
        result = CliRunner().invoke(app, args, env={"REATT_DB": ""})
        assert result.exit_code == 1, result.output
        assert "hunter2" not in result.output and "ann:***@127.0.0.1:1/reatt" in result.output
    result = CliRunner().invoke(app, ["status"], env={"REATT_DB": url})
    assert result.exit_code == 1 and "hunter2" not in result.output and "Connection refused" in result.output
