"""JSONLDataset, the token cache, the split and the bad-input paths, on real files and the real
GPT-2 tokenizer (loaded offline)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fsync_helpers import record_fsyncs
from torch.utils.data import DataLoader

from reatt.errors import ConfigError, DataError
from reatt.training import cache as C
from reatt.training import dataset as D
from reatt.training import encode as E
from reatt.training.config import get_default_config
from reatt.training.tokenizer import load_tokenizer, tokenizer_fingerprint

BLOCK = 8
WORDS = (
    "the cat sat on a mat while an old dog slept near the warm fire and birds sang in tall green "
    "trees by the river where children played with small boats each summer morning"
).split()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    """Each test starts with no token cache opened in this process."""
    C.forget_open_caches()


def write_jsonl(path: Path, texts: list[str], extra_lines: dict[int, str] | None = None) -> Path:
    """One {"text": ...} per line; ``extra_lines`` maps 1-based line numbers to raw lines."""
    lines = [json.dumps({"text": t}) for t in texts]
    for lineno, raw in sorted((extra_lines or {}).items()):
        lines.insert(lineno - 1, raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prose(i: int, n_words: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def data_cfg(tmp_path: Path, file: Path | str, **overrides):
    cfg = get_default_config().data
    cfg.file_path = str(file)
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.block_size = BLOCK
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def prose_file(tmp_path):
    """40 documents: every 4th is too short for a window of BLOCK + 1 tokens."""
    texts = [prose(i, 3 if i % 4 == 0 else 20 + 7 * i) for i in range(40)]
    return write_jsonl(tmp_path / "prose.jsonl", texts)


def doc_id_lists(ds) -> list[list[int]]:
    return [ds.cache.doc_tokens(i).tolist() for i in range(ds.cache.n_docs)]


def find(window: list[int], docs: list[list[int]]) -> list[tuple[int, int]]:
    """(doc, offset) of every place ``window`` occurs contiguously."""
    hits = []
    for d, ids in enumerate(docs):
        for off in range(len(ids) - len(window) + 1):
            if ids[off : off + len(window)] == window:
                hits.append((d, off))
    return hits


# --------------------------------------------------------------------------- windows


def test_cached_tokens_are_the_tokenizer_ids_of_each_document(tmp_path, prose_file, tok):
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    texts = [json.loads(line)["text"] for line in prose_file.read_text().splitlines()]
    assert doc_id_lists(ds) == [tok.encode(t) for t in texts]  # no special tokens, no EOS
    assert ds.cache.tokens.dtype == np.uint16


def test_items_are_shifted_contiguous_windows_of_long_documents(tmp_path, prose_file, tok):
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    docs = doc_id_lists(ds)
    split = set(ds.doc_ids.tolist())
    long_docs = {d for d in split if len(docs[d]) >= BLOCK + 1}
    assert ds.n_eligible_docs == len(long_docs) < len(split)  # some short ones exist
    seen_docs, offsets = set(), set()
    for k in range(300):
        x, y = ds[k]
        assert x.shape == y.shape == (BLOCK,) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[1:], y[:-1])
        hits = find(x.tolist() + [int(y[-1])], docs)
        assert hits and all(d in long_docs for d, _ in hits)
        seen_docs.add(hits[0][0])
        offsets.add(hits[0][1])
    assert seen_docs == long_docs  # every long document of the split gets drawn
    assert len(offsets) > 20  # windows start all over the documents


def test_exact_lengths_block_plus_one_is_the_shortest_drawn(tmp_path, tok):
    # " w" * n is exactly n tokens for a common word w; each document has its own word
    texts = [f" {WORDS[i]}" * (BLOCK - 1 + i % 4) for i in range(24)]  # BLOCK-1 .. BLOCK+2 tokens
    path = write_jsonl(tmp_path / "exact.jsonl", texts)
    ds = D.JSONLDataset(data_cfg(tmp_path, path, test_size=0.25), seed=0, tokenizer=tok)
    lengths = [len(ids) for ids in doc_id_lists(ds)]
    assert lengths == [BLOCK - 1 + i % 4 for i in range(24)]
    expected = {d for d in ds.doc_ids.tolist() if lengths[d] >= BLOCK + 1}
    drawn = set()
    for k in range(400):
        x, _ = ds[k]
        word_id = int(x[0])
        drawn |= {d for d in ds.doc_ids.tolist() if tok.encode(f" {WORDS[d]}") == [word_id]}
    assert drawn == expected
    assert len(ds) == sum(lengths[d] - BLOCK for d in expected)  # distinct windows


def test_items_depend_only_on_seed_and_index(tmp_path, prose_file, tok):
    a = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=7, tokenizer=tok)
    C.forget_open_caches()
    b = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=7, tokenizer=tok)
    ks = [0, 1, 2, 50, 10**9, 3, 1]  # any order, indices past len(ds) too
    for k in ks:
        assert all(torch.equal(u, v) for u, v in zip(a[k], b[k], strict=True))
    other = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=8, tokenizer=tok)
    assert any(not torch.equal(a[k][0], other[k][0]) for k in range(10))
    with pytest.raises(IndexError):
        a[-1]


def test_dataloader_workers_give_the_same_batches(tmp_path, prose_file, tok, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # quiet fork of the tokenizer
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=3, tokenizer=tok)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, sampler=range(40, 64), num_workers=workers)
        return [x for x, _ in loader]

    assert all(torch.equal(u, v) for u, v in zip(batches(0), batches(2), strict=True))


def test_pickled_dataset_draws_the_same_items_without_copying_tokens(tmp_path, prose_file, tok):
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=3, tokenizer=tok)
    ds[0]  # maps the tokens
    assert ds.cache.__getstate__()["_tokens"] is None
    clone = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(ds[k][0], clone[k][0]) for k in range(20))


# --------------------------------------------------------------------------- split


def test_split_documents_partitions_deterministically():
    train, test = D.split_documents(100, 0.1, 1234)
    assert len(test) == 10 and len(train) == 90
    assert sorted(set(train) | set(test)) == list(range(100)) and not set(train) & set(test)
    assert list(train) == sorted(train) and list(test) == sorted(test)
    again = D.split_documents(100, 0.1, 1234)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, D.split_documents(100, 0.1, 99)[1])
    assert [len(t) for t in D.split_documents(2, 0.01, 0)] == [1, 1]  # both splits non-empty
    assert [len(t) for t in D.split_documents(3, 0.99, 0)] == [1, 2]


def test_split_needs_two_documents_and_a_fraction():
    with pytest.raises(DataError, match="at least 2 documents"):
        D.split_documents(1, 0.1, 0)
    with pytest.raises(ConfigError, match="data.test_size"):
        D.split_documents(10, 1.0, 0)


def test_dataset_split_ignores_the_training_seed(tmp_path, prose_file, tok):
    train1 = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=1, tokenizer=tok)
    train2 = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=2, tokenizer=tok)
    test = D.JSONLDataset(data_cfg(tmp_path, prose_file, split="test"), seed=1, tokenizer=tok)
    assert np.array_equal(train1.doc_ids, train2.doc_ids)
    assert sorted(train1.doc_ids.tolist() + test.doc_ids.tolist()) == list(range(40))
    assert test.n_docs == 4
    other = D.JSONLDataset(data_cfg(tmp_path, prose_file, split="test", split_seed=5), seed=1, tokenizer=tok)
    assert not np.array_equal(test.doc_ids, other.doc_ids)
    assert train1.cache is test.cache  # both splits share one opened cache


def test_eval_windows_are_fixed_and_from_the_test_split(tmp_path, prose_file, tok):
    test = D.JSONLDataset(data_cfg(tmp_path, prose_file, split="test", test_size=0.3), seed=1, tokenizer=tok)
    other_seed = D.JSONLDataset(
        data_cfg(tmp_path, prose_file, split="test", test_size=0.3), seed=2, tokenizer=tok
    )
    x, y = test.eval_windows(16)
    assert x.shape == y.shape == (16, BLOCK) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = other_seed.eval_windows(16)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(test.eval_windows(4)[0], x[:4])  # a prefix of a larger set
    docs = doc_id_lists(test)
    test_docs = set(test.doc_ids.tolist())
    for row in range(16):
        window = x[row].tolist() + [int(y[row, -1])]
        hits = find(window, docs)
        assert hits and all(d in test_docs for d, _ in hits)
    assert test.eval_windows(0)[0].shape == (0, BLOCK)


# --------------------------------------------------------------------------- the cache


def test_second_construction_reads_the_cache_without_tokenizing(tmp_path, prose_file, tok, monkeypatch):
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    meta = first.cache.directory / "meta.json"
    mtime = meta.stat().st_mtime_ns
    C.forget_open_caches()

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(C, "tokenize_into", no_tokenizing)
    again = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert again.cache_key == first.cache_key and meta.stat().st_mtime_ns == mtime
    # the key is the content: a copy elsewhere reuses the cache too
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(prose_file.read_bytes())
    assert D.JSONLDataset(data_cfg(tmp_path, copy), seed=0, tokenizer=tok).cache_key == first.cache_key


def test_a_changed_file_gets_a_new_cache(tmp_path, prose_file, tok):
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    with open(prose_file, "a") as f:
        f.write(json.dumps({"text": prose(99, 50)}) + "\n")
    C.forget_open_caches()
    second = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert second.cache_key != first.cache_key and second.cache.n_docs == 41


def test_cache_layout_and_meta(tmp_path, prose_file, tok):
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    d = ds.cache.directory
    assert d.parent == tmp_path / "cache" / "tokens"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["n_docs"] == 40 and meta["dtype"] == "<u2"
    assert (d / "tokens.bin").stat().st_size == 2 * meta["n_tokens"]
    assert np.load(d / "offsets.npy").shape == (41,)
    assert meta["source_path"] == str(prose_file.resolve())
    assert meta["skipped_lines"] == 0 and meta["tokens_per_s"] > 0
    facts = ds.describe()
    json.dumps(facts)
    assert facts["docs"]["train"] + facts["docs"]["test"] == 40
    assert facts["tokens"]["train"] + facts["tokens"]["test"] == meta["n_tokens"]
    assert facts["vocab_size"] == 50257 and facts["eos_token_id"] == 50256


def corrupt_and_reload(tmp_path, prose_file, tok, damage):
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    expected = [first[k][0] for k in range(5)]
    damage(first.cache.directory)
    C.forget_open_caches()
    again = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert all(torch.equal(e, again[k][0]) for k, e in enumerate(expected))
    return again.cache.directory


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "meta.json").unlink(),
        lambda d: (d / "tokens.bin").write_bytes((d / "tokens.bin").read_bytes()[:-2]),
        lambda d: (d / "offsets.npy").unlink(),
        lambda d: (d / "meta.json").write_text('{"format": 0}'),
    ],
    ids=["no-meta", "truncated-tokens", "no-offsets", "old-format"],
)
def test_an_incomplete_cache_is_rebuilt(tmp_path, prose_file, tok, damage):
    directory = corrupt_and_reload(tmp_path, prose_file, tok, damage)
    assert C.TokenCache.try_open(directory) is not None


def test_a_dead_builders_temp_dir_is_ignored_and_removed(tmp_path, prose_file, tok):
    key = C.cache_key(C.content_hash(prose_file, tmp_path / "cache"), tokenizer_fingerprint(tok), False)
    stale = tmp_path / "cache" / "tokens" / f"{key}.tmp-999999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "tokens.bin").write_bytes(b"\x00" * 10)
    (stale / "meta.json").write_text('{"format": 1, "n_docs": 1, "n_tokens": 5, "dtype": "<u2"}')
    ds = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert ds.cache_key == key and ds.cache.n_docs == 40
    assert not stale.exists()


def _build_in_child(path, cache_dir, barrier, results):
    C.forget_open_caches()
    tok = load_tokenizer("gpt2")
    barrier.wait()
    cache = C.open_token_cache(Path(path), tok, Path(cache_dir))
    results.put((cache.key, cache.n_tokens, int(cache.tokens[-1])))


def build_concurrently(tmp_path, monkeypatch, path, n, all_inside_build):
    """Start ``n`` forked processes building the cache of ``path`` at once.

    Each build leaves a marker file. With ``all_inside_build``, no build finishes before all
    ``n`` processes are building (only possible without the lock); otherwise each build takes
    long enough for the others to arrive while it runs. Returns (results, number of builds).
    """
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is forked
    ctx = multiprocessing.get_context("fork")
    start, inside, results = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    builds = tmp_path / "builds"
    builds.mkdir()
    real = C.tokenize_into

    def counted(path, display, tokenizer, out, skip, file_hash):
        (builds / out.name).touch()
        if all_inside_build:
            inside.wait(timeout=60)
        else:
            time.sleep(0.5)
        return real(path, display, tokenizer, out, skip, file_hash)

    monkeypatch.setattr(C, "tokenize_into", counted)
    cache_dir = str(tmp_path / "cache")
    procs = [
        ctx.Process(target=_build_in_child, args=(str(path), cache_dir, start, results)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out, len(list(builds.iterdir()))


def assert_one_valid_cache(tmp_path, results):
    assert len(set(results)) == 1  # every process got the same cache
    key = results[0][0]
    tokens = tmp_path / "cache" / "tokens"
    assert sorted(p.name for p in tokens.iterdir()) == [key, f"{key}.lock"]  # no temp dir left
    assert C.TokenCache.try_open(tokens / key) is not None


def test_concurrent_builders_build_once(tmp_path, prose_file, monkeypatch):
    results, builds = build_concurrently(tmp_path, monkeypatch, prose_file, 4, all_inside_build=False)
    assert builds == 1  # the others waited on the lock, then found the finished cache
    assert_one_valid_cache(tmp_path, results)


def test_concurrent_builders_without_flock_still_end_with_one_valid_cache(tmp_path, prose_file, monkeypatch):
    import fcntl

    def no_locks(*args):
        raise OSError(37, "No locks available")  # as on some network filesystems

    monkeypatch.setattr(fcntl, "flock", no_locks)
    results, builds = build_concurrently(tmp_path, monkeypatch, prose_file, 4, all_inside_build=True)
    assert builds == 4  # each built its own copy; the first rename won, the others were discarded
    assert_one_valid_cache(tmp_path, results)


def no_locks(*args):
    raise OSError(37, "No locks available")  # as on some network filesystems


def looks_missing_first(monkeypatch, n):
    """TokenCache.open (and so try_open) finds nothing the first ``n`` times, as if another
    process renamed its finished cache into place just after this one looked."""
    real = C.TokenCache.open
    calls = []

    def open_(cls, directory):
        calls.append(directory)
        return (None, None) if len(calls) <= n else real(directory)

    monkeypatch.setattr(C.TokenCache, "open", classmethod(open_))
    return calls


def test_without_locks_a_cache_renamed_into_place_meanwhile_is_kept(tmp_path, prose_file, tok, monkeypatch):
    import fcntl

    final = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok).cache.directory
    inode = final.stat().st_ino
    C.forget_open_caches()
    monkeypatch.setattr(fcntl, "flock", no_locks)
    looks_missing_first(monkeypatch, 2)  # the look before the lock, and the one after it
    cache = C.open_token_cache(prose_file, tok, tmp_path / "cache")
    assert cache.directory == final and final.stat().st_ino == inode  # never moved aside
    assert C.TokenCache.try_open(final) is not None
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, f"{final.name}.lock"]


def test_clearing_never_moves_a_finished_cache_aside(tmp_path, prose_file, tok, monkeypatch):
    final = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok).cache.directory
    inode = final.stat().st_ino
    C.clear_unfinished(final)  # the re-check right before the move finds it finished
    assert final.stat().st_ino == inode
    looks_missing_first(monkeypatch, 1)  # finished just after the re-check: the move is undone
    C.clear_unfinished(final)
    assert final.stat().st_ino == inode and C.TokenCache.try_open(final) is not None
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, f"{final.name}.lock"]


def test_without_locks_a_broken_cache_in_the_way_is_still_replaced(tmp_path, prose_file, tok, monkeypatch):
    import fcntl

    final = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok).cache.directory
    (final / "meta.json").unlink()
    C.forget_open_caches()
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok).cache.n_docs == 40
    assert C.TokenCache.try_open(final) is not None
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, f"{final.name}.lock"]


def test_the_cache_files_are_fsynced(tmp_path, prose_file, tok, monkeypatch):
    paths = record_fsyncs(monkeypatch)
    D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    synced = [os.path.basename(p) for p in paths]
    for name in ("tokens.bin", ".offsets.npy.tmp-", ".meta.json.tmp-"):
        assert any(s.startswith(name) for s in synced), (name, synced)


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("REATT_CACHE_DIR", str(tmp_path / "env"))
    assert C.resolve_cache_dir("~/x") == Path.home() / "x"
    assert C.resolve_cache_dir("") == tmp_path / "env"
    monkeypatch.delenv("REATT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.resolve_cache_dir("") == tmp_path / "xdg" / "reatt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert C.resolve_cache_dir("") == Path.home() / ".cache" / "reatt"


# --------------------------------------------------------------------------- bad input

BAD_LINES = [
    ("this is not json", "not valid JSON"),
    ('["a", "list"]', "not a JSON object (a JSON array)"),
    ('{"title": "no text here"}', 'no "text" field'),
    ('{"text": 42}', '"text" is a JSON number, not a string'),
    ('{"text": null}', '"text" is a JSON null, not a string'),
    ('{"text": "\\ud800 lone surrogate"}', '"text" holds an unpaired surrogate'),
    ('{"text": ' + "[" * 50_000 + "]" * 50_000 + "}", "not usable JSON (nested too deeply)"),
    ('{"text": "a", "n": ' + "9" * 5000 + "}", "not usable JSON (Exceeds the limit"),
]


@pytest.mark.parametrize("raw,reason", BAD_LINES, ids=[r[:40] for _, r in BAD_LINES])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, tok, raw, reason):
    texts = [prose(i, 40) for i in range(10)]
    path = write_jsonl(tmp_path / "corpus.jsonl", texts, {2: "", 4: raw})  # line 2 is blank
    with pytest.raises(DataError) as e:
        D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)
    assert str(e.value).startswith(f"{path}:4: {reason}")
    assert "data.skip_bad_lines" in str(e.value)
    assert not list((tmp_path / "cache" / "tokens").glob("*.tmp-*"))  # nothing half-built left


def test_invalid_utf8_is_a_bad_line(tmp_path, tok):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "fine text here"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid UTF-8"):
        D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)


def test_skip_bad_lines_skips_and_counts_them(tmp_path, tok):
    texts = [prose(i, 40) for i in range(10)]
    bad = {3: BAD_LINES[0][0], 5: BAD_LINES[2][0], 6: "", 9: BAD_LINES[3][0], 11: BAD_LINES[-2][0]}
    path = write_jsonl(tmp_path / "corpus.jsonl", texts, bad)
    ds = D.JSONLDataset(data_cfg(tmp_path, path, skip_bad_lines=True), seed=0, tokenizer=tok)
    assert ds.skipped_lines == 4 and ds.cache.n_docs == 10
    meta = ds.cache.meta
    assert [n for n, _ in meta["skipped_examples"]] == [3, 5, 9, 11] and meta["blank_lines"] == 1
    assert ds.describe()["skipped_lines"] == 4
    # the strict cache is a different one: the same file still fails without the option
    with pytest.raises(DataError, match="corpus.jsonl:3: not valid JSON"):
        D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)


def test_a_missing_file_is_an_error(tmp_path, tok):
    with pytest.raises(DataError, match="does not exist"):
        D.JSONLDataset(data_cfg(tmp_path, tmp_path / "nope.jsonl"), seed=0, tokenizer=tok)
    with pytest.raises(DataError, match="is not a file"):
        D.JSONLDataset(data_cfg(tmp_path, tmp_path), seed=0, tokenizer=tok)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty"),
        ("\n\n  \n", "only blank lines"),
    ],
)
def test_a_file_without_documents_is_an_error(tmp_path, tok, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)


def test_a_file_of_only_bad_lines_is_an_error_even_when_skipping(tmp_path, tok):
    path = tmp_path / "corpus.jsonl"
    path.write_text("nope\n[1]\n")
    with pytest.raises(DataError, match="all 2 non-blank lines were skipped"):
        D.JSONLDataset(data_cfg(tmp_path, path, skip_bad_lines=True), seed=0, tokenizer=tok)


def test_no_document_long_enough_is_an_error_naming_the_longest(tmp_path, tok):
    path = write_jsonl(tmp_path / "short.jsonl", [" cat" * n for n in (3, 5, 7, 4)])
    with pytest.raises(DataError) as e:
        D.JSONLDataset(data_cfg(tmp_path, path, block_size=16), seed=0, tokenizer=tok)
    msg = str(e.value)
    assert "the longest has 7 tokens" in msg and "data.block_size=16 needs 17" in msg


def test_a_single_document_cannot_be_split(tmp_path, tok):
    path = write_jsonl(tmp_path / "one.jsonl", [prose(0, 50)])
    with pytest.raises(DataError, match="at least 2 documents"):
        D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)


# --------------------------------------------------------------------------- embedded corpus


def test_the_embedded_corpus_is_the_default_and_trains_offline(tmp_path, tok):
    cfg = data_cfg(tmp_path, "", block_size=64)
    ds = D.JSONLDataset(cfg, seed=0, tokenizer=tok)
    assert ds.embedded and ds.source_path.name.startswith("python-docs-")
    assert ds.source_path.parent == tmp_path / "cache" / "corpus"
    assert ds.cache.n_docs > 300 and ds.cache.n_tokens > 300_000
    x, y = ds[0]
    assert x.shape == (64,) and torch.equal(x[1:], y[:-1])
    text = tok.decode(ds.eval_windows(8)[0][0])
    assert len(text.split()) > 10


# --------------------------------------------------------------- trust: what a cache holds


def test_a_file_rewritten_while_it_is_tokenized_caches_nothing(tmp_path, prose_file, tok, monkeypatch):
    """The cache is keyed by the bytes tokenized: a file changed between its hash and its read
    (another job rewriting it) must not be stored under the old content's key."""
    real = C.content_hash

    def hash_then_rewrite(path, cache_dir, display=""):
        digest = real(path, cache_dir, display)
        write_jsonl(prose_file, [prose(i, 30) for i in range(50)])  # the rewrite lands now
        return digest

    monkeypatch.setattr(C, "content_hash", hash_then_rewrite)
    with pytest.raises(DataError, match="changed while it was being tokenized: nothing was cached"):
        D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert not [p for p in (tmp_path / "cache" / "tokens").iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setattr(C, "content_hash", real)
    C.forget_open_caches()
    assert D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok).cache.n_docs == 50


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.write_bytes(bytes(reversed(t.read_bytes()))),  # valid ids, other tokens
        lambda t: t.write_bytes(b"\xff" * t.stat().st_size),  # ids beyond the vocabulary
    ],
    ids=["other-valid-ids", "ids-beyond-vocab"],
)
def test_a_damaged_cache_is_detected_and_built_again(tmp_path, prose_file, tok, damage, caplog):
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    expected = doc_id_lists(first)
    directory = first.cache.directory
    damage(directory / "tokens.bin")  # same size: only the contents tell
    C.forget_open_caches()
    with caplog.at_level("WARNING"):
        again = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert "is damaged" in caplog.text and str(directory) in caplog.text
    assert doc_id_lists(again) == expected  # built again from the file, never trained on as it was
    assert C.TokenCache.try_open(directory) is not None


