"""Encoder: ids must equal Hugging Face `tokenizers` encode, whatever backend produced them."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from helpers_data import read_jsonl_zst
from stages import encode
from stages.encode import Encoder

REPO = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"



def train(texts, *, vocab_size=8000, full_alphabet=True, prefix_space=False, split=None,
          normalizer=None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if full_alphabet else [],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    return [r["text"] for r in read_jsonl_zst(REPO / "data/dev/rust-doc-books.jsonl.zst")]


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    """Multilingual, never seen in training: the handbook in 26 languages and the UDHR."""
    texts = []
    for path in sorted((REPO / "data/langid-dev/handbook").glob("*.jsonl.zst")):
        texts += ["\n\n".join(r["pars"]) for r in read_jsonl_zst(path)]
    texts += [r["text"] for r in read_jsonl_zst(REPO / "data/langid-dev/udhr.jsonl.zst")]
    return texts


@pytest.fixture(scope="module")
def small_held_out(held_out) -> list[str]:
    return held_out[::25]


@pytest.fixture(scope="module")
def base(train_texts, tmp_path_factory):
    tok = train(train_texts)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


# SuperBPE's stage-2 kind of split: only separators match, the text between them is kept
# whole by Hugging Face (and dropped by plain tiktoken)
SEPARATORS_ONLY = r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]{2,}|\s*[\r\n]+|\s+(?!\S)"

_ORACLES: dict[str, Tokenizer] = {}


def hf_ids(path: Path, texts: list[str]) -> list[list[int]]:
    """The oracle: Hugging Face's own encode of the same tokenizer.json."""
    key = f"{path}:{path.stat().st_mtime_ns}"
    if key not in _ORACLES:
        _ORACLES[key] = Tokenizer.from_file(str(path))
    return [e.ids for e in _ORACLES[key].encode_batch(texts, add_special_tokens=False)]


def save(tok: Tokenizer, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    tok.save(str(path))
    return path


def assert_parity(enc: Encoder, path: Path, texts: list[str]) -> None:
    got = enc.encode_batch(texts, frame=False)
    want = hf_ids(path, texts)
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g.tolist() != w]
    assert not bad, f"{len(bad)} documents differ from Hugging Face, first: {texts[bad[0]][:200]!r}"


def test_byte_level_bpe_takes_the_tiktoken_route(base):
    enc = Encoder.from_tokenizer_json(str(base))
    assert enc.backend == "tiktoken", enc.backend_reason
    assert enc.vocab_size == 8000
    assert enc.eod_id == 0  # "auto" finds <|endoftext|>


def test_held_out_parity_with_hugging_face(base, held_out):
    """Acceptance 2: every document of a real multilingual held-out set, EOD appended."""
    enc = Encoder.from_tokenizer_json(str(base))
    got = enc.encode_batch(held_out)
    want = hf_ids(base, held_out)
    assert len(got) == len(want) == len(held_out)
    for text, g, w in zip(held_out, got, want):
        assert g.tolist() == w + [enc.eod_id], text[:200]
    assert enc.stats.hf_documents == 0, "the fast path itself must be what was checked"
    assert enc.stats.tokens == sum(len(w) for w in want)


@pytest.mark.parametrize(
    "variant",
    [
        {"prefix_space": True},
        {"split": encode.LLAMA3_PATTERN},
        {"split": encode.GPT2_PATTERN, "vocab_size": 3000},
        {"split": SEPARATORS_ONLY, "vocab_size": 3000},
    ],
    ids=["add_prefix_space", "llama3_split", "gpt2_split_small_vocab", "separators_only"],
)
def test_tiktoken_variants_match(train_texts, small_held_out, tmp_path, variant):
    path = save(train(train_texts[::3], **variant), tmp_path, "tok.json")
    enc = Encoder.from_tokenizer_json(str(path))
    assert enc.backend == "tiktoken", enc.backend_reason
    assert_parity(enc, path, small_held_out + ["", " ", "x", "  lead", "\n\ntrail  "])
    assert enc.stats.hf_documents == 0


def test_split_that_can_match_empty_stays_exact(train_texts, small_held_out, tmp_path):
    """tiktoken fails on empty pieces, so such a split goes to Hugging Face."""
    path = save(train(train_texts[::3], vocab_size=2000, split=r"\p{N}*| ?\p{L}+"), tmp_path,
                "empty.json")
    enc = Encoder.from_tokenizer_json(str(path))
    assert enc.backend == "hf" and "empty string" in enc.backend_reason
    assert_parity(enc, path, small_held_out)


