"""Streaming a JSONL file through the encoder into a token cache's files, in bounded memory.

- The file is read in chunks of whole lines (about ``CHUNK_BYTES`` each; a longer line is one
  chunk). Each chunk becomes its ids and document lengths (``encode.encode_chunk``), in this
  process or, for a GPT-2 file of at least ``POOL_MIN_BYTES``, in a pool of worker processes
  (``tokenize_workers``: ``$REATT_TOKENIZE_WORKERS``, else the cores this process may run on).
  Results are written in file order, and at most ``2 x workers`` chunks are in flight, so memory
  stays bounded by a few chunks whatever the file's size.
- Workers are forked (``_pool_context``): spawned ones would import the caller's main module
  again, which a script without an ``if __name__ == "__main__"`` guard cannot survive, and each
  would rebuild the encoder. A child runs only tiktoken and the JSON reader, on the encoder
  built before the pool, and ignores SIGINT and SIGTERM (the parent handles them; a worker
  whose parent is gone stops at its next read). tiktoken holds the GIL while it encodes, so
  threads would not help.
- The file's bytes are hashed as they are read, and its size and mtime compared before and
  after: the cache is keyed by the bytes that were actually tokenized, and a file rewritten
  meanwhile stores nothing.
- ``tokens.bin`` and ``offsets.npy`` are hashed as they are written, and the largest id is
  kept: what ``TokenCache.open`` checks each time it opens the cache.
"""

from __future__ import annotations

import array
import hashlib
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from reatt.errors import ConfigError, DataError
from reatt.files import atomic_writer
from reatt.training.encode import ChunkIds, DocEncoder, encode_chunk, file_sha256
from reatt.training.jsonl import MAX_SKIPPED_EXAMPLES, LineLog, no_documents_message
from reatt.training.tokenizer import tokenizer_fingerprint, tokenizer_source

# A chunk ends at the first line end after this many bytes: small enough that a few in flight
# per worker cost little memory, big enough that sending one costs little next to encoding it.
CHUNK_BYTES = 1 << 20
# Below this size a file is tokenized in this process: starting workers (about a second each,
# to import and build the encoder) would cost more than they save.
POOL_MIN_BYTES = 16 << 20
WORKERS_ENV = "REATT_TOKENIZE_WORKERS"


def tokenize_workers() -> int:
    """Worker processes for a large GPT-2 file: ``$REATT_TOKENIZE_WORKERS``, else the number of
    cores this process may run on (its CPU affinity: what Slurm or taskset gave the job)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"${WORKERS_ENV}={raw!r}: expected a whole number of processes, 1 or more")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def read_chunks(f: BinaryIO, digest: Any, size: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, bytes) of consecutive runs of whole lines of ``f``, each about
    ``size`` bytes or one longer line; every byte read is fed to ``digest`` first."""
    lineno, parts = 1, []  # parts: the bytes read since the last line end, joined once
    while block := f.read(size):
        digest.update(block)
        end = block.rfind(b"\n")
        if end < 0:
            parts.append(block)  # a line longer than the block: read on to its end
            continue
        parts.append(block[: end + 1])
        chunk = b"".join(parts)
        parts = [block[end + 1 :]]
        yield lineno, chunk
        lineno += chunk.count(b"\n")
    if rest := b"".join(parts):
        yield lineno, rest  # a last line without a newline


# --------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _start_worker(encoder: DocEncoder, display: str, skip_bad_lines: bool, dtype: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _WORKER.update(encoder=encoder, display=display, skip=skip_bad_lines, dtype=dtype)


