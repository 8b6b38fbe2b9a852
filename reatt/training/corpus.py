"""The embedded default corpus: real English from the documentation that ships with Python.

A fresh machine with no network and no data can still train: when ``data.file_path`` is empty,
reatt builds (once) a JSONL file of

- every help topic of ``pydoc_data.topics`` (the text behind ``help('assert')``), one document
  per topic, and
- the docstrings of the pure-Python standard library, one document per module: the module's
  docstring followed by those of its public classes, methods and functions.

Module sources are parsed with ``ast``, never imported (some stdlib modules have side effects
on import: ``this``, ``antigravity``, ``turtle``...). Modules that distributions often ship as
separate packages (``tkinter``, ``idlelib``, ``lib2to3``, ``distutils``, ``ensurepip``...) and
test packages are left out, so two installs of one Python version give the same file. The
documents come out in a fixed, sorted order: the file is identical byte for byte each time it
is built for a given Python version.

Each line is ``{"id": "topic:assert" | "module:json.decoder", "text": "..."}``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from reatt.files import atomic_writer

# Bump when the documents this module produces change, so an old cached file is not reused.
CORPUS_VERSION = 1

# Left out: modules with side effects or no prose (this, antigravity, __phello__), modules that
# distributions split into separate packages (so the corpus does not depend on what is
# installed), and pydoc_data itself (its topics are already documents).
EXCLUDED_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "lib2to3",
        "tkinter",
        "turtle",
        "turtledemo",
        "distutils",
        "ensurepip",
        "pydoc_data",
        "test",
    }
)
# Subpackages holding tests (unittest.test, ctypes.test, sqlite3.test, ...).
EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test"})


def corpus_file_name() -> str:
    """``python-docs-3.11.7-v1.jsonl``: the Python version fixes the content."""
    v = sys.version_info
    return f"python-docs-{v.major}.{v.minor}.{v.micro}-v{CORPUS_VERSION}.jsonl"


def embedded_corpus_path(cache_dir: str | os.PathLike[str]) -> Path:
    """The embedded corpus's JSONL file under ``cache_dir/corpus/``, built on first use.

    Built atomically and durably (``reatt.atomic``: temp file, fsync, ``os.replace``), so
    concurrent first runs are safe and a half-written file is never seen under the final name.
    """
    out_dir = Path(cache_dir) / "corpus"
    path = out_dir / corpus_file_name()
    if path.is_file():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in iter_documents():
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def iter_documents() -> Iterator[dict[str, str]]:
    """Every document of the corpus, in its fixed order: the topics, then the modules."""
    yield from iter_topic_documents()
    yield from iter_module_documents()


def iter_topic_documents() -> Iterator[dict[str, str]]:
    """One document per ``pydoc_data.topics`` help topic, sorted by topic name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield {"id": f"topic:{name}", "text": text}


def iter_module_documents() -> Iterator[dict[str, str]]:
    """One document per public pure-Python stdlib module that has any docstring, sorted."""
    for name, path in sorted(stdlib_module_files().items()):
        text = module_text(name, path)
        if text:
            yield {"id": f"module:{name}", "text": text}


def stdlib_module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for the public pure-Python stdlib (submodules too).

    Found by looking at the stdlib directory, never by importing: ``importlib.util.find_spec``
    on a submodule would import its parent package.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, Path] = {}
    for top in sorted(sys.stdlib_module_names):
        if _is_private(top) or top in EXCLUDED_MODULES:
            continue
        if (stdlib / f"{top}.py").is_file():
            found[top] = stdlib / f"{top}.py"
        elif (stdlib / top / "__init__.py").is_file():
            found.update(_package_files(top, stdlib / top))
        # else: a C extension or builtin (math, sys): no source to read without importing it
    return found


def _package_files(package: str, directory: Path) -> dict[str, Path]:
    found = {package: directory / "__init__.py"}
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if _is_private(name) or name in EXCLUDED_PARTS:
            continue
        if entry.is_file() and name.endswith(".py") and name != "__init__.py":
            found[f"{package}.{name[:-3]}"] = entry
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.update(_package_files(f"{package}.{name}", entry))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_")


def _is_dunder(name: str) -> bool:
    """``__init__``, ``__call__``...: public protocol methods, documented like any other."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def module_text(name: str, path: Path) -> str:
    """The module's docstring, then each public class, method and function's, with headings."""
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences in old code
            tree = ast.parse(source, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return ""
    sections = [f"{title}\n\n{doc}" for title, doc in _definition_docstrings(tree.body, prefix="")]
    module_doc = ast.get_docstring(tree)
    if module_doc:
        sections.insert(0, module_doc)
    if not sections:
        return ""
    return f"Module {name}\n\n" + "\n\n".join(sections)


def _definition_docstrings(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
    """(heading, docstring) of the public classes and functions in ``body``, in source order."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if _is_private(node.name) and not _is_dunder(node.name):
                continue
            qualname = prefix + node.name
            doc = ast.get_docstring(node)
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            if doc:
                yield f"The {kind} {qualname}", doc
            if isinstance(node, ast.ClassDef):
                yield from _definition_docstrings(node.body, prefix=qualname + ".")
