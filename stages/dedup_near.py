"""Near-duplicate detection: MinHash over word n-grams, LSH bands, connected components.

Engine-free: every function here is pure and works on one partition (or one shuffle
bucket) at a time; an engine runs them and moves tables between them. The whole
algorithm, for a step with P document parts:

  1. per doc part p      ords = make_ords(p, n)
                         sigs = signatures(texts, params, values=bands * rows)
                         rows = band_rows(ords, sigs, params)
                         shuffle rows by bucket_of(rows, B)              [band, key, ord]
  2. per bucket          edges = candidate_edges(rows of the bucket)    [src, dst]
  3. verify (optional)   shuffle edges by part_of(src) -> per part p:
                             need = rows_of_part(edges, p, "src")
                             attach_signatures(edges, signatures(texts[need], params), p, "src", need)
                         shuffle by part_of(dst) -> per part q: likewise with "dst", then
                             verify_edges(edges, sigs, q, params, need)  [src, dst, jaccard]
                         (an edge's two signatures meet through two joins on the ord's part
                         index; each worker reads only its own part, never the driver)
  4. components          labels = connected_components(edge parts, map_fn, C)
                         (alternating large-star / small-star over hash-partitioned edges;
                         label = smallest ord of the component)          [node, label]
  5. keepers             shuffle labels by part_of(node) -> attach_ids(labels, ids of p, p)
                         shuffle by hash_partition(label, K) -> choose_keepers(...)
                         shuffle by part_of(node) -> apply_keepers(n, p, keepers)
                         -> keep mask and duplicate_of per document

`near_duplicates_local` runs exactly this sequence in one process; it is the reference
for a step and what the tests use.

Shingles: the text is case-folded (`str.casefold`: full Unicode folding, so "Straße" and
"STRASSE" agree, and final sigma folds to sigma); words are maximal runs of letters,
marks, digits and "_" (`[\\p{L}\\p{M}\\p{N}_]+`), so punctuation and whitespace only
separate words. Shingles are the contiguous n-word windows. A document with 1..n-1 words
has one shingle, all its words, so short exact repeats still meet; a document with no
word has no shingles and never takes part (it is nobody's near-duplicate; the empty-text
filter belongs to another step). Scripts written without spaces (Chinese, Japanese) give
clause-long "words", so matching there is coarser.

Signatures are datasketch's: the scheme "affine32" (datasketch's default since 2.0) fed
with a 32-bit hash of each shingle; `signatures` computes it with numpy over all shingles
of a batch at once, and equals `datasketch.MinHash(num_perm, seed, hashfunc=...)` on the
same shingle hashes (tested), so a signature row can become a `LeanMinHash` when needed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketch import MinHash
from datasketch.lsh import _optimal_param

ORD_PART_SHIFT = 32  # same layout as stages.records: ord = part << 32 | row
_ROW_MASK = (1 << ORD_PART_SHIFT) - 1
_EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's "no element seen" value
# RE2 (Arrow) syntax; the complement of a word character, so splitting on it yields words.
_NON_WORD = r"[^\p{L}\p{M}\p{N}_]+"

BAND_ROWS_SCHEMA = pa.schema([("band", pa.int32()), ("key", pa.uint64()), ("ord", pa.int64())])
EDGES_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
LABELS_SCHEMA = pa.schema([("node", pa.int64()), ("label", pa.int64())])
NODE_IDS_SCHEMA = pa.schema([("node", pa.int64()), ("label", pa.int64()), ("id", pa.string())])
KEEPERS_SCHEMA = pa.schema([("node", pa.int64()), ("keeper", pa.int64()), ("keeper_id", pa.string()), ("keep", pa.bool_())])


# ----------------------------------------------------------------------------- parameters

# With verification, LSH only proposes candidates: it should miss almost nothing at the
# threshold (weight a miss 99x a spurious candidate), and it needs no sharper S-curve than
# 256 values give, so bands x rows come from the first 256 values however long the
# signature is (the band rows are the shuffle volume; the rest of the signature only
# sharpens the Jaccard estimate). Without verification the band match is the decision:
# both errors weigh the same and every value may be used.
_VERIFY_FN_WEIGHT = 0.99
_VERIFY_LSH_VALUES = 256


@lru_cache(maxsize=64)
def _derive_bands_rows(threshold: float, num_perm: int, fn_weight: float) -> tuple[int, int]:
    b, r = _optimal_param(threshold, num_perm, 1.0 - fn_weight, fn_weight)
    return int(b), int(r)


@dataclass(frozen=True)
class NearDupParams:
    """What decides the result of near-dup detection.

    bands/rows: both None (derived) or both set, bands * rows <= num_perm. Derived with
    datasketch's optimizer (it minimizes the weighted false-positive + false-negative area
    of the LSH S-curve around `threshold`): with `verify`, over min(num_perm, 256) values
    with a miss weighing 99x a spurious candidate; without, over num_perm values, equal
    weights. The resolved values are stored, so equal results mean equal params (and
    equal config hashes).
    """

    threshold: float = 0.8
    num_perm: int = 1024
    ngram: int = 5
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"NearDupParams.{name} = {getattr(self, name)!r}: {why}")

        for name in ("num_perm", "ngram", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(name, "must be an int")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or not 0.0 < self.threshold < 1.0:
            raise bad("threshold", "must be a number strictly between 0 and 1")
        if not 2 <= self.num_perm <= 8192:
            raise bad("num_perm", "must be in [2, 8192]")
        if self.ngram < 1:
            raise bad("ngram", "must be >= 1")
        if not 0 <= self.seed < 2**32:
            raise bad("seed", "must be in [0, 2**32) (numpy RandomState seeds datasketch's permutations)")
        if not isinstance(self.verify, bool):
            raise bad("verify", "must be a bool")
        if (self.bands is None) != (self.rows is None):
            raise bad("rows" if self.rows is None else "bands", "set both bands and rows, or neither (then both are derived)")
        if self.bands is None:
            if self.verify:
                b, r = _derive_bands_rows(float(self.threshold), min(int(self.num_perm), _VERIFY_LSH_VALUES), _VERIFY_FN_WEIGHT)
            else:
                b, r = _derive_bands_rows(float(self.threshold), int(self.num_perm), 0.5)
            object.__setattr__(self, "bands", b)
            object.__setattr__(self, "rows", r)
        for name in ("bands", "rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise bad(name, "must be an int >= 1")
        if self.bands * self.rows > self.num_perm:
            raise bad("bands", f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def candidate_probability(self, jaccard: float) -> float:
        """P(two documents at this Jaccard share at least one band): the LSH S-curve."""
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.bands


# ----------------------------------------------------------------------------- hashing helpers

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_BYTE_BASE = 0x100000001B3  # FNV's 64-bit prime
_WORD_BASE = np.uint64(0xD6E8FEB86659FD93)  # odd


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that avalanches), elementwise."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer; datasketch's affine32 scheme applies it to each input."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _pow_table(base: int, n: int) -> np.ndarray:
    """base**i mod 2**64 for i in [0, n); cumprod on uint64 wraps, which is the modulo."""
    t = np.full(n, np.uint64(base), dtype=np.uint64)
    if n:
        t[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(t, dtype=np.uint64)


def hash_partition(values: np.ndarray, num_parts: int) -> np.ndarray:
    """Part index in [0, num_parts) of each int64/uint64 value, by a mixed hash (stable across runs)."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    v = np.asarray(values).astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        return (_fmix64(v ^ _GOLD) % np.uint64(num_parts)).astype(np.int64)


