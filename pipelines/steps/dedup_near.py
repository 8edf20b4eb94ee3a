"""The near-dedup step: the phases of stages.dedup_near, sharded through Parquet shuffles.

Nodes are numbered `part << 32 | row`, with `row` the document's row in this step's input
part (not the read-time `ord`: earlier steps have removed rows). Phases, each resumable
from its task records:

  bands       doc part p  -> bands/bucket-j/        band rows (band, key, node)
  edges       bucket j    -> edges/part-p/          candidate star edges, routed by src's part
  verify_src  doc part p  -> edges_dst/part-q/      + src signature, routed by dst's part
  verify_dst  doc part q  -> verified/part-q        edges whose estimated Jaccard >= threshold
  cc-*        large-star / small-star rounds over edge partitions (cc/<phase>/to-j/);
              the last, cc-labels, writes labels/part-p/ (node, label) routed by node's part
  ids         doc part p  -> ids/bucket-k/          + the document id, routed by label
  keepers     bucket k    -> keepers/part-p/        smallest id of each component kept
  filter      doc part p  -> docs/, dropped/        + cluster_id (keeper's id; null if unique)

Without verification, `edges` writes straight to verified/ and the verify phases are skipped.
The driver holds only file names and one flag per task.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from pipelines.config import ConfigError, RunConfig
from pipelines.steps import shuffle
from pipelines.steps.base import Phase, Pins, Step, StepContext
from pipelines.steps.docmap import map_phase, success_payload
from stages import dedup_near as nd
from stages import storage
from stages.records import dropped_table

VERIFIED_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("jaccard", pa.float32())])


def params_of(cfg: RunConfig) -> nd.NearDupParams:
    c = cfg.dedup_near
    return nd.NearDupParams(threshold=c.threshold, num_perm=c.num_perm, ngram=c.ngram, bands=c.bands,
                            rows=c.rows, seed=c.seed, verify=c.verify)


def _texts(url: str) -> list[str]:
    return storage.read_parquet(url, columns=["text"]).column("text").to_pylist()


def bands_task(step_url: str, index: int, in_url: str, part: int, params: dict, buckets: int, compression: str) -> dict:
    params = nd.NearDupParams(**params)
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
        storage.write_parquet(storage.join(step_url, "verified", f"part-{index:05d}.parquet"),
                         edges.append_column("jaccard", pa.nulls(edges.num_rows, pa.float32())), compression)
    return {"candidates": edges.num_rows}


def _full_signatures(in_url: str, need: np.ndarray, params: nd.NearDupParams) -> np.ndarray:
    texts = _texts(in_url) if len(need) else []
    return nd.signatures([texts[r] for r in need], params)


def verify_src_task(step_url: str, index: int, in_url: str, part: int, params: dict, compression: str) -> dict:
    params = nd.NearDupParams(**params)
    edges = shuffle.read_dir(storage.join(step_url, "edges", f"part-{part:05d}"))
    if edges is None or edges.num_rows == 0:
        return {"edges": 0}
    need = nd.rows_of_part(edges, part, "src")
    with_sig = nd.attach_signatures(edges, _full_signatures(in_url, need, params), part, "src", need)
    shuffle.write_by_part(step_url, "edges_dst", part, with_sig, compression, column="dst")
    return {"edges": edges.num_rows}


def verify_dst_task(step_url: str, index: int, in_url: str, part: int, params: dict, compression: str) -> dict:
    params = nd.NearDupParams(**params)
    edges = shuffle.read_dir(storage.join(step_url, "edges_dst", f"part-{part:05d}"))
    if edges is None or edges.num_rows == 0:
        verified = VERIFIED_SCHEMA.empty_table()
    else:
        need = nd.rows_of_part(edges, part, "dst")
        verified = nd.verify_edges(edges, _full_signatures(in_url, need, params), part, params, need)
    storage.write_parquet(storage.join(step_url, "verified", f"part-{part:05d}.parquet"), verified.cast(VERIFIED_SCHEMA), compression)
    return {"edges": 0 if edges is None else edges.num_rows, "verified": verified.num_rows}


def cc_phase_dir(phase: str, rnd: int) -> str:
    return "cc-route" if phase == "route" else "cc-labels" if phase == "labels" else f"cc-r{rnd:03d}-{phase}"


def cc_task_files(step_url: str, index: int, phase: str, rnd: int, src: str, partitions: int, compression: str) -> dict:
    """One partition of one components phase, its pieces as files: reads what the previous
    phase addressed to it (for "route": edge file `src`), writes what it addresses to each
    partition of the next (cc/<phase>/to-j/from-i.arrow); "labels" writes (node, label)
    routed by the node's document part (labels/part-p/)."""
    if phase == "route":
        pieces = [storage.read_parquet(src)]
    else:
        pieces = [shuffle.read_dir(storage.join(step_url, "cc", src, f"to-{index:05d}"))]
    result = nd.cc_task(nd.CCTask(phase, rnd, index, pieces, partitions))
    if phase == "labels":
        labels = result.pieces[0]
        shuffle.write_by_part(step_url, "labels", index, labels, compression, column="node")
        return {"nodes": labels.num_rows, "changed": False}
    codec = None if compression == "none" else "zstd"
    out = cc_phase_dir(phase, rnd)
    for j, piece in enumerate(result.pieces):
        if piece is not None and piece.num_rows:
            storage.write_arrow(storage.join(step_url, "cc", out, f"to-{j:05d}", f"from-{index:05d}.arrow"), piece, codec)
    return {"changed": bool(result.changed), "edges_out": int(sum(p.num_rows for p in result.pieces if p is not None))}


