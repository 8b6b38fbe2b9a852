"""Whether a study's final NLLs compare: the keys that define what each was measured on.

Two final NLLs compare only where these are equal. The data file's content is compared by the
token cache key recorded in the config's meta (it hashes the file's bytes, the tokenizer and
skip_bad_lines), or by data.file_path where a run's config has no such key. Nor do the NLLs of
runs trained in different precisions (``meta.precision``, what ``trainer.precision`` resolved
to; for a run of older reatt, what its ``trainer.amp`` and device gave): ``reatt plan`` makes a
study's runs share ``trainer.precision``, but ``auto`` resolves per machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reatt.training.precision import recorded_precision

EVAL_KEYS = ("data.tokenizer", "data.test_size", "data.split_seed", "data.block_size", "trainer.eval_windows")
DATA_CONTENT = "data file content"
PRECISION = "precision"  # the resolved one, "bf16" or "fp32"
_ABSENT = object()


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _data_facts(config: dict[str, Any]) -> tuple[Any, Any, str]:
    """(cache key or _ABSENT, data.file_path or _ABSENT, a short description of the file)."""
    meta = _lookup(config, "meta.data")
    facts: Any = {}
    if isinstance(meta, dict):
        facts = meta.get("eval") or meta.get("train") or {}
    key = facts.get("cache_key", _ABSENT) if isinstance(facts, dict) else _ABSENT
    path = _lookup(config, "data.file_path")
    file = (facts.get("file") if isinstance(facts, dict) else None) or path
    if file is _ABSENT or file is None:
        shown = "?"
    elif file == "":
        shown = "embedded corpus"
    else:
        shown = Path(str(file)).name or str(file)
    if key is not _ABSENT:
        shown += f" [{str(key)[:8]}]"
    return key, path, shown


def incomparable(done: Sequence[Any]) -> list[str]:
    """The evaluation keys that differ between the runs ``done`` (those with a config), each as
    "KEY differs (VARIANT: VALUE; ...)"; empty when all were evaluated alike."""
    runs = [r for r in done if isinstance(r.config, dict)]
    if len(runs) < 2:
        return []
    data = {r.name: _data_facts(r.config) for r in runs}
    by_content = all(key is not _ABSENT for key, _, _ in data.values())
    values: dict[str, list[tuple[Any, Any, str]]] = {}  # label -> (run, value, shown)
    label = DATA_CONTENT if by_content else "data.file_path"
    values[label] = [(r, data[r.name][0 if by_content else 1], data[r.name][2]) for r in runs]
    for key in EVAL_KEYS:
        values[key] = [(r, v, _shown(v)) for r in runs for v in [_lookup(r.config, key)]]
    precisions = {r.name: recorded_precision(r.config) for r in runs}
    values[PRECISION] = [(r, p, str(p)) for r in runs for p in [precisions[r.name] or _ABSENT]]
    out = []
    for label, triples in values.items():
        known = [(r, v, shown) for r, v, shown in triples if v is not _ABSENT]
        if len({_hashable(v) for _, v, _ in known}) <= 1:
            continue
        per_variant: dict[str, dict[str, list[str]]] = {}  # variant -> shown value -> run names
        for r, _, shown in known:
            per_variant.setdefault(r.variant, {}).setdefault(shown, []).append(r.name)
        parts = []
        for variant, shown_runs in per_variant.items():
            if len(shown_runs) == 1:
                parts.append(f"{variant}: {next(iter(shown_runs))}")
            else:
                parts.append(
                    f"{variant}: " + ", ".join(f"{v} ({', '.join(names)})" for v, names in shown_runs.items())
                )
        out.append(f"{label} differs ({'; '.join(parts)})")
    return out


def _shown(value: Any) -> str:
    return repr(value) if value == "" or value is None else str(value)


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def incomparable_how(diffs: Sequence[str]) -> str:
    """How the runs were measured differently: "on different held-out windows", "in different
    precisions", or both."""
    precision = any(d.startswith(f"{PRECISION} differs") for d in diffs)
    windows = any(not d.startswith(f"{PRECISION} differs") for d in diffs)
    hows = ["on different held-out windows"] * windows + ["in different precisions"] * precision
    return " and ".join(hows)


def incomparable_note(diffs: Sequence[str]) -> str:
    return (
        f"NOT COMPARABLE: the held-out NLLs were measured {incomparable_how(diffs)}, so the "
        f"differences and the ranking mean nothing: {'; '.join(diffs)}."
    )