def test_run_marker_in_text_is_encoded_exactly(base):
    """The fast GPT-2 route marks whitespace runs with U+FDD0; text holding it is exact too."""
    texts = ["a  \ufdd0 b", "\ufdd0\ufdd0", "x \ufdd0\n\n y", "  \ufdd0x  y"]
    enc = Encoder.from_tokenizer_json(str(base), eod=None)
    assert enc._tt_exact is not None  # the GPT-2 split takes the marked route
    assert_parity(enc, base, texts)
    assert enc.stats.hf_documents == 0


def test_normalizer_falls_back_to_hugging_face(train_texts, small_held_out, tmp_path):
    tok = train(train_texts[::3], vocab_size=2000, normalizer=normalizers.NFKC())
    path = save(tok, tmp_path, "nfkc.json")
    enc = Encoder.from_tokenizer_json(str(path))
    assert enc.backend == "hf" and "normalizer" in enc.backend_reason
    assert_parity(enc, path, small_held_out)


def test_bytes_missing_from_vocab_go_to_hugging_face(train_texts, small_held_out, tmp_path):
    """Without the full byte alphabet HF drops unknown bytes; those documents fall back."""
    path = save(train(train_texts[::3], vocab_size=2000, full_alphabet=False), tmp_path, "a.json")
    enc = Encoder.from_tokenizer_json(str(path))
    assert enc.backend == "tiktoken", enc.backend_reason
    assert_parity(enc, path, small_held_out)
    assert 0 < enc.stats.hf_documents < len(small_held_out)


def test_special_token_text_is_split_out_like_hugging_face(base):
    texts = [f"end{EOT}start", f"{EOT}", "plain text", f"a {EOT} b {EOT}"]
    enc = Encoder.from_tokenizer_json(str(base))
    assert_parity(enc, base, texts)
    assert enc.stats.hf_documents == 3
    assert enc.encode(f"x{EOT}", frame=False).tolist().count(enc.eod_id) == 1


def test_structure_checks_send_unsupported_models_to_hugging_face(base):
    spec = json.loads(base.read_text())
    cases = {
        "dropout": lambda s: s["model"].update(dropout=0.1),
        "pre-tokenizer": lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
        "merge order": lambda s: s["model"]["merges"].reverse(),
    }
    for expect, mutate in cases.items():
        broken = copy.deepcopy(spec)
        mutate(broken)
        reason = encode._tiktoken_plan(broken)
        assert isinstance(reason, str) and expect in reason, reason
    # a token that no merge makes (HF never emits it, tiktoken would) sends it to HF too
    broken = copy.deepcopy(spec)
    first = broken["model"]["merges"][0]
    merged = "".join(first) if isinstance(first, list) else first.replace(" ", "")
    assert merged in broken["model"]["vocab"]
    broken["model"]["merges"] = broken["model"]["merges"][1:]
    enc = Encoder.from_tokenizer_str(json.dumps(broken))
    assert enc.backend == "hf"


def test_tiktoken_ranks_file(base, small_held_out, tmp_path):
    """A ranks file derived from the tokenizer.json (rank = id) encodes identically."""
    spec = json.loads(base.read_text())
    ranks = encode.tiktoken_ranks_from_tokenizer_json(spec)
    ranks_path = tmp_path / "tok.tiktoken"
    encode.write_tiktoken_ranks(str(ranks_path), ranks)
    enc = Encoder.from_tiktoken(str(ranks_path), "gpt2", special_tokens={EOT: 0})
    assert enc.backend == "tiktoken" and enc.vocab_size == 8000
    texts = [t for t in small_held_out if EOT not in t]
    got = enc.encode_batch(texts, frame=False)
    assert [g.tolist() for g in got] == hf_ids(base, texts)
    with pytest.raises(ValueError, match="single bytes"):
        Encoder.from_tiktoken_ranks({b"ab": 0}, "gpt2", eod=None)


def test_framing(base):
    text = "fn main() {}"
    plain = Encoder.from_tokenizer_json(str(base), eod=None).encode(text).tolist()
    assert plain == hf_ids(base, [text])[0]
    both = Encoder.from_tokenizer_json(str(base), eod=EOT, bos=0).encode(text).tolist()
    assert both == [0] + plain + [0]
    by_id = Encoder.from_tokenizer_json(str(base), eod=5).encode(text).tolist()
    assert by_id == plain + [5]
    enc = Encoder.from_tokenizer_json(str(base), bos=EOT, eod=None)
    texts = ["a", "", "bc"]
    tokens, lengths = enc.encode_flat(texts)
    want = [[0] + ids for ids in hf_ids(base, texts)]
    assert lengths.tolist() == [len(w) for w in want]
    assert tokens.tolist() == [i for w in want for i in w]
    with pytest.raises(ValueError, match="vocabulary"):
        Encoder.from_tokenizer_json(str(base), eod=10**6)
    with pytest.raises(ValueError, match="only eod"):
        Encoder.from_tokenizer_json(str(base), bos="auto")