def ids_task(step_url: str, index: int, in_url: str, part: int, buckets: int, compression: str) -> dict:
    labels = shuffle.read_for_part(step_url, "labels", part, nd.LABELS_SCHEMA)
    if labels.num_rows == 0:
        return {"nodes": 0}
    ids = storage.read_parquet(in_url, columns=["id"]).column("id")
    with_ids = nd.attach_ids(labels, ids, part)
    shuffle.write_buckets(step_url, "ids", part, with_ids, nd.hash_partition(with_ids.column("label").to_numpy(), buckets), compression)
    return {"nodes": labels.num_rows}


def keepers_task(step_url: str, index: int, compression: str) -> dict:
    keepers = nd.choose_keepers(shuffle.read_bucket(step_url, "ids", index, nd.NODE_IDS_SCHEMA))
    shuffle.write_by_part(step_url, "keepers", index, keepers, compression, column="node")
    return {"dropped": int((~keepers.column("keep").to_numpy(zero_copy_only=False)).sum()) if keepers.num_rows else 0}


def near_filter_part(docs: pa.Table, part: int, step_url: str):
    """Processor of the filter phase: drops non-keepers, annotates cluster_id."""
    keepers = shuffle.read_for_part(step_url, "keepers", part, nd.KEEPERS_SCHEMA)
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
    code_version = 3  # 3: component rounds are task phases with records
    scratch = ("bands", "edges", "edges_dst", "verified", "cc", "labels", "ids", "keepers")

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup_near.enabled

    def check(self, cfg: RunConfig) -> None:
        try:
            params_of(cfg)  # the stage's own checks (e.g. seed range), before any work
        except ValueError as e:
            raise ConfigError(f"dedup_near: {e}") from None

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        # Resolved params (derived bands/rows included) and the shuffle sizing.
        return {**params_of(cfg).as_dict(), "rows_per_bucket": cfg.shuffle_rows_per_bucket}

    def run(self, ctx: StepContext) -> dict:
        params = params_of(ctx.cfg)
        p = params.as_dict()
        inp = ctx.input_docs()
        parts = inp.part_urls()
        # Band rows are `bands` per document: size the shuffle on them.
        buckets = shuffle.num_buckets(inp.rows * params.bands, ctx.cfg.shuffle_rows_per_bucket)
        c = ctx.compression
        per_part = [dict(in_url=u, part=i) for i, u in parts]
        weights = inp.part_weights()

        def cc(phase: str, rnd: int, src: str | list[str]) -> Phase:
            srcs = src if isinstance(src, list) else [src] * buckets
            return Phase(cc_task_files, cc_phase_dir(phase, rnd),
                         [dict(phase=phase, rnd=rnd, src=s, partitions=buckets, compression=c) for s in srcs],
                         f"dedup_near: components {phase} {rnd}")

        # Everything up to the components' first phase is known now: one submission.
        candidates = [Phase(bands_task, "bands", [dict(a, params=p, buckets=buckets, compression=c) for a in per_part],
                            "dedup_near: signatures", weights),
                      Phase(edges_task, "edges", [dict(verify=params.verify, compression=c)] * buckets, "dedup_near: candidates")]
        if params.verify:
            candidates += [Phase(verify_src_task, "verify_src", [dict(a, params=p, compression=c) for a in per_part],
                                 "dedup_near: verify (src)", weights),
                           Phase(verify_dst_task, "verify_dst", [dict(a, params=p, compression=c) for a in per_part],
                                 "dedup_near: verify (dst)", weights)]
            edge_urls = [storage.join(ctx.url, "verified", f"part-{i:05d}.parquet") for i, _ in parts]
        else:
            edge_urls = [storage.join(ctx.url, "verified", f"part-{j:05d}.parquet") for j in range(buckets)]
        bands, edges, *_ = ctx.run_phases(candidates + [cc("route", 0, edge_urls)])

        def one_round(rnd: int) -> bool:
            prev = cc_phase_dir("route", 0) if rnd == 1 else cc_phase_dir("small", rnd - 1)
            large, small = ctx.run_phases([cc("large", rnd, prev), cc("small", rnd, cc_phase_dir("large", rnd))])
            return any(r["changed"] for r in large + small)

        rounds = nd.component_rounds(one_round)
        *_, filtered = ctx.run_phases([
            cc("labels", rounds, cc_phase_dir("small", rounds)),
            Phase(ids_task, "ids", [dict(a, buckets=buckets, compression=c) for a in per_part], "dedup_near: ids", weights),
            Phase(keepers_task, "keepers", [dict(compression=c)] * buckets, "dedup_near: keepers"),
            map_phase(ctx, near_filter_part, dict(step_url=ctx.url), "dedup_near: filter", phase="filter"),
        ])
        payload = success_payload(filtered)
        payload["buckets"] = buckets
        payload["params"] = p
        payload["counters"]["candidate_edges"] = sum(r["candidates"] for r in edges)
        payload["counters"]["band_rows"] = sum(r["band_rows"] for r in bands)
        payload["component_rounds"] = rounds
        return payload
