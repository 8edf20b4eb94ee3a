"""StochasTok: split table vs brute force, vectorized expansion vs a plain sequential oracle."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from helpers_data import read_jsonl_zst, train_byte_level_bpe
from stages import stochastok as st
from stages.encode import Encoder

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    path = train_byte_level_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=8000)
    return Encoder.from_tokenizer_json(str(path))


@pytest.fixture(scope="module")
def table(encoder) -> st.SplitTable:
    return st.SplitTable.build(encoder.token_bytes)


@pytest.fixture(scope="module")
def corpus(encoder):
    """Real held-out documents (PostgreSQL docs), encoded without EOD."""
    records = read_jsonl_zst(REPO / "data/dev/postgresql-doc-15.jsonl.zst")[::6]
    tokens, lengths = encoder.encode_flat([r["text"] for r in records], frame=False)
    keys = st.document_keys(20240601, [r["id"] for r in records])
    return tokens, lengths, keys


def brute_force_splits(token_bytes) -> dict[int, list[tuple[int, int]]]:
    id_of = {}
    for i, b in enumerate(token_bytes):
        if b and b not in id_of:
            id_of[b] = i
    out = {}
    for i, b in enumerate(token_bytes):
        if not b or id_of[b] != i:
            continue
        found = [(id_of[b[:j]], id_of[b[j:]]) for j in range(1, len(b))
                 if b[:j] in id_of and b[j:] in id_of]
        if found:
            out[i] = found
    return out


def sequential_oracle(ids, table, p, key, cap=None):
    """The process spelled out one draw at a time on a Python list, from the same stream.

    Draw d picks slot pick(word, L + d) and split pick_low(word, n); a slot that is not
    alive is skipped; the right piece of a split made by draw d lives in slot L + d,
    inserted after the split one.
    """
    n_tok = len(ids)
    attempts_due = int(np.floor(n_tok * float(p)))
    seq = list(range(n_tok))
    token = dict(enumerate(int(i) for i in ids))
    attempts = expanded = 0
    d = 0
    while attempts < attempts_due and (cap is None or expanded < cap):
        words = st.draw_stream(key, d + 256)[d:]
        picks = st.pick(words, n_tok + np.arange(d, d + words.size)).tolist()
        for slot, word in zip(picks, words):
            if attempts == attempts_due or (cap is not None and expanded >= cap):
                break
            if slot in token:
                attempts += 1
                splits = table.splits(token[slot])
                if splits:
                    left, right = splits[int(st.pick_low(np.array([word]), len(splits))[0])]
                    token[slot] = left
                    token[n_tok + d] = right
                    seq.insert(seq.index(slot) + 1, n_tok + d)
                    expanded += 1
            d += 1
    return [token[s] for s in seq], attempts, expanded


def reference_process(ids, table, p, rng):
    """The paper's loop (positions in the current list, np.random), for distribution checks."""
    ids = list(ids)
    expanded = 0
    for _ in range(int(len(ids) * p)):
        i = int(rng.integers(len(ids)))
        splits = table.splits(ids[i])
        if splits:
            ids[i:i + 1] = splits[int(rng.integers(len(splits)))]
            expanded += 1
    return ids, expanded


def derivable(piece_bytes: list[bytes], token: int, table, token_bytes) -> bool:
    """Can `piece_bytes` come from `token` by repeated binary splits into vocabulary tokens?"""
    if len(piece_bytes) == 1:
        return piece_bytes[0] == token_bytes[token]
    for left, right in table.splits(token):
        cut, acc = 0, b""
        while cut < len(piece_bytes) and len(acc) < len(token_bytes[left]):
            acc += piece_bytes[cut]
            cut += 1
        if acc == token_bytes[left] and derivable(piece_bytes[:cut], left, table, token_bytes) \
                and derivable(piece_bytes[cut:], right, table, token_bytes):
            return True
    return False


