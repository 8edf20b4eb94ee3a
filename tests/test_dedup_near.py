"""Unit tests of stages.dedup_near: shingles, signatures, bands, edges, components, keepers.

Oracles: Python `regex` + sets for words and shingles, datasketch's own MinHash for
signatures, a plain union-find for connected components.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import regex
import zstandard
from datasketch import MinHash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.dedup_near import (
    CCResult,
    NearDupParams,
    apply_keepers,
    attach_ids,
    attach_signatures,
    band_keys,
    band_rows,
    bucket_of,
    candidate_edges,
    cc_task,
    choose_keepers,
    connected_components,
    estimated_jaccard,
    make_ords,
    near_duplicates_local,
    rows_of_part,
    shingle_hashes,
    signatures,
    split_by,
    tokenize,
    verify_edges,
)

REPO = Path(__file__).resolve().parents[1]
WORD = regex.compile(r"[\p{L}\p{M}\p{N}_]+")


def _sample_texts(n_per_file: int = 40, seed: int = 3) -> list[str]:
    """A seeded sample of real in-repo texts in many scripts."""
    rng = random.Random(seed)
    files = sorted((REPO / "data" / "dev").glob("*.jsonl.zst")) + sorted((REPO / "data" / "langid-dev" / "handbook").glob("*.jsonl.zst"))
    out = []
    for f in files:
        with open(f, "rb") as fh:
            recs = [json.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(fh).read().decode().splitlines()]
        pick = rng.sample(recs, min(n_per_file if "dev" in f.parts else 4, len(recs)))
        out += [r["text"] if "text" in r else "\n\n".join(r["pars"]) for r in pick]
    return out


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    return _sample_texts()


@pytest.fixture(scope="module")
def distinct_texts(real_texts) -> list[str]:
    """Real texts of >= 40 words, no two with exact Jaccard above 0.3 (the corpora hold
    real near-duplicates, e.g. the Rust book's "moved" notices)."""
    out, sets = [], []
    for t in real_texts:
        s = _oracle_shingles(t, 5)
        if len(_oracle_words(t)) >= 40 and all(len(s & o) / len(s | o) <= 0.3 for o in sets):
            out.append(t)
            sets.append(s)
    return out


EDGE_CASES = [
    "", "   ", "!!! ... ---", "one", "Hello, World!", "a b c d", "a b c d e", "a b c d e f",
    "Straße STRASSE strasse", "ΣΟΦΟΣ σοφος σοφοσ", "İstanbul ISTANBUL", "हिन्दी भाषा का शब्द",
    "中文没有空格。日本語も、そうです", "snake_case x_1 __init__ 3.14 1,000", "emoji 😀 splits words😀here",
]


# ----------------------------------------------------------------------------- params

def test_params_defaults_are_resolved_and_stored():
    p = NearDupParams()
    assert (p.threshold, p.num_perm, p.ngram, p.verify) == (0.8, 1024, 5, True)
    assert p.bands * p.rows <= 256  # with verify, bands come from the first 256 values
    assert p == NearDupParams(bands=p.bands, rows=p.rows)
    assert p.candidate_probability(0.8) > 0.97 and p.candidate_probability(0.3) < 0.01
    q = NearDupParams(num_perm=128, verify=False)
    assert q.bands * q.rows <= 128 and 0.3 < q.candidate_probability(0.8) < 0.7  # balanced S-curve


@pytest.mark.parametrize("kwargs, field", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=1.0), "threshold"), (dict(threshold="0.8"), "threshold"),
    (dict(num_perm=1), "num_perm"), (dict(num_perm=256.0), "num_perm"), (dict(ngram=0), "ngram"),
    (dict(seed=-1), "seed"), (dict(seed=2**32), "seed"), (dict(verify=1), "verify"),
    (dict(bands=4), "rows"), (dict(rows=4), "bands"), (dict(bands=0, rows=4), "bands"),
    (dict(num_perm=128, bands=16, rows=9), "bands"),  # 144 > 128
])
def test_params_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"NearDupParams\.{field}\b"):
        NearDupParams(**kwargs)


