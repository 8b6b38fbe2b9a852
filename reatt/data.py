"""Training data: a JSONL file of documents, tokenized once into an on-disk cache, served as
random ``(x, y)`` windows.

The pieces, in the order a run meets them:

- ``resolve_cache_dir``: where caches live (``data.cache_dir``, else ``$REATT_CACHE_DIR``,
  else ``$XDG_CACHE_HOME/reatt`` or ``~/.cache/reatt``).
- ``open_token_cache``: the file's token ids, built once by streaming the file through the fast
  tokenizer in batches, then memory-mapped. The cache is keyed by the file's content (not its
  name) and the tokenizer, built under a lock into a temporary directory and renamed into place,
  so concurrent jobs on one file build it once and never read a half-written cache. A finished
  cache is never moved or removed, with or without working locks.
- ``split_documents``: the train/test split, by document, from ``data.split_seed`` only, so
  every variant and every seed of a study is evaluated on the same held-out text.
- ``JSONLDataset``: item ``k`` is the k-th sample of an endless deterministic stream of windows
  drawn from one split.

Input format: one JSON object per line with a string ``"text"`` field (other fields are
ignored). Blank lines are not documents and are skipped silently (counted as ``blank_lines``
in the cache's meta.json). Any other line that is not such an object is an error naming the
file and line, or, with ``data.skip_bad_lines=True``, skipped and counted (``skipped_lines``).
Documents are numbered in file order, counting only the lines that are documents.
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
import torch
from torch.utils.data import Dataset

from reatt.atomic import atomic_writer, fsync_dir, write_atomic
from reatt.corpus import embedded_corpus_path
from reatt.errors import ConfigError, DataError
from reatt.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_source

log = logging.getLogger(__name__)

# Bump when the files of a token cache change meaning, so old caches are not reused.
CACHE_FORMAT = 1
# A tokenizer batch ends after this many documents or this much text, whichever comes first:
# big enough for the batch encoder to be efficient, small enough that memory stays bounded.
BATCH_DOCS = 1000
BATCH_CHARS = 1 << 20
# meta.json keeps the first few skipped lines (line number and reason) as examples.
MAX_SKIPPED_EXAMPLES = 10
# The held-out eval windows draw from the stream (data.split_seed, EVAL_STREAM).
EVAL_STREAM = 1


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
        _write_atomic(entry, json.dumps({"path": str(path), "stat": stat_key, "sha256": sha}))
    return sha


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


# --------------------------------------------------------------------------- reading JSONL


class LineLog:
    """What the reader skipped: bad lines (count and first examples) and blank lines."""

    def __init__(self) -> None:
        self.skipped = 0
        self.examples: list[tuple[int, str]] = []
        self.blank = 0

    def skip(self, lineno: int, reason: str) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append((lineno, reason))


def iter_texts(path: Path, display: str, skip_bad_lines: bool, lines: LineLog) -> Iterator[str]:
    """The ``text`` of each document line of a JSONL file, streamed.

    A bad line raises ``DataError("<display>:<line>: <reason>")``, or with ``skip_bad_lines``
    is recorded in ``lines`` and skipped.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read data file {display}: {e.strerror or e}") from e
    with f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            if not raw.strip():
                lines.blank += 1
                continue
            text, reason = _parse_line(raw)
            if reason is None:
                yield text
            elif skip_bad_lines:
                lines.skip(lineno, reason)
            else:
                raise DataError(
                    f"{display}:{lineno}: {reason} "
                    '(each line must be a JSON object with a string "text" field; '
                    "set data.skip_bad_lines=True to skip such lines)"
                )


