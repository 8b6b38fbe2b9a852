"""Durable atomic file replacement: readers see the old file or the whole new one, never a part,
also after a crash of the machine.

The new content goes to a temp file with a unique name in the target's directory (same
filesystem, so the rename is atomic); the temp file is flushed and fsynced, renamed over the
target with ``os.replace``, and the directory is fsynced (best effort) so the rename itself
survives a power loss. On any error the temp file is removed and the target is untouched.
Temp files are created with the usual permissions (umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
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
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_writer(p) as f: torch.save(obj, f)``: ``p`` is replaced when the block ends
    without an error, and left as it was otherwise. ``mode`` is "wb" or "w"; ``open_kwargs``
    go to ``open`` (encoding, newline)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode {mode!r}, expected 'w' or 'wb'")
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``data`` (text is encoded with ``encoding``, newlines kept as given)."""
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_writer(path, "wb") as f:
        f.write(raw)