def split_by(table: pa.Table, parts: np.ndarray, num_parts: int) -> list[pa.Table]:
    """Rows of `table` grouped by their part index: a list of `num_parts` tables, row order kept."""
    parts = np.asarray(parts, dtype=np.int64)
    if len(parts) != table.num_rows:
        raise ValueError(f"split_by: {len(parts)} part indices for {table.num_rows} rows")
    if len(parts) and (parts.min() < 0 or parts.max() >= num_parts):
        raise ValueError(f"split_by: part index outside [0, {num_parts})")
    order = np.argsort(parts, kind="stable")
    ends = np.cumsum(np.bincount(parts, minlength=num_parts))
    sorted_t = table.take(pa.array(order))
    starts = np.r_[0, ends[:-1]]
    return [sorted_t.slice(int(s), int(e - s)) for s, e in zip(starts, ends)]


def make_ords(part: int, num_rows: int) -> np.ndarray:
    """ord = part << 32 | row, as stages.records.make_ord, for a whole part."""
    if not 0 <= part < 2**31 or not 0 <= num_rows <= 2**32:
        raise ValueError(f"make_ords: part {part} or row count {num_rows} outside the ord layout")
    return (np.int64(part) << np.int64(ORD_PART_SHIFT)) | np.arange(num_rows, dtype=np.int64)


def part_of(ords: np.ndarray) -> np.ndarray:
    """Document part of each ord (the routing key for joins with per-part data)."""
    return np.asarray(ords, dtype=np.int64) >> np.int64(ORD_PART_SHIFT)