def _pool_context() -> Any:
    """fork where the platform has it (see the module's docstring), else spawn."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _encode_in_worker(first_lineno: int, chunk: bytes) -> ChunkIds:
    w = _WORKER
    return encode_chunk(w["encoder"], chunk, first_lineno, w["display"], w["skip"], w["dtype"])


def _encoded_chunks(
    chunks: Iterator[tuple[int, bytes]], workers: int, args: tuple[DocEncoder, str, bool, str]
) -> Iterator[ChunkIds]:
    """Each chunk's ids, in order: here (1 worker) or in a pool with bounded work in flight."""
    if workers == 1:
        encoder, display, skip, dtype = args
        for first_lineno, chunk in chunks:
            yield encode_chunk(encoder, chunk, first_lineno, display, skip, dtype)
        return
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_start_worker, initargs=args)
    pending: deque[Future[ChunkIds]] = deque()
    try:
        for first_lineno, chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, first_lineno, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as e:
        raise DataError(
            f"a tokenizing worker process died ({e}; out of memory?): nothing was cached; "
            f"set ${WORKERS_ENV}=1 to tokenize in one process"
        ) from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the file


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def tokenize_into(
    path: Path, display: str, tokenizer: Any, out: Path, skip_bad_lines: bool, file_hash: str
) -> dict[str, Any]:
    """Write tokens.bin and offsets.npy into ``out``; return the meta.json contents.

    ``file_hash`` is the SHA-256 the cache is keyed by: the bytes read must have it, and the
    file must not change while it is read (DataError otherwise)."""
    vocab_size = len(tokenizer)
    dtype = np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")
    before = _stat(path)
    encoder = DocEncoder.for_tokenizer(tokenizer)
    workers = tokenize_workers() if encoder.fast is not None and before[0] >= POOL_MIN_BYTES else 1
    start = time.perf_counter()
    lines = LineLog()
    read, written = hashlib.sha256(), hashlib.sha256()
    offsets = array.array("q", [0])
    n_tokens, max_id = 0, -1
    try:
        source = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read data file {display}: {e.strerror or e}") from e
    with source, open(out / "tokens.bin", "wb") as f:
        args = (encoder, display, skip_bad_lines, dtype.str)
        for part in _encoded_chunks(read_chunks(source, read, CHUNK_BYTES), workers, args):
            _merge_lines(lines, part.lines)
            for length in part.lengths:
                n_tokens += length
                offsets.append(n_tokens)
            max_id = max(max_id, part.max_id)
            written.update(part.tokens)
            f.write(part.tokens)
        f.flush()
        os.fsync(f.fileno())
    if read.hexdigest() != file_hash or _stat(path) != before:
        raise DataError(
            f"data file {display} changed while it was being tokenized: nothing was cached; "
            "run again once nothing writes to it"
        )
    n_docs = len(offsets) - 1
    if n_docs == 0:
        raise DataError(no_documents_message(display, lines))
    with atomic_writer(out / "offsets.npy") as f:  # fsynced, like tokens.bin
        np.save(f, np.frombuffer(offsets, dtype=np.int64))
    seconds = time.perf_counter() - start
    return {
        "source_path": str(path.resolve()),
        "file_size": before[0],
        "content_sha256": file_hash,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer_source": tokenizer_source(tokenizer),
        "encoder": encoder.name,
        "encode_workers": workers,
        "vocab_size": vocab_size,
        "dtype": dtype.str,
        "n_docs": n_docs,
        "n_tokens": n_tokens,
        "max_id": max_id,
        "tokens_sha256": written.hexdigest(),
        "offsets_sha256": file_sha256(out / "offsets.npy"),
        "skip_bad_lines": skip_bad_lines,
        "skipped_lines": lines.skipped,
        "skipped_examples": [[n, reason] for n, reason in lines.examples],
        "blank_lines": lines.blank,
        "build_seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds) if seconds > 0 else None,
        "file_mb_per_s": round(before[0] / 1e6 / seconds, 3) if seconds > 0 else None,
    }


def _merge_lines(total: LineLog, part: LineLog) -> None:
    """Add one chunk's counts to the file's; examples stay the first ones in file order."""
    total.blank += part.blank
    total.skipped += part.skipped
    total.examples.extend(part.examples[: MAX_SKIPPED_EXAMPLES - len(total.examples)])
