"""The executor of each kind a run can record (``Run.executor``): what polls and cancels it."""

from __future__ import annotations

from collections.abc import Callable

from reatt.executors.base import Executor
from reatt.executors.local import LocalExecutor
from reatt.executors.slurm.executor import SlurmExecutor

EXECUTORS: dict[str, Callable[[], Executor]] = {
    LocalExecutor.kind: LocalExecutor,
    SlurmExecutor.kind: SlurmExecutor,
}


def executor_for(kind: str | None) -> Executor | None:
    """A default executor of ``kind``, to poll or cancel runs recorded with it; None if unknown."""
    cls = EXECUTORS.get(kind or "")
    return cls() if cls is not None else None
