"""Shard planning, the seeded global shuffle, per-shard writes with resume, and the manifest.

Planning (`plan_shards`) works on per-document sizes (tokens) and ids, the metadata the
encode step already has, and returns for every document its shard and its position inside
it. Nothing depends on how the documents were partitioned, so every engine and worker count
writes the same shards.

- In order: documents keep their input order; a document goes to shard floor(start / target),
  where start is its token offset in the whole stream, and the shard numbers are made dense.
  A shard therefore holds at most target + one document's tokens.
- Global shuffle: document d goes to bucket blake2b(seed, id) mod B (B defaults to
  ceil(total / target)); inside a bucket documents are ordered by that hash (ties by id),
  and a bucket of T tokens is cut into ceil(T / target) parts of about T / parts tokens
  (by start offset, as above); shards are numbered by (bucket, part). The output order is a
  seeded permutation fixed by the ids alone, and a bucket is a unit an engine can shuffle
  to one worker and sort there.

Names are ``{stream}-{index:05d}`` (`shard_name`); the plain stream is ``tokens`` and the
StochasTok stream ``stochastok``, planned from the same assignment so shard k of both holds
the same documents.

Writing (`write_shard`) removes what a killed earlier attempt left, writes ``.bin``/``.idx``
atomically (stages.megatron) and then a ``NAME.done.json`` marker with counts and
checksums; `completed_shard` reads it back so a rerun skips finished shards.

Manifest (`manifest.json`, written last, atomically, no timestamps so reruns are
byte-identical) holds the tokenizer (path, sha256, vocab size, preset), the config hash,
per shard documents, tokens, dtype, sha256 of ``.bin`` and ``.idx`` and StochasTok counts,
and totals. ``documents.parquet`` beside it maps every shard's documents to their source
ids and token ranges (`trace_tokens`). `verify_manifest` re-hashes everything.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages import megatron
from stages.storage import (
    atomic_write_bytes,
    exists,
    filesystem,
    join,
    read_bytes,
    sha256_of,
)

MANIFEST_NAME = "manifest.json"
DOC_INDEX_NAME = "documents.parquet"
DONE_SUFFIX = ".done.json"
MANIFEST_VERSION = 1
PLAIN_STREAM = "tokens"
STOCHASTOK_STREAM = "stochastok"


# -- planning ----------------------------------------------------------------------------
def shard_name(index: int, stream: str = PLAIN_STREAM) -> str:
    return f"{stream}-{index:05d}"


def target_in_tokens(size: int, unit: str, dtype) -> int:
    """A shard target given in "tokens" or "bytes" (of .bin) as a token count."""
    if size <= 0:
        raise ValueError(f"shard target must be positive, got {size}")
    if unit == "tokens":
        return int(size)
    if unit == "bytes":
        return max(1, int(size) // np.dtype(dtype).itemsize)
    raise ValueError(f"shard target unit must be 'tokens' or 'bytes', got {unit!r}")


def shuffle_hash(seed: int, doc_id) -> int:
    digest = hashlib.blake2b(
        f"{int(seed)}\x1f{doc_id}".encode(), digest_size=8, person=b"tm-shuffle"
    ).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class ShardPlan:
    """Per input document: `shard` (dense index) and `position` inside the shard."""

    shard: np.ndarray
    position: np.ndarray
    num_shards: int

    def order(self) -> np.ndarray:
        """Input indices in output order (shard by shard)."""
        return np.lexsort((self.position, self.shard))

    def documents_of(self, index: int) -> np.ndarray:
        """Input indices of shard `index`, in their order inside the shard."""
        members = np.flatnonzero(self.shard == index)
        return members[np.argsort(self.position[members], kind="stable")]

    def shards(self) -> list[np.ndarray]:
        """`documents_of` for every shard, in one pass."""
        if not self.num_shards:
            return []
        order = self.order()
        cuts = np.searchsorted(self.shard[order], np.arange(1, self.num_shards))
        return np.split(order, cuts)


def _cut(sizes: np.ndarray, target: int) -> np.ndarray:
    start = np.concatenate(([0], np.cumsum(sizes)[:-1])) if sizes.size else sizes
    return start // target


def plan_shards(
    sizes: Sequence[int] | np.ndarray,
    *,
    target: int,
    doc_ids: Sequence | None = None,
    shuffle_seed: int | None = None,
    num_buckets: int | None = None,
) -> ShardPlan:
    """Assign documents (with token `sizes`) to shards of about `target` tokens.

    With `shuffle_seed`, `doc_ids` (unique) are required and the order is the seeded
    bucket permutation described in the module docstring.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if target <= 0:
        raise ValueError("target must be positive")
    n = sizes.size
    if shuffle_seed is None:
        raw = _cut(sizes, target)
        _, shard = np.unique(raw, return_inverse=True)
        position = np.arange(n) - np.searchsorted(raw, raw, side="left")
        return ShardPlan(shard.astype(np.int64), position.astype(np.int64),
                         int(shard.max()) + 1 if n else 0)
    if doc_ids is None or len(doc_ids) != n:
        raise ValueError("the global shuffle needs one document id per document")
    ids = np.asarray([str(d) for d in doc_ids], dtype=object)
    if len(set(ids.tolist())) != n:
        raise ValueError("document ids must be unique for the global shuffle")
    hashes = np.fromiter((shuffle_hash(shuffle_seed, d) for d in ids), dtype=np.uint64, count=n)
    total = int(sizes.sum())
    buckets = num_buckets or max(1, -(-total // target))
    bucket = (hashes % np.uint64(buckets)).astype(np.int64)
    # ids as the last tie-break: order is then a function of the id set alone
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[np.argsort(ids, kind="stable")] = np.arange(n)
    order = np.lexsort((id_rank, hashes, bucket))
    b_sorted = bucket[order]
    s_sorted = sizes[order]
    # offsets restart at every bucket; a bucket of T tokens is cut into ceil(T / target)
    # parts of equal share, so hash-size variance does not leave small tail shards
    cum = np.cumsum(s_sorted) - s_sorted
    bucket_first = np.searchsorted(b_sorted, b_sorted, side="left")
    start = cum - cum[bucket_first]
    bucket_total = np.bincount(b_sorted, weights=s_sorted, minlength=buckets).astype(np.int64)
    parts = np.maximum(1, -(-bucket_total // target))
    part = start * parts[b_sorted] // np.maximum(bucket_total[b_sorted], 1)
    key = b_sorted * (int(part.max()) + 1 if n else 1) + part
    _, dense = np.unique(key, return_inverse=True)
    shard = np.empty(n, dtype=np.int64)
    shard[order] = dense
    first_of_shard = np.searchsorted(dense, dense, side="left")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n) - first_of_shard
    return ShardPlan(shard, position, int(dense.max()) + 1 if n else 0)


def gather(tokens: np.ndarray, lengths: np.ndarray, index: np.ndarray):
    """(tokens, lengths) of documents `index` (in that order) from a flat array."""
    lengths = np.asarray(lengths, dtype=np.int64)
    index = np.asarray(index, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    if index.size and index[-1] - index[0] + 1 == index.size and (np.diff(index) == 1).all():
        # a run of neighbours (the in-order plan): a view, no copy
        return tokens[offsets[index[0]] : offsets[index[-1] + 1]], lengths[index]
    sel_len = lengths[index]
    starts = np.repeat(offsets[index], sel_len)
    within = np.arange(int(sel_len.sum())) - np.repeat(np.cumsum(sel_len) - sel_len, sel_len)
    return tokens[starts + within], sel_len


# -- small atomic files ------------------------------------------------------------------
def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


# -- shards ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRecord:
    """One finished shard as the manifest lists it: megatron.ShardFiles' facts under the
    shard's name (not its path), its stream and StochasTok counts."""

    name: str
    stream: str
    documents: int
    tokens: int
    dtype: str
    bin_bytes: int
    idx_bytes: int
    bin_sha256: str
    idx_sha256: str
    stochastok_attempts: int = 0
    stochastok_expanded: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShardRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def write_shard(
    out_dir: str,
    name: str,
    tokens: np.ndarray,
    lengths: np.ndarray,
    dtype,
    *,
    vocab_size: int | None = None,
    stream: str = PLAIN_STREAM,
    stochastok_attempts: int = 0,
    stochastok_expanded: int = 0,
    storage_options: dict | None = None,
) -> ShardRecord:
    """Write shard `name` under `out_dir` atomically, then its done marker.

    Another writer of the same shard may be at work at the same time (a retried or
    re-executed task): each writes its own temporaries and renames them into place, so
    temporaries are not cleaned here; the pipeline removes leftovers once the step is done.
    """
    prefix = join(out_dir, name)
    files = megatron.write_shard(
        prefix, tokens, lengths, dtype, vocab_size=vocab_size, storage_options=storage_options
    )
    return _mark_done(out_dir, name, files, stream, stochastok_attempts, stochastok_expanded,
                      storage_options)


def _mark_done(out_dir, name, files, stream, attempts, expanded, storage_options):
    facts = {k: v for k, v in asdict(files).items() if k != "prefix"}  # the name, not a path
    record = ShardRecord(name=name, stream=stream, stochastok_attempts=int(attempts),
                         stochastok_expanded=int(expanded), **facts)
    atomic_write_bytes(
        join(out_dir, name) + DONE_SUFFIX, _json_bytes(record.to_dict()), storage_options
    )
    return record


def completed_shard(
    out_dir: str, name: str, storage_options: dict | None = None
) -> ShardRecord | None:
    """The record of a finished shard (marker present, files of the recorded sizes), or None."""
    prefix = join(out_dir, name)
    if not exists(prefix + DONE_SUFFIX, storage_options):
        return None
    record = ShardRecord.from_dict(json.loads(read_bytes(prefix + DONE_SUFFIX, storage_options)))
    fs, path = filesystem(prefix, storage_options)
    for ext, size in ((".bin", record.bin_bytes), (".idx", record.idx_bytes)):
        if not fs.exists(path + ext) or fs.size(path + ext) != size:
            return None
    return record


class InOrderShardWriter:
    """Stream documents, in the order given, into shards cut like the in-order plan.

    The same shards as `plan_shards` (no shuffle) + `write_shard`, byte for byte, without
    holding more than the documents of one `add` call: a document goes to shard
    floor(start / target), counted over everything added so far. A shard whose done marker
    exists (a rerun) is skipped; its documents are consumed without writing.
    """

    def __init__(
        self,
        out_dir: str,
        dtype,
        target: int,
        *,
        stream: str = PLAIN_STREAM,
        vocab_size: int | None = None,
        storage_options: dict | None = None,
    ):
        if target <= 0:
            raise ValueError("target must be positive")
        self.out_dir, self.dtype, self.target, self.stream = out_dir, dtype, int(target), stream
        self._vocab_size, self._options = vocab_size, storage_options
        self._offset = 0
        self._raw = -1
        self._writer: megatron.MegatronWriter | None = None
        self._done: ShardRecord | None = None
        self._ids: list[str] = []
        self._counts = [0, 0]
        self.records: list[ShardRecord] = []
        self.shard_docs: list[tuple[str, list[str]]] = []

    def _open(self) -> None:
        name = shard_name(len(self.records), self.stream)
        self._done = completed_shard(self.out_dir, name, self._options)
        if self._done is None:
            prefix = join(self.out_dir, name)
            megatron.remove_stale_temporaries(prefix, self._options)
            self._writer = megatron.MegatronWriter(
                prefix, self.dtype, vocab_size=self._vocab_size, storage_options=self._options
            )

    def _close_shard(self) -> None:
        name = shard_name(len(self.records), self.stream)
        if self._done is not None:
            record = self._done
        else:
            record = _mark_done(self.out_dir, name, self._writer.finalize(), self.stream,
                                *self._counts, self._options)
        self.records.append(record)
        self.shard_docs.append((name, self._ids))
        self._writer, self._done, self._ids, self._counts = None, None, [], [0, 0]

    def add(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray,
        doc_ids: Sequence,
        *,
        stochastok_attempts: np.ndarray | None = None,
        stochastok_expanded: np.ndarray | None = None,
    ) -> None:
        """Append documents (flat tokens + lengths) with their source ids and StochasTok
        counts per document."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(doc_ids) != lengths.size:
            raise ValueError("one document id per document is needed")
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        raw = (self._offset + offsets[:-1]) // self.target
        cuts = np.flatnonzero(np.r_[True, raw[1:] != raw[:-1]]) if raw.size else raw
        bounds = [*cuts.tolist(), int(raw.size)]
        for a, b in pairwise(bounds):
            if raw[a] != self._raw:
                if self._raw >= 0:
                    self._close_shard()
                self._raw = int(raw[a])
                self._open()
            if self._writer is not None:
                self._writer.add_flat(tokens[offsets[a] : offsets[b]], lengths[a:b])
            self._ids.extend(str(d) for d in doc_ids[a:b])
            for k, counts in enumerate((stochastok_attempts, stochastok_expanded)):
                if counts is not None:
                    self._counts[k] += int(np.asarray(counts)[a:b].sum())
        self._offset += int(offsets[-1])

    def close(self) -> list[ShardRecord]:
        """Finish the last shard; returns the records of all shards."""
        if self._raw >= 0 and (self._writer is not None or self._done is not None):
            self._close_shard()
            self._raw = -1
        return self.records

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# -- document index ----------------------------------------------------------------------
DOC_INDEX_SCHEMA = pa.schema([("shard", pa.string()), ("doc_index", pa.int64()), ("doc_id", pa.string()),
                              ("token_start", pa.int64()), ("tokens", pa.int64())])


def doc_index_piece(out_dir: str, name: str, doc_ids: Sequence, storage_options: dict | None = None) -> pa.Table:
    """The ``documents.parquet`` rows of shard `name`: its documents' source ids in shard
    order, with token ranges read from the shard's own index (so they hold for expanded
    streams too)."""
    reader = megatron.MegatronReader(join(out_dir, name), storage_options)
    try:
        lengths = np.asarray(reader.lengths, dtype=np.int64)
    finally:
        reader.close()
    if lengths.size != len(doc_ids):
        raise ValueError(f"shard {name} holds {lengths.size} documents but {len(doc_ids)} ids were given")
    return pa.table({
        "shard": pa.array([name] * lengths.size, pa.string()),
        "doc_index": pa.array(np.arange(lengths.size, dtype=np.int64)),
        "doc_id": pa.array([str(d) for d in doc_ids], pa.string()),
        "token_start": pa.array(np.cumsum(lengths) - lengths),
        "tokens": pa.array(lengths),
    }, schema=DOC_INDEX_SCHEMA)


def write_doc_index_table(out_dir: str, pieces: Iterable[pa.Table], storage_options: dict | None = None) -> str:
    """Write ``documents.parquet`` from `doc_index_piece` tables, in the order given."""
    pieces = list(pieces)
    table = pa.concat_tables(pieces) if pieces else DOC_INDEX_SCHEMA.empty_table()
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    url = join(out_dir, DOC_INDEX_NAME)
    atomic_write_bytes(url, sink.getvalue().to_pybytes(), storage_options)
    return url


def write_doc_index(
    out_dir: str,
    shard_docs: Iterable[tuple[str, Sequence]],
    storage_options: dict | None = None,
) -> str:
    """Write ``documents.parquet``: (shard, doc_index, doc_id, token_start, tokens) rows.

    `shard_docs` gives each shard's name and its documents' source ids in shard order.
    """
    return write_doc_index_table(
        out_dir, (doc_index_piece(out_dir, name, ids, storage_options) for name, ids in shard_docs), storage_options)


def read_doc_index(out_dir: str, storage_options: dict | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(read_bytes(join(out_dir, DOC_INDEX_NAME),
                                                     storage_options)))


def trace_tokens(
    out_dir: str, shard: str, start: int, end: int, storage_options: dict | None = None
) -> list[str]:
    """Source ids of the documents overlapping tokens [start, end) of `shard`."""
    index = read_doc_index(out_dir, storage_options)
    mask = np.asarray(index.column("shard").to_pylist(), dtype=object) == shard
    t0 = index.column("token_start").to_numpy()[mask]
    n = index.column("tokens").to_numpy()[mask]
    doc_ids = np.asarray(index.column("doc_id").to_pylist(), dtype=object)[mask]
    hit = (t0 < end) & (t0 + n > start)
    return doc_ids[hit].tolist()


# -- manifest ----------------------------------------------------------------------------
def tokenizer_info(
    path: str, *, vocab_size: int, preset: str | None = None, storage_options: dict | None = None
) -> dict:
    return {
        "path": path,
        "sha256": sha256_of(path, storage_options),
        "vocab_size": int(vocab_size),
        "preset": preset,
    }


def build_manifest(
    records: Sequence[ShardRecord],
    *,
    tokenizer: dict,
    config_hash: str,
    settings: dict | None = None,
) -> dict:
    """The manifest dict; `settings` carries the step's output-shaping options
    (framing, StochasTok mode/p/seed, shuffle seed, target) for readers."""
    records = sorted(records, key=lambda r: (r.stream, r.name))
    streams: dict[str, dict] = {}
    for rec in records:
        tot = streams.setdefault(
            rec.stream,
            {"shards": 0, "documents": 0, "tokens": 0, "bin_bytes": 0,
             "stochastok_attempts": 0, "stochastok_expanded": 0},
        )
        tot["shards"] += 1
        tot["documents"] += rec.documents
        tot["tokens"] += rec.tokens
        tot["bin_bytes"] += rec.bin_bytes
        tot["stochastok_attempts"] += rec.stochastok_attempts
        tot["stochastok_expanded"] += rec.stochastok_expanded
    return {
        "format": "megatron-indexed-dataset",
        "manifest_version": MANIFEST_VERSION,
        "tokenizer": tokenizer,
        "config_hash": config_hash,
        "settings": settings or {},
        "shards": [rec.to_dict() for rec in records],
        "totals": streams,
        "doc_index": DOC_INDEX_NAME,
    }


def write_manifest(out_dir: str, manifest: dict, storage_options: dict | None = None) -> str:
    url = join(out_dir, MANIFEST_NAME)
    atomic_write_bytes(url, _json_bytes(manifest), storage_options)
    return url


def read_manifest(out_dir: str, storage_options: dict | None = None) -> dict:
    return json.loads(read_bytes(join(out_dir, MANIFEST_NAME), storage_options))


def verify_manifest(out_dir: str, storage_options: dict | None = None) -> list[str]:
    """Problems found re-checking every shard against the manifest; empty means verified."""
    problems: list[str] = []
    try:
        manifest = read_manifest(out_dir, storage_options)
    except FileNotFoundError:
        return [f"no {MANIFEST_NAME} in {out_dir}"]
    for rec in map(ShardRecord.from_dict, manifest["shards"]):
        prefix = join(out_dir, rec.name)
        before = len(problems)
        for ext, want in ((".bin", rec.bin_sha256), (".idx", rec.idx_sha256)):
            if not exists(prefix + ext, storage_options):
                problems.append(f"{rec.name}{ext}: missing")
                continue
            got = sha256_of(prefix + ext, storage_options)
            if got != want:
                problems.append(f"{rec.name}{ext}: sha256 {got} != manifest {want}")
        if len(problems) > before:
            continue
        try:
            reader = megatron.MegatronReader(prefix, storage_options)
        except ValueError as exc:
            problems.append(f"{rec.name}: {exc}")
            continue
        if len(reader) != rec.documents or reader.num_tokens != rec.tokens:
            problems.append(
                f"{rec.name}: index has {len(reader)} documents / {reader.num_tokens} tokens, "
                f"manifest {rec.documents} / {rec.tokens}"
            )
        if reader.dtype.name != np.dtype(rec.dtype).name:
            problems.append(f"{rec.name}: dtype {reader.dtype.name} != manifest {rec.dtype}")
        reader.close()
    if exists(join(out_dir, DOC_INDEX_NAME), storage_options):
        index = read_doc_index(out_dir, storage_options)
        per_shard: dict[str, int] = {}
        for name in index.column("shard").to_pylist():
            per_shard[name] = per_shard.get(name, 0) + 1
        for rec in map(ShardRecord.from_dict, manifest["shards"]):
            if per_shard.get(rec.name, 0) != rec.documents:
                problems.append(
                    f"{DOC_INDEX_NAME}: {per_shard.get(rec.name, 0)} rows for {rec.name}, "
                    f"manifest says {rec.documents} documents"
                )
    else:
        problems.append(f"{DOC_INDEX_NAME}: missing")
    return problems
