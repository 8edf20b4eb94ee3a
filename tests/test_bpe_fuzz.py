"""Randomised corpora and configs: ours == HF, == a pure-Python reference, and the sharded
coordinator (any number of shards, with or without guessing ahead) == single-node."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest_bpe import count, hf_train, ours, reference_bpe
from stages.bpe import BpeConfig, WordTable, prepare_words, train_from_table, train_sharded_local
from stages.pretokenize import to_bytelevel

# Few distinct characters make long words, many merges, ties and overlaps ("aaaa").
texts_st = st.lists(
    st.text(alphabet=st.sampled_from(list("aab c\n1.é")), min_size=0, max_size=24),
    min_size=1, max_size=40)

config_st = st.fixed_dictionaries({
    "vocab_size": st.integers(min_value=1, max_value=120),
    "preset": st.sampled_from(["gpt2", "llama3", "o200k"]),
    "digits": st.sampled_from(["native", "l2r3", "r2l3", "single"]),
    "min_frequency": st.sampled_from([0, 0, 2, 5]),
    "max_token_length": st.sampled_from([None, None, 1, 2, 4]),
    "special_tokens": st.sampled_from([[], ["<s>"], ["aa", "<s>"], ["c"]]),
    "initial_alphabet": st.sampled_from(["seen", "bytelevel", ["z", "a"]]),
})

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(texts=texts_st, raw=config_st)
def test_random_corpora_equal_hf(texts, raw):
    cfg = BpeConfig.from_dict(raw)
    assert ours(texts, cfg) == hf_train(texts, cfg)


@SETTINGS
@given(texts=texts_st, vocab_size=st.integers(min_value=2, max_value=150),
       min_frequency=st.sampled_from([0, 3]), max_token_length=st.sampled_from([None, 2, 3]))
def test_random_corpora_equal_reference(texts, vocab_size, min_frequency, max_token_length):
    cfg = BpeConfig.from_dict({"vocab_size": vocab_size, "initial_alphabet": "seen",
                               "min_frequency": min_frequency, "max_token_length": max_token_length})
    table = count(texts, cfg)
    model = train_from_table(table, cfg)
    words = {to_bytelevel(w): int(c) for w, c in table.to_dict().items()}
    prep = prepare_words(table, cfg)
    expected = reference_bpe(words, prep.vocab, vocab_size, min_frequency, max_token_length)
    assert model.merge_pairs() == expected


@SETTINGS
@given(texts=texts_st, raw=config_st, shards=st.integers(min_value=1, max_value=4),
       speculate=st.booleans())
def test_sharded_coordinator_equals_single_node(texts, raw, shards, speculate):
    cfg = BpeConfig.from_dict(raw)
    table = count(texts, cfg)
    single = train_from_table(table, cfg)
    sharded = train_sharded_local(table.partition(shards), cfg, speculate=speculate)
    np.testing.assert_array_equal(sharded.merges, single.merges)
    assert sharded.vocab == single.vocab


def test_special_token_equal_to_a_merge_reuses_its_id_like_hf():
    # A merge whose string is a special token reuses that id, so the vocab grows by one
    # less and the pair's neighbours are reported under the reused id.
    texts = ["aab aab ab", "abab aa"] * 20
    cfg = BpeConfig.from_dict({"vocab_size": 30, "special_tokens": ["ab", "aab"], "initial_alphabet": "seen"})
    vocab, merges = ours(texts, cfg)
    assert vocab["ab"] == 0 and ("a", "b") in merges
    assert (vocab, merges) == hf_train(texts, cfg)


def test_word_table_reduce_is_a_sum():
    parts = [WordTable.from_dict({b"ab": 2, b"c": 1}), WordTable.from_dict({b"ab": 5, b"d": 7})]
    assert WordTable.reduce(parts).to_dict() == {b"ab": 7, b"c": 1, b"d": 7}
    assert WordTable.reduce(parts, min_count=2).to_dict() == {b"ab": 7, b"d": 7}
    table = WordTable.reduce(parts)
    assert WordTable.reduce(table.partition(3)).to_dict() == table.to_dict()