def _parse_line(raw: bytes) -> tuple[str, str | None]:
    """(text, None) for a good line, ("", reason) for a bad one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return "", f"not valid UTF-8 (byte {e.start})"
    except json.JSONDecodeError as e:
        return "", f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
    if not isinstance(obj, dict):
        return "", f"not a JSON object (a JSON {_json_type(obj)})"
    if "text" not in obj:
        return "", 'no "text" field'
    text = obj["text"]
    if not isinstance(text, str):
        return "", f'"text" is a JSON {_json_type(text)}, not a string'
    if not text.isascii():  # isascii is O(1); lone surrogates ("\ud800") cannot be tokenized
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "", '"text" holds an unpaired surrogate escape (not valid Unicode)'
    return text, None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


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


def cache_key(file_hash: str, tok_fingerprint: str, skip_bad_lines: bool) -> str:
    blob = f"reatt-tokens|format={CACHE_FORMAT}|file={file_hash}|tok={tok_fingerprint}|skip={skip_bad_lines}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def open_token_cache(
    path: Path, tokenizer: Any, cache_dir: Path, skip_bad_lines: bool = False, display: str = ""
) -> TokenCache:
    """The token cache of the JSONL file ``path``, built if no finished one exists.

    Safe when several processes call it at once on the same file: the builder holds an
    exclusive ``flock`` on ``<key>.lock`` (if the filesystem refuses locks, each builds its own
    copy and the first rename wins: nothing is cleared up front, and a finished cache is never
    moved aside). Raises DataError for a missing/unreadable/unusable file.
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
            with _exclusive_lock(final.parent / f"{key}.lock") as locked:
                cache = TokenCache.try_open(final)  # another process may have finished it
                if cache is None:
                    if locked:  # without the lock, a rename into place may be under way
                        _clear_unfinished(final)
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


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path``; yields False if locking is unsupported."""
    with open(lock_path, "a") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # blocks while another process builds
        except (ImportError, OSError):  # no fcntl (Windows), or e.g. an NFS mount without locks
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clear_unfinished(final: Path) -> None:
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
        meta = _tokenize_into(path, display, tokenizer, tmp, skip_bad_lines)
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


def _tokenize_into(
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
            ids = _encode_batch(tokenizer, batch)
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
        raise DataError(_no_documents_message(display, lines))
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


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: no special tokens added, no end-of-text appended."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _no_documents_message(display: str, lines: LineLog) -> str:
    if lines.skipped:
        return (
            f"data file {display} has no usable documents: "
            f"all {lines.skipped} non-blank lines were skipped as bad"
        )
    if lines.blank:
        return f"data file {display} has no documents: it holds only blank lines"
    return f'data file {display} is empty: expected one JSON object with a "text" field per line'


# --------------------------------------------------------------------------- split


def split_documents(n_docs: int, test_size: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) document indices, each sorted; disjoint and together all documents.

    A permutation from ``default_rng(split_seed)``; its first ``max(1, round(test_size *
    n_docs))`` documents (at most n_docs - 1) are the test split. Depends only on these three
    arguments, so every variant and seed of a study holds out the same documents.
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"data.test_size={test_size!r} must be between 0 and 1 (a fraction of documents)")
    if n_docs < 2:
        raise DataError(f"a train/test split needs at least 2 documents; the data file has {n_docs}")
    n_test = min(n_docs - 1, max(1, round(test_size * n_docs)))
    perm = np.random.default_rng(_seed(split_seed)).permutation(n_docs)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _seed(seed: int) -> int:
    """numpy's SeedSequence takes non-negative ints only: fold a negative seed into that range."""
    return int(seed) % (1 << 64)


# --------------------------------------------------------------------------- dataset


