"""Database URLs as reatt takes and shows them: a path or URL (or $REATT_DB) made a SQLAlchemy
URL, and any text about a database with the URL's password hidden (``***``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from reatt.states import one_line

DEFAULT_DB = "results.db"


def db_url(db: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL from a URL or a file path (default: $REATT_DB, else results.db).
    ``postgresql://`` means the psycopg (3) driver reatt installs, not SQLAlchemy's default
    psycopg2."""
    db = db or os.environ.get("REATT_DB") or DEFAULT_DB
    text = os.fspath(db)
    if text.startswith("postgresql://"):
        return "postgresql+psycopg://" + text[len("postgresql://") :]
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def why(error: object, url: str) -> str:
    """A driver's message on one line, masked first (a cut must not leave half a password)."""
    return one_line(masked(str(error), url), 400)


def shown_url(url: str) -> str:
    """A database URL as reatt prints it: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def masked(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a driver's message may quote it, as typed in
    the URL or decoded)."""
    try:
        password = make_url(url).password
    except (SQLAlchemyError, ValueError):
        password = None
    text = text.replace(url, shown_url(url))
    if password:
        for form in {str(password), quote_plus(str(password)), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    return text
