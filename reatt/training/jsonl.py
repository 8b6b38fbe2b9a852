"""Reading a JSONL file of documents: one JSON object per line with a string ``"text"`` field.

Other fields are ignored. Blank lines are not documents and are skipped silently (counted as
``blank_lines`` in the token cache's meta.json). Any other line that is not such an object is
an error naming the file and line, or, with ``data.skip_bad_lines=True``, skipped and counted
(``skipped_lines``). Documents are numbered in file order, counting only the lines that are
documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reatt.errors import DataError
from reatt.states import one_line

# meta.json keeps the first few skipped lines (line number and reason) as examples.
MAX_SKIPPED_EXAMPLES = 10


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


def iter_chunk_texts(
    chunk: bytes, first_lineno: int, display: str, skip_bad_lines: bool, lines: LineLog
) -> Iterator[tuple[int, str]]:
    """(line number, ``text``) of each document line among whole lines of a JSONL file held in
    memory, the first being line ``first_lineno``. A bad line raises
    ``DataError("<display>:<line>: <reason>")``, or with ``skip_bad_lines`` is recorded in
    ``lines`` and skipped."""
    parts = chunk.split(b"\n")
    if parts[-1] == b"":  # the newline ending the last line begins no line
        parts.pop()
    for lineno, raw in enumerate(parts, start=first_lineno):
        yield from _document(raw, lineno, display, skip_bad_lines, lines)


def _document(
    raw: bytes, lineno: int, display: str, skip_bad_lines: bool, lines: LineLog
) -> Iterator[tuple[int, str]]:
    """(lineno, text) if the line is a document; nothing for a blank or skipped line."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    if not raw.strip():
        lines.blank += 1
        return
    text, reason = _parse_line(raw)
    if reason is None:
        yield lineno, text
    else:
        bad_line(display, lineno, reason, skip_bad_lines, lines)


def bad_line(display: str, lineno: int, reason: str, skip_bad_lines: bool, lines: LineLog) -> None:
    """A line that is no usable document: recorded and skipped with ``skip_bad_lines``, else
    ``DataError("<display>:<line>: <reason>")``."""
    if skip_bad_lines:
        lines.skip(lineno, reason)
        return
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
    except RecursionError:
        return "", "not usable JSON (nested too deeply)"
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        return "", f"not usable JSON ({one_line(e, 120)})"
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


def no_documents_message(display: str, lines: LineLog) -> str:
    if lines.skipped:
        return (
            f"data file {display} has no usable documents: "
            f"all {lines.skipped} non-blank lines were skipped as bad"
        )
    if lines.blank:
        return f"data file {display} has no documents: it holds only blank lines"
    return f'data file {display} is empty: expected one JSON object with a "text" field per line'
