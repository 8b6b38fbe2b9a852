"""The embedded corpus of Python's own documentation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fsync_helpers import record_fsyncs

from reatt.training import corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The corpus built twice, into two cache dirs."""
    first = corpus.embedded_corpus_path(tmp_path_factory.mktemp("a"))
    second = corpus.embedded_corpus_path(tmp_path_factory.mktemp("b"))
    return first, second


def test_building_twice_gives_identical_bytes(built):
    first, second = built
    assert first.name == second.name == corpus.corpus_file_name()
    assert first.read_bytes() == second.read_bytes()


def test_a_built_corpus_is_reused(built):
    first, _ = built
    mtime = first.stat().st_mtime_ns
    assert corpus.embedded_corpus_path(first.parent.parent) == first
    assert first.stat().st_mtime_ns == mtime
    assert not [p for p in first.parent.iterdir() if p != first]  # no temp file left


def test_one_document_per_topic_or_module_in_sorted_order(built):
    docs = [json.loads(line) for line in built[0].read_text(encoding="utf-8").splitlines()]
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids))
    topics = [i for i in ids if i.startswith("topic:")]
    modules = [i for i in ids if i.startswith("module:")]
    assert ids == topics + modules
    assert topics == sorted(topics) and modules == sorted(modules)
    from pydoc_data.topics import topics as pydoc_topics

    assert len(topics) == len(pydoc_topics)
    assert {"module:json", "module:argparse", "module:email.message"} <= set(modules)
    # left out: side effects, split-out packages, tests, private modules
    for gone in ("module:this", "module:antigravity", "module:tkinter", "module:idlelib"):
        assert gone not in ids
    assert not [i for i in modules if ".test" in i or i.startswith("module:_") or "._" in i]


def test_the_documents_are_real_english(built):
    docs = [json.loads(line) for line in built[0].read_text(encoding="utf-8").splitlines()]
    size_mb = built[0].stat().st_size / 1e6
    assert 1.0 < size_mb < 4.0
    assert all(isinstance(d["text"], str) and d["text"].strip() for d in docs)
    words = " ".join(d["text"] for d in docs).split()
    common = sum(w.lower() in {"the", "a", "is", "of", "to", "and", "in"} for w in words)
    assert common / len(words) > 0.1  # English prose, not code
    json_doc = next(d["text"] for d in docs if d["id"] == "module:json")
    assert json_doc.startswith("Module json\n\nJSON (JavaScript Object Notation)")


def test_building_imports_no_stdlib_module():
    code = (
        "import sys\n"
        "from reatt.training.corpus import iter_documents\n"
        "n = sum(1 for _ in iter_documents())\n"
        "print([m for m in ('this', 'antigravity', 'turtle', 'smtplib', 'http.server', 'tkinter')"
        " if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def test_the_corpus_file_is_written_atomically_and_fsynced(tmp_path, monkeypatch):
    def two_documents_then_a_failure():
        yield {"id": "topic:a", "text": "first"}
        yield {"id": "topic:b", "text": "second"}
        raise KeyboardInterrupt  # e.g. Ctrl-C half-way through a first build

    monkeypatch.setattr(corpus, "iter_documents", two_documents_then_a_failure)
    with pytest.raises(KeyboardInterrupt):
        corpus.embedded_corpus_path(tmp_path)
    assert list((tmp_path / "corpus").iterdir()) == []  # nothing half-written, no temp left

    synced = record_fsyncs(monkeypatch)
    monkeypatch.setattr(corpus, "iter_documents", lambda: iter([{"id": "topic:a", "text": "first"}]))
    path = corpus.embedded_corpus_path(tmp_path)
    assert path.read_text() == '{"id": "topic:a", "text": "first"}\n'
    assert any(os.path.basename(n).startswith(f".{path.name}.tmp-") for n in synced), synced
