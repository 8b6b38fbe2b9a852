"""Helpers for tests that load a page in a real headless Chromium (Debian's `chromium`).

The browser comes from the fixture ``chromium`` in ``conftest.py``: without it the tests skip
with the reason, and under ``REATT_REQUIRE_CHROMIUM=1`` (CI) they fail instead. Each call is one
fresh browser with its own profile, offline (the page is a file:// URL; nothing else is served).
What the page says on its console (a blocked request, a script error) comes back in stderr as
``:CONSOLE`` lines (``--enable-logging=stderr``), which ``Page.console`` collects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

#: With ``REATT_REQUIRE_CHROMIUM=1`` (CI) a missing browser fails the tests instead of skipping them.
REQUIRE_ENV = "REATT_REQUIRE_CHROMIUM"
BINARIES = ("chromium", "chromium-browser")


def chromium_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def chromium_binary() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


@dataclass
class Page:
    dom: str  # the DOM after loading, serialized (--dump-dom)
    console: list[str]  # what the page logged (blocked loads, errors), one line each
    stderr: str


@dataclass
class Chromium:
    binary: str
    profile_root: Path

    def _run(self, url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        profile = self.profile_root / f"profile-{len(list(self.profile_root.iterdir()))}"
        cmd = [
            self.binary,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def load(self, path: Path) -> Page:
        r = self._run(path.resolve().as_uri(), "--dump-dom")
        assert r.returncode == 0, f"chromium exited {r.returncode}:\n{r.stderr[-3000:]}"
        console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
        return Page(r.stdout, console, r.stderr)

    def screenshot(self, path: Path, png: Path, width: int = 1280, height: int = 2400) -> Path:
        r = self._run(path.resolve().as_uri(), f"--screenshot={png}", f"--window-size={width},{height}")
        assert r.returncode == 0 and png.exists(), f"chromium exited {r.returncode}:\n{r.stderr[-3000:]}"
        return png


class Tables(HTMLParser):
    """Every <table id=...> of a DOM: its rows, each a list of cell texts (th and td)."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[str] = []  # every start tag, in order
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