# ----------------------------------------------------------------------------- words and shingles

def _oracle_words(t: str) -> list[str]:
    return WORD.findall(t.casefold())


def _oracle_shingles(t: str, n: int) -> set:
    w = _oracle_words(t)
    if not w:
        return set()
    return {tuple(w)} if len(w) < n else {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_tokenize_matches_python_regex_oracle(real_texts):
    texts = EDGE_CASES + real_texts
    got = tokenize(texts).to_pylist()
    assert got == [_oracle_words(t) for t in texts]
    assert got[EDGE_CASES.index("Straße STRASSE strasse")] == ["strasse"] * 3
    assert got[EDGE_CASES.index("ΣΟΦΟΣ σοφος σοφοσ")] == ["σοφοσ"] * 3  # final sigma folds


@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingle_hashes_count_distinct_shingles(real_texts, n):
    """One distinct hash per distinct shingle (windows never cross documents; short docs
    are one shingle; no collisions on real text)."""
    texts = EDGE_CASES + real_texts[:60]
    hv, doc = shingle_hashes(texts, n)
    assert np.all(np.diff(doc) >= 0)
    for i, t in enumerate(texts):
        assert len(np.unique(hv[doc == i])) == len(_oracle_shingles(t, n)), t[:60]


def test_signatures_equal_datasketch_minhash(real_texts):
    p = NearDupParams(num_perm=64, seed=42)
    texts = EDGE_CASES + real_texts[:20]
    sigs = signatures(texts, p)
    hv, doc = shingle_hashes(texts, p.ngram)
    assert sigs.shape == (len(texts), 64) and sigs.dtype == np.uint32
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=42, hashfunc=int)  # datasketch's default scheme, affine32
        m.update_batch(hv[doc == i].tolist())
        assert np.array_equal(m.hashvalues, sigs[i])


def test_signatures_do_not_depend_on_batching(real_texts):
    p = NearDupParams(num_perm=128)
    texts = real_texts[:30] + EDGE_CASES
    full = signatures(texts, p)
    assert np.array_equal(full, signatures(texts, p, chunk_chars=500))  # many small chunks
    assert np.array_equal(full[:, :40], signatures(texts, p, values=40))  # leading values only
    alone = np.stack([signatures([t], p)[0] for t in texts[::7]])
    assert np.array_equal(full[::7], alone)
    with pytest.raises(ValueError, match="values"):
        signatures(texts, p, values=129)


def test_estimated_jaccard_tracks_exact_jaccard(real_texts):
    """The estimate is unbiased with sd ~ sqrt(J(1-J)/k): check on real edited pairs."""
    rng = random.Random(5)
    p = NearDupParams(num_perm=1024)
    a_texts, b_texts, exact = [], [], []
    for t in real_texts[:60]:
        words = t.split()
        if len(words) < 50:
            continue
        edited = list(words)
        for _ in range(rng.randint(1, len(words) // 10)):
            edited[rng.randrange(len(edited))] = rng.choice(words)
        a_texts.append(" ".join(words))
        b_texts.append(" ".join(edited))
        sa, sb = _oracle_shingles(a_texts[-1], 5), _oracle_shingles(b_texts[-1], 5)
        exact.append(len(sa & sb) / len(sa | sb))
    est = estimated_jaccard(signatures(a_texts, p), signatures(b_texts, p))
    err = est - np.array(exact)
    assert len(err) >= 30
    assert abs(err.mean()) < 0.01 and np.abs(err).max() < 0.06


# ----------------------------------------------------------------------------- bands and candidate edges

def test_band_keys_equal_iff_band_values_equal():
    p = NearDupParams(num_perm=16, bands=4, rows=4, verify=False)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, size=(1, 16), dtype=np.uint32)
    b = a.copy()
    b[0, 5] ^= 1  # band 1 differs
    keys = band_keys(np.vstack([a, b]), p)
    assert keys.shape == (2, 4) and keys.dtype == np.uint64
    assert list(keys[0] == keys[1]) == [True, False, True, True]
    assert len(set(keys[0].tolist())) == 4  # equal values in other bands would still differ by band
    with pytest.raises(ValueError, match="band_keys"):
        band_keys(a[:, :15], p)


def test_band_rows_skip_documents_without_words():
    p = NearDupParams(num_perm=32, bands=4, rows=8)
    sigs = signatures(["some words here to hash", "", "!!!"], p)
    rows = band_rows(make_ords(3, 3), sigs, p)
    assert rows.num_rows == 4
    assert set(rows.column("ord").to_pylist()) == {3 << 32}


def _rows(groups: list[tuple[int, int, list[int]]]) -> pa.Table:
    band, key, ords = [], [], []
    for b, k, members in groups:
        band += [b] * len(members)
        key += [k] * len(members)
        ords += members
    return pa.table({"band": pa.array(band, pa.int32()), "key": pa.array(key, pa.uint64()), "ord": pa.array(ords, pa.int64())})


def test_candidate_edges_are_stars_from_the_smallest_ord():
    rows = _rows([(0, 7, [30, 10, 20]), (1, 7, [40]), (1, 9, [20, 10]), (2, 7, [50, 60])])
    e = candidate_edges(rows)
    assert sorted(zip(e.column("src").to_pylist(), e.column("dst").to_pylist())) == [(10, 20), (10, 30), (50, 60)]
    assert candidate_edges(rows.slice(0, 0)).num_rows == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 30)), max_size=80))
