"""The read step: input files -> document parts + quarantine parts.

Tasks: one per compressed JSONL file (a stream cannot be split), one per byte range of
`input.task_bytes` of an uncompressed JSONL file, one per group of Parquet row groups.
Line numbers of split files come from a first, cheap phase that counts newlines per
range, so ids are the same whatever the task size.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from pipelines import io
from pipelines.config import RunConfig
from pipelines.steps.base import Step, StepContext, merge_counters, run_tasks, write_part
from stages import read as rd


def _spec(cfg: RunConfig) -> rd.ReadSpec:
    i = cfg.input
    return rd.ReadSpec(text_field=i.text_field, id_field=i.id_field, keep_fields=tuple(i.keep_fields),
                       max_doc_bytes=i.max_doc_bytes, part_bytes=i.part_bytes)


def _format(cfg: RunConfig, f: io.InputFile) -> str:
    return cfg.input.format if cfg.input.format != "auto" else rd.format_of(f.rel)


def count_newlines_task(step_url: str, index: int, url: str, start: int, end: int) -> dict:
    fs, path = io.filesystem(url)
    with fs.open(path, "rb") as f:
        return {"newlines": rd.count_newlines(f, start, end)}


def read_task(step_url: str, index: int, url: str, rel: str, kind: str, start: int, end: int,
              newlines_before: int, spec: rd.ReadSpec, compression: str) -> dict:
    parts = []

    def seal(part: int, docs) -> None:
        parts.append(write_part(step_url, "docs", part, docs, compression))

    builder = rd.DocBuilder(spec=spec, source=rel, part=index * rd.SUBPARTS_PER_TASK, on_seal=seal)
    fs, path = io.filesystem(url)
    with fs.open(path, "rb") as f:
        if kind == "stream":
            rd.read_jsonl_stream(f, rd.codec_of(rel), builder)
        elif kind == "range":
            first = rd.first_line_number(f, start, newlines_before)
            rd.read_jsonl_range(f, start, end, first, builder)
        else:  # parquet row groups [start, end)
            pf = pq.ParquetFile(f)
            row = sum(pf.metadata.row_group(g).num_rows for g in range(start))
            for g in range(start, end):
                table = pf.read_row_group(g)
                rd.read_parquet_rows(table, row, builder)
                row += table.num_rows
    docs, quarantine, counters = builder.finish()
    return {
        "counters": dict(counters),
        "rows": docs.num_rows,
        "parts": parts + [write_part(step_url, "docs", builder.current_part, docs, compression)],
        "quarantine": [write_part(step_url, "quarantine", index, quarantine, compression)],
    }


class ReadStep(Step):
    name = "read"

    def __init__(self):
        super().__init__(())

    def version_config(self, cfg: RunConfig) -> dict:
        files = io.expand_inputs(cfg.input.paths)
        return {
            "input": cfg.input.model_dump(exclude={"paths"}),
            "files": [[f.rel, f.size, f.fingerprint] for f in files],
        }

    def plan_tasks(self, cfg: RunConfig) -> list[dict]:
        tasks = []
        for f in io.expand_inputs(cfg.input.paths):
            fmt = _format(cfg, f)
            if fmt == "parquet":
                fs, path = io.filesystem(f.url)
                with fs.open(path, "rb") as fh:
                    md = pq.ParquetFile(fh).metadata
                groups, rows = [], 0
                start = 0
                for g in range(md.num_row_groups):
                    rows += md.row_group(g).num_rows
                    if rows >= cfg.input.parquet_rows_per_task:
                        groups.append((start, g + 1))
                        start, rows = g + 1, 0
                if start < md.num_row_groups or not groups:
                    groups.append((start, md.num_row_groups))
                tasks += [dict(url=f.url, rel=f.rel, kind="rowgroups", start=a, end=b) for a, b in groups]
            elif rd.codec_of(f.rel) or f.size <= cfg.input.task_bytes:
                tasks.append(dict(url=f.url, rel=f.rel, kind="stream", start=0, end=f.size))
            else:
                step = cfg.input.task_bytes
                tasks += [dict(url=f.url, rel=f.rel, kind="range", start=s, end=min(s + step, f.size)) for s in range(0, f.size, step)]
        return tasks

    def run(self, ctx: StepContext) -> dict:
        cfg = ctx.cfg
        tasks = self.plan_tasks(cfg)
        # Newlines before each range of split files, so line numbers (and ids) do not
        # depend on how a file was split.
        ranged = [i for i, t in enumerate(tasks) if t["kind"] == "range"]
        counts = run_tasks(ctx, count_newlines_task, "count", [dict(url=tasks[i]["url"], start=tasks[i]["start"], end=tasks[i]["end"]) for i in ranged], "read: count lines") if ranged else []
        before: dict[int, int] = {}
        running: dict[str, int] = {}
        for i, c in zip(ranged, counts):
            url = tasks[i]["url"]
            before[i] = running.get(url, 0)
            running[url] = before[i] + c["newlines"]
        spec = _spec(cfg)
        args = [dict(t, newlines_before=before.get(i, 0), spec=spec, compression=ctx.compression) for i, t in enumerate(tasks)]
        results = run_tasks(ctx, read_task, "read", args, "read")
        return {
            "counters": merge_counters(results),
            "parts": [p for r in results for p in r["parts"]],
            "quarantine": [p for r in results for p in r["quarantine"]],
            "tasks": len(tasks),
        }
