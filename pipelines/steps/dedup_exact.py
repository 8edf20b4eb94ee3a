"""The exact-dedup step: hash keys (map) -> group by hash (reduce per bucket) -> filter (map).

Phases, each resumable:
  keys    part P -> hashes/part-P (ord, exact_hash) and keys/bucket-B/part-P (id, ord, exact_hash)
  reduce  bucket B -> dups/part-P/bucket-B (ord, dup_of): the documents to drop, addressed to their part
  filter  part P + its hashes + its dups -> docs/part-P (annotated) and dropped/part-P
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines.config import RunConfig
from pipelines.steps import shuffle
from pipelines.steps.base import Phase, Pins, Step, StepContext, part_name
from pipelines.steps.docmap import map_phase, success_payload
from stages import storage
from stages.dedup_exact import ExactKeyOptions, duplicates_in_bucket, key_hashes
from stages.records import dropped_table

KEYS_SCHEMA = pa.schema([("id", pa.string()), ("ord", pa.int64()), ("exact_hash", pa.string())])
DUPS_SCHEMA = pa.schema([("ord", pa.int64()), ("dup_of", pa.string())])


def keys_task(step_url: str, index: int, in_url: str, part: int, opts: dict, buckets: int, compression: str) -> dict:
    docs = storage.read_parquet(in_url, columns=["id", "ord", "text"])
    hashes = pa.array(key_hashes(docs.column("text").to_pylist(), ExactKeyOptions(**opts)), pa.string())
    keys = pa.table({"id": docs.column("id"), "ord": docs.column("ord"), "exact_hash": hashes}, schema=KEYS_SCHEMA)
    storage.write_parquet(storage.join(step_url, "hashes", part_name(part)), keys.select(["ord", "exact_hash"]), compression)
    shuffle.write_buckets(step_url, "keys", part, keys, shuffle.hash_buckets(hashes, buckets), compression)
    return {"rows_in": docs.num_rows}


def reduce_task(step_url: str, index: int, compression: str) -> dict:
    dups = duplicates_in_bucket(shuffle.read_bucket(step_url, "keys", index, KEYS_SCHEMA))
    shuffle.write_by_part(step_url, "dups", index, dups, compression)
    return {"duplicates": dups.num_rows}


def exact_filter_part(docs: pa.Table, part: int, step_url: str):
    """Processor of the filter phase: joins a part with its hashes and its drop list."""
    hashes = storage.read_parquet(storage.join(step_url, "hashes", part_name(part))) if docs.num_rows else None
    dups = shuffle.read_for_part(step_url, "dups", part, DUPS_SCHEMA)
    if docs.num_rows:
        # hashes were written in the same row order as docs
        docs = docs.append_column("exact_hash", hashes.column("exact_hash"))
    else:
        docs = docs.append_column("exact_hash", pa.array([], pa.string()))
    dup_of = dict(zip(dups.column("ord").to_pylist(), dups.column("dup_of").to_pylist()))
    ords = docs.column("ord").to_pylist()
    is_dup = [o in dup_of for o in ords]
    dropped = dropped_table(docs, is_dup, "dedup_exact", ["duplicate"] * len(ords),
                            [f"dup_of={dup_of[o]}" if o in dup_of else "" for o in ords])
    return docs.filter(pa.array([not d for d in is_dup], pa.bool_())), dropped, Counter()


class DedupExactStep(Step):
    name = "dedup_exact"
    code_version = 2  # 2: shuffle scratch is Arrow IPC
    scratch = ("hashes", "keys", "dups")

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup_exact.enabled

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return {**cfg.dedup_exact.model_dump(), "rows_per_bucket": cfg.shuffle_rows_per_bucket}

    def run(self, ctx: StepContext) -> dict:
        inp = ctx.input_docs()
        opts = ctx.cfg.dedup_exact.model_dump(exclude={"enabled"})
        buckets = shuffle.num_buckets(inp.rows, ctx.cfg.shuffle_rows_per_bucket)
        _, _, filtered = ctx.run_phases([
            Phase(keys_task, "keys", [dict(in_url=u, part=p, opts=opts, buckets=buckets, compression=ctx.compression)
                                      for p, u in inp.part_urls()], "dedup_exact: hash", inp.part_weights()),
            Phase(reduce_task, "reduce", [dict(compression=ctx.compression)] * buckets, "dedup_exact: group"),
            map_phase(ctx, exact_filter_part, dict(step_url=ctx.url), "dedup_exact: filter", phase="filter"),
        ])
        payload = success_payload(filtered)
        payload["buckets"] = buckets
        return payload
