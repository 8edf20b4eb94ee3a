"""The write-shards step: encoded documents -> Megatron .bin/.idx shards + manifest.

  plan    one task: every document's token count and id (small columns) -> stages.shards
          .plan_shards: each document's shard and position, in order or by the seeded
          global shuffle, written per token part (shard_plan/part-p.arrow)
  route   token part p -> route/bucket-<shard>/part-p (documents addressed to their shard)
  shards  shard k -> tokens-k.bin/.idx (and stochastok-k.* when that stream is written),
          plus its rows of the document index (index/<shard>.arrow)
  index   one task: documents.parquet (shard, position, source id, token range)
Then the driver writes manifest.json from the shard records; every file's sha256 is in it.

The plan depends only on the documents (ids, sizes) and the config, never on how the
work was partitioned, so any engine and worker count writes the same bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import RunConfig
from pipelines.steps import shuffle
from pipelines.steps.base import Phase, Pins, Step, StepContext, read_finished
from stages import shards as sh
from stages import storage
from stages.encode import arrow_to_flat
from stages.megatron import dtype_for_vocab

STREAM_COLUMNS = {sh.PLAIN_STREAM: "tokens", sh.STOCHASTOK_STREAM: "stochastok"}
PLAN_SCHEMA = pa.schema([("shard", pa.int64()), ("position", pa.int64())])


def streams_of(mode: str) -> list[str]:
    return {"off": [sh.PLAIN_STREAM], "expand": [sh.STOCHASTOK_STREAM], "both": [sh.PLAIN_STREAM, sh.STOCHASTOK_STREAM]}[mode]


def routed_columns(streams: list[str]) -> list[str]:
    """The encoded columns a shard needs: ids, its streams, and the StochasTok counters."""
    cols = ["id"] + [STREAM_COLUMNS[s] for s in streams]
    return cols + (["st_attempts", "st_expanded"] if sh.STOCHASTOK_STREAM in streams else [])


def _plan_url(step_url: str, part: int) -> str:
    return storage.join(step_url, "shard_plan", f"part-{part:05d}.arrow")


def plan_task(step_url: str, index: int, encoded_url: str, size_col: str, target: int, shuffle_seed: int | None) -> dict:
    enc = read_finished(encoded_url)
    meta = [(p, storage.read_parquet(u, columns=["id", size_col])) for p, u in enc.part_urls()]
    sizes = np.concatenate([m.column(size_col).to_numpy() for _, m in meta]) if meta else np.zeros(0, np.int64)
    ids = [i for _, m in meta for i in m.column("id").to_pylist()] if shuffle_seed is not None else None
    plan = sh.plan_shards(sizes, target=target, doc_ids=ids, shuffle_seed=shuffle_seed)
    a = 0
    for part, m in meta:
        b = a + m.num_rows
        storage.write_arrow(_plan_url(step_url, part), pa.table({"shard": plan.shard[a:b], "position": plan.position[a:b]},
                                                                schema=PLAN_SCHEMA))
        a = b
    return {"num_shards": plan.num_shards, "documents": int(sizes.size)}


def route_task(step_url: str, index: int, in_url: str, part: int, columns: list[str], compression: str) -> dict:
    table = storage.read_parquet(in_url, columns=columns)
    plan = storage.read_arrow(_plan_url(step_url, part))
    table = table.append_column("shard", plan.column("shard")).append_column("position", plan.column("position"))
    shuffle.write_buckets(step_url, "route", part, table, plan.column("shard").to_numpy(), compression)
    return {"rows_in": table.num_rows}


def _index_url(step_url: str, name: str) -> str:
    return storage.join(step_url, "index", f"{name}.arrow")


def shard_task(step_url: str, index: int, streams: list[str], vocab_size: int, encoded_part: str, columns: list[str]) -> dict:
    stored = storage.parquet_schema(encoded_part)
    schema = pa.schema([stored.field(c) for c in columns] + [pa.field("shard", pa.int64()), pa.field("position", pa.int64())])
    rows = shuffle.read_bucket(step_url, "route", index, schema)
    position = rows.column("position").to_numpy()
    if (np.diff(position) < 0).any():  # in document order already unless shuffled
        rows = rows.take(pa.array(np.argsort(position, kind="stable")))
    dtype = dtype_for_vocab(vocab_size)
    ids = rows.column("id").to_pylist()
    records = []
    for stream in streams:
        tokens, lengths = arrow_to_flat(rows.column(STREAM_COLUMNS[stream]))
        st = stream == sh.STOCHASTOK_STREAM
        name = sh.shard_name(index, stream)
        rec = sh.write_shard(step_url, name, tokens, lengths, dtype, vocab_size=vocab_size, stream=stream,
                             stochastok_attempts=int(pc.sum(rows.column("st_attempts")).as_py() or 0) if st else 0,
                             stochastok_expanded=int(pc.sum(rows.column("st_expanded")).as_py() or 0) if st else 0)
        storage.write_arrow(_index_url(step_url, name), sh.doc_index_piece(step_url, name, ids))
        records.append(rec.to_dict())
    return {"records": records, "rows_in": rows.num_rows}


def index_task(step_url: str, index: int, names: list[str]) -> dict:
    """documents.parquet from the shards' index pieces, streams first, then shards in order."""
    pieces = [storage.read_arrow(_index_url(step_url, n)) for n in names]
    sh.write_doc_index_table(step_url, pieces)
    return {"rows": sum(p.num_rows for p in pieces)}


