"""What a training run shows while it runs: a rich progress bar on a terminal, plain lines (for
Slurm logs and train.log) otherwise; and the ``--help`` table of every config key."""

from __future__ import annotations

import sys
from typing import Any

from reatt.training.schema import help_rows


class TrainProgress:
    """A rich progress bar on a terminal; plain lines (for Slurm logs) otherwise."""

    def __init__(self, total: int, start: int, show: bool = True) -> None:
        self.total = total
        self.show = show  # False on ranks other than 0: one rank speaks for the run
        self.bar: Any = None
        if show and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float | None, val: float | None, lr: float, tok_s: float) -> None:
        parts = [f"step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val is not None:
            parts.append(f"val {val:.4f}")
        parts += [f"lr {lr:.2e}", f"{tok_s:,.0f} tok/s"]
        line = " | ".join(parts)
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=line.split(" | ", 1)[-1])
            if val is not None:
                self.bar.console.print(line)
        else:
            print(line, flush=True)

    def message(self, text: str) -> None:
        if not self.show:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_help() -> None:
    """Every config key with its type, default and help, as ``python -m reatt.train --help``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="python -m reatt.train [--key=value ...]", title_justify="left")
    for col in ("key", "type", "default", "help"):
        table.add_column(col, overflow="fold")
    for row in help_rows():
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        "Example: python -m reatt.train --model.swiglu=True --trainer.max_iters=500 "
        "--system.work_dir=out/swiglu\nRun directory and exit codes: docs/run-directory.md"
    )