def test_a_damage_is_warned_about_once_not_again_for_a_cache_that_is_gone(tmp_path, prose_file, tok, caplog):
    """Regression: the reason a cache was damaged was kept per directory and warned about again
    at a later open that found no cache there at all."""
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    directory = first.cache.directory
    (directory / "tokens.bin").write_bytes(b"\xff" * (directory / "tokens.bin").stat().st_size)
    C.forget_open_caches()
    with caplog.at_level("WARNING"):
        D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert caplog.text.count("is damaged") == 1
    caplog.clear()
    shutil.rmtree(directory)
    C.forget_open_caches()
    with caplog.at_level("WARNING"):
        D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert "is damaged" not in caplog.text


@pytest.mark.parametrize("key", ["tokens_sha256", "offsets_sha256", "max_id"])
def test_a_cache_whose_meta_lacks_a_checksum_is_built_again(tmp_path, prose_file, tok, key, caplog):
    """A meta.json without what the checks need is never taken as checked."""
    first = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    directory = first.cache.directory
    meta = json.loads((directory / "meta.json").read_text())
    del meta[key]
    (directory / "meta.json").write_text(json.dumps(meta))
    C.forget_open_caches()
    assert C.TokenCache.try_open(directory) is None
    with caplog.at_level("WARNING"):
        again = D.JSONLDataset(data_cfg(tmp_path, prose_file), seed=0, tokenizer=tok)
    assert doc_id_lists(again) == doc_id_lists(first)
    assert key in json.loads((directory / "meta.json").read_text())


