"""The write step: the surviving documents with all their annotations, as the run's output.

Parts keep the numbering of the read step, so a document's `ord` still tells which input
task it came from. The output does not depend on which optional steps ran before.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines.config import RunConfig
from pipelines.steps.base import StepContext
from pipelines.steps.docmap import DocMapStep, PartAgnostic
from stages.records import empty_dropped


def keep_all(docs: pa.Table):
    return docs, empty_dropped(), Counter(bytes=sum(len(t.encode("utf-8")) for t in docs.column("text").to_pylist()))


class WriteStep(DocMapStep):
    name = "write"

    def version_config(self, cfg: RunConfig) -> dict:
        return {"compression": cfg.output.compression}

    def processor(self, ctx: StepContext):
        return PartAgnostic(keep_all)
