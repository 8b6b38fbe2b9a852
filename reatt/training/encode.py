"""Streaming a JSONL file through the tokenizer into a token cache's files, in bounded memory.

- Documents are encoded in batches of at most ``BATCH_DOCS`` documents or ``BATCH_CHARS``
  characters. A longer document is cut into pieces of at most ``BATCH_CHARS`` characters at
  places where GPT-2's pre-tokenizer splits the text anyway (``split_text``), so that the ids of
  its pieces, joined, are exactly the ids of the whole; memory is bounded by the batch, whatever
  the documents' sizes.
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
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reatt.errors import DataError
from reatt.files import atomic_writer
from reatt.training.jsonl import LineLog, bad_line, iter_texts, no_documents_message
from reatt.training.tokenizer import tokenizer_fingerprint, tokenizer_source

# A tokenizer batch ends after this many documents or this much text, whichever comes first:
# big enough for the batch encoder to be efficient, small enough that memory stays bounded.
BATCH_DOCS = 1000
BATCH_CHARS = 1 << 20
# A "word" (a run the pre-tokenizer never splits: letters only, say) longer than this cannot
# be tokenized in bounded memory: its line is bad.
MAX_WORD_CHARS = 16 * BATCH_CHARS


def _kind(ch: str) -> str:
    """The class of a character for GPT-2's pre-tokenizer: letter, number, space, or other."""
    cat = unicodedata.category(ch)
    if ch.isspace() or cat[0] in "ZC":
        return "space"  # whitespace, and controls (which \\s and str.isspace disagree on)
    return {"L": "letter", "N": "number"}.get(cat[0], "other")


def _splits_at(text: str, i: int) -> bool:
    """Whether the text may be cut before index ``i`` so that the pre-tokenizer splits there in
    the whole text too: before a single space between two non-spaces (the space begins the next
    word), or between two non-spaces of different classes (letter, number, other), except after
    an apostrophe (which may begin a contraction: "'s", "'ll")."""
    before, here = _kind(text[i - 1]), _kind(text[i])
    if before == "space" or text[i - 1] == "'":
        return False
    if here == "space":
        return text[i] == " " and i + 1 < len(text) and _kind(text[i + 1]) != "space"
    return here != before


def split_text(text: str, limit: int = BATCH_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters whose ids, joined, are the ids of the
    whole. A "word" longer than ``limit`` stays whole (ValueError past MAX_WORD_CHARS)."""
    start = 0
    while len(text) - start > limit:
        # the last place within the limit where the text may be cut; else the end of the word
        cut = next((i for i in range(start + limit, start, -1) if _splits_at(text, i)), None)
        if cut is None:
            end = min(len(text), start + MAX_WORD_CHARS + 1)
            cut = next((i for i in range(start + limit + 1, end) if _splits_at(text, i)), None)
            if cut is None:
                if len(text) - start > MAX_WORD_CHARS:
                    raise ValueError(f"a word of more than {MAX_WORD_CHARS:,} characters")
                break
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: no special tokens added, no end-of-text appended."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _pieces(
    texts: Iterator[tuple[int, str]], display: str, skip_bad_lines: bool, lines: LineLog
) -> Iterator[tuple[int, str]]:
    """(document number, piece) of each document, in order; every document has a piece."""
    doc = 0
    for lineno, text in texts:
        try:
            pieces = list(split_text(text)) if len(text) > BATCH_CHARS else [text]
        except ValueError as e:
            bad_line(display, lineno, f"cannot be tokenized in bounded memory ({e})", skip_bad_lines, lines)
            continue
        for piece in pieces:
            yield doc, piece
        doc += 1


def _batches(pieces: Iterator[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    chars = 0
    for item in pieces:
        batch.append(item)
        chars += len(item[1])
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


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
    start = time.perf_counter()
    lines = LineLog()
    read, written = hashlib.sha256(), hashlib.sha256()
    offsets = array.array("q", [0])
    n_tokens, max_id, current, seen = 0, -1, 0, False
    with open(out / "tokens.bin", "wb") as f:
        texts = iter_texts(path, display, skip_bad_lines, lines, digest=read)
        for batch in _batches(_pieces(texts, display, skip_bad_lines, lines)):
            ids = encode_batch(tokenizer, [piece for _, piece in batch])
            for (doc, _), piece_ids in zip(batch, ids, strict=True):
                if doc != current:  # the pieces of a document come one after another
                    offsets.append(n_tokens)
                    current = doc
                n_tokens += len(piece_ids)
                seen = True
            flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int64, count=sum(map(len, ids)))
            if flat.size:
                max_id = max(max_id, int(flat.max()))
                if max_id > np.iinfo(dtype).max:
                    raise DataError(f"token id {max_id} does not fit the cache's {dtype.name}")
            raw = flat.astype(dtype).tobytes()
            written.update(raw)
            f.write(raw)
        if seen:  # the end of the last document
            offsets.append(n_tokens)
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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
