"""The token ids of documents, in bounded memory: ``DocEncoder`` and ``encode_chunk``.

- A document longer than ``BATCH_CHARS`` characters is cut into pieces of at most that many at
  places where GPT-2's pre-tokenizer splits the text anyway (``split_text``), so that the ids of
  its pieces, joined, are exactly the ids of the whole; memory is bounded whatever the sizes.
- ``DocEncoder`` encodes with tiktoken when ``gpt2_fast.fast_encoding`` vouches for it (GPT-2
  loaded as 'gpt2'), else with the tokenizer's backend in batches of at most ``BATCH_DOCS``
  documents or ``BATCH_CHARS`` characters. Both give the tokenizer's ids: no special tokens
  added, no end-of-text appended, and special-token text inside a document ("<|endoftext|>")
  encoded as that token, as the tokenizer does. The few texts tiktoken cannot take (a
  whitespace run of ``WHITESPACE_RUN_LIMIT`` characters or more, or one it panics on) go to the
  backend, so the ids never depend on the encoder.
- ``encode_chunk`` turns whole lines of the JSONL file (``jsonl.iter_chunk_texts``: the same
  file:line errors and counted skips) into one chunk's ids and document lengths; it runs in
  this process or in a worker process (``reatt.training.tokenize_file``).
"""

from __future__ import annotations

import array
import hashlib
import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from reatt.training.gpt2_fast import LONG_WHITESPACE, WHITESPACE_RUN_LIMIT, fast_encoding
from reatt.training.jsonl import LineLog, bad_line, iter_chunk_texts

log = logging.getLogger(__name__)

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
    return _backend_ids(tokenizer.backend_tokenizer, texts)


def _backend_ids(backend: Any, texts: list[str]) -> list[list[int]]:
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


class DocEncoder:
    """Token ids of texts, the tokenizer's exactly: by tiktoken where it is vouched for, else by
    the tokenizer's backend. Picklable (for worker processes): the backend travels as its JSON
    and is rebuilt only where a text needs it."""

    def __init__(self, fast: Any, backend_json: str, batch_chars: int, batch_docs: int) -> None:
        self.fast = fast
        self.backend_json = backend_json
        self.batch_chars = batch_chars
        self.batch_docs = batch_docs
        self.specials: set[str] = set(fast.special_tokens_set) if fast is not None else set()
        self._backend: Any = None

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> DocEncoder:
        """The encoder of a tokenizer from ``load_tokenizer``, with today's batch limits."""
        encoder = cls(fast_encoding(tokenizer), "", BATCH_CHARS, BATCH_DOCS)
        encoder._backend = tokenizer.backend_tokenizer
        return encoder

    @property
    def name(self) -> str:
        """What encodes, for meta.json: 'tiktoken 0.14.0' or 'tokenizers 0.23.3'."""
        return (
            f"tiktoken {version('tiktoken')}"
            if self.fast is not None
            else f"tokenizers {version('tokenizers')}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not state["backend_json"] and state["_backend"] is not None:
            state["backend_json"] = state["_backend"].to_str()
        state["_backend"] = None
        return state

    def backend(self) -> Any:
        if self._backend is None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self.backend_json)
        return self._backend

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text."""
        if self.fast is None:
            return self._encode_backend(texts)
        return [self._encode_fast(text) for text in texts]

    def _encode_backend(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        start, chars = 0, 0
        for n, text in enumerate(texts):  # batches of at most batch_docs texts or batch_chars
            chars += len(text)
            if n + 1 - start >= self.batch_docs or chars >= self.batch_chars or n + 1 == len(texts):
                out.extend(_backend_ids(self.backend(), texts[start : n + 1]))
                start, chars = n + 1, 0
        return out

    def _encode_fast(self, text: str) -> list[int]:
        if len(text) >= WHITESPACE_RUN_LIMIT and LONG_WHITESPACE.search(text):
            return self._encode_backend([text])[0]  # tiktoken's regex would overflow its backtracking stack
        try:
            if any(s in text for s in self.specials):
                return self.fast.encode(text, allowed_special=self.specials, disallowed_special=())
            return self.fast.encode_ordinary(text)
        except BaseException as e:  # a Rust panic is a BaseException (pyo3's PanicException)
            if type(e).__name__ != "PanicException":
                raise
            log.warning(
                "tiktoken failed on a text of %s characters (%s): encoding it with the tokenizer",
                f"{len(text):,}",
                str(e)[:200],
            )
            return self._encode_backend([text])[0]


@dataclass
class ChunkIds:
    """What ``encode_chunk`` made of some lines: ids back to back, each document's length, and
    what the reader skipped."""

    tokens: bytes
    lengths: array.array
    max_id: int
    lines: LineLog = field(default_factory=LineLog)


def encode_chunk(
    encoder: DocEncoder, chunk: bytes, first_lineno: int, display: str, skip_bad_lines: bool, dtype: str
) -> ChunkIds:
    """The ids of the documents in ``chunk`` (whole lines of the JSONL file, the first being line
    ``first_lineno``), as ``dtype`` bytes. A bad line raises DataError naming it, or is counted
    with ``skip_bad_lines``; so is a document that cannot be cut into bounded pieces."""
    lines = LineLog()
    out = array.array("H" if np.dtype(dtype).itemsize == 2 else "I")
    lengths = array.array("q")  # each document's ids so far
    batch: list[str] = []
    owners: list[int] = []  # the document of each piece in the batch
    chars = 0

    def flush() -> None:
        # the batch's ids become compact at once: the Python lists never outgrow one batch
        for doc, piece_ids in zip(owners, encoder.encode(batch), strict=True):
            out.extend(piece_ids)  # OverflowError past the dtype: cannot happen below vocab_size
            lengths[doc] += len(piece_ids)
        batch.clear()
        owners.clear()

    for lineno, text in iter_chunk_texts(chunk, first_lineno, display, skip_bad_lines, lines):
        try:
            parts = list(split_text(text, encoder.batch_chars)) if len(text) > encoder.batch_chars else [text]
        except ValueError as e:
            bad_line(display, lineno, f"cannot be tokenized in bounded memory ({e})", skip_bad_lines, lines)
            continue
        lengths.append(0)
        for part in parts:
            batch.append(part)
            owners.append(len(lengths) - 1)
            chars += len(part)
            if len(batch) >= encoder.batch_docs or chars >= encoder.batch_chars:
                flush()
                chars = 0
    flush()
    if out.itemsize != np.dtype(dtype).itemsize:  # pragma: no cover - array's sizes are C's
        raise RuntimeError(f"array item size {out.itemsize} is not {dtype}'s")
    tokens = np.frombuffer(out, dtype=np.dtype(dtype).newbyteorder("="))
    max_id = int(tokens.max()) if tokens.size else -1
    return ChunkIds(tokens.astype(dtype, copy=False).tobytes(), lengths, max_id, lines)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
