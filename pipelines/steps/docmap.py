"""Document map steps: one task per input part, part i in -> part i out.

A step of this family only supplies a *processor*: a module-level function
`fn(docs, part, **options) -> (kept, dropped, counters)` over one Arrow table of documents,
with JSON options. Reading, writing, task records, resume and the rows-in = kept + dropped
check are done here once.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import pyarrow as pa

from pipelines.steps.base import Phase, Step, StepContext, merge_counters, write_part
from pipelines.tasks import function_name, resolve
from stages import storage

Processor = Callable[..., tuple[pa.Table, pa.Table, Counter]]


def map_docs_task(step_url: str, index: int, in_url: str, part: int, processor: str, options: dict, compression: str,
                  kind_out: str = "docs") -> dict:
    table = storage.read_parquet(in_url)
    kept, dropped, counters = resolve(processor)(table, part, **options)
    if kept.num_rows + dropped.num_rows != table.num_rows:
        raise AssertionError(f"{step_url} part {part}: {table.num_rows} rows in, {kept.num_rows} kept + {dropped.num_rows} dropped")
    counters = Counter(counters)
    counters["rows_in"] += table.num_rows
    counters["rows_out"] += kept.num_rows
    for reason in dropped.column("reason").to_pylist():
        counters[f"dropped:{reason}"] += 1
    return {
        "counters": dict(counters),
        "rows_in": table.num_rows,
        "parts": [write_part(step_url, kind_out, part, kept, compression)],
        "dropped": [write_part(step_url, "dropped", part, dropped, compression)],
    }


def map_phase(ctx: StepContext, processor: Processor, options: dict, desc: str, phase: str = "map",
              kind_out: str = "docs", source: list[tuple[int, str]] | None = None) -> Phase:
    """The phase that runs `processor` over every document part of the input step (or over
    `source`: (part index, URL) pairs); output part i is written for input part i."""
    inp = ctx.input_docs()
    parts = source if source is not None else inp.part_urls()
    weights = inp.part_weights() if len(parts) == len(inp.parts) else None
    name = function_name(processor)
    args = [dict(in_url=u, part=p, processor=name, options=options, compression=ctx.compression, kind_out=kind_out)
            for p, u in parts]
    return Phase(map_docs_task, phase, args, desc, weights)


def map_parts(ctx: StepContext, processor: Processor, options: dict, desc: str, phase: str = "map",
              kind_out: str = "docs", source: list[tuple[int, str]] | None = None) -> list[dict]:
    """Run `map_phase` now; returns its records."""
    return ctx.run_phases([map_phase(ctx, processor, options, desc, phase, kind_out, source)])[0]


def success_payload(results: list[dict]) -> dict:
    return {
        "counters": merge_counters(results),
        "parts": [p for r in results for p in r["parts"]],
        "dropped": [p for r in results for p in r.get("dropped", [])],
    }


class DocMapStep(Step):
    """A step that is one processor applied to every part."""

    def processor(self, ctx: StepContext) -> tuple[Processor, dict]:
        raise NotImplementedError

    def run(self, ctx: StepContext) -> dict:
        fn, options = self.processor(ctx)
        return success_payload(map_parts(ctx, fn, options, self.name))
