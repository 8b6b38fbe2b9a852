"""``reatt train [--key=value ...]``: ``python -m reatt.train`` with the launchers' environment."""

from __future__ import annotations

import os
import sys

import typer

from reatt.cli.app import app


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train one variant: the same as `python -m reatt.train [--key=value ...]` (--help lists the keys).

    Example: reatt train --model.rope=True --trainer.max_iters=500 --system.work_dir=out/rope
    """
    from reatt.train import TRAIN_ENV, TRAIN_MODULE

    missing = {k: v for k, v in TRAIN_ENV.items() if os.environ.get(k) != v}
    if missing:  # the allocator setting only works from process start: re-exec with it
        env = {**os.environ, **missing}
        os.execvpe(sys.executable, [sys.executable, "-m", TRAIN_MODULE, *ctx.args], env)
    from reatt.train import main as train_main

    raise typer.Exit(code=train_main(list(ctx.args)))
