"""The token cache: a JSONL file tokenized once, on disk, shared by every run that reads it.

- ``resolve_cache_dir``: where caches live (``data.cache_dir``, else ``$REATT_CACHE_DIR``,
  else ``$XDG_CACHE_HOME/reatt`` or ``~/.cache/reatt``).
- ``open_token_cache``: the file's token ids, built once by streaming the file through the fast
  tokenizer in batches, then memory-mapped. The cache is keyed by the file's content (not its
  name) and the tokenizer, built under a lock into a temporary directory and renamed into place,
  so concurrent jobs on one file build it once and never read a half-written cache. A finished
  cache is never moved or removed, with or without working locks.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reatt.errors import DataError
from reatt.files import atomic_writer, exclusive_lock, fsync_dir, write_atomic
from reatt.training.jsonl import LineLog, iter_texts, no_documents_message
from reatt.training.tokenizer import tokenizer_fingerprint, tokenizer_source

log = logging.getLogger(__name__)

# Bump when the files of a token cache change meaning, so old caches are not reused.
CACHE_FORMAT = 1
# A tokenizer batch ends after this many documents or this much text, whichever comes first:
# big enough for the batch encoder to be efficient, small enough that memory stays bounded.
BATCH_DOCS = 1000
BATCH_CHARS = 1 << 20


# --------------------------------------------------------------------------- cache location


def resolve_cache_dir(cfg_value: str = "") -> Path:
    """``data.cache_dir`` if set, else ``$REATT_CACHE_DIR``, else the user cache dir + reatt."""
    if cfg_value:
        return Path(cfg_value).expanduser()
    if os.environ.get("REATT_CACHE_DIR"):
        return Path(os.environ["REATT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "reatt"


# --------------------------------------------------------------------------- content hash


def content_hash(path: Path, cache_dir: Path, display: str = "") -> str:
    """SHA-256 of the file's bytes, remembered per file so multi-GB files are hashed once.

    The remembered hash is reused while the file's size, mtime, ctime, inode and device are
    unchanged. Each file has its own small index entry, written atomically, so concurrent jobs
    never corrupt it (at worst they hash the file twice).
    """
    path = path.resolve()
    st = path.stat()
    stat_key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    entry = cache_dir / "file-hashes" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(entry.read_text(encoding="utf-8"))
        if saved["path"] == str(path) and saved["stat"] == stat_key:
            return str(saved["sha256"])
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read data file {display or path}: {e.strerror or e}") from e
    sha = digest.hexdigest()
    with contextlib.suppress(OSError):  # best effort: a read-only cache dir just means rehashing
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, json.dumps({"path": str(path), "stat": stat_key, "sha256": sha}))
    return sha


# --------------------------------------------------------------------------- token cache


class TokenCache:
    """A tokenized JSONL file on disk: ``<cache_dir>/tokens/<key>/``.

    - ``tokens.bin``: every document's token ids back to back (uint16 when the vocabulary fits,
      else uint32), no separators; memory-mapped, never read whole.
    - ``offsets.npy``: int64, n_docs + 1; document i is ``tokens[offsets[i]:offsets[i+1]]``.
    - ``meta.json``: written last; its presence (with matching file sizes) marks a finished cache.
    """

    def __init__(self, directory: Path, meta: dict[str, Any], offsets: np.ndarray) -> None:
        self.directory = directory
        self.meta = meta
        self.offsets = offsets
        self._tokens: np.ndarray | None = None

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def tokens(self) -> np.ndarray:
        """The memory-mapped token ids (opened on first use, also after unpickling)."""
        if self._tokens is None and self.n_tokens == 0:
            self._tokens = np.zeros(0, dtype=np.dtype(self.meta["dtype"]))  # mmap refuses empty files
        if self._tokens is None:
            mapped = np.memmap(
                self.directory / "tokens.bin",
                dtype=np.dtype(self.meta["dtype"]),
                mode="r",
                shape=(self.n_tokens,),
            )
            self._tokens = mapped.view(np.ndarray)  # same mapping; plain slicing is faster
        return self._tokens

    def doc_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for DataLoader workers: reopen the memmap there instead of copying the tokens.
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state

    @classmethod
    def try_open(cls, directory: Path) -> TokenCache | None:
        """The finished cache in ``directory``, or None if absent, half-written or inconsistent."""
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT:
                return None
            n_docs, n_tokens = int(meta["n_docs"]), int(meta["n_tokens"])
            itemsize = np.dtype(meta["dtype"]).itemsize
            if (directory / "tokens.bin").stat().st_size != n_tokens * itemsize:
                return None
            offsets = np.load(directory / "offsets.npy", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        ok = (
            offsets.dtype == np.int64
            and offsets.shape == (n_docs + 1,)
            and offsets[0] == 0
            and offsets[-1] == n_tokens
            and bool(np.all(np.diff(offsets) >= 0))
        )
        return cls(directory, meta, offsets) if ok else None


# Caches opened by this process, by directory: both splits of a file share one.
_OPEN_CACHES: dict[Path, TokenCache] = {}


def forget_open_caches() -> None:
    """Forget the caches this process has opened (the next open looks at the disk again)."""
    _OPEN_CACHES.clear()


def cache_key(file_hash: str, tok_fingerprint: str, skip_bad_lines: bool) -> str:
    blob = f"reatt-tokens|format={CACHE_FORMAT}|file={file_hash}|tok={tok_fingerprint}|skip={skip_bad_lines}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def open_token_cache(
    path: Path, tokenizer: Any, cache_dir: Path, skip_bad_lines: bool = False, display: str = ""
) -> TokenCache:
    """The token cache of the JSONL file ``path``, built if no finished one exists.

    Safe when several processes call it at once on the same file: the builder holds the
    exclusive lock ``<key>.lock`` (``files.exclusive_lock``; if the filesystem refuses locks,
    each builds its own copy and the first rename wins: nothing is cleared up front, and a
    finished cache is never moved aside). Raises DataError for a missing/unreadable/unusable file.
    """
    display = display or str(path)
    if not path.exists():
        raise DataError(f"data file {display} does not exist")
    if not path.is_file():
        raise DataError(f"data file {display} is not a file")
    try:
        file_hash = content_hash(path, cache_dir, display)
        key = cache_key(file_hash, tokenizer_fingerprint(tokenizer), skip_bad_lines)
        final = cache_dir / "tokens" / key
        if final in _OPEN_CACHES:
            return _OPEN_CACHES[final]
        cache = TokenCache.try_open(final)
        if cache is None:
            final.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(final.parent / f"{key}.lock") as locked:
                cache = TokenCache.try_open(final)  # another process may have finished it
                if cache is None:
                    if locked:  # without the lock, a rename into place may be under way
                        clear_unfinished(final)
                    _build(path, display, tokenizer, final, skip_bad_lines, file_hash)
                    cache = TokenCache.try_open(final)
    except OSError as e:  # reading the data file raises DataError, so this is the cache dir
        raise DataError(
            f"cannot write the token cache under {cache_dir}: {e} "
            "(set data.cache_dir or $REATT_CACHE_DIR to a writable directory)"
        ) from e
    if cache is None:  # pragma: no cover - only if the filesystem loses a file under us
        raise DataError(f"the token cache {final} could not be read back after building it")
    _OPEN_CACHES[final] = cache
    return cache


def clear_unfinished(final: Path) -> None:
    """Under the lock: remove an unusable ``final`` dir and dead builders' temp dirs."""
    _remove_if_unusable(final)
    # a live builder would hold the lock, so these belong to dead ones
    for tmp in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_if_unusable(final: Path) -> None:
    """Move ``final`` aside and delete it, unless it is a finished cache.

    Checked right before the move; and should a finished cache have been renamed into place
    in between (only possible without working locks), the move is undone.
    """
    if not final.exists() or TokenCache.try_open(final) is not None:
        return
    aside = final.with_name(f"{final.name}.bad-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(final, aside)  # atomic: only one process moves it
    except OSError:
        return  # gone meanwhile
    if TokenCache.try_open(aside) is not None:
        with contextlib.suppress(OSError):
            os.rename(aside, final)  # put it back; fails only if another finished one is there
            return
    shutil.rmtree(aside, ignore_errors=True)


def _build(
    path: Path, display: str, tokenizer: Any, final: Path, skip_bad_lines: bool, file_hash: str
) -> None:
    """Tokenize ``path`` into a temp dir next to ``final``, then rename it into place."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        log.info("tokenizing %s (%.1f MB) into the cache %s", display, path.stat().st_size / 1e6, final)
        meta = tokenize_into(path, display, tokenizer, tmp, skip_bad_lines)
        meta["content_sha256"] = file_hash
        write_atomic(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")  # last: marks it finished
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if TokenCache.try_open(final) is not None:
                shutil.rmtree(tmp, ignore_errors=True)  # another process won the race: use theirs
                return
            # an unusable leftover is in the way (only without the lock: with it, it was cleared)
            _remove_if_unusable(final)
            try:
                os.rename(tmp, final)
            except OSError:
                if TokenCache.try_open(final) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenize_into(
    path: Path, display: str, tokenizer: Any, out: Path, skip_bad_lines: bool
) -> dict[str, Any]:
    """Write tokens.bin and offsets.npy into ``out``; return the meta.json contents."""
    vocab_size = len(tokenizer)
    dtype = np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")
    size = path.stat().st_size
    start = time.perf_counter()
    lines = LineLog()
    offsets = array.array("q", [0])
    n_tokens = 0
    with open(out / "tokens.bin", "wb") as f:
        for batch in _batches(iter_texts(path, display, skip_bad_lines, lines)):
            ids = encode_batch(tokenizer, batch)
            for doc in ids:
                n_tokens += len(doc)
                offsets.append(n_tokens)
            flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int64, count=sum(map(len, ids)))
            if flat.size and int(flat.max()) > np.iinfo(dtype).max:
                raise DataError(f"token id {int(flat.max())} does not fit the cache's {dtype.name}")
            f.write(flat.astype(dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    n_docs = len(offsets) - 1
    if n_docs == 0:
        raise DataError(no_documents_message(display, lines))
    with atomic_writer(out / "offsets.npy") as f:  # fsynced, like tokens.bin
        np.save(f, np.frombuffer(offsets, dtype=np.int64))
    seconds = time.perf_counter() - start
    log.info("tokenized %s: %d documents, %d tokens in %.1f s", display, n_docs, n_tokens, seconds)
    return {
        "format": CACHE_FORMAT,
        "source_path": str(path.resolve()),
        "file_size": size,
        "content_sha256": None,  # set by _build
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer_source": tokenizer_source(tokenizer),
        "vocab_size": vocab_size,
        "dtype": dtype.str,
        "n_docs": n_docs,
        "n_tokens": n_tokens,
        "skip_bad_lines": skip_bad_lines,
        "skipped_lines": lines.skipped,
        "skipped_examples": [[n, reason] for n, reason in lines.examples],
        "blank_lines": lines.blank,
        "build_seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds) if seconds > 0 else None,
        "file_mb_per_s": round(size / 1e6 / seconds, 3) if seconds > 0 else None,
    }


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: no special tokens added, no end-of-text appended."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]