def test_split_text_pieces_join_into_the_ids_of_the_whole(tok):
    """Long documents are tokenized in pieces (bounded memory): the ids must not change."""
    rng = random.Random(3)
    words = WORDS + ["don't", "it's", "1999", "3.14", "naïve", "e\u0301", "!!", "«quoted»", "x\ty", "a  b"]
    text = " ".join(rng.choice(words) for _ in range(4000)) + "\n\n  tail  "
    whole = E.encode_batch(tok, [text])[0]
    for limit in (7, 31, 200, 1000):
        pieces = list(E.split_text(text, limit))
        assert "".join(pieces) == text and len(pieces) > 1
        assert max(map(len, pieces)) <= limit or limit < 10  # a word longer than the limit stays whole
        assert [i for ids in E.encode_batch(tok, pieces) for i in ids] == whole, limit


def test_a_long_document_is_cached_in_pieces_with_the_same_ids(tmp_path, tok, monkeypatch):
    texts = [prose(i, 3000) for i in range(3)] + [prose(9, 10)]
    path = write_jsonl(tmp_path / "long.jsonl", texts)
    whole = D.JSONLDataset(data_cfg(tmp_path, path), seed=0, tokenizer=tok)
    monkeypatch.setattr(E, "BATCH_CHARS", 500)  # pieces of at most 500 characters
    C.forget_open_caches()
    pieces = D.JSONLDataset(
        data_cfg(tmp_path, path, cache_dir=str(tmp_path / "other")), seed=0, tokenizer=tok
    )
    assert doc_id_lists(pieces) == doc_id_lists(whole)
    assert pieces.cache.meta["tokens_sha256"] == whole.cache.meta["tokens_sha256"]