def _col(table: pa.Table, name: str) -> np.ndarray:
    c = table.column(name)
    return c.to_numpy() if c.num_chunks != 1 else c.chunk(0).to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------- shingles & signatures

def _as_pylist(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> list[str]:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text at row {i} is {type(t).__name__}, expected str (nulls belong to the empty-text filter)")
    return out


def tokenize(texts: Sequence[str] | pa.Array) -> pa.ListArray:
    """Words of each text (see the module docstring), as list<string> per document."""
    folded = pa.array([t.casefold() for t in _as_pylist(texts)], pa.large_string())
    split = pc.split_pattern_regex(folded, pattern=_NON_WORD)
    flat = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy()
    keep = pc.greater(pc.binary_length(flat), 0)  # a leading/trailing separator yields ""
    words = flat.filter(keep)
    parents = parents[keep.to_numpy(zero_copy_only=False)]
    offsets = np.r_[0, np.cumsum(np.bincount(parents, minlength=len(folded)))].astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), words)


def _word_hashes(words: pa.Array) -> np.ndarray:
    """64-bit hash of each (non-empty) word: a polynomial over its UTF-8 bytes, summed per
    word with one `add.reduceat` over all words (no per-word Python), then mixed."""
    if words.type != pa.large_string():
        words = words.cast(pa.large_string())
    n = len(words)
    if n == 0:
        return np.zeros(0, np.uint64)
    bufs = words.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=words.offset * 8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(bufs[2], dtype=np.uint8, count=hi - lo, offset=lo)
    starts, lengths = offsets[:-1] - lo, np.diff(offsets)
    # byte i of a word is weighted by base**i (position inside its word)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        terms = data.astype(np.uint64) * _pow_table(_BYTE_BASE, int(lengths.max()))[pos]
        h = np.add.reduceat(terms, starts)  # every word has >= 1 byte, so no empty segment
        return _fmix64(h ^ (lengths.astype(np.uint64) * _GOLD))