def test_candidate_edges_connect_exactly_the_groups(triples):
    triples = list({(b, o): (b, k, o) for b, k, o in triples}.values())  # one key per (band, doc)
    rows = _rows([(b, k, [o]) for b, k, o in triples])
    e = candidate_edges(rows)
    got = _uf_components(zip(e.column("src").to_pylist(), e.column("dst").to_pylist()))
    pairs = []
    by_group: dict = {}
    for b, k, o in triples:
        by_group.setdefault((b, k), []).append(o)
    for members in by_group.values():
        pairs += [(members[0], m) for m in members[1:]]
    assert got == _uf_components(pairs)
    src, dst = e.column("src").to_pylist(), e.column("dst").to_pylist()
    assert all(s < d for s, d in zip(src, dst)) and len(set(zip(src, dst))) == len(src)


def test_bucket_of_keeps_groups_together():
    rows = _rows([(b, k, [i * 10 + b]) for i in range(20) for b in range(3) for k in (i % 4,)])
    buckets = bucket_of(rows, 5)
    seen: dict = {}
    for b, k, bk in zip(rows.column("band").to_pylist(), rows.column("key").to_pylist(), buckets.tolist()):
        assert seen.setdefault((b, k), bk) == bk
    parts = split_by(rows, buckets, 5)
    assert sum(t.num_rows for t in parts) == rows.num_rows


# ----------------------------------------------------------------------------- verification joins

def test_verification_joins_by_part_and_filters_by_estimate():
    p = NearDupParams(num_perm=256)
    base = " ".join(f"w{i}" for i in range(200))
    near = base.replace("w100 ", "x ")  # 5 of ~196 shingles differ
    far = " ".join(f"v{i}" for i in range(200))
    sigs0, sigs1 = signatures([base, far], p), signatures([near, base], p)
    def o(part: int, row: int) -> int:
        return (part << 32) | row

    edges = pa.table({"src": pa.array([o(0, 0), o(0, 1)], pa.int64()), "dst": pa.array([o(1, 0), o(1, 1)], pa.int64())})
    with_src = attach_signatures(edges, sigs0, 0, "src")
    out = verify_edges(with_src, sigs1, 1, p)
    assert list(zip(out.column("src").to_pylist(), out.column("dst").to_pylist())) == [(o(0, 0), o(1, 0))]
    # signatures computed only for the rows the edges name give the same answer
    need = rows_of_part(with_src, 1, "dst")
    out2 = verify_edges(with_src, sigs1[need], 1, p, rows=need)
    assert out2.equals(out)
    with pytest.raises(ValueError, match="part"):
        attach_signatures(edges, sigs0, 1, "src")
    with pytest.raises(ValueError, match="rows"):
        verify_edges(with_src, sigs1[:1], 1, p, rows=np.array([0]))
    with pytest.raises(ValueError, match="num_perm"):
        verify_edges(attach_signatures(edges, sigs0[:, :64], 0, "src"), sigs1, 1, p)