def assert_valid_expansion(orig, expanded_ids, table, token_bytes) -> None:
    """Every original token became a run of pieces reachable by in-vocabulary binary splits."""
    pieces = [token_bytes[i] for i in expanded_ids]
    k = 0
    for tok in orig:
        want, run = token_bytes[tok], []
        while len(b"".join(run)) < len(want):
            run.append(pieces[k])
            k += 1
        assert b"".join(run) == want
        assert derivable(run, tok, table, token_bytes), (tok, run)
    assert k == len(pieces)


def docs_of(tokens, lengths):
    return np.split(tokens, np.cumsum(lengths)[:-1])


# -- split table -------------------------------------------------------------------------
def test_split_table_equals_brute_force_on_real_vocab(encoder, table):
    want = brute_force_splits(encoder.token_bytes)
    assert table.as_dict() == want
    tries = st.SplitTable.build_with_tries(encoder.token_bytes)
    assert tries.as_dict() == want and np.array_equal(tries.offsets, table.offsets)
    assert table.counts[0] == 0  # the special token takes no part
    assert (table.counts > 0).sum() > 5000  # most merged tokens of a real BPE are splittable


def test_hash_collision_falls_back_to_tries(encoder, monkeypatch):
    monkeypatch.setattr(st, "_hash_splits", lambda tokens, ids: None)
    table = st.SplitTable.build(encoder.token_bytes[:3000])
    assert table.as_dict() == brute_force_splits(encoder.token_bytes[:3000])


def test_split_table_pieces_concatenate(encoder, table):
    tb = encoder.token_bytes
    for t, splits in table.as_dict().items():
        for left, right in splits:
            assert tb[left] + tb[right] == tb[t]


# -- expansion on real data ----------------------------------------------------------------
def test_expansion_invariants_on_real_documents(encoder, table, corpus):
    tokens, lengths, keys = corpus
    p = 0.1
    ex = st.expand_flat(tokens, lengths, keys, table, p)
    assert np.array_equal(ex.attempts, np.floor(lengths * p).astype(np.int64))
    assert np.array_equal(ex.lengths, lengths + ex.expanded)
    assert (ex.expanded <= ex.attempts).all()
    tb = encoder.token_bytes
    for orig, new in zip(docs_of(tokens, lengths), docs_of(ex.tokens, ex.lengths)):
        assert encoder.decode_bytes(new) == encoder.decode_bytes(orig)
        assert_valid_expansion(orig.tolist(), new.tolist(), table, tb)
    # the realized rate is below p by about the share of picks that cannot be split
    rate = ex.total_expanded / lengths.sum()
    splittable = (table.counts[tokens] > 0).mean()
    assert rate < p
    assert abs(rate - p * splittable) < 0.1 * p * splittable, (rate, splittable)


@pytest.mark.parametrize("backend", st.BACKENDS)
@pytest.mark.parametrize("p, cap", [(0.1, None), (0.5, None), (1.0, None), (2.5, None),
                                    (0.3, 4), (1.0, 0), (0.02, None)])
def test_expansion_equals_sequential_oracle(encoder, table, corpus, p, cap, backend):
    tokens, lengths, keys = corpus
    docs = [d[:400] for d in docs_of(tokens, lengths)[:25]]  # the oracle is quadratic
    ex = st.expand_flat(np.concatenate(docs), np.array([d.size for d in docs]), keys[:25],
                        table, p, max_num_to_expand=cap, backend=backend)
    for i, (orig, new) in enumerate(zip(docs, docs_of(ex.tokens, ex.lengths))):
        want, attempts, expanded = sequential_oracle(orig.tolist(), table, p, int(keys[i]), cap)
        assert new.tolist() == want
        assert (ex.attempts[i], ex.expanded[i]) == (attempts, expanded)
    if cap is not None:
        assert (ex.expanded <= cap).all()


