"""The training and held-out samples: the document split, and ``JSONLDataset``.

- ``split_documents``: the train/test split, by document, from ``data.split_seed`` only, so
  every variant and every seed of a study is evaluated on the same held-out text.
- ``JSONLDataset``: item ``k`` is the k-th sample of an endless deterministic stream of windows
  drawn from one split, read from the file's token cache (``reatt.training.cache``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from reatt.errors import ConfigError, DataError
from reatt.training.cache import open_token_cache, resolve_cache_dir
from reatt.training.corpus import embedded_corpus_path
from reatt.training.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_source

# The held-out eval windows draw from the stream (data.split_seed, EVAL_STREAM).
EVAL_STREAM = 1


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
        order = {"order": self.order_fingerprint()} if self.split == "train" else {}
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
            **order,
        }

    def order_fingerprint(self, n: int = 64) -> str:
        """The first 16 hex of sha256 over the token ids (x, then y) of samples 0..n-1: they
        depend only on system.seed and the data, so every variant of a seed shows the same
        value and another seed another one; recorded so that a pair by seed can be checked."""
        h = hashlib.sha256()
        for k in range(n):
            for ids in self[k]:
                h.update(ids.numpy().astype("<i8").tobytes())
        return h.hexdigest()[:16]

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