def test_no_end_of_document_token_is_a_clear_error(train_texts, tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(train_texts[:50], trainers.BpeTrainer(vocab_size=400,
                                                                  show_progress=False))
    path = save(tok, tmp_path, "nospecial.json")
    with pytest.raises(ValueError, match="no end-of-document token"):
        Encoder.from_tokenizer_json(str(path))
    assert Encoder.from_tokenizer_json(str(path), eod=None).eod_id is None


def test_decode_gives_back_the_text(base, small_held_out):
    enc = Encoder.from_tokenizer_json(str(base))
    for text, ids in zip(small_held_out, enc.encode_batch(small_held_out)):
        assert enc.decode_bytes(ids) == (text + EOT).encode("utf-8")
        assert enc.decode(ids[:-1]) == text


def test_background_submit_matches(base, small_held_out):
    enc = Encoder.from_tokenizer_json(str(base))
    futures = [enc.submit(small_held_out[i::3], frame=False) for i in range(3)]
    for i, fut in enumerate(futures):
        tokens, lengths = fut.result()
        want = hf_ids(base, small_held_out[i::3])
        assert lengths.tolist() == [len(w) for w in want]
        assert tokens.tolist() == [t for w in want for t in w]
    assert enc.stats.documents == len(small_held_out)
    enc.close()


def test_pickled_encoder_is_rebuilt(base, small_held_out):
    enc = Encoder.from_tokenizer_json(str(base), eod=None, bos=EOT)
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.backend == enc.backend and clone.bos_id == enc.bos_id
    a, b = enc.encode_flat(small_held_out[:20]), clone.encode_flat(small_held_out[:20])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_arrow_round_trip(base):
    enc = Encoder.from_tokenizer_json(str(base))
    tokens, lengths = enc.encode_flat(["one", "", "three four"])
    column = encode.ids_to_arrow(tokens, lengths)
    assert column.to_pylist() == [d.tolist() for d in encode.split_flat(tokens, lengths)]
    t2, l2 = encode.arrow_to_flat(column.slice(1))
    assert np.array_equal(l2, lengths[1:]) and np.array_equal(t2, tokens[lengths[0]:])


def test_code_point_sweep_matches_hugging_face(base):
    """Unicode classes (\\p{L}, \\p{N}, \\s) agree between tiktoken's and HF's regex engines,
    and the whitespace runs the fast GPT-2 route marks are the regex's: every code point up to
    U+3000 (all whitespace is there) and a stride through the rest, in runs and alone."""
    points = [*range(0x3001), *range(0x3001, 0x110000, 61)]
    chars = [chr(c) for c in points if not 0xD800 <= c <= 0xDFFF]
    contexts = ("a{c}b", " {c}", "{c}{c} x", "x{c}  y", "{c}{c}x", "a {c}b", "a{c} b", "{c} \n{c}")
    texts = [t.format(c=ch) for ch in chars for t in contexts]
    enc = _cached_encoder(str(base))
    got = enc.encode_batch(texts, frame=False)
    want = hf_ids(base, texts)
    bad = [texts[i] for i, (g, w) in enumerate(zip(got, want)) if g.tolist() != w]
    assert not bad, [ascii(b) for b in bad[:10]]


_ALPHABET = st.sampled_from(
    list("abcxyz ABC   \n\n\t019'’\"-_.,;:!?()[]{}<>|/\\éüßçñ") +
    ["’s", "'ll", "'re", " 's", "ﬁ", "Ⅻ", "٣", "你好", "世界", "데이터", "данные", "δ",
     "🙂", "👩‍💻", "\u00a0", "\u2028", "\u200b", "\r\n", "  ", "\u0301", "𝔘"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_ALPHABET, max_size=40).map("".join), min_size=1, max_size=8))
def test_property_random_text_matches_hugging_face(base, texts):
    enc = _cached_encoder(str(base))
    got = enc.encode_batch(texts, frame=False)
    assert [g.tolist() for g in got] == hf_ids(base, texts)


_ENCODERS: dict[str, Encoder] = {}


def _cached_encoder(path: str) -> Encoder:
    if path not in _ENCODERS:
        _ENCODERS[path] = Encoder.from_tokenizer_json(path, eod=None)
    return _ENCODERS[path]