@pytest.mark.parametrize("p, cap", [(0.1, None), (1.0, None), (0.3, 3)])
def test_native_and_numpy_backends_agree_on_real_documents(table, corpus, p, cap):
    tokens, lengths, keys = corpus
    native = st.expand_flat(tokens, lengths, keys, table, p, max_num_to_expand=cap)
    vectorized = st.expand_flat(tokens, lengths, keys, table, p, max_num_to_expand=cap,
                                backend="numpy")
    assert native.tokens.dtype == vectorized.tokens.dtype == np.int32
    for field in ("tokens", "lengths", "attempts", "expanded"):
        assert np.array_equal(getattr(native, field), getattr(vectorized, field)), field
    assert native.total_expanded > 0


def test_strided_and_other_dtype_inputs(table, corpus):
    tokens, lengths, keys = corpus
    want = st.expand_flat(tokens, lengths, keys, table, 0.3)
    # every other document, given as strided views; ids as int64
    docs = docs_of(tokens, lengths)[::2]
    flat = np.concatenate(docs).astype(np.int64)
    got = st.expand_flat(flat, lengths[::2], keys[::2], table, 0.3)
    for i, new in zip(range(0, len(lengths), 2), docs_of(got.tokens, got.lengths)):
        assert np.array_equal(new, docs_of(want.tokens, want.lengths)[i])


def test_distribution_matches_the_reference_process(encoder, table, corpus):
    """Same law as the paper's loop: compare mean replacements and re-splits over many seeds."""
    tokens, lengths, _ = corpus
    doc = docs_of(tokens, lengths)[3][:400].tolist()
    runs, p = 600, 0.5
    ours = st.expand_flat(np.tile(doc, runs), np.full(runs, len(doc)),
                          st.document_keys(7, range(runs)), table, p)
    rng = np.random.default_rng(7)
    ref = np.array([reference_process(doc, table, p, rng)[1] for _ in range(runs)])
    mean_ours, mean_ref = ours.expanded.mean(), ref.mean()
    se = np.sqrt(ours.expanded.var() / runs + ref.var() / runs)
    assert abs(mean_ours - mean_ref) < 4 * se, (mean_ours, mean_ref, se)


@pytest.mark.parametrize("backend", st.BACKENDS)
def test_same_seed_same_output_whatever_the_batching(table, corpus, monkeypatch, backend):
    tokens, lengths, keys = corpus
    whole = st.expand_flat(tokens, lengths, keys, table, 0.1, backend=backend)
    # documents in reverse order, in two "workers", with tiny internal chunks (numpy)
    monkeypatch.setattr(st, "CHUNK_TOKENS", 1000)
    docs = docs_of(tokens, lengths)
    half = len(docs) // 2
    outs = {}
    for part in (range(half - 1, -1, -1), range(len(docs) - 1, half - 1, -1)):
        idx = list(part)
        ex = st.expand_flat(np.concatenate([docs[i] for i in idx]), lengths[idx], keys[idx],
                            table, 0.1, backend=backend)
        outs.update(zip(idx, docs_of(ex.tokens, ex.lengths)))
    joined = np.concatenate([outs[i] for i in range(len(docs))])
    assert np.array_equal(joined, whole.tokens)
    other = st.expand_flat(tokens, lengths, st.document_keys(1, range(len(docs))), table, 0.1)
    assert not np.array_equal(other.tokens, whole.tokens)


def _expand_in_worker(args):
    tokens, lengths, keys, table = args
    return st.expand_flat(tokens, lengths, keys, table, 0.1).tokens


