"""The near-dedup step: the phases of stages.dedup_near, sharded through Parquet shuffles.

Nodes are numbered `part << 32 | row`, with `row` the document's row in this step's input
part (not the read-time `ord`: earlier steps have removed rows). Phases, each resumable
from its task records except the component rounds, which are recomputed from the edges:

  bands       doc part p  -> bands/bucket-j/        band rows (band, key, node)
  edges       bucket j    -> edges/part-p/          candidate star edges, routed by src's part
  verify_src  doc part p  -> edges_dst/part-q/      + src signature, routed by dst's part
  verify_dst  doc part q  -> verified/part-q        edges whose estimated Jaccard >= threshold
  components  large-star / small-star rounds over edge partitions (files under cc/)
  labels      cc part j   -> labels/part-p/         (node, label) routed by node's part
  ids         doc part p  -> ids/bucket-k/          + the document id, routed by label
  keepers     bucket k    -> keepers/part-p/        smallest id of each component kept
  filter      doc part p  -> docs/, dropped/        + cluster_id (keeper's id; null if unique)

Without verification, `edges` writes straight to verified/ and the verify phases are skipped.
The driver holds only file names and one flag per task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import partial

import numpy as np
import pyarrow as pa

from pipelines import io
from pipelines.config import RunConfig
from pipelines.steps import shuffle
from pipelines.steps.base import Step, StepContext, run_tasks
from pipelines.steps.docmap import map_parts, success_payload
from stages import dedup_near as nd
from stages.records import dropped_table

VERIFIED_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("jaccard", pa.float32())])


def params_of(cfg: RunConfig) -> nd.NearDupParams:
    c = cfg.dedup_near
    return nd.NearDupParams(threshold=c.threshold, num_perm=c.num_perm, ngram=c.ngram, bands=c.bands,
                            rows=c.rows, seed=c.seed, verify=c.verify)


def _texts(url: str) -> list[str]:
    return io.read_parquet(url, columns=["text"]).column("text").to_pylist()


def bands_task(step_url: str, index: int, in_url: str, part: int, params: nd.NearDupParams, buckets: int, compression: str) -> dict:
    texts = _texts(in_url)
    sigs = nd.signatures(texts, params, values=params.bands * params.rows)
    rows = nd.band_rows(nd.make_ords(part, len(texts)), sigs, params)
    shuffle.write_buckets(step_url, "bands", part, rows, nd.bucket_of(rows, buckets), compression)
    return {"rows_in": len(texts), "band_rows": rows.num_rows}


def edges_task(step_url: str, index: int, verify: bool, compression: str) -> dict:
    edges = nd.candidate_edges(shuffle.read_bucket(step_url, "bands", index, nd.BAND_ROWS_SCHEMA))
    if verify:
        shuffle.write_by_part(step_url, "edges", index, edges, compression, column="src")
    else:
        io.write_parquet(io.join(step_url, "verified", f"part-{index:05d}.parquet"),
                         edges.append_column("jaccard", pa.nulls(edges.num_rows, pa.float32())), compression)
    return {"candidates": edges.num_rows}


def _full_signatures(in_url: str, need: np.ndarray, params: nd.NearDupParams) -> np.ndarray:
    texts = _texts(in_url) if len(need) else []
    return nd.signatures([texts[r] for r in need], params)


def verify_src_task(step_url: str, index: int, in_url: str, part: int, params: nd.NearDupParams, compression: str) -> dict:
    edges = shuffle.read_dir(io.join(step_url, "edges", f"part-{part:05d}"))
    if edges is None or edges.num_rows == 0:
        return {"edges": 0}
    need = nd.rows_of_part(edges, part, "src")
    with_sig = nd.attach_signatures(edges, _full_signatures(in_url, need, params), part, "src", need)
    shuffle.write_by_part(step_url, "edges_dst", part, with_sig, compression, column="dst")
    return {"edges": edges.num_rows}


def verify_dst_task(step_url: str, index: int, in_url: str, part: int, params: nd.NearDupParams, compression: str) -> dict:
    edges = shuffle.read_dir(io.join(step_url, "edges_dst", f"part-{part:05d}"))
    if edges is None or edges.num_rows == 0:
        verified = VERIFIED_SCHEMA.empty_table()
    else:
        need = nd.rows_of_part(edges, part, "dst")
        verified = nd.verify_edges(edges, _full_signatures(in_url, need, params), part, params, need)
    io.write_parquet(io.join(step_url, "verified", f"part-{part:05d}.parquet"), verified.cast(VERIFIED_SCHEMA), compression)
    return {"edges": 0 if edges is None else edges.num_rows, "verified": verified.num_rows}


def cc_file_task(task: nd.CCTask, step_url: str, compression: str) -> nd.CCResult:
    """Run one components task with its pieces as Parquet files: read inputs, write outputs."""
    pieces = [io.read_parquet(u) if isinstance(u, str) else u for u in task.pieces]
    result = nd.cc_task(replace(task, pieces=pieces))
    urls = []
    for j, piece in enumerate(result.pieces):
        if piece is None or piece.num_rows == 0:
            urls.append(None)
            continue
        url = io.join(step_url, "cc", f"r{task.round:03d}-{task.phase}", f"to-{j:05d}", f"from-{task.part:05d}.parquet")
        io.write_parquet(url, piece, compression)
        urls.append(url)
    return nd.CCResult(urls, result.changed)


def labels_task(step_url: str, index: int, url: str | None, compression: str) -> dict:
    labels = io.read_parquet(url) if url else nd.LABELS_SCHEMA.empty_table()
    shuffle.write_by_part(step_url, "labels", index, labels, compression, column="node")
    return {"nodes": labels.num_rows}


def ids_task(step_url: str, index: int, in_url: str, part: int, buckets: int, compression: str) -> dict:
    labels = shuffle.read_for_part(step_url, "labels", part, nd.LABELS_SCHEMA)
    if labels.num_rows == 0:
        return {"nodes": 0}
    ids = io.read_parquet(in_url, columns=["id"]).column("id")
    with_ids = nd.attach_ids(labels, ids, part)
    shuffle.write_buckets(step_url, "ids", part, with_ids, nd.hash_partition(with_ids.column("label").to_numpy(), buckets), compression)
    return {"nodes": labels.num_rows}


def keepers_task(step_url: str, index: int, compression: str) -> dict:
    keepers = nd.choose_keepers(shuffle.read_bucket(step_url, "ids", index, nd.NODE_IDS_SCHEMA))
    shuffle.write_by_part(step_url, "keepers", index, keepers, compression, column="node")
    return {"dropped": int((~keepers.column("keep").to_numpy(zero_copy_only=False)).sum()) if keepers.num_rows else 0}


class NearFilter:
    """Processor of the filter phase: drops non-keepers, annotates cluster_id."""

    def __init__(self, step_url: str):
        self.step_url = step_url

    def __call__(self, docs: pa.Table, part: int):
        keepers = shuffle.read_for_part(self.step_url, "keepers", part, nd.KEEPERS_SCHEMA)
        keep, dup_of = nd.apply_keepers(docs.num_rows, part, keepers)
        cluster = np.full(docs.num_rows, None, dtype=object)
        if keepers.num_rows:
            rows = keepers.column("node").to_numpy() & ((1 << 32) - 1)
            cluster[rows] = keepers.column("keeper_id").to_pylist()
        docs = docs.append_column("cluster_id", pa.array(cluster.tolist(), pa.string()))
        dup = dup_of.to_pylist()
        dropped = dropped_table(docs, (~keep).tolist(), "dedup_near", ["near_duplicate"] * docs.num_rows,
                                [f"dup_of={d}" if d is not None else "" for d in dup])
        return docs.filter(pa.array(keep)), dropped, Counter(clustered=int(keepers.num_rows))


class DedupNearStep(Step):
    name = "dedup_near"
    code_version = 2  # 2: shuffle scratch is Arrow IPC
    scratch = ("bands", "edges", "edges_dst", "verified", "cc", "labels", "ids", "keepers")

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup_near.enabled

    def version_config(self, cfg: RunConfig) -> dict:
        # Resolved params (derived bands/rows included) and the shuffle sizing.
        return {**params_of(cfg).as_dict(), "rows_per_bucket": cfg.shuffle_rows_per_bucket}

    def run(self, ctx: StepContext) -> dict:
        params = params_of(ctx.cfg)
        parts = ctx.input_docs().part_urls()
        rows = sum(p["rows"] for p in ctx.input_docs().parts)
        # Band rows are `bands` per document: size the shuffle on them.
        buckets = shuffle.num_buckets(rows * params.bands, ctx.cfg.shuffle_rows_per_bucket)
        c = ctx.compression
        per_part = [dict(in_url=u, part=p) for p, u in parts]
        bands = run_tasks(ctx, bands_task, "bands", [dict(a, params=params, buckets=buckets, compression=c) for a in per_part], "dedup_near: signatures")
        edges = run_tasks(ctx, edges_task, "edges", [dict(verify=params.verify, compression=c)] * buckets, "dedup_near: candidates")
        if params.verify:
            run_tasks(ctx, verify_src_task, "verify_src", [dict(a, params=params, compression=c) for a in per_part], "dedup_near: verify (src)")
            run_tasks(ctx, verify_dst_task, "verify_dst", [dict(a, params=params, compression=c) for a in per_part], "dedup_near: verify (dst)")
            edge_urls = [io.join(ctx.url, "verified", f"part-{p:05d}.parquet") for p, _ in parts]
        else:
            edge_urls = [io.join(ctx.url, "verified", f"part-{j:05d}.parquet") for j in range(buckets)]
        cc_map = partial(_engine_map, ctx, partial(cc_file_task, step_url=ctx.url, compression=c))
        label_urls = nd.connected_components(edge_urls, cc_map, num_partitions=buckets)
        run_tasks(ctx, labels_task, "labels", [dict(url=u, compression=c) for u in label_urls], "dedup_near: labels")
        run_tasks(ctx, ids_task, "ids", [dict(a, buckets=buckets, compression=c) for a in per_part], "dedup_near: ids")
        run_tasks(ctx, keepers_task, "keepers", [dict(compression=c)] * buckets, "dedup_near: keepers")
        payload = success_payload(map_parts(ctx, NearFilter(ctx.url), "dedup_near: filter", phase="filter"))
        payload["buckets"] = buckets
        payload["params"] = params.as_dict()
        payload["counters"]["candidate_edges"] = sum(r["candidates"] for r in edges)
        payload["counters"]["band_rows"] = sum(r["band_rows"] for r in bands)
        return payload


def _engine_map(ctx: StepContext, fn, _stage_fn, tasks: list) -> list:
    """The map_fn handed to connected_components: ignores the stage's in-memory task
    function and runs the file-backed one on the engine instead."""
    return ctx.engine.map(fn, tasks, desc="dedup_near: components")
