"""Pair counts past 2^31 train correctly (tokenizers keeps them in i32: its issue #2058).

HF cannot be fed these counts (it would need billions of words of text), so the oracle
is the pure-Python reference with exact integers; the same reference with i32 wrapping
shows that HF's arithmetic would pick different merges.
"""
from __future__ import annotations

import numpy as np

from conftest_bpe import reference_bpe
from stages.bpe import BpeConfig, WordTable, prepare_words, train_from_table, train_sharded_local
from stages.pretokenize import to_bytelevel

BIG = {
    b"ab": 3_000_000_000,          # one word alone past 2^31
    b"abc": 1_500_000_000,         # (a,b) sums to 6e9 over three words
    b"xab": 1_500_000_000,
    b"cd": 2_000_000_000,
    b"dd": 1_900_000_000,
    b"cdx": 2_100_000_000,         # (c,d) sums to 4.1e9
}


def test_counts_past_2_31_train_exactly():
    cfg = BpeConfig.from_dict({"vocab_size": 40, "initial_alphabet": "seen"})
    table = WordTable.from_dict(BIG)
    assert int(table.counts.max()) > 2**31
    model = train_from_table(table, cfg)
    words = {to_bytelevel(w): c for w, c in BIG.items()}
    vocab = prepare_words(table, cfg).vocab
    exact = reference_bpe(words, vocab, cfg.vocab_size)
    wrapped = reference_bpe(words, vocab, cfg.vocab_size, wrap_i32=True)
    assert model.merge_pairs() == exact
    assert exact[0] == ("a", "b")         # count 6e9
    assert wrapped != exact               # i32 arithmetic goes wrong on this table
    sharded = train_sharded_local(table.partition(2), cfg)
    np.testing.assert_array_equal(sharded.merges, model.merges)


def test_word_counts_sum_exactly_in_int64():
    a = WordTable.from_dict({b"w": 2**40})
    b = WordTable.from_dict({b"w": 2**40 + 7})
    assert WordTable.reduce([a, b]).to_dict() == {b"w": 2**41 + 7}
