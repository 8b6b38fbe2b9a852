"""The results database (reatt.study.store): schema version, URLs and paths, study lookup."""

import sqlite3

import pytest

from reatt.errors import DatabaseError, StudyError
from reatt.files import utc_now
from reatt.study import store as db


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
