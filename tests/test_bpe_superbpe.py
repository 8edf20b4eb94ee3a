"""SuperBPE: fewer tokens per byte than BPE at the same vocabulary, bans obeyed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest_bpe import dev_docs
from stages.bpe import BpeConfig, superword_violations, train_bpe
from stages.pretokenize import PreTokSpec

VOCAB, TRANSITION = 12000, 9000


@pytest.fixture(scope="module")
def models():
    docs = list(dev_docs("rust-doc-books")) + list(dev_docs("postgresql-doc-15"))
    train, held = docs[::2], docs[1::2]

    def counter(spec, prune):
        c = spec.counter()
        c.add_many(train)
        from stages.bpe import WordTable

        return WordTable.from_counter(c, prune), {}

    bpe = train_bpe(counter, BpeConfig.from_dict({"vocab_size": VOCAB}))
    sup = train_bpe(counter, BpeConfig.from_dict({"vocab_size": VOCAB, "superbpe": {"transition": TRANSITION, "max_words": 4}}))
    return bpe, sup, held


def test_fewer_tokens_per_byte_than_bpe(models):
    bpe, sup, held = models
    nbytes = sum(len(t.encode()) for t in held)
    n_bpe = sum(len(e.ids) for e in bpe.hf_tokenizer().encode_batch(held))
    n_sup = sum(len(e.ids) for e in sup.hf_tokenizer().encode_batch(held))
    reduction = 1 - n_sup / n_bpe
    print(f"tokens/byte: BPE {n_bpe / nbytes:.4f}  SuperBPE {n_sup / nbytes:.4f}  reduction {reduction:.1%}")
    assert len(sup.vocab) == len(bpe.vocab) == VOCAB
    assert reduction > 0.05


def test_stage_one_is_plain_bpe_up_to_the_transition(models):
    bpe, sup, _ = models
    n1 = sup.stats["superbpe"]["stage1"]["merges"]
    assert sup.vocab[:TRANSITION] == bpe.vocab[:TRANSITION]
    np.testing.assert_array_equal(sup.merges[:n1], bpe.merges[:n1])


def test_superwords_obey_the_bans(models):
    _, sup, _ = models
    new = sup.vocab[TRANSITION:]
    assert sum(t.count("Ġ") > 0 and not t.startswith("Ġ") or t.count("Ġ") > 1 for t in new) > 100  # superwords exist
    assert superword_violations(sup, TRANSITION, 4) == []
    assert sup.stats["superbpe"]["stage2"]["banned_merges"] > 0  # the bans did fire


def test_superbpe_tokenizer_splits_with_the_superword_pattern(models):
    _, sup, held = models
    doc = json.loads(sup.tokenizer_json())
    split = doc["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == PreTokSpec(preset="gpt2", superword=True).regex
    tok = sup.hf_tokenizer()
    for text in held[:20]:
        assert tok.decode(tok.encode(text).ids) == text


def test_superword_splitter_never_joins_across_newlines():
    spec = PreTokSpec(preset="gpt2", superword=True)
    words = spec.split("by the way\nof the  world: 12345 ... ok")
    assert "by the way" in words and "\n" in words
    assert all("\n" not in w or not w.strip() for w in words)