def test_same_output_with_one_and_two_processes(table, corpus):
    tokens, lengths, keys = corpus
    n = len(lengths)
    bounds = np.cumsum(lengths)
    jobs = []
    for a, b in ((0, n // 2), (n // 2, n)):
        lo, hi = (bounds[a - 1] if a else 0), bounds[b - 1]
        jobs.append((tokens[lo:hi], lengths[a:b], keys[a:b], table))
    with ProcessPoolExecutor(2) as pool:
        two = np.concatenate(list(pool.map(_expand_in_worker, jobs)))
    with ProcessPoolExecutor(1) as pool:
        one = pool.submit(_expand_in_worker, (tokens, lengths, keys, table)).result()
    assert np.array_equal(one, two)


def test_document_key_is_stable():
    # pinned: changing the hashing would silently change every expanded dataset
    assert st.document_key(0, "doc-1") == 7364284573307443969
    assert st.document_key(0, "doc-1") != st.document_key(1, "doc-1")
    assert st.document_keys(3, ["a", "b"]).dtype == np.uint64


def test_bad_inputs_are_refused(table):
    with pytest.raises(ValueError, match="token ids"):
        st.expand([table.vocab_size], table, 0.1, 1)
    with pytest.raises(ValueError, match="p must be"):
        st.expand([1, 2], table, -0.1, 1)
    with pytest.raises(ValueError, match="max_num_to_expand"):
        st.expand([1, 2], table, 0.1, 1, max_num_to_expand=-1)
    with pytest.raises(ValueError, match="backend"):
        st.expand([1, 2], table, 0.1, 1, backend="cuda")
    empty = st.expand_flat(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.uint64),
                           table, 0.1)
    assert empty.tokens.size == 0 and empty.lengths.size == 0


def test_modes():
    assert st.StochasTokMode("off") is st.StochasTokMode.OFF
    assert {m.value for m in st.StochasTokMode} == {"off", "expand", "both"}


# -- property test over random vocabularies and sequences ---------------------------------
@hst.composite
def vocab_and_docs(draw):
    alphabet = draw(hst.lists(hst.integers(0, 255), min_size=1, max_size=4, unique=True))
    words = draw(hst.lists(
        hst.lists(hst.sampled_from(alphabet), min_size=2, max_size=6).map(bytes), max_size=30))
    token_bytes = [None] + [bytes([b]) for b in alphabet] + list(dict.fromkeys(words))
    token_bytes = [b for i, b in enumerate(token_bytes) if b is None or b not in token_bytes[:i]]
    n_docs = draw(hst.integers(1, 4))
    docs = [draw(hst.lists(hst.integers(1, len(token_bytes) - 1), max_size=60))
            for _ in range(n_docs)]
    p = draw(hst.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, 2.0]))
    cap = draw(hst.one_of(hst.none(), hst.integers(0, 10)))
    seed = draw(hst.integers(0, 2**32))
    return token_bytes, docs, p, cap, seed


@settings(max_examples=150, deadline=None)
@given(vocab_and_docs())
def test_property_random_vocabularies(case):
    token_bytes, docs, p, cap, seed = case
    table = st.SplitTable.build(token_bytes)
    assert table.as_dict() == brute_force_splits(token_bytes)
    assert st.SplitTable.build_with_tries(token_bytes).as_dict() == table.as_dict()
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    tokens = np.array([t for d in docs for t in d], dtype=np.int64)
    keys = st.document_keys(seed, range(len(docs)))
    ex = st.expand_flat(tokens, lengths, keys, table, p, max_num_to_expand=cap)
    vectorized = st.expand_flat(tokens, lengths, keys, table, p, max_num_to_expand=cap,
                                backend="numpy")
    assert np.array_equal(ex.tokens, vectorized.tokens)
    assert np.array_equal(ex.expanded, vectorized.expanded)
    for i, (orig, new) in enumerate(zip(docs, docs_of(ex.tokens, ex.lengths))):
        want, attempts, expanded = sequential_oracle(orig, table, p, int(keys[i]), cap)
        assert new.tolist() == want
        assert (ex.attempts[i], ex.expanded[i]) == (attempts, expanded)
        if cap is None:
            assert attempts == int(np.floor(len(orig) * p))
        assert b"".join(token_bytes[t] for t in new) == b"".join(token_bytes[t] for t in orig)
        assert_valid_expansion(orig, new.tolist(), table, token_bytes)
