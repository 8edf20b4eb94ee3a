"""Bundled dev corpora and the small byte-level BPE tokenizers the tests train on them."""

from __future__ import annotations

import json
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "data" / "dev"


def read_jsonl_zst(path: Path) -> list[dict]:
    with open(path, "rb") as handle:
        data = zstandard.ZstdDecompressor().stream_reader(handle).read()
    return [json.loads(line) for line in data.splitlines()]


def train_byte_level_bpe(path: Path, *, vocab_size: int, every: int = 1) -> Path:
    """A GPT-2-style byte-level BPE (full byte alphabet, `<|endoftext|>` special) trained
    with Hugging Face on every `every`-th document of the Rust books; saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [r["text"] for r in read_jsonl_zst(DEV / "rust-doc-books.jsonl.zst")][::every]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(path))
    return path