class WriteShardsStep(Step):
    name = "write_shards"
    code_version = 3  # 3: the shard plan and the document index are built by tasks; relative tokenizer path
    scratch = ("route", "shard_plan", "index")

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.encode.enabled

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return cfg.shards.model_dump()

    def run(self, ctx: StepContext) -> dict:
        cfg = ctx.cfg
        enc = ctx.input_docs()
        streams = streams_of(cfg.encode.stochastok.mode)
        size_col = "n_tokens" if streams[0] == sh.PLAIN_STREAM else "n_stochastok"
        vocab = int(enc.record["vocab_size"])
        target = sh.target_in_tokens(cfg.shards.target, cfg.shards.unit, dtype_for_vocab(vocab))
        parts = enc.part_urls()
        columns = routed_columns(streams)
        (plan,), _ = ctx.run_phases([
            Phase(plan_task, "plan", [dict(encoded_url=enc.url, size_col=size_col, target=target,
                                           shuffle_seed=cfg.shards.seed if cfg.shards.shuffle else None)], "write_shards: plan"),
            Phase(route_task, "route", [dict(in_url=u, part=p, columns=columns, compression=ctx.compression) for p, u in parts],
                  "write_shards: route", enc.part_weights()),
        ])
        names = [sh.shard_name(k, s) for s in streams for k in range(plan["num_shards"])]
        results, _ = ctx.run_phases([
            Phase(shard_task, "shard", [dict(streams=streams, vocab_size=vocab, encoded_part=parts[0][1], columns=columns)]
                  * plan["num_shards"], "write_shards: shards"),
            Phase(index_task, "index", [dict(names=names)], "write_shards: index"),
        ])
        records = [sh.ShardRecord.from_dict(r) for res in results for r in res["records"]]
        written = sum(res["rows_in"] for res in results)
        if written != plan["documents"]:
            raise AssertionError(f"write_shards: {plan['documents']} documents encoded, {written} written to shards")
        tok_path = ctx.resolve(enc.record["tokenizer"])
        tokenizer = {**sh.tokenizer_info(tok_path, vocab_size=vocab,
                                         preset=cfg.tokenizer.train.get("preset") if not cfg.tokenizer.path else None),
                     "path": ctx.relative(tok_path),  # relative to the run root when the run trained it
                     **enc.record.get("tokenizer_info", {})}  # a tiktoken ranks file: its pattern and special tokens
        settings = {"eod": cfg.encode.eod, "bos": cfg.encode.bos, "stochastok": cfg.encode.stochastok.model_dump(),
                    **cfg.shards.model_dump(), "target_tokens": target}
        manifest = sh.build_manifest(records, tokenizer=tokenizer, config_hash=ctx.version, settings=settings)
        manifest["run_root"] = "../.."  # the run root, from this folder: tokenizer.path is relative to it
        sh.write_manifest(ctx.url, manifest)
        totals = manifest["totals"]
        return {"counters": {f"{s}:{k}": v for s, t in totals.items() for k, v in t.items()},
                "shards": [r.name for r in records], "manifest": "manifest.json"}