def shingle_hashes(texts: Sequence[str] | pa.Array, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hash of every shingle (with repeats) of every text, flat, and the owning row of each.

    Returns (hashes uint32, doc int64), doc ascending. Order-sensitive within the window.
    """
    words = tokenize(texts)
    counts = np.diff(words.offsets.to_numpy())
    n_words = int(counts.sum())
    if n_words == 0:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    wh = _word_hashes(words.values)
    doc_of_word = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    end = (starts + counts)[doc_of_word]  # one past the last word of the word's document
    idx = np.arange(n_words, dtype=np.int64)
    acc = wh.copy()
    with np.errstate(over="ignore"):
        mult = np.uint64(1)
        for k in range(1, ngram):  # n - 1 vector passes, one per window position
            mult = mult * _WORD_BASE
            shifted = np.zeros(n_words, np.uint64)
            shifted[:-k] = wh[k:]
            acc += np.where(idx + k < end, shifted * mult, np.uint64(0))
        full = idx + ngram <= end
        short = (counts[doc_of_word] < ngram) & (idx == starts[doc_of_word])  # whole short doc
        take = full | short
        h = _fmix64(acc[take])
    return (h >> np.uint64(32)).astype(np.uint32), doc_of_word[take]


@lru_cache(maxsize=16)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # datasketch's own generator, so our signatures are datasketch MinHashes.
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.ascontiguousarray(a, np.uint32), np.ascontiguousarray(b, np.uint32)


def signatures(texts: Sequence[str] | pa.Array, params: NearDupParams, values: int | None = None,
               chunk_chars: int = 1 << 21) -> np.ndarray:
    """MinHash signature of each text: uint32 array (n, values), values = num_perm by default.

    `values` < num_perm computes only the leading values (the same numbers as in the full
    signature): the map phase needs just bands * rows of them for the band keys.
    A text without words gets the all-0xFFFFFFFF row (datasketch's empty MinHash).
    Texts are processed in chunks of about `chunk_chars` characters so memory stays
    bounded (about 30 bytes per character of a chunk; a single longer text is its own
    chunk, and very long texts belong to the length filter).
    """
    texts = _as_pylist(texts)
    values = params.num_perm if values is None else values
    if not 1 <= values <= params.num_perm:
        raise ValueError(f"signatures: values = {values} outside [1, num_perm = {params.num_perm}]")
    a, b = _permutations(params.num_perm, params.seed)
    out = np.full((len(texts), values), _EMPTY, dtype=np.uint32)
    lens = np.fromiter((len(t) for t in texts), np.int64, len(texts))
    chunk_of = np.cumsum(lens) // max(1, chunk_chars)
    cuts = np.r_[0, np.flatnonzero(np.diff(chunk_of)) + 1, len(texts)]
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        hv, doc = shingle_hashes(texts[c0:c1], params.ngram)
        if len(hv) == 0:
            continue
        hv = _fmix32(hv)
        seg = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])  # each doc's shingles are one run
        rows = doc[seg] + c0
        phv = np.empty(len(hv), np.uint32)
        # One permutation at a time over all shingles of the chunk: contiguous 1-D passes,
        # several times faster than a (shingles x num_perm) matrix, and no Python per shingle.
        for k in range(values):
            np.multiply(hv, a[k], out=phv)  # uint32 wraparound is the mod 2**32
            phv += b[k]
            out[rows, k] = np.minimum.reduceat(phv, seg)
    return out


def signatures_to_arrow(sigs: np.ndarray) -> pa.FixedSizeListArray:
    """(n, num_perm) uint32 -> fixed_size_list<uint32>[num_perm], for Parquet between phases."""
    sigs = np.ascontiguousarray(sigs, np.uint32)
    return pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1)), sigs.shape[1])


def signatures_from_arrow(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False).reshape(-1, width)


# ----------------------------------------------------------------------------- bands & candidates

def band_keys(sigs: np.ndarray, params: NearDupParams) -> np.ndarray:
    """64-bit key of each band of each signature: (n, bands) uint64. Band j is values
    j*r .. j*r+r-1, so only the leading bands * rows values are needed.

    Two documents share band j iff their rows j*r..j*r+r-1 are equal (up to 64-bit key
    collisions, about one per 10**19 pairs; verification removes those too).
    """
    sigs = np.asarray(sigs, np.uint32)
    if sigs.ndim != 2 or not params.bands * params.rows <= sigs.shape[1] <= params.num_perm:
        raise ValueError(f"band_keys: signatures of shape {sigs.shape}, expected (n, k) with "
                         f"bands * rows = {params.bands * params.rows} <= k <= num_perm = {params.num_perm}")
    r = params.rows
    keys = np.empty((len(sigs), params.bands), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(params.bands):
            h = np.full(len(sigs), np.uint64(j + 1) * _GOLD, np.uint64)
            for c in range(j * r, (j + 1) * r):
                h = _fmix64(h ^ sigs[:, c].astype(np.uint64))
            keys[:, j] = h
    return keys


def band_rows(ords: np.ndarray, sigs: np.ndarray, params: NearDupParams) -> pa.Table:
    """The shuffle rows of one document part: (band, key, ord) per band of every non-empty doc.

    Ids are not carried: the clustering works on ords, and the keeper is chosen later by a
    join, so the b-fold shuffle stays at 20 bytes per row.
    """
    ords = np.asarray(ords, np.int64)
    if len(ords) != len(sigs):
        raise ValueError(f"band_rows: {len(ords)} ords for {len(sigs)} signatures")
    live = ~np.all(sigs == _EMPTY, axis=1)  # no shingles: not a candidate for anything
    keys = band_keys(sigs[live], params)
    n = int(live.sum())
    return pa.table({
        "band": pa.array(np.tile(np.arange(params.bands, dtype=np.int32), n)),
        "key": pa.array(keys.reshape(-1)),
        "ord": pa.array(np.repeat(ords[live], params.bands)),
    }, schema=BAND_ROWS_SCHEMA)


def bucket_of(rows: pa.Table, num_buckets: int) -> np.ndarray:
    """Shuffle bucket of each band row; rows with equal (band, key) always meet."""
    band = _col(rows, "band").astype(np.uint64)
    key = _col(rows, "key").astype(np.uint64)
    with np.errstate(over="ignore"):
        return hash_partition(key ^ (band * _GOLD), num_buckets)


def _unique_edges(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(src) == 0:
        return src, dst
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    first = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])]
    return src[first], dst[first]


def _edges_table(src: np.ndarray, dst: np.ndarray) -> pa.Table:
    return pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())}, schema=EDGES_SCHEMA)


def candidate_edges(rows: pa.Table) -> pa.Table:
    """Candidate pairs of one shuffle bucket: rows (band, key, ord) -> edges (src, dst).

    Per (band, key) group, a star from the group's smallest ord to each other member:
    k - 1 edges for k members (all pairs would be quadratic in a big group, and the star
    connects the same component). Edges are deduplicated within the bucket; src < dst.
    """
    if rows.num_rows == 0:
        return EDGES_SCHEMA.empty_table()
    band, key, ords = _col(rows, "band"), _col(rows, "key"), _col(rows, "ord")
    order = np.lexsort((ords, key, band))
    band, key, ords = band[order], key[order], ords[order]
    new = np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])]
    head = np.maximum.accumulate(np.where(new, np.arange(len(ords)), 0))
    member = ~new
    src, dst = ords[head[member]], ords[member]
    return _edges_table(*_unique_edges(src, dst))


# ----------------------------------------------------------------------------- verification

def rows_of_part(edges: pa.Table, part: int, side: str) -> np.ndarray:
    """Sorted distinct rows of doc part `part` that edges reference in column `side`: the
    documents whose signatures a verification join needs (compute just these from the
    part's texts, or read them from stored signatures)."""
    o = _col(edges, side) if edges.num_rows else np.zeros(0, np.int64)
    if len(o) and np.any(part_of(o) != part):
        raise ValueError(f"edges with {side} outside part {part}; route them by part_of({side}) first")
    return np.unique(o & _ROW_MASK)


def attach_signatures(edges: pa.Table, sigs: np.ndarray, part: int, side: str = "src",
                      rows: np.ndarray | None = None) -> pa.Table:
    """Join step 1 of verification: add `<side>_sig` to edges whose `side` ord lies in doc part `part`.

    `sigs` holds full signatures of part `part`: row i of the part when `rows` is None,
    else row rows[i] (rows sorted, as `rows_of_part` returns). The join is an index lookup
    by the low 32 bits of the ord: no hash table, no driver.
    """
    want = rows_of_part(edges, part, side)
    o = (_col(edges, side) & _ROW_MASK) if edges.num_rows else np.zeros(0, np.int64)
    sigs = np.asarray(sigs, np.uint32)
    if sigs.ndim != 2:
        raise ValueError(f"attach_signatures: signatures must be 2-D (n, num_perm), got shape {sigs.shape}")
    if rows is None:
        if len(want) and want[-1] >= len(sigs):
            raise ValueError(f"attach_signatures: row {int(want[-1])} beyond the {len(sigs)} signatures of part {part}")
        idx = o
    else:
        rows = np.asarray(rows, np.int64)
        if len(rows) != len(sigs):
            raise ValueError(f"attach_signatures: {len(rows)} rows for {len(sigs)} signatures")
        idx = np.searchsorted(rows, o)
        if len(o) and (np.any(idx >= len(rows)) or np.any(rows[np.minimum(idx, len(rows) - 1)] != o)):
            raise ValueError(f"attach_signatures: edges reference rows of part {part} that `rows` does not hold")
    return edges.append_column(f"{side}_sig", signatures_to_arrow(sigs[idx]))


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal MinHash values per row (datasketch's MinHash.jaccard)."""
    return np.count_nonzero(sig_a == sig_b, axis=1) / sig_a.shape[1]


def verify_edges(edges: pa.Table, sigs: np.ndarray, part: int, params: NearDupParams,
                 rows: np.ndarray | None = None) -> pa.Table:
    """Join step 2: edges carrying `src_sig`, whose dst lies in part `part` (signatures
    `sigs`/`rows` as in `attach_signatures`) -> the edges whose estimated Jaccard is
    >= threshold, as (src, dst, jaccard). A pair found in several buckets is checked once."""
    if edges.num_rows == 0:
        return pa.table({"src": pa.array([], pa.int64()), "dst": pa.array([], pa.int64()),
                         "jaccard": pa.array([], pa.float32())})
    edges = _dedup_rows(edges)
    src, dst = _col(edges, "src"), _col(edges, "dst")
    a = signatures_from_arrow(edges.column("src_sig"))
    b = signatures_from_arrow(attach_signatures(edges.select(["dst"]), sigs, part, "dst", rows).column("dst_sig"))
    if a.shape[1] != params.num_perm or b.shape[1] != params.num_perm:
        raise ValueError(f"verify_edges: signatures have {a.shape[1]} and {b.shape[1]} values, "
                         f"params say num_perm = {params.num_perm} (verification needs full signatures)")
    j = estimated_jaccard(a, b)
    ok = j >= params.threshold
    return pa.table({"src": pa.array(src[ok]), "dst": pa.array(dst[ok]), "jaccard": pa.array(j[ok].astype(np.float32))})


def _dedup_rows(edges: pa.Table) -> pa.Table:
    src, dst = _col(edges, "src"), _col(edges, "dst")
    order = np.lexsort((dst, src))
    s, d = src[order], dst[order]
    first = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1])]
    return edges.take(pa.array(order[first]))


# ----------------------------------------------------------------------------- connected components

@dataclass(frozen=True)
class CCTask:
    """One task of the components driver. `pieces` is the task's input: whatever the driver
    got back from the previous phase for this partition (tables, or handles an engine's
    map_fn resolves before calling `cc_task`)."""

    phase: str            # "route" | "large" | "small" | "labels"
    round: int
    part: int
    pieces: list
    num_partitions: int


@dataclass(frozen=True)
class CCResult:
    """`pieces[j]` is addressed to partition j of the next phase (for "labels": one table of
    (node, label)). The driver never looks inside a piece, so a map_fn may swap pieces for
    handles (e.g. Parquet paths); `changed` must stay a real bool."""

    pieces: list
    changed: bool = False


def _uv(pieces: list) -> tuple[np.ndarray, np.ndarray]:
    tables = [p for p in pieces if p is not None and p.num_rows]
    if not tables:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = pa.concat_tables(tables)
    return _col(t, "u"), _col(t, "v")


def _route(u: np.ndarray, v: np.ndarray, num_partitions: int) -> list[pa.Table]:
    t = pa.table({"u": pa.array(u, pa.int64()), "v": pa.array(v, pa.int64())})
    return split_by(t, hash_partition(u, num_partitions), num_partitions)


def _both_ways(u: np.ndarray, v: np.ndarray, num_partitions: int) -> list[pa.Table]:
    return _route(np.r_[u, v], np.r_[v, u], num_partitions)


def _group_heads(u: np.ndarray) -> np.ndarray:
    new = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    return new


def cc_task(task: CCTask) -> CCResult:
    """One partition of one phase of the large-star / small-star algorithm (Kiveris et al.,
    "Connected Components in MapReduce and Beyond", 2014). Edges are (u, v) rows routed by
    hash(u); each phase sees all of a node's edges in one partition."""
    P = task.num_partitions
    if task.phase == "route":  # input: edge tables (src, dst, ...) of any partitioning
        tables = [p for p in task.pieces if p is not None and p.num_rows]
        if not tables:
            return CCResult(_both_ways(np.zeros(0, np.int64), np.zeros(0, np.int64), P))
        t = pa.concat_tables([x.select(["src", "dst"]) for x in tables])
        u, v = _col(t, "src"), _col(t, "dst")
        loop = u == v
        return CCResult(_both_ways(u[~loop], v[~loop], P))
    u, v = _uv(task.pieces)
    u, v = _unique_edges(u, v)  # sorted by (u, v): each node's neighbours are a run, smallest first
    heads = _group_heads(u)
    head_idx = np.maximum.accumulate(np.where(heads, np.arange(len(u)), 0)) if len(u) else np.zeros(0, np.int64)
    if task.phase == "large":
        # Large star: connect every larger neighbour of u to m(u) = min(u, neighbours).
        m = np.minimum(u, v[head_idx])
        bigger = v > u
        changed = bool(np.any(bigger & (m < u)))
        out_u, out_v = v[bigger], m[bigger]  # out_v < out_u
        return CCResult(_route(out_u, out_v, P), changed)  # small star groups by the larger end
    if task.phase == "small":
        # Small star: input holds each edge once, at its larger end (v < u). Connect u and
        # all its smaller neighbours to the smallest of them.
        m = v[head_idx]
        n_nb = np.diff(np.r_[np.flatnonzero(heads), len(u)])
        changed = bool(np.any(n_nb >= 2))
        others = v != m
        out_u = np.r_[u[heads], v[others]]
        out_v = np.r_[m[heads], m[others]]
        return CCResult(_both_ways(out_u, out_v, P), changed)
    if task.phase == "labels":
        # After convergence every component is a star around its smallest node.
        label = np.minimum(u[heads], v[heads])
        t = pa.table({"node": pa.array(u[heads], pa.int64()), "label": pa.array(label, pa.int64())}, schema=LABELS_SCHEMA)
        return CCResult([t])
    raise ValueError(f"cc_task: unknown phase {task.phase!r}")


MapFn = Callable[[Callable[[Any], Any], list], Any]


def component_rounds(run_round: Callable[[int], bool], max_rounds: int = 200) -> int:
    """The round structure of the components algorithm, independent of where pieces live.

    Before the rounds, a "route" phase turns the edges into (u, v) pieces; after them a
    "labels" phase reads each node's label off the stars. `run_round(r)` runs round r's
    "large" then "small" phase on every partition (each partition's `cc_task` on the
    pieces the previous phase addressed to it) and returns whether any task changed
    anything; rounds go on until one changes nothing. Returns the last round. Raises
    RuntimeError if the graph has not converged after `max_rounds` rounds (the algorithm
    needs O(log^2 n) rounds; a few in practice).
    """
    for rnd in range(1, max_rounds + 1):
        if not run_round(rnd):
            return rnd
    raise RuntimeError(f"connected_components: not converged after {max_rounds} rounds")


def connected_components(edge_parts: list, map_fn: MapFn = map, num_partitions: int = 1,
                         max_rounds: int = 200) -> list:
    """Component label (smallest ord in the component) of every node that has an edge,
    with the pieces held in memory (the pipeline step keeps them in files instead).

    edge_parts: tables with columns src, dst (any extra columns are ignored), any number.
    map_fn(fn, items) -> results in item order; the builtin `map` or a parallel map. Each
    phase is one map whose results are regrouped by destination partition (a shuffle).
    Returns `num_partitions` (node, label) tables (or whatever map_fn returns for them),
    each node in exactly one. Deterministic: labels do not depend on partitioning.
    """
    if num_partitions < 1:
        raise ValueError(f"connected_components: num_partitions must be >= 1, got {num_partitions}")
    P = num_partitions
    state: dict[str, list] = {"inputs": [[e] for e in edge_parts] or [[]]}

    def run_phase(phase: str, rnd: int) -> list[bool]:
        tasks = [CCTask(phase, rnd, j, state["inputs"][j], P) for j in range(len(state["inputs"]))]
        results = list(map_fn(cc_task, tasks))
        if phase == "labels":
            state["labels"] = [r.pieces[0] for r in results]
        else:
            state["inputs"] = [[res.pieces[j] for res in results] for j in range(P)]
        return [r.changed for r in results]

    run_phase("route", 0)
    rounds = component_rounds(lambda rnd: any(run_phase("large", rnd) + run_phase("small", rnd)), max_rounds)
    run_phase("labels", rounds)
    return state["labels"]


# ----------------------------------------------------------------------------- keepers

def attach_ids(labels: pa.Table, ids: Sequence[str] | pa.Array, part: int) -> pa.Table:
    """(node, label) rows of nodes in doc part `part` -> (node, label, id), ids by row index."""
    node = _col(labels, "node") if labels.num_rows else np.zeros(0, np.int64)
    if len(node) and np.any(part_of(node) != part):
        raise ValueError(f"attach_ids: nodes outside part {part}; route labels by part_of(node) first")
    ids_arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())
    picked = ids_arr.take(pa.array(node & _ROW_MASK)) if len(node) else pa.array([], pa.string())
    return pa.table({"node": labels.column("node"), "label": labels.column("label"), "id": picked}, schema=NODE_IDS_SCHEMA)


