"""The write step: the surviving documents with all their annotations, as the run's output.

Parts keep the numbering of the read step, so a document's `ord` still tells which input
task it came from. The output does not depend on which optional steps ran before.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import RunConfig
from pipelines.steps.base import Pins, StepContext
from pipelines.steps.docmap import DocMapStep
from stages.records import empty_dropped


def keep_all(docs: pa.Table, part: int):
    text_bytes = int(pc.sum(pc.binary_length(docs.column("text"))).as_py() or 0) if docs.num_rows else 0
    return docs, empty_dropped(), Counter(bytes=text_bytes)


class WriteStep(DocMapStep):
    name = "write"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.output.documents

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return {"compression": cfg.output.compression}

    def processor(self, ctx: StepContext):
        return keep_all, {}