# ----------------------------------------------------------------------------- connected components

def _uf_components(edges) -> dict[int, int]:
    """Oracle: node -> smallest node of its component, by a textbook union-find."""
    parent: dict[int, int] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def _labels(tables) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tables:
        for n, lab in zip(t.column("node").to_pylist(), t.column("label").to_pylist()):
            assert n not in out, "a node labelled twice"
            out[n] = lab
    return out


def _edge_parts(edges: list[tuple[int, int]], k: int) -> list[pa.Table]:
    parts = [edges[i::k] for i in range(k)]
    return [pa.table({"src": pa.array([a for a, _ in p], pa.int64()), "dst": pa.array([b for _, b in p], pa.int64())}) for p in parts]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=150),
       st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_components_match_union_find(edges, num_partitions, num_edge_parts, high_ords):
    if high_ords:  # ords with part bits set, as real ones
        edges = [((a % 3) << 32 | a, (b % 3) << 32 | b) for a, b in edges]
    got = _labels(connected_components(_edge_parts(edges, num_edge_parts), map, num_partitions))
    want = {n: lab for n, lab in _uf_components(edges).items()}
    # a self-loop alone carries no pair; the oracle lists its node, the stage need not
    loops_only = {a for a, b in edges if a == b} - {x for a, b in edges if a != b for x in (a, b)}
    assert got == {n: lab for n, lab in want.items() if n not in loops_only}


@pytest.mark.parametrize("shape", ["path", "reversed_path", "star", "clique", "two_paths"])
def test_components_on_hard_shapes(shape):
    n = 300
    rng = random.Random(1)
    perm = list(range(n))
    rng.shuffle(perm)
    edges = {
        "path": [(perm[i], perm[i + 1]) for i in range(n - 1)],  # long chain in random id order
        "reversed_path": [(i + 1, i) for i in range(n - 1)],
        "star": [(n - 1, i) for i in range(n - 1)],
        "clique": [(a, b) for a in range(25) for b in range(a + 1, 25)],
        "two_paths": [(i, i + 1) for i in range(0, 100)] + [(i, i + 1) for i in range(200, 299)],
    }[shape]
    got = _labels(connected_components(_edge_parts(edges, 3), map, 4))
    assert got == _uf_components(edges)


def test_components_driver_never_opens_pieces():
    """An engine may swap pieces for handles (Parquet paths, object refs): simulate one."""
    store: dict[str, pa.Table] = {}

    def handle_map(fn, tasks):
        out = []
        for t in tasks:
            opened = type(t)(t.phase, t.round, t.part, [store[h] if isinstance(h, str) else h for h in t.pieces], t.num_partitions)
            res = fn(opened)
            handles = []
            for i, piece in enumerate(res.pieces):
                key = f"{t.phase}-{t.round}-{t.part}-{i}"
                store[key] = piece
                handles.append(key)
            out.append(CCResult(handles, res.changed))
        return out

    edges = [(i, i + 1) for i in range(50)] + [(100, 101)]
    got = _labels(store[h] for h in connected_components(_edge_parts(edges, 2), handle_map, 3))
    assert got == _uf_components(edges)


def test_components_edge_cases():
    assert _labels(connected_components([], map, 2)) == {}
    assert _labels(connected_components([_edge_parts([], 1)[0]], map, 1)) == {}
    with pytest.raises(RuntimeError, match="not converged"):
        connected_components(_edge_parts([(i + 1, i) for i in range(200)], 1), map, 2, max_rounds=1)
    with pytest.raises(ValueError, match="phase"):
        cc_task(type("T", (), dict(phase="nope", pieces=[], num_partitions=1))())


# ----------------------------------------------------------------------------- keepers

