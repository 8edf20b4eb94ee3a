"""The train-bpe step: a byte-level BPE tokenizer trained on the cleaned documents.

Counting and merging run on the engine's Ray cluster (pipelines.bpe_job); with the local
engine, in this process. Outputs (tokenizer.json, merges.txt, vocab.json, ranks,
training_stats.json) go to the step's folder; see docs/bpe.md.
"""

from __future__ import annotations

import dataclasses

from pipelines.config import RunConfig
from pipelines.steps.base import Step, StepContext


class TrainBpeStep(Step):
    name = "train_bpe"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.tokenizer.enabled and cfg.tokenizer.path is None

    def version_config(self, cfg: RunConfig) -> dict:
        from stages.bpe import BpeConfig

        # The resolved config (defaults filled in), so spelling a default out does not move the version.
        resolved = dataclasses.asdict(BpeConfig.from_dict(cfg.tokenizer.train))
        return {k: v for k, v in resolved.items() if k not in ("max_partition_mb",)}

    def run(self, ctx: StepContext) -> dict:
        from pipelines.bpe_job import train_bpe_step

        urls = [u for _, u in ctx.input_docs().part_urls()]
        workers = ctx.engine.workers if ctx.engine.name == "ray" else 0
        result = train_bpe_step(urls, "text", dict(ctx.cfg.tokenizer.train), ctx.url, workers)
        return {"tokenizer": "tokenizer.json", "vocab": result["vocab"], "merges": result["merges"],
                "files": result["files"], "counters": {"words": result["words"] or 0, "merges": result["merges"] or 0}}
