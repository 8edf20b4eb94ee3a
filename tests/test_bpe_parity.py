"""Merges and vocabulary equal tokenizers' BpeTrainer, entry by entry, on real text.

The oracle is HF itself, configured the same way and fed the same sequences.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest_bpe import count, dev_docs, handbook_docs, hf_train, ours
from stages.bpe import BpeConfig, BpeConfigError, byte_histogram, train_from_table, train_sharded_local
from stages.pretokenize import bytes_to_unicode

MULTI = ("de-DE", "ru-RU", "zh-CN", "ar-MA", "ko-KR", "fr-FR")


def corpus(name: str) -> list[str]:
    if name == "rust":
        return list(dev_docs("rust-doc-books"))
    if name == "postgres":
        return list(dev_docs("postgresql-doc-15")[:400])
    if name == "handbook":
        return list(handbook_docs(MULTI))
    raise KeyError(name)


def untied_limit(texts, cfg_raw: dict, drop: int) -> int:
    """A limit_alphabet that removes `drop` characters with no tie at the cut (HF breaks
    such ties with an unstable sort, so only untied cuts have one right answer)."""
    cfg = BpeConfig.from_dict(cfg_raw)
    hist = byte_histogram(count(texts, cfg))
    counts = sorted(int(c) for c in hist if c > 0)
    while drop < len(counts) - 1 and counts[drop - 1] == counts[drop]:
        drop += 1
    return len(counts) - drop


OPTIONS = {
    "plain": {},
    "minfreq_maxlen": {"min_frequency": 3, "max_token_length": 5},
    "specials_limited_alphabet": {"special_tokens": ["<|endoftext|>", "<pad>", "e"], "initial_alphabet": "seen"},
}

CASES = [
    # (corpus, vocab_size, preset, option)
    ("rust", 1000, "gpt2", "plain"),
    ("rust", 8000, "llama3", "minfreq_maxlen"),
    ("rust", 32000, "gpt2", "specials_limited_alphabet"),
    ("postgres", 1000, "llama3", "specials_limited_alphabet"),
    ("postgres", 8000, "gpt2", "plain"),
    ("postgres", 32000, "llama3", "plain"),
    ("handbook", 1000, "llama3", "minfreq_maxlen"),
    ("handbook", 8000, "gpt2", "specials_limited_alphabet"),
    ("handbook", 32000, "gpt2", "minfreq_maxlen"),
    ("handbook", 32000, "llama3", "plain"),
]


@pytest.mark.parametrize("name, vocab_size, preset, option", CASES)
def test_merges_and_vocab_equal_hf(name, vocab_size, preset, option):
    texts = corpus(name)
    raw = {"vocab_size": vocab_size, "preset": preset, **OPTIONS[option]}
    if option == "specials_limited_alphabet":
        raw["limit_alphabet"] = untied_limit(texts, raw, drop=12)
    cfg = BpeConfig.from_dict(raw)
    vocab, merges = ours(texts, cfg)
    hf_vocab, hf_merges = hf_train(texts, cfg)
    assert len(merges) > min(500, vocab_size // 4)
    assert merges == hf_merges
    assert vocab == hf_vocab


def test_initial_alphabet_and_digit_mode_equal_hf():
    texts = corpus("rust")[:300]
    cfg = BpeConfig.from_dict({"vocab_size": 4000, "preset": "gpt2", "digits": "r2l3",
                               "initial_alphabet": sorted(bytes_to_unicode().values())[:40] + ["中"]})
    assert ours(texts, cfg) == hf_train(texts, cfg)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_sharded_merging_equals_hf(shards):
    texts = corpus("handbook")
    cfg = BpeConfig.from_dict({"vocab_size": 8000, "preset": "llama3", "max_token_length": 8,
                               "special_tokens": ["<s>"]})
    table = count(texts, cfg)
    single = train_from_table(table, cfg)
    for speculate in (False, True):
        model = train_sharded_local(table.partition(shards), cfg, speculate=speculate)
        np.testing.assert_array_equal(model.merges, single.merges)
        assert model.vocab == single.vocab
    assert single.merge_pairs() == hf_train(texts, cfg)[1]
    # guessing ahead must actually save round trips
    assert model.stats["rounds"] < len(model.merges) / 2


def test_sequence_boundaries_are_respected():
    # Words never cross sequences: "ab" + "cd" as two sequences never yields "bc".
    texts = ["ab", "cd"] * 50 + ["x"]
    cfg = BpeConfig.from_dict({"vocab_size": 300, "preset": "gpt2", "initial_alphabet": "seen"})
    vocab, merges = ours(texts, cfg)
    assert ("b", "c") not in merges
    assert (vocab, merges) == hf_train(texts, cfg)


def test_merge_order_is_deterministic_across_word_orders():
    texts = corpus("rust")[:200]
    cfg = BpeConfig.from_dict({"vocab_size": 3000})
    a = train_from_table(count(texts, cfg), cfg)
    b = train_from_table(count(list(reversed(texts)), cfg), cfg)
    np.testing.assert_array_equal(a.merges, b.merges)


@pytest.mark.parametrize("raw, message", [
    ({}, "vocab_size"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": 100, "preset": "gpt5"}, "preset"),
    ({"vocab_size": 100, "digits": "l2r4"}, "digits"),
    ({"vocab_size": 100, "min_frequency": -1}, "min_frequency"),
    ({"vocab_size": 100, "bogus": 1}, "unknown bpe config key"),
    ({"vocab_size": 100, "superbpe": {"transition": 200}}, "transition"),
    ({"vocab_size": 100, "superbpe": {"transition": 50, "max_word": 4}}, "unknown superbpe key"),
    ({"vocab_size": 100, "initial_alphabet": ["ab"]}, "single characters"),
    ({"vocab_size": 100, "merge_mode": "fast"}, "merge_mode"),
    ({"vocab_size": 100, "pattern": "("}, "invalid pre-tokenizer pattern"),
])
def test_bad_config_fails_with_a_clear_message(raw, message):
    with pytest.raises(BpeConfigError, match=message):
        BpeConfig.from_dict(raw)
