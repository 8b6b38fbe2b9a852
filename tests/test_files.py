"""reatt.files: durable atomic replacement of a file."""

from __future__ import annotations

import os
import stat

import pytest
from fsync_helpers import record_fsyncs

from reatt import files as atomic


@pytest.fixture
def fsynced(monkeypatch):
    """The names of the files and directories fsynced, in order."""
    return record_fsyncs(monkeypatch)


def test_write_atomic_replaces_the_file_durably(tmp_path, fsynced):
    path = tmp_path / "f.json"
    path.write_text("old")
    atomic.write_atomic(path, '{"a": "é"}\r\n')  # text is written as given, newlines too
    assert path.read_bytes() == '{"a": "é"}\r\n'.encode()
    atomic.write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left
    # each time: the temp file, then the directory holding the rename
    assert [os.path.basename(n).split(".tmp-")[0] for n in fsynced] == [".f.json", tmp_path.name] * 2


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_writer(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_the_new_file_has_the_usual_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_atomic(tmp_path / "final.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "final.json").stat().st_mode) == 0o644


def test_atomic_writer_text_mode_and_unique_temp_names(tmp_path):
    path = tmp_path / "c.jsonl"
    with atomic.atomic_writer(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("a\nb\n")
        assert os.path.dirname(f.name) == str(tmp_path) and not path.exists()
    assert path.read_text() == "a\nb\n"
    assert atomic.temp_path(path) != atomic.temp_path(path)
    with pytest.raises(ValueError):
        with atomic.atomic_writer(path, "a"):
            pass
