"""Recording fsyncs: what a durability test asserts on (which files and directories were
fsynced, in order)."""

from __future__ import annotations

import os

import pytest


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``os.fsync`` also append the path of each fsynced file or directory to the returned
    list (the real fsync still runs)."""
    paths: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths
