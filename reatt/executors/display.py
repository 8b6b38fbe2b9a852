"""What a local launch shows while its jobs run: an overall bar and one line per running job
(its step, loss and held-out NLL) on a terminal; plain lines in a log file, a pipe or a test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reatt import rundir
from reatt.executors.base import Job
from reatt.states import RunState


@dataclass
class Event:
    """Something a pool thread tells the display: a job started, ended, or was taken."""

    kind: str  # "start", "end" or "taken"
    name: str
    text: str
    outcome: RunState | None = None  # "end": the run's state and what to say of it


class Display:
    """Plain lines (a log file, a pipe, a test) or nothing; ``RichDisplay`` on a terminal."""

    def __init__(self, jobs: Sequence[Job], out: Callable[[str], None] | None) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.total = len(jobs)
        self.done = 0
        self.out = out

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def message(self, text: str) -> None:
        if self.out:
            self.out(text)

    def event(self, ev: Event) -> None:
        if ev.kind == "start":
            self.message(f"started {ev.name} ({ev.text})")
            return
        self.done += 1
        if ev.kind == "taken":
            self.message(f"[{self.done}/{self.total}] skipped {ev.name}: {ev.text}")
            return
        out = ev.outcome
        assert out is not None
        detail = f": {out.reason}" if out.reason else ""
        self.message(f"[{self.done}/{self.total}] {out.state} {ev.name} in {ev.text}{detail}")

    def tick(self, running: list[str]) -> None:
        pass


class RichDisplay(Display):
    """An overall bar and one line per running job (its step, loss and held-out NLL)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        super().__init__(jobs, None)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.overall = self.progress.add_task("[bold]study", total=self.total, info="")
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def event(self, ev: Event) -> None:
        if ev.kind == "start":
            job = self.jobs[ev.name]
            total = job.overrides.get("trainer.max_iters") or _default_max_iters()
            self.tasks[ev.name] = self.progress.add_task(f"  {ev.name}", total=total, info="starting")
            return
        task = self.tasks.pop(ev.name, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        super().event(ev)

    def tick(self, running: list[str]) -> None:
        for name in running:
            task = self.tasks.get(name)
            if task is None:
                continue
            row = rundir.last_loss_row(Path(self.jobs[name].work_dir) / rundir.LOSS)
            if row is None:
                continue
            parts = []
            if row.loss is not None:
                parts.append(f"loss {row.loss:.4f}")
            if row.val_loss is not None:
                parts.append(f"val {row.val_loss:.4f}")
            self.progress.update(task, completed=row.step, info=" ".join(parts))


def _default_max_iters() -> int:
    from reatt.training.config import get_default_config

    return int(get_default_config().trainer.max_iters)


def make_display(show_progress: bool, jobs: Sequence[Job]) -> Display:
    if not show_progress:
        return Display(jobs, None)
    if sys.stdout.isatty():
        return RichDisplay(jobs)
    return Display(jobs, lambda text: print(text, flush=True))
