"""The read step: the pinned input files -> document parts + quarantine parts.

It reads exactly the file list the plan pinned (pipelines.inputs): a file that appears
later belongs to the next plan.

Tasks: one per compressed JSONL or text file (a stream cannot be split), one per byte
range of `input.task_bytes` of an uncompressed one, one per group of Parquet row groups.
Phases before the read, both cheap and only when needed: `footers` reads each Parquet
file's row-group sizes (to group them into tasks), `count` the newlines per range of split
files, so line numbers (and ids) are the same whatever the task size.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from pipelines.config import RunConfig
from pipelines.steps.base import Pins, Step, StepContext, merge_counters, write_part
from stages import read as rd
from stages import storage


def _spec(cfg: RunConfig) -> dict:
    i = cfg.input
    return dict(text_field=i.text_field, id_field=i.id_field, keep_fields=list(i.keep_fields),
                max_doc_bytes=i.max_doc_bytes, part_bytes=i.part_bytes)


def _format(cfg: RunConfig, rel: str) -> str:
    return cfg.input.format if cfg.input.format != "auto" else rd.format_of(rel)


def footers_task(step_url: str, index: int, url: str) -> dict:
    md = storage.parquet_metadata(url)
    return {"row_groups": [md.row_group(g).num_rows for g in range(md.num_row_groups)]}


def count_newlines_task(step_url: str, index: int, url: str, start: int, end: int) -> dict:
    with storage.open_url(url, "rb") as f:
        return {"newlines": rd.count_newlines(f, start, end)}


def read_task(step_url: str, index: int, url: str, rel: str, kind: str, fmt: str, start: int, end: int,
              newlines_before: int, spec: dict, compression: str) -> dict:
    spec = rd.ReadSpec(**{**spec, "keep_fields": tuple(spec["keep_fields"])})
    parts = []

    def seal(part: int, docs) -> None:
        parts.append(write_part(step_url, "docs", part, docs, compression))

    builder = rd.DocBuilder(spec=spec, source=rel, part=index * rd.SUBPARTS_PER_TASK, on_seal=seal)
    text = fmt == "text"
    with storage.open_url(url, "rb") as f:
        if kind == "stream":
            rd.read_jsonl_stream(f, rd.codec_of(rel), builder, text=text)
        elif kind == "range":
            first = rd.first_line_number(f, start, newlines_before)
            rd.read_jsonl_range(f, start, end, first, builder, text=text)
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


def group_row_groups(sizes: list[int], rows_per_task: int) -> list[tuple[int, int]]:
    """Consecutive row groups of about `rows_per_task` rows: [start, end) pairs (one, empty,
    for a file without row groups)."""
    groups, rows, start = [], 0, 0
    for g, n in enumerate(sizes):
        rows += n
        if rows >= rows_per_task:
            groups.append((start, g + 1))
            start, rows = g + 1, 0
    if start < len(sizes) or not groups:
        groups.append((start, len(sizes)))
    return groups


class ReadStep(Step):
    name = "read"
    code_version = 2  # 2: reads the plan's pinned file list; text format
    reads_inputs = True

    def __init__(self):
        super().__init__(())

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return {
            "input": cfg.input.model_dump(exclude={"paths"}),
            "files": [[f.rel, f.size, f.fingerprint] for f in pins.inputs],
        }

    def run(self, ctx: StepContext) -> dict:
        cfg = ctx.cfg
        files = list(ctx.pins.inputs)
        fmts = [_format(cfg, f.rel) for f in files]
        parquet = [i for i, fmt in enumerate(fmts) if fmt == "parquet"]
        footers = ctx.run_phase(footers_task, "footers", [dict(url=files[i].url) for i in parquet], "read: footers") if parquet else []
        row_groups = dict(zip(parquet, (r["row_groups"] for r in footers)))
        tasks = []
        for i, (f, fmt) in enumerate(zip(files, fmts)):
            base = dict(url=f.url, rel=f.rel, fmt=fmt)
            if fmt == "parquet":
                sizes = row_groups[i]
                share = f.size / max(1, sum(sizes))  # file bytes per row: the tasks' weights
                tasks += [dict(base, kind="rowgroups", start=a, end=b, weight=int(share * sum(sizes[a:b])))
                          for a, b in group_row_groups(sizes, cfg.input.parquet_rows_per_task)]
            elif rd.codec_of(f.rel) or f.size <= cfg.input.task_bytes:
                tasks.append(dict(base, kind="stream", start=0, end=f.size))
            else:
                step = cfg.input.task_bytes
                tasks += [dict(base, kind="range", start=s, end=min(s + step, f.size)) for s in range(0, f.size, step)]
        ranged = [i for i, t in enumerate(tasks) if t["kind"] == "range"]
        counts = ctx.run_phase(count_newlines_task, "count", [dict(url=tasks[i]["url"], start=tasks[i]["start"], end=tasks[i]["end"])
                                                              for i in ranged], "read: count lines") if ranged else []
        before: dict[int, int] = {}
        running: dict[str, int] = {}
        for i, c in zip(ranged, counts):
            url = tasks[i]["url"]
            before[i] = running.get(url, 0)
            running[url] = before[i] + c["newlines"]
        spec = _spec(cfg)
        weights = [t.pop("weight", t["end"] - t["start"]) for t in tasks]
        args = [dict(t, newlines_before=before.get(i, 0), spec=spec, compression=ctx.compression) for i, t in enumerate(tasks)]
        results = ctx.run_phase(read_task, "read", args, "read", weights)
        return {
            "counters": merge_counters(results),
            "parts": [p for r in results for p in r["parts"]],
            "quarantine": [p for r in results for p in r["quarantine"]],
            "tasks": len(tasks),
        }
