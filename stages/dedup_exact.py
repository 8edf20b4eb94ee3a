"""Exact deduplication: a 128-bit hash of a normalization key; keep the smallest id.

The key folds differences that do not make two documents different for training
(case, whitespace runs, punctuation; digits optionally). Grouping is by hash, so it
shards: rows are routed to buckets by hash and each bucket is reduced alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import regex
import xxhash

_PUNCT = regex.compile(r"[\p{P}\p{S}]+")
_DIGITS = regex.compile(r"\p{N}+")
_SPACE = regex.compile(r"\s+")


@dataclass(frozen=True)
class ExactKeyOptions:
    lowercase: bool = True
    fold_whitespace: bool = True
    strip_punctuation: bool = True
    strip_digits: bool = False


def dedup_key(text: str, opts: ExactKeyOptions) -> str:
    if opts.lowercase:
        text = text.lower()
    if opts.strip_punctuation:
        text = _PUNCT.sub(" " if opts.fold_whitespace else "", text)
    if opts.strip_digits:
        text = _DIGITS.sub("", text)
    if opts.fold_whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text


def key_hashes(texts: list[str], opts: ExactKeyOptions) -> list[str]:
    """Hex xxh3-128 of each text's key (128 bits: collisions are negligible at any corpus size)."""
    return [xxhash.xxh3_128_hexdigest(dedup_key(t, opts).encode("utf-8")) for t in texts]


def duplicates_in_bucket(rows: pa.Table) -> pa.Table:
    """Rows of one bucket (id, ord, exact_hash) -> the duplicates to drop (id, ord, dup_of).

    Within a hash group the smallest id is kept (ties by ord), so the result does not
    depend on the order rows arrive in.
    """
    if rows.num_rows == 0:
        return pa.table({"ord": pa.array([], pa.int64()), "dup_of": pa.array([], pa.string())})
    order = pc.sort_indices(rows, sort_keys=[("exact_hash", "ascending"), ("id", "ascending"), ("ord", "ascending")])
    rows = rows.take(order)
    hashes = rows.column("exact_hash").to_pylist()
    ids = rows.column("id").to_pylist()
    ords = rows.column("ord").to_pylist()
    drop_ord, dup_of = [], []
    keeper = None
    for i, h in enumerate(hashes):
        if i and h == hashes[i - 1]:
            drop_ord.append(ords[i])
            dup_of.append(keeper)
        else:
            keeper = ids[i]
    return pa.table({"ord": pa.array(drop_ord, pa.int64()), "dup_of": pa.array(dup_of, pa.string())})