def choose_keepers(rows: pa.Table) -> pa.Table:
    """(node, label, id) rows holding whole components -> (node, keeper, keeper_id, keep).

    The keeper of a component is its member with the smallest id (string order), ties by
    ord; so the choice does not depend on arrival order or partitioning.
    """
    if rows.num_rows == 0:
        return KEEPERS_SCHEMA.empty_table()
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("label", "ascending"), ("id", "ascending"), ("node", "ascending")]))
    label = _col(rows, "label")
    node = _col(rows, "node")
    first = np.r_[True, label[1:] != label[:-1]]
    head = np.maximum.accumulate(np.where(first, np.arange(len(label)), 0))
    return pa.table({
        "node": pa.array(node),
        "keeper": pa.array(node[head]),
        "keeper_id": rows.column("id").take(pa.array(head)),
        "keep": pa.array(first),
    }, schema=KEEPERS_SCHEMA)


def apply_keepers(num_rows: int, part: int, keepers: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """The keepers rows of doc part `part` -> (keep mask over the part's rows,
    duplicate_of: keeper id for dropped rows, null otherwise)."""
    keep = np.ones(num_rows, bool)
    if keepers.num_rows == 0:
        return keep, pa.nulls(num_rows, pa.string())
    node = _col(keepers, "node")
    if np.any(part_of(node) != part):
        raise ValueError(f"apply_keepers: nodes outside part {part}; route by part_of(node) first")
    row = node & _ROW_MASK
    if row.max() >= num_rows:
        raise ValueError(f"apply_keepers: row {int(row.max())} beyond the {num_rows} rows of part {part}")
    drop = ~_col(keepers, "keep")
    keep[row[drop]] = False
    src = np.full(num_rows, -1, np.int64)  # row -> position in keepers, -1 for kept rows
    src[row[drop]] = np.flatnonzero(drop)
    dup_of = keepers.column("keeper_id").take(pa.array(src, mask=src < 0))
    return keep, dup_of.combine_chunks() if isinstance(dup_of, pa.ChunkedArray) else dup_of


# ----------------------------------------------------------------------------- in-process reference

def near_duplicates_local(ids: Sequence[str], texts: Sequence[str], params: NearDupParams = NearDupParams(),
                          num_parts: int = 1, num_buckets: int = 4, cc_partitions: int = 3,
                          map_fn: MapFn = map) -> tuple[np.ndarray, list[str]]:
    """The whole stage in this process, through the same functions a distributed step calls.

    Documents are cut into `num_parts` contiguous parts (as a reader would). Returns
    (keep mask, cluster id per document = the id of the document kept for its cluster;
    a document alone is its own cluster).
    """
    ids, texts = list(ids), _as_pylist(texts)
    if len(ids) != len(texts):
        raise ValueError(f"near_duplicates_local: {len(ids)} ids for {len(texts)} texts")
    bounds = np.linspace(0, len(texts), num_parts + 1).astype(int)
    part_ids = [ids[bounds[p]:bounds[p + 1]] for p in range(num_parts)]
    part_texts = [texts[bounds[p]:bounds[p + 1]] for p in range(num_parts)]
    # 1. per part: the leading bands*rows signature values -> band rows -> buckets
    to_bucket: list[list[pa.Table]] = [[] for _ in range(num_buckets)]
    for p in range(num_parts):
        sigs = signatures(part_texts[p], params, values=params.bands * params.rows)
        rows = band_rows(make_ords(p, len(part_ids[p])), sigs, params)
        for j, piece in enumerate(split_by(rows, bucket_of(rows, num_buckets), num_buckets)):
            to_bucket[j].append(piece)
    # 2. candidate edges per bucket
    edge_parts = [candidate_edges(pa.concat_tables(b)) for b in to_bucket]
    # 3. verification: two joins on the ord's part index; full signatures are computed
    #    only for the documents the edges name (nothing stored between phases)
    if params.verify:
        by_src = _shuffle_by_part(edge_parts, "src", num_parts)
        with_src = []
        for p in range(num_parts):
            need = rows_of_part(by_src[p], p, "src")
            full = signatures([part_texts[p][r] for r in need], params)
            with_src.append(attach_signatures(by_src[p], full, p, "src", need))
        by_dst = _shuffle_by_part(with_src, "dst", num_parts)
        edge_parts = []
        for p in range(num_parts):
            need = rows_of_part(by_dst[p], p, "dst")
            full = signatures([part_texts[p][r] for r in need], params)
            edge_parts.append(verify_edges(by_dst[p], full, p, params, need))
    # 4. components
    labels = connected_components(edge_parts, map_fn, cc_partitions)
    # 5. keepers: ids join by part, choice by component, results back by part
    lab_by_part = _shuffle_by_part(labels, "node", num_parts)
    with_ids = [attach_ids(lab_by_part[p], part_ids[p], p) for p in range(num_parts)]
    by_label = [split_by(t, hash_partition(_col(t, "label"), num_buckets), num_buckets) for t in with_ids]
    keepers = _shuffle_by_part([choose_keepers(pa.concat_tables(x)) for x in zip(*by_label)], "node", num_parts)
    keep = np.ones(len(ids), bool)
    cluster = list(ids)
    for p in range(num_parts):
        k, _ = apply_keepers(len(part_ids[p]), p, keepers[p])
        keep[bounds[p]:bounds[p + 1]] = k
        if keepers[p].num_rows:
            for node, kid in zip(_col(keepers[p], "node").tolist(), keepers[p].column("keeper_id").to_pylist()):
                cluster[bounds[p] + (node & _ROW_MASK)] = kid
    return keep, cluster


def _shuffle_by_part(tables: list[pa.Table], column: str, num_parts: int) -> list[pa.Table]:
    """In-process stand-in for the engine's shuffle: route rows by the doc part of `column`."""
    schema = tables[0].schema  # every table of one shuffle has the same schema
    out: list[list[pa.Table]] = [[schema.empty_table()] for _ in range(num_parts)]
    for t in tables:
        parts = part_of(_col(t, column)) if t.num_rows else np.zeros(0, np.int64)
        for p, piece in enumerate(split_by(t, parts, num_parts)):
            out[p].append(piece)
    return [pa.concat_tables(x) for x in out]
