#!/usr/bin/env python3
"""Token cache build speed: the tokenizer's batch encoder vs tiktoken vs tiktoken in a pool.
(Named so as not to shadow the standard library's ``tokenize`` when run as a script.)

    python bench/tokenize_speed.py                      # ~15 MB of /usr/share/doc text, 5 rounds
    python bench/tokenize_speed.py --corpus data.jsonl --workers 1,2,4,8 --rounds 3
    python bench/tokenize_speed.py --quick              # 2 MB, 1 round: a smoke test, not a measurement

The corpus is real English nobody here wrote: the plain-text documentation of the packages
installed on this machine (READMEs, NEWS, changelogs, copyright files, .txt/.md/.rst pages under
/usr/share/doc, gzipped or not), one document per file, duplicates dropped, in sorted order, up to
``--mb`` MB; or any JSONL file given with ``--corpus`` (e.g. scripts/corpus/debian_docs.py's).
Without enough of either it falls back to the embedded corpus (Python's docs) repeated to size,
and says so: repeated text is not new text.

Each round builds the whole token cache (read, hash, parse, encode, write, fsync) from scratch
with every method in turn, interleaved, and reports the median MB/s (of the JSONL file) and
tokens/s over the rounds; the "encode only" rows time the encoders alone on the parsed texts.
The ``ids`` column compares each build's tokens.sha256 with the batch encoder's. The table is
Markdown, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOC_NAMES = ("README", "NEWS", "copyright", "changelog", "changelog.Debian", "CHANGES", "HISTORY", "FAQ")
DOC_SUFFIXES = (".txt", ".md", ".rst")


def doc_texts(limit_bytes: int) -> tuple[list[str], int]:
    """Texts of /usr/share/doc's plain-text files (see the module's docstring), and their files."""
    texts, seen, total, files = [], set(), 0, 0
    root = Path("/usr/share/doc")
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        name = path.name.removesuffix(".gz")
        if path.is_symlink() or not path.is_file():
            continue
        if not (name.endswith(DOC_SUFFIXES) or name.split(".")[0] in DOC_NAMES or name in DOC_NAMES):
            continue
        try:
            raw = gzip.open(path).read() if path.name.endswith(".gz") else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        digest = hashlib.sha256(raw).digest()
        if "\x00" in text or digest in seen or not text.strip():
            continue
        seen.add(digest)
        texts.append(text)
        total += len(raw)
        files += 1
        if total >= limit_bytes:
            break
    return texts, files


def make_corpus(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """The JSONL file to tokenize, and a line saying what it is."""
    if args.corpus:
        path = Path(args.corpus)
        return path, f"{path} ({path.stat().st_size / 1e6:.1f} MB), given"
    limit = int(args.mb * 1e6)
    texts, files = doc_texts(limit)
    what = f"/usr/share/doc plain text, {files} files: real English not written here"
    if sum(map(len, texts)) < min(limit, 1e6):
        from reatt.training.corpus import iter_documents

        base = [doc["text"] for doc in iter_documents()]
        texts = []
        while sum(map(len, texts)) < limit:
            texts += base
        what = "the embedded corpus (Python's docs) REPEATED to size: not new text, a weak stand-in"
    path = out / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return path, f"{what}; {path.stat().st_size / 1e6:.1f} MB, {len(texts)} documents, sha256 {digest}"


def build_once(path: Path, tok: object, method: str, workers: int) -> tuple[float, int, str]:
    """(seconds, tokens, tokens_sha256) of one fresh cache build."""
    from reatt.training import cache as C
    from reatt.training import encode as E
    from reatt.training import tokenize_file as TF

    real_fast = E.fast_encoding
    E.fast_encoding = (lambda tok: None) if method == "hf" else real_fast  # type: ignore[assignment]
    TF.POOL_MIN_BYTES = 0 if workers > 1 else 1 << 62
    os.environ[TF.WORKERS_ENV] = str(workers)
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            C.forget_open_caches()
            t0 = time.perf_counter()
            cache = C.open_token_cache(path, tok, Path(cache_dir))
            seconds = time.perf_counter() - t0
            assert cache.meta["encode_workers"] == workers
            return seconds, cache.n_tokens, cache.meta["tokens_sha256"]
    finally:
        E.fast_encoding = real_fast


def encode_only(path: Path, tok: object, method: str) -> tuple[float, int]:
    from reatt.training.encode import DocEncoder

    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    encoder = DocEncoder.for_tokenizer(tok)
    if method == "hf":
        encoder.fast = None
    t0 = time.perf_counter()
    n = sum(map(len, encoder.encode(texts)))
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a JSONL file to tokenize instead of /usr/share/doc's text")
    ap.add_argument("--mb", type=float, default=15.0, help="size of the /usr/share/doc corpus")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="pool sizes for tiktoken, comma-separated")
    ap.add_argument("--quick", action="store_true", help="2 MB, 1 round: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.rounds = 2.0, 1
    from reatt.training.gpt2_fast import fast_encoding
    from reatt.training.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    fast_encoding(tok)  # built once per process (about 0.4 s): not part of any build's time
    pools = [int(w) for w in args.workers.split(",")]
    methods = [("cache build, tokenizers batch (HF)", "hf", 1)]
    methods += [(f"cache build, tiktoken{' + pool' if w > 1 else ''}", "tiktoken", w) for w in pools]
    with tempfile.TemporaryDirectory() as tmp:
        path, what = make_corpus(args, Path(tmp))
        mb = path.stat().st_size / 1e6
        cores = len(os.sched_getaffinity(0))
        print(f"# corpus: {what}")
        print(f"# {cores} cores in this process's affinity, {os.cpu_count()} CPUs, median of {args.rounds}")
        print()
        print("| method | workers | MB/s | tokens/s | seconds | ids |")
        print("|---|---|---|---|---|---|")
        times: dict[int, list[float]] = {k: [] for k in range(len(methods))}
        tokens, shas = {}, {}
        for _ in range(args.rounds):  # interleaved: the machine's drift hits every method alike
            for k, (_, method, workers) in enumerate(methods):
                seconds, tokens[k], shas[k] = build_once(path, tok, method, workers)
                times[k].append(seconds)
        for k, (label, _, workers) in enumerate(methods):
            s = statistics.median(times[k])
            same = "reference" if k == 0 else ("same" if shas[k] == shas[0] else "DIFFERENT")
            print(f"| {label} | {workers} | {mb / s:.2f} | {tokens[k] / s:,.0f} | {s:.2f} | {same} |")
        for label, method in (
            ("encode only, tokenizers batch (HF)", "hf"),
            ("encode only, tiktoken", "tiktoken"),
        ):
            runs = [encode_only(path, tok, method) for _ in range(args.rounds)]
            s = statistics.median(r[0] for r in runs)
            print(f"| {label} | 1 | {mb / s:.2f} | {runs[0][1] / s:,.0f} | {s:.2f} | |")


if __name__ == "__main__":
    main()