def test_keeper_is_smallest_id_then_smallest_ord():
    rows = pa.table({
        "node": pa.array([5, 3, 9, 4, 7, 8], pa.int64()),
        "label": pa.array([3, 3, 3, 4, 4, 4], pa.int64()),
        "id": pa.array(["b", "c", "a", "z", "é", "z"], pa.string()),
    })
    k = choose_keepers(rows)
    got = {n: (kid, keep) for n, kid, keep in zip(k.column("node").to_pylist(), k.column("keeper_id").to_pylist(), k.column("keep").to_pylist())}
    assert got == {9: ("a", True), 5: ("a", False), 3: ("a", False),
                   4: ("z", True), 8: ("z", False), 7: ("z", False)}  # "z" < "é"; tie "z": ord 4 < 8


def test_attach_ids_and_apply_keepers():
    labels = pa.table({"node": pa.array([(2 << 32) | 0, (2 << 32) | 2], pa.int64()), "label": pa.array([(2 << 32) | 0] * 2, pa.int64())})
    with_ids = attach_ids(labels, ["doc-b", "x", "doc-a"], 2)
    assert with_ids.column("id").to_pylist() == ["doc-b", "doc-a"]
    keep, dup_of = apply_keepers(3, 2, choose_keepers(with_ids))
    assert keep.tolist() == [False, True, True]
    assert dup_of.to_pylist() == ["doc-a", None, None]
    with pytest.raises(ValueError, match="part"):
        attach_ids(labels, ["a", "b", "c"], 1)


# ----------------------------------------------------------------------------- the whole stage

def _small_corpus(base_texts) -> tuple[list[str], list[str]]:
    """Distinct real texts, each with an exact copy and edited copies (some near, some far)."""
    rng = random.Random(11)
    ids, texts = [], []
    for i, t in enumerate(base_texts[:40]):
        words = t.split()[:300]
        ids.append(f"doc{i:03d}")
        texts.append(" ".join(words))
        for c, rate in enumerate((0.0, 0.005, 0.02, 0.15)):
            w = list(words)
            for _ in range(int(len(w) * rate)):
                w[rng.randrange(len(w))] = rng.choice(words)
            ids.append(f"doc{i:03d}-copy{c}")
            texts.append(" ".join(w))
    ids += ["empty", "blank"]
    texts += ["", "  ..  "]
    return ids, texts


def test_same_result_for_any_partitioning(distinct_texts):
    ids, texts = _small_corpus(distinct_texts)
    p = NearDupParams(num_perm=256)
    ref_keep, ref_cluster = near_duplicates_local(ids, texts, p, num_parts=1, num_buckets=1, cc_partitions=1)
    for parts, buckets, ccp in [(2, 3, 2), (5, 7, 5)]:
        keep, cluster = near_duplicates_local(ids, texts, p, num_parts=parts, num_buckets=buckets, cc_partitions=ccp)
        assert keep.tolist() == ref_keep.tolist() and cluster == ref_cluster
    # input order changes ords, not the outcome per id
    order = list(range(len(ids)))
    random.Random(2).shuffle(order)
    keep, cluster = near_duplicates_local([ids[i] for i in order], [texts[i] for i in order], p, num_parts=3)
    assert {ids[i]: (bool(k), c) for i, k, c in zip(order, keep, cluster)} == {i: (bool(k), c) for i, k, c in zip(ids, ref_keep, ref_cluster)}
    # sanity of the outcome itself: exact copies are dropped in favour of the base doc
    by_id = dict(zip(ids, zip(ref_keep.tolist(), ref_cluster)))
    copies = [i for i in ids if i.endswith("-copy0")]
    assert copies and all(by_id[c] == (False, c.split("-")[0]) for c in copies)
    assert by_id["empty"] == (True, "empty") and by_id["blank"] == (True, "blank")
    assert ref_keep.sum() < len(ids)


def test_keeps_everything_without_duplicates(distinct_texts):
    texts = distinct_texts[:30]
    ids = [f"d{i}" for i in range(len(texts))]
    keep, cluster = near_duplicates_local(ids, texts, NearDupParams(num_perm=128), num_parts=2)
    assert keep.all() and cluster == ids
    keep, cluster = near_duplicates_local([], [], NearDupParams(), num_parts=2)
    assert len(keep) == 0 and cluster == []