class JSONLDataset(Dataset):
    """Random ``(x, y)`` windows of ``block_size`` tokens from one split of a JSONL file.

    ``ds[k]`` (any int k >= 0) is the k-th sample of an endless stream that depends only on
    ``(seed, k)`` and the data: a document drawn uniformly among the split's documents of at
    least ``block_size + 1`` tokens (the same distribution as drawing among all documents and
    redrawing short ones), then a uniform window of ``block_size + 1`` tokens in it; ``x`` is
    its first ``block_size`` tokens and ``y`` its last, so ``y`` is ``x`` shifted by one.
    Drawing costs no tokenization: the tokens come from a memory-mapped cache.

    ``len(ds)`` is the number of distinct windows (the sum over eligible documents of
    ``length - block_size``); indices at or beyond it are still valid samples of the stream.
    Resuming at step s means continuing at sample ``s * batch_size``; DataLoader workers give
    the same samples as the main process.

    ``data_cfg`` is the ``data`` node of ``reatt.config.get_default_config()``; an empty
    ``data.file_path`` means the embedded corpus of Python's documentation.
    """

    def __init__(self, data_cfg: Any, seed: int, tokenizer: Any = None) -> None:
        if data_cfg.split not in ("train", "test"):
            raise ConfigError(f"data.split={data_cfg.split!r}: expected 'train' or 'test'")
        if data_cfg.block_size <= 0:
            raise ConfigError(f"data.block_size={data_cfg.block_size!r} must be > 0")
        self.split: str = data_cfg.split
        self.block_size: int = int(data_cfg.block_size)
        self.test_size: float = float(data_cfg.test_size)
        self.split_seed: int = int(data_cfg.split_seed)
        self.seed: int = _seed(seed)
        self.cache_dir = resolve_cache_dir(data_cfg.cache_dir)
        self.embedded = not data_cfg.file_path
        if self.embedded:
            path = embedded_corpus_path(self.cache_dir)
            display = f"{path} (the embedded corpus)"
        else:
            path = Path(data_cfg.file_path).expanduser()
            display = data_cfg.file_path
        self.source_path = path.resolve()
        self.tokenizer_name: str = data_cfg.tokenizer
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg.tokenizer)
        self.cache = open_token_cache(path, self.tokenizer, self.cache_dir, data_cfg.skip_bad_lines, display)

        train_idx, test_idx = split_documents(self.cache.n_docs, self.test_size, self.split_seed)
        self.split_docs = {"train": train_idx, "test": test_idx}
        lengths = self.cache.doc_lengths
        self.doc_ids = self.split_docs[self.split]
        eligible = self.doc_ids[lengths[self.doc_ids] >= self.block_size + 1]
        if eligible.size == 0:
            longest = int(lengths[self.doc_ids].max())
            raise DataError(
                f"no document of the {self.split} split of {display} is long enough for one window: "
                f"the longest has {longest} tokens, data.block_size={self.block_size} needs "
                f"{self.block_size + 1}; lower data.block_size or use longer documents"
            )
        self.eligible_docs = eligible
        self._starts = self.cache.offsets[eligible]  # first token of each eligible document
        self._n_windows = lengths[eligible] - self.block_size  # window start positions in each

    # --- facts

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def n_docs(self) -> int:
        """Documents in this split."""
        return int(self.doc_ids.size)

    @property
    def n_tokens(self) -> int:
        """Tokens in this split's documents."""
        return int(self.cache.doc_lengths[self.doc_ids].sum())

    @property
    def n_eligible_docs(self) -> int:
        """Documents of this split with at least block_size + 1 tokens (the ones drawn from)."""
        return int(self.eligible_docs.size)

    @property
    def skipped_lines(self) -> int:
        return int(self.cache.meta["skipped_lines"])

    @property
    def cache_key(self) -> str:
        return self.cache.key

    def describe(self) -> dict[str, Any]:
        """The data facts recorded in a run's config.json ``meta``."""
        lengths = self.cache.doc_lengths
        meta = self.cache.meta
        return {
            "file": str(self.source_path),
            "embedded_corpus": self.embedded,
            "content_sha256": meta["content_sha256"],
            "cache_key": self.cache_key,
            "cache_dir": str(self.cache.directory),
            "tokenizer": self.tokenizer_name,
            "tokenizer_source": tokenizer_source(self.tokenizer),
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
            "vocab_size": self.vocab_size,
            "eos_token_id": self.eos_token_id,
            "split": self.split,
            "test_size": self.test_size,
            "split_seed": self.split_seed,
            "block_size": self.block_size,
            "docs": {name: int(idx.size) for name, idx in self.split_docs.items()},
            "tokens": {name: int(lengths[idx].sum()) for name, idx in self.split_docs.items()},
            "eligible_docs": self.n_eligible_docs,
            "total_docs": self.cache.n_docs,
            "total_tokens": self.cache.n_tokens,
            "skipped_lines": self.skipped_lines,
            "skipped_examples": meta["skipped_examples"],
            "blank_lines": meta["blank_lines"],
        }

    # --- samples

    def __len__(self) -> int:
        return int(self._n_windows.sum())

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(k)
        if k < 0:
            raise IndexError(f"sample index must be >= 0, got {k}")
        return self._window(np.random.default_rng((self.seed, k)))

    def eval_windows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed set of ``n`` windows of this split, as (x, y) of shape (n, block_size).

        Drawn from a generator seeded by ``data.split_seed`` alone, so every variant and seed of
        a study is evaluated on the same windows; the first n of a larger set are the same.
        """
        rng = np.random.default_rng((_seed(self.split_seed), EVAL_STREAM))
        pairs = [self._window(rng) for _ in range(n)]
        if not pairs:
            empty = torch.empty((0, self.block_size), dtype=torch.long)
            return empty, empty.clone()
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    def _window(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(rng.integers(self._starts.size))  # an eligible document
        start = int(self._starts[j]) + int(rng.integers(int(self._n_windows[j])))  # a window in it
        window = self.cache.tokens[start : start + self.block_size + 1]
        chunk = torch.from_numpy(window.astype(np.int64))
        return chunk[:-1], chunk[1:]
