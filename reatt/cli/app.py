"""The Typer app ``reatt`` and what its commands share: options, output, and error mapping.

A ``ReattError`` becomes ``Error: <message>`` and exit code 1, without a traceback; a usage
error (an option that does not apply, a value not among the choices) is Typer's, exit code 2.
Heavy libraries (torch, pandas, seaborn, and SQLAlchemy) are imported inside the commands, so
``reatt --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from reatt.errors import ReattError

app = typer.Typer(
    name="reatt",
    help="Architecture ablations of a small GPT, on this machine or on Slurm.\n\n"
    "Typical study: reatt plan ablations/demo.toml && reatt submit && reatt collect && reatt report --plot",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Results database: a SQLite file, or a server's URL postgresql+psycopg://user:password@host/db "
        "(default: $REATT_DB, else results.db)",
    ),
]
StudyOpt = Annotated[
    str | None, typer.Option("--study", "-s", help="Study name [default: the study planned most recently]")
]


def say(text: str, label: str = "", style: str = "") -> None:
    """Print ``text`` literally (no rich markup: user text holds brackets like [base]),
    after an optional styled ``label``."""
    from rich.text import Text

    line = Text.assemble((label, style), " " if label else "", text)
    console.print(line, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    from rich.text import Text

    err_console.print(Text.assemble(("Error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ReattError, or an OSError (a full disk, a permission: the machine's, not a bug),
    into a one-line error and exit code 1, without a traceback."""
    try:
        yield
    except ReattError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))


def engine_for(db: str | None, *, create: bool = False) -> Any:
    """The results database; only `plan` and `collect PATH` may create it."""
    from reatt.study.store import open_db

    return open_db(db, create=create)


def main() -> None:
    app()
