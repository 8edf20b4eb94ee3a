"""The write-shards step: encoded documents -> Megatron .bin/.idx shards + manifest.

  plan    driver: every document's token count and id (small columns) -> stages.shards
          .plan_shards: its shard and position, in order or by the seeded global shuffle
  route   token part p -> route/bucket-<shard>/part-p (documents addressed to their shard)
  shards  shard k -> tokens-k.bin/.idx (and stochastok-k.* when that stream is written)
  index   documents.parquet (shard, position, source id, token range) and manifest.json,
          written last; every file's sha256 is in the manifest

The plan depends only on the documents (ids, sizes) and the config, never on how the
work was partitioned, so any engine and worker count writes the same bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import io
from pipelines.config import RunConfig
from pipelines.steps import shuffle
from pipelines.steps.base import Step, StepContext, run_tasks
from stages import shards as sh
from stages.encode import arrow_to_flat
from stages.megatron import dtype_for_vocab

STREAM_COLUMNS = {sh.PLAIN_STREAM: "tokens", sh.STOCHASTOK_STREAM: "stochastok"}


def streams_of(mode: str) -> list[str]:
    return {"off": [sh.PLAIN_STREAM], "expand": [sh.STOCHASTOK_STREAM], "both": [sh.PLAIN_STREAM, sh.STOCHASTOK_STREAM]}[mode]


def routed_columns(streams: list[str]) -> list[str]:
    """The encoded columns a shard needs: ids, its streams, and the StochasTok counters."""
    cols = ["id"] + [STREAM_COLUMNS[s] for s in streams]
    return cols + (["st_attempts", "st_expanded"] if sh.STOCHASTOK_STREAM in streams else [])


def route_task(step_url: str, index: int, in_url: str, part: int, shard: np.ndarray, position: np.ndarray, columns: list[str],
               compression: str) -> dict:
    table = io.read_parquet(in_url, columns=columns)
    table = table.append_column("shard", pa.array(shard, pa.int64())).append_column("position", pa.array(position, pa.int64()))
    shuffle.write_buckets(step_url, "route", part, table, shard, compression)
    return {"rows_in": table.num_rows}


def shard_task(step_url: str, index: int, streams: list[str], vocab_size: int, schema: pa.Schema) -> dict:
    rows = shuffle.read_bucket(step_url, "route", index, schema)
    position = rows.column("position").to_numpy()
    if (np.diff(position) < 0).any():  # in document order already unless shuffled
        rows = rows.take(pa.array(np.argsort(position, kind="stable")))
    dtype = dtype_for_vocab(vocab_size)
    records = []
    for stream in streams:
        tokens, lengths = arrow_to_flat(rows.column(STREAM_COLUMNS[stream]))
        st = stream == sh.STOCHASTOK_STREAM
        rec = sh.write_shard(step_url, sh.shard_name(index, stream), tokens, lengths, dtype, vocab_size=vocab_size, stream=stream,
                             stochastok_attempts=int(pc.sum(rows.column("st_attempts")).as_py() or 0) if st else 0,
                             stochastok_expanded=int(pc.sum(rows.column("st_expanded")).as_py() or 0) if st else 0)
        records.append(rec.to_dict())
    return {"records": records, "ids": rows.column("id").to_pylist(), "rows_in": rows.num_rows}


class WriteShardsStep(Step):
    name = "write_shards"
    code_version = 2  # 2: shuffle scratch is Arrow IPC, routes only the columns shards need
    scratch = ("route",)

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.encode.enabled

    def version_config(self, cfg: RunConfig) -> dict:
        return cfg.shards.model_dump()

    def run(self, ctx: StepContext) -> dict:
        cfg = ctx.cfg
        enc = ctx.input_docs()
        streams = streams_of(cfg.encode.stochastok.mode)
        size_col = "n_tokens" if streams[0] == sh.PLAIN_STREAM else "n_stochastok"
        parts = enc.part_urls()
        meta = [io.read_parquet(u, columns=["id", size_col]) for _, u in parts]
        sizes = np.concatenate([m.column(size_col).to_numpy() for m in meta]) if meta else np.zeros(0, np.int64)
        ids = [i for m in meta for i in m.column("id").to_pylist()]
        vocab = int(enc.record["vocab_size"])
        target = sh.target_in_tokens(cfg.shards.target, cfg.shards.unit, dtype_for_vocab(vocab))
        plan = sh.plan_shards(sizes, target=target, doc_ids=ids if cfg.shards.shuffle else None,
                              shuffle_seed=cfg.shards.seed if cfg.shards.shuffle else None)
        bounds = np.cumsum([0] + [m.num_rows for m in meta])
        columns = routed_columns(streams)
        args = [dict(in_url=u, part=p, shard=plan.shard[a:b], position=plan.position[a:b], columns=columns,
                     compression=ctx.compression)
                for (p, u), a, b in zip(parts, bounds[:-1], bounds[1:])]
        run_tasks(ctx, route_task, "route", args, "write_shards: route")
        fs, path = io.filesystem(parts[0][1])
        with fs.open(path, "rb") as f:
            stored = pq.read_schema(f)
        schema = pa.schema([stored.field(c) for c in columns] + [pa.field("shard", pa.int64()), pa.field("position", pa.int64())])
        results = run_tasks(ctx, shard_task, "shard", [dict(streams=streams, vocab_size=vocab, schema=schema)] * plan.num_shards,
                            "write_shards: shards")
        records = [sh.ShardRecord.from_dict(r) for res in results for r in res["records"]]
        written = sum(len(res["ids"]) for res in results)
        if written != len(ids):
            raise AssertionError(f"write_shards: {len(ids)} documents encoded, {written} written to shards")
        shard_docs = [(sh.shard_name(k, s), res["ids"]) for s in streams for k, res in enumerate(results)]
        sh.write_doc_index(ctx.url, shard_docs)
        tokenizer = {**sh.tokenizer_info(enc.record["tokenizer"], vocab_size=vocab,
                                         preset=cfg.tokenizer.train.get("preset") if not cfg.tokenizer.path else None),
                     **enc.record.get("tokenizer_info", {})}  # a tiktoken ranks file: its pattern and special tokens
        settings = {"eod": cfg.encode.eod, "bos": cfg.encode.bos, "stochastok": cfg.encode.stochastok.model_dump(), **cfg.shards.model_dump(),
                    "target_tokens": target}
        manifest = sh.build_manifest(records, tokenizer=tokenizer, config_hash=ctx.version, settings=settings)
        sh.write_manifest(ctx.url, manifest)
        totals = manifest["totals"]
        return {"counters": {f"{s}:{k}": v for s, t in totals.items() for k, v in t.items()},
                "shards": [r.name for r in records], "manifest": "manifest.json"}
