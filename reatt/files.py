"""Files, locks and the clock: the small facilities every part of reatt shares.

- **Atomic writes.** Readers see the old file or the whole new one, never a part, also after a
  crash of the machine. The new content goes to a temp file with a unique name in the target's
  directory (same filesystem, so the rename is atomic); the temp file is flushed and fsynced,
  renamed over the target with ``os.replace``, and the directory is fsynced (best effort) so the
  rename itself survives a power loss. On any error the temp file is removed and the target is
  untouched. Temp files get the usual permissions (umask), not mkstemp's 0600.
- **Tails.** ``read_tail``: the end of a log or a csv, from its first whole line.
- **Locks.** Both of reatt's locks (a work dir's ``.lock``, a token cache's build lock) are
  ``filelock.FileLock`` (``flock`` on POSIX). Where the filesystem refuses locks (some NFS
  mounts), each says so and the caller goes on unlocked, as it documents.
- **The clock.** ``utc_now`` is reatt's one clock: naive UTC, as the database stores every time;
  ``utc_iso`` writes it into files, with its offset.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """A unique temp name beside ``path`` (hidden, with this process's pid)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so renames in it are durable; silently skipped where unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """``with atomic_writer(p) as f: torch.save(obj, f)``: ``p`` is replaced when the block ends
    without an error, and left as it was otherwise. ``mode`` is "wb" or "w"; ``open_kwargs``
    go to ``open`` (encoding, newline). ``durable=False`` skips the fsyncs: still atomic, but a
    power loss may lose the new file (for what is written again anyway, like sbatch scripts)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode {mode!r}, expected 'w' or 'wb'")
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def remove_temp_files(directory: Path) -> list[Path]:
    """Remove the temp files that writers killed mid-write left in ``directory`` (only call it
    while holding the lock that keeps every other writer out of it); returns them."""
    removed = []
    for path in directory.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, encoding: str = "utf-8", *, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` (text is encoded with ``encoding``, newlines kept as given)."""
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_writer(path, "wb", durable=durable) as f:
        f.write(raw)


def read_tail(path: Path, max_bytes: int = 64 * 1024, start: int = 0) -> str | None:
    """The last ``max_bytes`` of a text file from offset ``start`` on, from its first whole line
    (where the tail begins mid-line, after ``start``); None if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            begin = max(start, f.tell() - max_bytes)
            f.seek(begin)
            data = f.read()
    except OSError:
        return None
    if begin > start:  # began mid-line: drop that partial line
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return data.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------- locks


@dataclass
class Held:
    """A lock this process holds (``lock`` is None where the filesystem has no locks)."""

    lock: Any  # filelock.FileLock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


def try_lock(path: Path, record: str) -> tuple[Held, str | None]:
    """Take the exclusive lock on ``path`` without waiting, and write ``record`` into the file.

    Returns the hold and None; or, where the filesystem refuses locks (flock raises OSError),
    an empty hold and the reason, for the caller to warn about. Raises ``LockBusy`` (with what
    the holder wrote) when another process holds it. The lock lasts until ``release`` or until
    the process ends, even if it is killed.
    """
    from filelock import FileLock, Timeout

    def write_record(fd: int) -> None:  # filelock opens the file without truncating it
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)

    lock = FileLock(path, blocking=False, thread_local=False, on_acquired=write_record)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = path.read_text(errors="replace").strip()
        except OSError:
            holder = ""
        raise LockBusy(path, holder) from None
    except OSError as e:
        return Held(None), str(e.strerror or e)
    return Held(lock), None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold the exclusive lock on ``path``, waiting while another process holds it. Yields True,
    or False (holding nothing) where the filesystem refuses locks."""
    from filelock import FileLock

    lock = FileLock(path, thread_local=False)
    try:
        lock.acquire()
    except OSError:  # e.g. an NFS mount without locks
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# ------------------------------------------------------------------------- clock and host


def utc_now() -> dt.datetime:
    """Now, in UTC, without a time zone: how the database stores every time."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def utc_iso(when: dt.datetime | None = None) -> str:
    """A UTC time (default: now) as ISO 8601 with its offset, to whole seconds: how files say it."""
    return (when or utc_now()).replace(tzinfo=dt.timezone.utc).isoformat(timespec="seconds")


def parse_utc(text: Any) -> dt.datetime | None:
    """An ISO 8601 time as naive UTC (without an offset it is taken as UTC); None if not one."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def this_host() -> str:
    """This machine's short host name (at most 40 characters): local job ids and a work dir's
    ``.lock`` record it beside a pid, since a pid means nothing on another host."""
    return socket.gethostname().split(".")[0][:40] or "localhost"
