"""Pre-tokenization: native scanners == `regex`, and words == tokenizers' own pre-tokenizer."""
from __future__ import annotations

import random

import pytest
import regex

from conftest_bpe import dev_docs, handbook_docs
from stages.pretokenize import (
    DIGIT_MODES,
    PRESETS,
    PreTokSpec,
    bytes_to_unicode,
    from_bytelevel,
    regex_split,
    to_bytelevel,
)

# Characters from every class the scanners distinguish: letters of each case category,
# marks, numbers (incl. non-ASCII), every kind of whitespace, CR/LF, apostrophes and the
# contraction letters in both cases, punctuation, "/" (o200k), the long s (case-folds to s).
ALPHABET = list("aAbZ sS'tTrReEvVmMlLdD\n\r\t  .,;:!?/-_()[]0123456789") + [
    "é", "\u0301", "\u0300", "ʰ", "ǅ", "中", "\u00a0", "\u2003", "ſ", "\x1c", "\u0085", "\u2028",
    "Ω", "ω", "ß", "Ⅷ", "²", "½", "٣", "🙂",
]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("digits", DIGIT_MODES)
@pytest.mark.parametrize("superword", [False, True])
def test_native_scanner_matches_regex(preset, digits, superword):
    spec = PreTokSpec(preset=preset, digits=digits, superword=superword)
    compiled = regex.compile(spec.regex)
    counter = spec.counter()
    rng = random.Random(f"{preset}-{digits}-{superword}")
    for _ in range(1500):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        assert counter.split(text) == list(regex_split(compiled, text)), repr(text)


@pytest.mark.parametrize("digits, expected", [
    ("l2r3", ["x", "123", "456", "7", "y"]),
    ("r2l3", ["x", "1", "234", "567", "y"]),
    ("single", ["x", "1", "2", "3", "4", "5", "6", "7", "y"]),
    ("native", ["x", "123", "456", "7", "y"]),
])
def test_digit_modes(digits, expected):
    assert PreTokSpec(preset="llama3", digits=digits).split("x1234567y") == expected


def test_gpt2_digits_keep_the_leading_space():
    assert PreTokSpec(preset="gpt2").split("a 1234567") == ["a", " 1234567"]
    assert PreTokSpec(preset="gpt2", digits="r2l3").split("a 1234567") == ["a", " 1", "234", "567"]


def _hf_words(spec: PreTokSpec, text: str) -> list[str]:
    return [w for w, _ in spec.hf_pre_tokenizer().pre_tokenize_str(text)]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("superword", [False, True])
def test_words_equal_hf_pre_tokenizer_on_real_text(preset, superword):
    # Multilingual text exercises the Unicode classes of both engines (onig vs regex).
    texts = list(dev_docs("rust-doc-books")[:40]) + list(handbook_docs(("ru-RU", "ja-JP", "ar-MA", "vi-VN", "el-GR")))[::6]
    spec = PreTokSpec(preset=preset, digits="r2l3", superword=superword)
    counter = spec.counter()
    for text in texts:
        assert [to_bytelevel(w.encode()) for w in counter.split(text)] == _hf_words(spec, text)


def test_custom_pattern_keeps_gaps_like_hf_isolated_split():
    spec = PreTokSpec(pattern=r"\d+")
    text = "ab12 cd 345\n"
    assert spec.split(text) == ["ab", "12", " cd ", "345", "\n"]
    assert [to_bytelevel(w.encode()) for w in spec.split(text)] == _hf_words(spec, text)


def test_counter_counts_words_per_sequence():
    c = PreTokSpec().counter()
    c.add("the cat")
    c.add("the dog the")
    words, counts = c.items()
    got = dict(zip(words, counts.tolist()))
    assert got == {b"the": 2, b" cat": 1, b" dog": 1, b" the": 1}
    assert c.n_sequences == 2


def test_bytelevel_roundtrip():
    raw = bytes(range(256))
    assert from_bytelevel(to_bytelevel(raw)) == raw
    assert len(set(bytes_to_unicode().values())) == 256


@pytest.mark.parametrize("kw, message", [
    (dict(preset="gpt5"), "unknown preset"),
    (dict(digits="l2r4"), "unknown digit mode"),
    (dict(pattern="(unclosed"), "invalid pre-tokenizer pattern"),
    (dict(pattern=r"\w+", superword=True), "custom pattern"),
])
def test_bad_specs_fail_clearly(kw, message):
    with pytest.raises(ValueError, match=message):
        PreTokSpec(**kw)
