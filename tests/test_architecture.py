"""The layout of the package (docs/architecture.md): layers that import only downwards, no import
circle, small modules, and a document that lists every module.

Every ``import`` of a reatt module counts, at module level or inside a function (where heavy or
optional imports hide), and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reatt"
MAX_LINES = 400

# Lowest first. A module may import its own layer and the layers below, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("reatt", "reatt.errors", "reatt.files", "reatt.terminal")),
    ("run directory", ("reatt.rundir",)),
    ("states", ("reatt.states", "reatt.transitions")),
    ("training", ("reatt.training", "reatt.train")),
    ("executors", ("reatt.executors",)),
    ("study", ("reatt.study",)),
    ("report", ("reatt.report",)),
    ("cli", ("reatt.cli", "reatt.__main__")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index of the module's layer: the one whose longest prefix matches."""
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix == "reatt"  # the package itself only, not everything under it
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer of LAYERS: add it"
    return rank


def imports_of(module: str) -> set[str]:
    """The reatt modules ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "reatt")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "reatt":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for m, deps in GRAPH.items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(m)
    ]
    assert upward == []


def test_the_training_wing_imports_no_orchestration():
    orchestration = ("reatt.study", "reatt.executors", "reatt.report", "reatt.cli")
    wrong = [
        (m, dep)
        for m, deps in GRAPH.items()
        if m.startswith("reatt.training") or m == "reatt.train"
        for dep in deps
        if dep.startswith(orchestration)
    ]
    assert wrong == []


def test_no_import_circle():
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for dep in sorted(GRAPH[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_no_module_over_the_size_limit():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_the_architecture_document_lists_every_module_and_no_other():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"`(reatt/[\w/]+\.py)`", text))
    present = {str(p.relative_to(ROOT)) for p in MODULES.values()}
    assert sorted(present - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - present) == [], "docs/architecture.md lists modules that do not exist"


def test_the_entry_points_and_the_orchestration_import_no_heavy_library():
    """`python -m reatt.train` imports torch only once it trains; plan, status and submit none."""

    modules = (
        "reatt.train, reatt.study.spec, reatt.study.status, reatt.study.submit, reatt.executors.registry"
    )
    heavy = ("torch", "numpy", "pandas", "seaborn", "matplotlib", "transformers", "jinja2")
    code = f"import sys, {modules}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_cli_loads_no_stage_until_a_command_runs():
    """`reatt --help` parses options only: each command imports its stage when it runs (the
    report's format names live in ``reatt.report`` itself for ``--format``'s choices)."""
    code = "import sys, reatt.cli; print(*(m for m in sys.modules if m.startswith('reatt.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = {m for m in out.stdout.split() if not m.startswith("reatt.cli")}
    assert loaded <= {"reatt.errors", "reatt.report"}, loaded
