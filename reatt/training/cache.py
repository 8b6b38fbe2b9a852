"""The token cache: a JSONL file tokenized once, on disk, shared by every run that reads it.

- ``resolve_cache_dir``: where caches live (``data.cache_dir``, else ``$REATT_CACHE_DIR``,
  else ``$XDG_CACHE_HOME/reatt`` or ``~/.cache/reatt``).
- ``open_token_cache``: the file's token ids, built once (``reatt.training.tokenize_file``:
  streamed through the encoder in bounded memory), then memory-mapped. The cache is keyed by the
  bytes that were tokenized (not the file's name) and the tokenizer, built under a lock into a
  temporary directory and renamed into place, so concurrent jobs on one file build it once and
  never read a half-written cache. Each open checks it (sizes, offsets, every id below the
  vocabulary, the checksums recorded at build); a damaged cache is built again. A finished,
  intact cache is never moved or removed, with or without working locks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from reatt.errors import DataError
from reatt.files import exclusive_lock, fsync_dir, write_atomic
from reatt.training.encode import file_sha256
from reatt.training.tokenize_file import tokenize_into
from reatt.training.tokenizer import tokenizer_fingerprint

log = logging.getLogger(__name__)

# Bump when the files of a token cache change meaning, so old caches are not reused.
CACHE_FORMAT = 2  # 2: checksums and the largest id in meta.json, checked at each open


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
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
        saved = json.loads(entry.read_text(encoding="utf-8"))
        if saved["path"] == str(path) and saved["stat"] == stat_key:
            return str(saved["sha256"])
    try:
        sha = file_sha256(path)
    except OSError as e:
        raise DataError(f"cannot read data file {display or path}: {e.strerror or e}") from e
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
        """The finished, intact cache in ``directory``, or None (see ``open``)."""
        return cls.open(directory)[0]

    @classmethod
    def open(cls, directory: Path) -> tuple[TokenCache | None, str | None]:
        """The finished cache in ``directory``, checked; else None, with why it is damaged
        (None when it is merely absent, half-written or of an older format).

        Checked each time: the files' sizes and offsets against meta.json, every id below the
        vocabulary size, and the SHA-256 of tokens.bin and offsets.npy recorded when it was
        built (about 1 GB/s; once per process and state of the files)."""
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT:
                return None, None
            n_docs, n_tokens = int(meta["n_docs"]), int(meta["n_tokens"])
            itemsize = np.dtype(meta["dtype"]).itemsize
            tokens = (directory / "tokens.bin").stat()
            offsets = np.load(directory / "offsets.npy", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None, None
        if tokens.st_size != n_tokens * itemsize:
            return None, f"tokens.bin holds {tokens.st_size} bytes, meta.json says {n_tokens * itemsize}"
        ok = (
            offsets.dtype == np.int64
            and offsets.shape == (n_docs + 1,)
            and offsets[0] == 0
            and offsets[-1] == n_tokens
            and bool(np.all(np.diff(offsets) >= 0))
        )
        if not ok:
            return None, "offsets.npy does not match meta.json"
        state = _files_state(directory, meta, tokens)
        if state not in _CHECKED:  # once per process and state of the files
            _CHECKED[state] = _damage(directory, meta)
        problem = _CHECKED[state]
        return (None, problem) if problem is not None else (cls(directory, meta, offsets), None)


def _damage(directory: Path, meta: dict[str, Any]) -> str | None:
    """What is wrong with a cache's contents, or None: its ids and its recorded checksums.
    tokens.bin is read once, for both its largest id and its SHA-256."""
    missing = [k for k in _CHECKED_KEYS if meta.get(k) is None]
    if missing:
        return f"meta.json lacks {', '.join(missing)}: nothing to check its contents against"
    try:
        dtype = np.dtype(meta["dtype"])
        digest, largest = hashlib.sha256(), -1
        with open(directory / "tokens.bin", "rb") as f:
            while chunk := f.read(dtype.itemsize << 19):  # 1 MiB for uint16: whole ids
                digest.update(chunk)
                largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
        if largest >= int(meta["vocab_size"]) or largest != int(meta["max_id"]):
            return (
                f"tokens.bin holds id {largest}; the vocabulary has {meta['vocab_size']} ids "
                f"and the largest built was {meta['max_id']}"
            )
        if digest.hexdigest() != meta["tokens_sha256"]:
            return "tokens.bin does not have the SHA-256 recorded when the cache was built"
        if file_sha256(directory / "offsets.npy") != meta["offsets_sha256"]:
            return "offsets.npy does not have the SHA-256 recorded when the cache was built"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"cannot be checked ({e})"
    return None


_CHECKED_KEYS = ("max_id", "tokens_sha256", "offsets_sha256", "vocab_size")


def _files_state(directory: Path, meta: dict[str, Any], tokens: os.stat_result) -> tuple[object, ...]:
    """What a check of a cache holds for: its files as they are (inode, size, mtime of tokens.bin,
    whose ``tokens`` stat is given; mtime of offsets.npy) and what meta.json records to check
    them against."""
    offsets_mtime = (directory / "offsets.npy").stat().st_mtime_ns
    recorded = tuple(str(meta.get(k)) for k in _CHECKED_KEYS)
    return (tokens.st_ino, tokens.st_size, tokens.st_mtime_ns, offsets_mtime, *recorded)


# Caches checked by this process, by _files_state: what is wrong with them (None: nothing).
_CHECKED: dict[tuple[object, ...], str | None] = {}


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
        cache, damage = TokenCache.open(final)
        if damage is not None:
            log.warning("the token cache %s is damaged (%s): building it again", final, damage)
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
        meta = {
            "format": CACHE_FORMAT,
            **tokenize_into(path, display, tokenizer, tmp, skip_bad_lines, file_hash),
        }
        log.info("tokenized %s: %d documents, %d tokens", display, meta["n_docs"], meta["n_tokens"])
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
        # checked as it was written: not hashed again on open
        _CHECKED[_files_state(final, meta, (final / "tokens.bin").stat())] = None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
